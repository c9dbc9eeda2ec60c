// The fused element-wise ops on CUDA: one thread per output value for the gates and SwiGLU, one block per head row
// for the head norm. Float32 math (no fast-math: expf, tanhf as the CPU oracle), one rounding to T at the end.
#include <cmath>

#include "kernels/fused_fw.cuh"
#include "kernels/mlstm_cuda_common.cuh"

namespace xlstm {

namespace {

constexpr int kThreads = 256;
constexpr int kNormThreads = 128;  // per head row of DV values (512 for xLSTM-7b: 4 each)

__device__ __forceinline__ float SigmoidF(float x) { return 1.0f / (1.0f + expf(-x)); }

__global__ void MLstmGatesKernel(GatesParams p) {
  const int64_t total = p.batch * p.heads * p.seq;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // (b·NH + h)·S + s
  if (idx >= total) return;
  const int64_t S = p.seq, NH = p.heads;
  const int64_t s = idx % S, h = (idx / S) % NH, b = idx / (S * NH);
  const int64_t bs = b * S + s;
  float i = p.gates[bs * 2 * NH + h], f = p.gates[bs * 2 * NH + NH + h];
  if (p.soft_cap > 0.0f) {
    i = p.soft_cap * tanhf(i / p.soft_cap);
    f = p.soft_cap * tanhf(f / p.soft_cap);
  }
  const bool real = p.mask[bs] != 0;
  p.igate[idx] = real ? i : -INFINITY;
  p.fgate[idx] = real ? f : INFINITY;
}

template <typename T>
__global__ void SwiGluKernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t F) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * F) return;
  const int64_t n = idx / F, j = idx % F;
  const float g = ToF<T>(x[n * 2 * F + j]), z = ToF<T>(x[n * 2 * F + F + j]);
  y[idx] = FromF<T>(g * SigmoidF(g) * z);
}

/// Sum over the block (kNormThreads threads); every thread gets the result.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  v = WarpSum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read from the previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int w = 0; w < kNormThreads / 32; ++w) total += scratch[w];
  return total;
}

template <typename T>
__global__ void HeadNormGateKernel(HeadNormGateParams p) {
  extern __shared__ float row[];  // DV values of this head row, as float
  __shared__ float scratch[kNormThreads / 32];
  const int64_t NH = p.heads, S = p.seq, DV = p.dv;
  const int64_t r = blockIdx.x;  // (b·NH + h)·S + s
  const int64_t b = r / (NH * S), h = (r / S) % NH, s = r % S;
  const T* x = static_cast<const T*>(p.h) + r * DV;
  float sum = 0.0f;
  for (int64_t d = threadIdx.x; d < DV; d += kNormThreads) {
    row[d] = ToF<T>(x[d]);
    sum += row[d];
  }
  const float mean = BlockSum(sum, scratch) / static_cast<float>(DV);
  float sq = 0.0f;
  for (int64_t d = threadIdx.x; d < DV; d += kNormThreads) {
    const float c = row[d] - mean;
    sq += c * c;
  }
  const float rstd = rsqrtf(BlockSum(sq, scratch) / static_cast<float>(DV) + p.eps);
  const int64_t out = (b * S + s) * NH * DV + h * DV;
  const T* o = static_cast<const T*>(p.o) + out;
  const T* w = static_cast<const T*>(p.weight) + h * DV;
  const T* bias = static_cast<const T*>(p.bias) + h * DV;
  T* y = static_cast<T*>(p.y) + out;
  for (int64_t d = threadIdx.x; d < DV; d += kNormThreads) {
    const float normed = (row[d] - mean) * rstd * ToF<T>(w[d]) + ToF<T>(bias[d]);
    y[d] = FromF<T>(SigmoidF(ToF<T>(o[d])) * normed);
  }
}

}  // namespace

cudaError_t LaunchMLstmGates(const GatesParams& p, cudaStream_t stream) {
  const int64_t total = p.batch * p.heads * p.seq;
  if (total == 0) return cudaSuccess;
  MLstmGatesKernel<<<static_cast<unsigned>(CeilDiv(total, kThreads)), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchSwiGlu(const SwiGluParams& p, cudaStream_t stream) {
  const int64_t total = p.rows * p.width;
  if (total == 0) return cudaSuccess;
  return XLSTM_DTYPE_SWITCH(p.dtype, [&] {
    SwiGluKernel<T><<<static_cast<unsigned>(CeilDiv(total, kThreads)), kThreads, 0, stream>>>(
        static_cast<const T*>(p.x), static_cast<T*>(p.y), p.rows, p.width);
    return cudaGetLastError();
  });
}

cudaError_t LaunchHeadNormGate(const HeadNormGateParams& p, cudaStream_t stream) {
  const int64_t rows = p.batch * p.heads * p.seq;
  if (rows == 0) return cudaSuccess;
  if (p.dv * sizeof(float) > 48 * 1024) return cudaErrorInvalidValue;  // DV ≤ 12288: the row lives in shared memory
  return XLSTM_DTYPE_SWITCH(p.dtype, [&] {
    HeadNormGateKernel<T><<<static_cast<unsigned>(rows), kNormThreads, p.dv * sizeof(float), stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace xlstm
