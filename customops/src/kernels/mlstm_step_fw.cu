// The mLSTM decode step (S = 1), docs/hf-semantics.md "Recurrent step": a pure bandwidth problem (C is read and
// written once).
//
// Grid: one CTA per (b·NH + head, DV tile of DVT columns); 256 threads = TX column groups of 4 × TY rows of DQK.
// Each thread streams its rows of C with 16-byte loads (U rows in flight), writes C' = f'·C + i'·k vᵀ, and
// accumulates (q·s)ᵀC' for its 4 columns in double; the TY partial sums are reduced in shared memory. (Double sums cost
// nothing here, the kernel is bound by reading C, and keep float32 models within 1e-4 of transformers.) n', m' and q·n' are
// recomputed by every CTA of the head (DQK-long, negligible); the tile-0 CTA writes n' and m'.
// C and n may be stored in bfloat16 (state_dtype): read into float32, updated in float32, h from the float32 C' and n',
// then C' and n' rounded once on the way out (the CPU oracle converts, runs its float32 step and rounds: the same).
// At batch 64 the step streams 64 × 32 × 8 MB of float32 C; bfloat16 halves it. A bfloat16 thread covers 8 columns
// (16-byte accesses as the float32 thread's 4) and sums h's numerator in float (StateIo below).
#include <algorithm>
#include <atomic>
#include <cstring>
#include <type_traits>

#include "kernels/mlstm_cuda_common.cuh"
#include "kernels/mlstm_fw.cuh"

namespace xlstm {
namespace {

constexpr int kStepThreads = 256;
/// Blocks an SM must hold (at most 64 registers a thread): 4 blocks' loads in flight stream the state at full bandwidth.
/// The float32 state fits anyway; the bfloat16 state's widening took 77 registers, so 3 blocks (StateIo below).
constexpr int kStepMinBlocks = 4;

/// A thread's CW consecutive state values of a row, 16 bytes either way (4 float32, 8 bfloat16), streamed once
/// (evict-first). Acc is what the thread sums h's numerator in: double for a float32 state (float32 models within 1e-4
/// of transformers), float for a bfloat16 one (its stored values carry 2^-9 already). A row's 16 bytes stay one raw
/// word (Raw) while the U rows' loads are in flight and are widened to float only when used, so a bfloat16 thread keeps
/// about the float32 thread's registers (and blocks an SM, hence bytes in flight). Measured on the H200 at batch 64
/// (tools/bench/results/roofline-h200-2026-11-30): 8-byte loads of 4 columns streamed 2.23 TB/s against the float32
/// step's 3.90; 16-byte loads of 8 columns widened on load (77 registers, 3 blocks an SM) 2.47, with 128-column tiles 2.70.
template <typename S>
struct StateIo;
template <>
struct StateIo<float> {
  static constexpr int kWidth = 4;
  using Acc = double;
  using Raw = float4;
  static __device__ __forceinline__ Raw LoadRaw(const float* p) { return __ldcs(reinterpret_cast<const float4*>(p)); }
  static __device__ __forceinline__ void Widen(const Raw& v, float (&out)[4]) {
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  }
  static __device__ __forceinline__ void Store(float* p, const float (&in)[4]) {
    __stcs(reinterpret_cast<float4*>(p), make_float4(in[0], in[1], in[2], in[3]));
  }
};
template <>
struct StateIo<__nv_bfloat16> {
  static constexpr int kWidth = 8;
  using Acc = float;
  using Raw = uint4;
  static __device__ __forceinline__ Raw LoadRaw(const __nv_bfloat16* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }
  static __device__ __forceinline__ void Widen(const Raw& u, float (&out)[8]) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      __nv_bfloat162 pair;
      memcpy(&pair, &w[i], 4);
      const float2 f = __bfloat1622float2(pair);
      out[2 * i] = f.x, out[2 * i + 1] = f.y;
    }
  }
  static __device__ __forceinline__ void Store(__nv_bfloat16* p, const float (&in)[8]) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const __nv_bfloat162 pair = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
      memcpy(&w[i], &pair, 4);
    }
    __stcs(reinterpret_cast<uint4*>(p), make_uint4(w[0], w[1], w[2], w[3]));
  }
};

template <typename T, typename S, int DVT>
__global__ void __launch_bounds__(kStepThreads, kStepMinBlocks) MLstmStepKernel(const MLstmParams p, int num_tiles) {
  using Acc = typename StateIo<S>::Acc;
  constexpr int CW = StateIo<S>::kWidth;    // columns a thread: 16 bytes of C a row
  constexpr int TX = DVT / CW;              // column groups
  constexpr int TY = kStepThreads / TX;     // rows of C handled in parallel
  constexpr int U = 4;                      // rows in flight per thread
  extern __shared__ float smem_step[];      // vecQ_scaled [DQK], vecK [DQK]
  __shared__ Acc partial[TY][DVT];
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
    const float n_new = scaF_act * ToF(static_cast<const S*>(p.vecN0)[bh * DK + d]) + scaI_act * kd;
    if (tile == 0) static_cast<S*>(p.vecN)[bh * DK + d] = FromF<S>(n_new);
    qn += static_cast<double>(qs) * n_new;
  }
  qn = WarpSum(qn);
  if (tid % 32 == 0) qn_warp[tid / 32] = qn;
  __syncthreads();
  double qn_all = 0.0;
#pragma unroll
  for (int w = 0; w < kStepThreads / 32; ++w) qn_all += qn_warp[w];

  const int64_t col0 = static_cast<int64_t>(tile) * DVT + tx * CW;
  float vv[CW];
#pragma unroll
  for (int c = 0; c < CW; ++c) vv[c] = col0 + c < DV ? ToF(v[col0 + c]) : 0.0f;
  const bool vec = (DV % CW == 0) && (col0 + CW <= DV);
  const S* matC0 = static_cast<const S*>(p.matC0) + bh * DK * DV;
  S* matC1 = static_cast<S*>(p.matC) + bh * DK * DV;

  Acc acc[CW];
#pragma unroll
  for (int c = 0; c < CW; ++c) acc[c] = 0;
  for (int64_t d0 = ty; d0 < DK; d0 += static_cast<int64_t>(TY) * U) {
    typename StateIo<S>::Raw raw[U];  // the U rows' loads, all issued before any is used
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t d = d0 + static_cast<int64_t>(u) * TY;
      raw[u] = {};
      if (d < DK && vec) raw[u] = StateIo<S>::LoadRaw(matC0 + d * DV + col0);
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t d = d0 + static_cast<int64_t>(u) * TY;
      if (d < DK) {
        float cu[CW];
        if (vec) {
          StateIo<S>::Widen(raw[u], cu);
        } else {  // a tile's last columns past DV, or DV not a multiple of CW
          const S* src = matC0 + d * DV + col0;
#pragma unroll
          for (int c = 0; c < CW; ++c) cu[c] = col0 + c < DV ? ToF(src[c]) : 0.0f;
        }
        const float kd = vecK[d], qs = vecQs[d];
        float o[CW];
#pragma unroll
        for (int c = 0; c < CW; ++c) {
          o[c] = scaF_act * cu[c] + scaI_act * (kd * vv[c]);
          acc[c] += static_cast<Acc>(qs) * o[c];
        }
        S* dst = matC1 + d * DV + col0;
        if (vec) {
          StateIo<S>::Store(dst, o);
        } else {
#pragma unroll
          for (int c = 0; c < CW; ++c)
            if (col0 + c < DV) dst[c] = FromF<S>(o[c]);
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < CW; ++c) partial[ty][tx * CW + c] = acc[c];
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

template <typename T, typename S, int DVT>
struct StepTag {};

template <typename T, typename S, int DVT>
cudaError_t LaunchStep(const MLstmParams& p, cudaStream_t stream) {
  const int num_tiles = static_cast<int>(CeilDiv(p.dv, DVT));
  const int64_t blocks = p.batch * p.heads * num_tiles;
  const size_t smem = sizeof(float) * 2 * static_cast<size_t>(p.dqk);
  cudaError_t err = AllowSharedMemory<StepTag<T, S, DVT>>(MLstmStepKernel<T, S, DVT>, smem);
  if (err != cudaSuccess) return err;
  MLstmStepKernel<T, S, DVT><<<static_cast<unsigned>(blocks), kStepThreads, smem, stream>>>(p, num_tiles);
  return cudaGetLastError();
}

template <typename T, typename S>
cudaError_t LaunchStepTiles(const MLstmParams& p, cudaStream_t stream, bool wide) {
  // a bfloat16 thread covers twice the columns of a float32 one: twice the tile width gives its CTA the float32 CTA's
  // rows a thread, bytes in flight and work per fixed cost (q, k, n to shared memory, the q·n and h reductions)
  if constexpr (std::is_same_v<S, __nv_bfloat16>) return wide ? LaunchStep<T, S, 128>(p, stream) : LaunchStep<T, S, 32>(p, stream);
  return wide ? LaunchStep<T, S, 64>(p, stream) : LaunchStep<T, S, 16>(p, stream);
}

/// dst[i] = src[i] between float32 and bfloat16 (rounding to nearest even towards bfloat16).
template <typename From, typename To>
__global__ void ConvertStateKernel(const From* __restrict__ src, To* __restrict__ dst, int64_t count) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = FromF<To>(ToF(src[i]));
}

template <typename From, typename To>
cudaError_t Convert(const void* src, void* dst, int64_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const int blocks = static_cast<int>(std::min<int64_t>(CeilDiv(count, 256), 4096));
  ConvertStateKernel<From, To><<<blocks, 256, 0, stream>>>(static_cast<const From*>(src), static_cast<To*>(dst), count);
  return cudaGetLastError();
}

}  // namespace

/// Asked once per device and then cached, so a warm launch (as under CUDA-graph capture) makes no attribute query;
/// cudaGetDevice only reads the thread's current device, which ONNX Runtime's CUDA provider sets to the session's
/// device before it runs a kernel.
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

cudaError_t LaunchMLstmStepFw(const MLstmParams& p, cudaStream_t stream) {
  if (p.seq != 1) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
  // Wide tiles when there are enough CTAs to fill the GPU (2 per SM), narrow ones at small batch.
  int sm_count = 0;
  const cudaError_t err = CurrentDeviceSmCount(&sm_count);
  if (err != cudaSuccess) return err;
  const bool wide = p.batch * p.heads * CeilDiv(p.dv, 64) >= 2 * static_cast<int64_t>(sm_count);
  if (p.state_dtype == Dtype::kBFloat16) {
    return XLSTM_DTYPE_SWITCH(p.dtype, [&] { return LaunchStepTiles<T, __nv_bfloat16>(p, stream, wide); });
  }
  if (p.state_dtype != Dtype::kFloat32) return cudaErrorInvalidValue;
  return XLSTM_DTYPE_SWITCH(p.dtype, [&] { return LaunchStepTiles<T, float>(p, stream, wide); });
}

cudaError_t LaunchMLstmWithFloatState(const MLstmParams& p, cudaStream_t stream,
                                      cudaError_t (*launch)(const MLstmParams&, cudaStream_t)) {
  if (p.state_dtype == Dtype::kFloat32) return launch(p, stream);
  if (p.state_dtype != Dtype::kBFloat16) return cudaErrorInvalidValue;
  const int64_t nc = p.batch * p.heads * p.dqk * p.dv, nn = p.batch * p.heads * p.dqk;
  float* scratch = nullptr;  // C0, n0, C', n' as float32, stream-ordered (freed after the kernels that use it)
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&scratch), sizeof(float) * 2 * static_cast<size_t>(nc + nn), stream);
  if (err != cudaSuccess) return err;
  MLstmParams f = p;
  f.state_dtype = Dtype::kFloat32;
  f.round_state_bf16 = true;  // every piece's state rounded (mlstm_params.h); the conversion out is then exact
  f.matC0 = scratch, f.vecN0 = scratch + nc, f.matC = scratch + nc + nn, f.vecN = scratch + 2 * nc + nn;
  err = Convert<__nv_bfloat16, float>(p.matC0, const_cast<void*>(f.matC0), nc, stream);
  if (err == cudaSuccess) err = Convert<__nv_bfloat16, float>(p.vecN0, const_cast<void*>(f.vecN0), nn, stream);
  if (err == cudaSuccess) err = launch(f, stream);
  if (err == cudaSuccess) err = Convert<float, __nv_bfloat16>(f.matC, p.matC, nc, stream);
  if (err == cudaSuccess) err = Convert<float, __nv_bfloat16>(f.vecN, p.vecN, nn, stream);
  const cudaError_t freed = cudaFreeAsync(scratch, stream);
  return err != cudaSuccess ? err : freed;
}

}  // namespace xlstm
