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

/// One token (S = 1): C' = f'C + i'k vᵀ and h, streamed once through registers; C and n in float32 or bfloat16.
cudaError_t LaunchMLstmStepFw(const MLstmParams& p, cudaStream_t stream);

/// Runs `launch` (a kernel of float32 state) for p: directly when p's C and n are float32; for bfloat16 state through
/// float32 copies (converted in, run, rounded out), in stream-ordered scratch (cudaMallocAsync/cudaFreeAsync: the one
/// launcher that allocates; prompts with bfloat16 state only, never a decode step).
cudaError_t LaunchMLstmWithFloatState(const MLstmParams& p, cudaStream_t stream,
                                      cudaError_t (*launch)(const MLstmParams&, cudaStream_t));

/// How many sequence segments the tensor-core kernel reads p's prompt in at once (1: one pass over the whole prompt).
/// Segments need a whole-chunk prompt inside one of HF's segments and a float32 state that is not rounded between
/// pieces; the launcher picks them when B·NH·tiles leave SMs idle (mlstm_chunkwise_tc_fw.cu). Needs the current device.
int MLstmSequenceParallelSegments(const MLstmParams& p);

/// The current device's number of streaming multiprocessors (asked once per device, then cached).
cudaError_t CurrentDeviceSmCount(int* sm_count);

/// Which kernel LaunchMLstmChunkwiseFw would run for p: "step", "simt" or "tensor_core".
const char* MLstmChunkwiseKernelName(const MLstmParams& p);

// The individual kernels (launch helpers defined in their own .cu files).
cudaError_t LaunchMLstmChunkwiseSimt(const MLstmParams& p, cudaStream_t stream);
cudaError_t LaunchMLstmChunkwiseTensorCore(const MLstmParams& p, cudaStream_t stream);
bool MLstmTensorCoreSupports(const MLstmParams& p);

}  // namespace xlstm
