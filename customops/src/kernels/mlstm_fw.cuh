// Launchers of the CUDA mLSTM kernels. Only CUDA runtime types here: the ORT op wrappers (host compiler), the CUDA
// tests and the benchmark all call these. Every launcher enqueues on `stream` and nothing else: no allocation, no
// synchronization, no host round trip, so the op is safe under CUDA-graph capture. It returns cudaGetLastError().
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/mlstm_params.h"

namespace xlstm {

/// Any S ≥ 1 on HF's schedule (S = 1 runs the step kernel). Picks the tensor-core kernel for float16/bfloat16 with
/// DQK ≤ 256 and DQK, DV multiples of 8, the SIMT (float32-math CUDA-core) kernel otherwise; p.cuda_path can pin one.
cudaError_t LaunchMLstmChunkwiseFw(const MLstmParams& p, cudaStream_t stream);

/// One token (S = 1): C' = f'C + i'k vᵀ and h, streamed once through registers.
cudaError_t LaunchMLstmStepFw(const MLstmParams& p, cudaStream_t stream);

/// Which kernel LaunchMLstmChunkwiseFw would run for p: "step", "simt" or "tensor_core".
const char* MLstmChunkwiseKernelName(const MLstmParams& p);

// The individual kernels (launch helpers defined in their own .cu files).
cudaError_t LaunchMLstmChunkwiseSimt(const MLstmParams& p, cudaStream_t stream);
cudaError_t LaunchMLstmChunkwiseTensorCore(const MLstmParams& p, cudaStream_t stream);
bool MLstmTensorCoreSupports(const MLstmParams& p);

}  // namespace xlstm
