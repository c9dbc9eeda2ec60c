// Launchers of the fused CUDA ops (kernels/fused_params.h). Like the mLSTM launchers they only enqueue on `stream`
// (no allocation, no synchronization), so they are safe under CUDA-graph capture; they return cudaGetLastError().
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/fused_params.h"

namespace xlstm {

cudaError_t LaunchMLstmGates(const GatesParams& p, cudaStream_t stream);
cudaError_t LaunchSwiGlu(const SwiGluParams& p, cudaStream_t stream);
cudaError_t LaunchHeadNormGate(const HeadNormGateParams& p, cudaStream_t stream);

}  // namespace xlstm
