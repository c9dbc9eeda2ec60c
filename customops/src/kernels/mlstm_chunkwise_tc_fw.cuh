// Tensor-core chunkwise kernel: the instantiations that exist (one file each under inst/) and their launcher.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "kernels/mlstm_params.h"

namespace xlstm {
namespace tc {

/// Launches the tensor-core kernel for element type T with DQK padded to KD (64, 128 or 256).
template <typename T, int KD>
cudaError_t LaunchTc(const MLstmParams& p, cudaStream_t stream);

extern template cudaError_t LaunchTc<__half, 64>(const MLstmParams&, cudaStream_t);
extern template cudaError_t LaunchTc<__half, 128>(const MLstmParams&, cudaStream_t);
extern template cudaError_t LaunchTc<__half, 256>(const MLstmParams&, cudaStream_t);
extern template cudaError_t LaunchTc<__nv_bfloat16, 64>(const MLstmParams&, cudaStream_t);
extern template cudaError_t LaunchTc<__nv_bfloat16, 128>(const MLstmParams&, cudaStream_t);
extern template cudaError_t LaunchTc<__nv_bfloat16, 256>(const MLstmParams&, cudaStream_t);

}  // namespace tc
}  // namespace xlstm
