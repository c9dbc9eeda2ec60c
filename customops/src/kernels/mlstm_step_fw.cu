// The mLSTM decode step (S = 1), docs/hf-semantics.md "Recurrent step": a pure bandwidth problem (C is read and
// written once).
//
// Grid: one CTA per (b·NH + head, DV tile of DVT columns); 256 threads = TX column groups of 4 × TY rows of DQK.
// Each thread streams its rows of C with 16-byte loads (U rows in flight), writes C' = f'·C + i'·k vᵀ, and
// accumulates (q·s)ᵀC' for its 4 columns in double; the TY partial sums are reduced in shared memory. (Double sums cost
// nothing here, the kernel is bound by reading C, and keep float32 models within 1e-4 of transformers.) n', m' and q·n' are
// recomputed by every CTA of the head (DQK-long, negligible); the tile-0 CTA writes n' and m'.
#include <atomic>

#include "kernels/mlstm_cuda_common.cuh"
#include "kernels/mlstm_fw.cuh"

namespace xlstm {
namespace {

constexpr int kStepThreads = 256;

/// The current device's number of streaming multiprocessors, asked once per device and then cached, so a warm
/// launch (as under CUDA-graph capture) makes no attribute query; cudaGetDevice only reads the thread's current
/// device, which ONNX Runtime's CUDA provider sets to the session's device before it runs a kernel.
cudaError_t CurrentDeviceSmCount(int* sm_count) {
  constexpr int kCachedDevices = 64;
  static std::atomic<int> cache[kCachedDevices];  // 0: not asked yet (static storage starts zeroed)
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const bool cacheable = device >= 0 && device < kCachedDevices;
  int count = cacheable ? cache[device].load(std::memory_order_relaxed) : 0;
  if (count <= 0) {
    err = cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    if (err != cudaSuccess) return err;
    if (cacheable) cache[device].store(count, std::memory_order_relaxed);
  }
  *sm_count = count;
  return cudaSuccess;
}

template <typename T, int DVT>
__global__ void __launch_bounds__(kStepThreads) MLstmStepKernel(const MLstmParams p, int num_tiles) {
  constexpr int TX = DVT / 4;               // column groups of 4 floats
  constexpr int TY = kStepThreads / TX;     // rows of C handled in parallel
  constexpr int U = 4;                      // rows in flight per thread
  extern __shared__ float smem_step[];      // vecQ_scaled [DQK], vecK [DQK]
  __shared__ double partial[TY][DVT];
  __shared__ double qn_warp[kStepThreads / 32];

  const int64_t DK = p.dqk, DV = p.dv;
  const int64_t bh = blockIdx.x / num_tiles;
  const int tile = static_cast<int>(blockIdx.x % num_tiles);
  const int tid = threadIdx.x, tx = tid % TX, ty = tid / TX;
  float* vecQs = smem_step;
  float* vecK = smem_step + DK;

  // gates and stabilizer, float32 (S = 1: the token index is bh)
  const float scaI = p.vecI[bh];
  const float scaF_log = LogSigmoidF(p.vecF[bh]);
  const float scaM_old = p.scaM0[bh];
  const float scaM_new = fmaxf(scaF_log + scaM_old, scaI);
  const float scaF_act = expf(scaF_log + scaM_old - scaM_new);
  const float scaI_act = expf(scaI - scaM_new);

  const T* q = static_cast<const T*>(p.matQ) + bh * DK;
  const T* k = static_cast<const T*>(p.matK) + bh * DK;
  const T* v = static_cast<const T*>(p.matV) + bh * DV;
  double qn = 0.0;
  for (int64_t d = tid; d < DK; d += kStepThreads) {
    const float qs = ToF(q[d]) * p.qk_scale;
    const float kd = ToF(k[d]);
    vecQs[d] = qs;
    vecK[d] = kd;
    const float n_new = scaF_act * p.vecN0[bh * DK + d] + scaI_act * kd;
    if (tile == 0) p.vecN[bh * DK + d] = n_new;
    qn += static_cast<double>(qs) * n_new;
  }
  qn = WarpSum(qn);
  if (tid % 32 == 0) qn_warp[tid / 32] = qn;
  __syncthreads();
  double qn_all = 0.0;
#pragma unroll
  for (int w = 0; w < kStepThreads / 32; ++w) qn_all += qn_warp[w];

  const int64_t col0 = static_cast<int64_t>(tile) * DVT + tx * 4;
  float vv[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) vv[c] = col0 + c < DV ? ToF(v[col0 + c]) : 0.0f;
  const bool vec4 = (DV % 4 == 0) && (col0 + 4 <= DV);
  const float* matC0 = p.matC0 + bh * DK * DV;
  float* matC1 = p.matC + bh * DK * DV;

  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t d0 = ty; d0 < DK; d0 += static_cast<int64_t>(TY) * U) {
    float4 c[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {  // issue all U loads before using any
      const int64_t d = d0 + static_cast<int64_t>(u) * TY;
      c[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (d < DK) {
        const float* src = matC0 + d * DV + col0;
        if (vec4) {
          c[u] = __ldcs(reinterpret_cast<const float4*>(src));  // streamed once: evict-first
        } else {
          if (col0 + 0 < DV) c[u].x = src[0];
          if (col0 + 1 < DV) c[u].y = src[1];
          if (col0 + 2 < DV) c[u].z = src[2];
          if (col0 + 3 < DV) c[u].w = src[3];
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t d = d0 + static_cast<int64_t>(u) * TY;
      if (d < DK) {
        const float kd = vecK[d], qs = vecQs[d];
        float4 o;
        o.x = scaF_act * c[u].x + scaI_act * (kd * vv[0]);
        o.y = scaF_act * c[u].y + scaI_act * (kd * vv[1]);
        o.z = scaF_act * c[u].z + scaI_act * (kd * vv[2]);
        o.w = scaF_act * c[u].w + scaI_act * (kd * vv[3]);
        acc[0] += static_cast<double>(qs) * o.x;
        acc[1] += static_cast<double>(qs) * o.y;
        acc[2] += static_cast<double>(qs) * o.z;
        acc[3] += static_cast<double>(qs) * o.w;
        float* dst = matC1 + d * DV + col0;
        if (vec4) {
          __stcs(reinterpret_cast<float4*>(dst), o);
        } else {
          if (col0 + 0 < DV) dst[0] = o.x;
          if (col0 + 1 < DV) dst[1] = o.y;
          if (col0 + 2 < DV) dst[2] = o.z;
          if (col0 + 3 < DV) dst[3] = o.w;
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < 4; ++c) partial[ty][tx * 4 + c] = acc[c];
  __syncthreads();
  if (tid < DVT) {
    const int64_t col = static_cast<int64_t>(tile) * DVT + tid;
    if (col < DV) {
      double num = 0.0;
      for (int r = 0; r < TY; ++r) num += partial[r][tid];
      const double den = fmax(fabs(qn_all), static_cast<double>(expf(-scaM_new))) + p.eps;
      static_cast<T*>(p.matH)[bh * DV + col] = FromF<T>(static_cast<float>(num / den));
    }
  }
  if (tile == 0 && tid == 0) p.scaM[bh] = scaM_new;
}

template <typename T, int DVT>
struct StepTag {};

template <typename T, int DVT>
cudaError_t LaunchStep(const MLstmParams& p, cudaStream_t stream) {
  const int num_tiles = static_cast<int>(CeilDiv(p.dv, DVT));
  const int64_t blocks = p.batch * p.heads * num_tiles;
  const size_t smem = sizeof(float) * 2 * static_cast<size_t>(p.dqk);
  cudaError_t err = AllowSharedMemory<StepTag<T, DVT>>(MLstmStepKernel<T, DVT>, smem);
  if (err != cudaSuccess) return err;
  MLstmStepKernel<T, DVT><<<static_cast<unsigned>(blocks), kStepThreads, smem, stream>>>(p, num_tiles);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchMLstmStepFw(const MLstmParams& p, cudaStream_t stream) {
  if (p.seq != 1) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
  // Wide tiles when there are enough CTAs to fill the GPU (2 per SM), narrow ones at small batch.
  int sm_count = 0;
  const cudaError_t err = CurrentDeviceSmCount(&sm_count);
  if (err != cudaSuccess) return err;
  const bool wide = p.batch * p.heads * CeilDiv(p.dv, 64) >= 2 * static_cast<int64_t>(sm_count);
  return XLSTM_DTYPE_SWITCH(p.dtype, [&] { return wide ? LaunchStep<T, 64>(p, stream) : LaunchStep<T, 16>(p, stream); });
}

}  // namespace xlstm
