// Tensor-core chunkwise kernel: the instantiations that exist (one file each under inst/) and their launcher.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "kernels/mlstm_params.h"

namespace xlstm {
namespace tc {

/// DV columns a CTA of the kernel owns: the grid is B·NH·⌈DV / kTcTileColumns⌉ CTAs, one an SM (shared memory).
inline constexpr int kTcTileColumns = 64;

/// What one launch of the kernel computes. By default the outputs h and the state after the sequence, from the state
/// in p. A states-only pass (the first pass of a sequence-parallel prompt, mlstm_chunkwise_tc_fw.cu) starts from the
/// empty state (C = 0, n = 0, m = kTcEmptyM) instead, skips h, and also writes each sequence's Σ log σ(f̃).
struct TcPass {
  bool states_only = false;
  float* gate_sum = nullptr;  // [B·NH] with states_only
};

/// The empty state's stabilizer: below any G + m a segment can add, so max(G + m, m_local) picks the real terms, and
/// exp(kTcEmptyM − m) is 0. (HF's own start is m = 0 with C = 0, which is not empty in that sense.)
inline constexpr float kTcEmptyM = -1.0e30f;

/// Launches the tensor-core kernel for element type T with DQK padded to KD (64, 128 or 256).
template <typename T, int KD>
cudaError_t LaunchTc(const MLstmParams& p, cudaStream_t stream, TcPass pass = {});

extern template cudaError_t LaunchTc<__half, 64>(const MLstmParams&, cudaStream_t, TcPass);
extern template cudaError_t LaunchTc<__half, 128>(const MLstmParams&, cudaStream_t, TcPass);
extern template cudaError_t LaunchTc<__half, 256>(const MLstmParams&, cudaStream_t, TcPass);
extern template cudaError_t LaunchTc<__nv_bfloat16, 64>(const MLstmParams&, cudaStream_t, TcPass);
extern template cudaError_t LaunchTc<__nv_bfloat16, 128>(const MLstmParams&, cudaStream_t, TcPass);
extern template cudaError_t LaunchTc<__nv_bfloat16, 256>(const MLstmParams&, cudaStream_t, TcPass);

}  // namespace tc
}  // namespace xlstm
