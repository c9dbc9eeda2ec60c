// Launchers of ai.xlstm::Linear on CUDA (kernels/linear_params.h). They only enqueue on `stream`: no allocation
// after a (device, stream)'s first prompt call, no synchronization, so decode steps can be captured as CUDA graphs.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "kernels/linear_params.h"

namespace xlstm {

/// The decode kernel (batch-invariant, any M). Returns cudaGetLastError().
cudaError_t LaunchLinearDecode(const LinearParams& p, cudaStream_t stream);

/// The op's dispatch: p.decode → LaunchLinearDecode, else cuBLAS on a handle owned per (device, stream).
/// Returns "" or what failed.
std::string RunLinearCuda(const LinearParams& p, cudaStream_t stream);

}  // namespace xlstm
