// Parameters of ai.xlstm::Linear, the model's projections (y = x Wᵀ + b) with a decode path whose rows do not
// depend on each other (docs/serving.md, "Batch invariance"). Plain C++, shared by the CPU kernel, the CUDA
// launcher and the op wrapper.
//
//   y[m, n] = Σ_k x[m, k] · W[n, k]  (+ bias[n]),  x [M, K], W [N, K] (the checkpoint's [out, in] layout), y [M, N]
//
// Float32 accumulation, one rounding to T at the end (bias added before it).
//
// Two paths on CUDA, chosen by the call's sequence length S (the op reads it from input_ids [B, S]) and the node's
// batch_invariant attribute:
//   * decode (S = 1) with batch_invariant, or of a size where it beats cuBLAS (LinearOwnKernelWins below) and of a shape
//     the tensor-core kernel takes (float16/bfloat16, K % 64 = 0, N % 16 = 0): our own kernel. Every output value is summed in one fixed order that depends on K alone: the
//     K axis is cut into 64-wide blocks, block b belongs to split b mod 8, each split sums its blocks in order with
//     tensor-core MMAs, and the 8 split sums are added in split order. Neither the number of rows M nor the other
//     rows' values change a row's result, so a sequence decodes to the same bits at every decode batch size.
//   * otherwise (prompts, larger decode steps and float32 projections without batch_invariant): cuBLAS
//     (cublasGemmEx, float32 compute).
#pragma once

#include <cstdint>

#include "kernels/mlstm_params.h"

namespace xlstm {

struct LinearParams {
  Dtype dtype = Dtype::kFloat32;
  const void* x = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;  // [N] or nullptr
  void* y = nullptr;
  int64_t rows = 0;   // M = B·S
  int64_t in = 0;     // K
  int64_t out = 0;    // N
  bool decode = false;  // S = 1: a decode step
  // Decode steps of any size on our kernels (batch-invariant). Otherwise only the shapes where our kernel streams the
  // weights faster than cuBLAS (LinearOwnKernelWins) and cuBLAS elsewhere. The CPU kernel is row-independent always.
  bool batch_invariant = false;
  // Columns a block of the one-pass decode kernel computes: 0, the launcher's choice by N; 8 or 16 forced (tests and
  // benches compare them; a column's arithmetic is the same either way).
  int tile_columns = 0;
};

/// Without batch_invariant a decode step runs our kernel only for the shapes where it streams the weights faster than
/// cuBLAS, else cuBLAS (customops/bench/results/linear_bench_h200.txt, xLSTM-7b's projections on the H200):
///   * up to kLinearOwnRowsAnyShape rows, every projection (1 row: 1.01-1.20x cuBLAS; 4 rows: 0.97-1.15x);
///   * up to kLinearOwnRows rows, the narrow ones (N ≤ kLinearNarrowOut: out_proj and proj_down at 7B), where cuBLAS
///     leaves SMs idle or splits K (16 rows: out_proj 1.16x, proj_down 1.00x; the wide ones 0.93-0.97x).
inline constexpr int64_t kLinearOwnRowsAnyShape = 4;
inline constexpr int64_t kLinearOwnRows = 16;
inline constexpr int64_t kLinearNarrowOut = 4096;

/// The shape rule above (batch_invariant aside): whether our decode kernel takes a step of rows × out.
inline bool LinearOwnKernelWins(int64_t rows, int64_t out) {
  return rows <= kLinearOwnRowsAnyShape || (rows <= kLinearOwnRows && out <= kLinearNarrowOut);
}

/// The decode kernel's fixed summation split (see above). Part of the op's numerics: changing it changes results.
inline constexpr int kLinearSplits = 8;
/// The K block each MMA step of the decode kernel covers.
inline constexpr int kLinearKBlock = 64;

}  // namespace xlstm
