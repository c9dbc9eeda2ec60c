// Device helpers shared by the mLSTM kernels: element conversions, the log-sigmoid, warp reductions, and the
// Dtype -> CUDA type switch (DTYPE_SWITCH, flash-attention's static_switch idea).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <mutex>

#include "kernels/mlstm_params.h"

namespace xlstm {

template <typename T>
__device__ __forceinline__ float ToF(T x);
template <>
__device__ __forceinline__ float ToF<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ float ToF<__half>(__half x) {
  return __half2float(x);
}
template <>
__device__ __forceinline__ float ToF<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ float FromF<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromF<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/// x rounded to bfloat16 and back (to the nearest even): the value a bfloat16 state stores.
__device__ __forceinline__ float RoundToBf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

/// torch's logsigmoid: min(x, 0) − log1p(exp(−|x|)) (accurate expf/log1pf: no fast-math in this library).
__device__ __forceinline__ float LogSigmoidF(float x) { return fminf(x, 0.0f) - log1pf(expf(-fabsf(x))); }

/// Sum over the 32 lanes of a warp (float sums, or double where float32 models need them).
template <typename T>
__device__ __forceinline__ T WarpSum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/// Runs the lambda with `using T = <CUDA element type of dtype>`.
#define XLSTM_DTYPE_SWITCH(DTYPE, ...)                   \
  [&] {                                                  \
    switch (DTYPE) {                                     \
      case ::xlstm::Dtype::kFloat16: {                   \
        using T = __half;                                \
        return __VA_ARGS__();                            \
      }                                                  \
      case ::xlstm::Dtype::kBFloat16: {                  \
        using T = __nv_bfloat16;                         \
        return __VA_ARGS__();                            \
      }                                                  \
      default: {                                         \
        using T = float;                                 \
        return __VA_ARGS__();                            \
      }                                                  \
    }                                                    \
  }()

inline int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// Opts the kernel named by Tag into `bytes` of dynamic shared memory (above the default 48 KiB) the first time a
/// launch needs that much; later launches make no API call. So a warm launch is pure stream work, as CUDA-graph
/// capture wants (ONNX Runtime runs a graph uncaptured before it captures it). Tag: one type per kernel.
template <typename Tag, typename Kernel>
inline cudaError_t AllowSharedMemory(Kernel kernel, size_t bytes) {
  static std::mutex mutex;
  static size_t allowed = 48 * 1024;
  if (bytes <= 48 * 1024) return cudaSuccess;
  std::lock_guard<std::mutex> lock(mutex);
  if (bytes <= allowed) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (err == cudaSuccess) allowed = bytes;
  return err;
}

}  // namespace xlstm
