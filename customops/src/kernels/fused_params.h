// Parameters of the small fused ops around the mLSTM cell (ai.xlstm::MLstmGates, SwiGlu, MultiHeadNormGate). Each
// replaces a chain of 3–6 element-wise ONNX nodes, i.e. as many kernel launches per layer and token, which is what
// a batch-1 decode step spends most of its non-GEMM time on. Plain C++, shared by the CPU kernels, the CUDA
// launchers and the op wrappers. All math is float32; values are rounded to the element type once, at the end.
#pragma once

#include <cstdint>

#include "kernels/mlstm_params.h"

namespace xlstm {

/// The mLSTM gate pre-activations, capped, masked and laid out for the cell:
///   igate[b,h,s] = mask[b,s] ? cap(g[b·S+s, h])      : −inf   (input gate exp(−inf) = 0: the state is untouched)
///   fgate[b,h,s] = mask[b,s] ? cap(g[b·S+s, NH + h]) : +inf   (forget gate logsigmoid(+inf) = 0: kept whole)
/// with cap(x) = c·tanh(x / c) for soft_cap c > 0 (HF's gate_soft_cap), x otherwise.
/// g [B·S, 2·NH] float32 (x W_ifᵀ + b); mask [B, S] int64, nonzero for real tokens; igate, fgate [B, NH, S] float32.
struct GatesParams {
  const float* gates = nullptr;
  const int64_t* mask = nullptr;
  float* igate = nullptr;
  float* fgate = nullptr;
  int64_t batch = 0, seq = 0, heads = 0;
  float soft_cap = 0.0f;  // HF's gate_soft_cap, 0 for none: set from the op's attribute
};

/// y[n, j] = silu(x[n, j]) · x[n, F + j] for x [N, 2F] (gate columns first, then z), y [N, F]: HF's FFN
/// act(proj_up_gate(x)) · proj_up(x) on our fused up projection.
struct SwiGluParams {
  Dtype dtype = Dtype::kFloat32;
  const void* x = nullptr;
  void* y = nullptr;
  int64_t rows = 0;   // N = B·S
  int64_t width = 0;  // F
};

/// The mLSTM layer's output before out_proj:
///   y[b·S+s, h·DV+d] = σ(o[b·S+s, h·DV+d]) · (LN(hc[b,h,s,:])[d] · w[h·DV+d] + bias[h·DV+d])
/// LN over DV with float32 statistics, eps inside the root (ONNX LayerNormalization, stash_type 1), HF's
/// MultiHeadLayerNorm. hc [B, NH, S, DV] (the cell output), o [B·S, NH·DV], w and bias [NH·DV], y [B·S, NH·DV].
struct HeadNormGateParams {
  Dtype dtype = Dtype::kFloat32;
  const void* h = nullptr;
  const void* o = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;
  void* y = nullptr;
  int64_t batch = 0, heads = 0, seq = 0, dv = 0;
  float eps = -1.0f;  // HF's norm_eps: set from the op's attribute (no default)
};

}  // namespace xlstm
