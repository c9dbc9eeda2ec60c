// Launchers of ai.xlstm::Linear on CUDA (kernels/linear_params.h). They only enqueue on `stream`, except that a
// (device, stream)'s workspace and cuBLAS handle are made or grown on the first call that needs them (uncaptured:
// ONNX Runtime runs a graph once before it captures it); no synchronization.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "kernels/linear_params.h"

namespace xlstm {

/// The decode kernels (batch-invariant, any M: up to 16 rows the one-pass kernel, above it the split-across-blocks
/// pair, same bits). Returns "" or what failed.
std::string LaunchLinearDecode(const LinearParams& p, cudaStream_t stream);

/// The op's dispatch (kernels/linear_params.h): our decode kernels, or cuBLAS on a handle owned per (device, stream).
/// Returns "" or what failed.
std::string RunLinearCuda(const LinearParams& p, cudaStream_t stream);

}  // namespace xlstm
