// Dispatch of the tensor-core chunkwise kernel (mlstm_chunkwise_tc_kernel.cuh) over element type and KD, and the
// choice between it, the SIMT kernel and the step kernel.
#include "kernels/mlstm_chunkwise_tc_fw.cuh"
#include "kernels/mlstm_fw.cuh"

#include <algorithm>

#include "kernels/mlstm_cuda_common.cuh"

namespace xlstm {
namespace {

// Sequence-parallel prompts. The kernel walks a sequence's chunks in order, one CTA per (row, head, tile of DV), so
// at batch 1 a 7B layer runs 64 CTAs on the H200's 132 SMs and a long prompt costs its chunk count times one chunk's
// latency. With P segments of S/P tokens each (whole chunks, inside one of HF's segments) the prompt runs in three steps
// (docs/performance.md, "Sequence-parallel prompts"):
//   (1) states only: every segment from the empty state, all segments at once (the [B, NH, S, D] tensors read as
//       [B, NH·P, S/P, D]): each segment's local state (C_p, n_p, m_p) and G_p = Σ log σ(f̃) over it;
//   (2) CombineSegmentsKernel: the state at the start of segment p, in order: m = max(G + m', m_p), and C, n =
//       exp(G + m' − m)·(C', n') + exp(m_p − m)·(C_p, n_p) from the start of segment p − 1 (C', n', m');
//   (3) the kernel as usual on all segments at once, each from its own start: h, and the last segment's state.
// The result is the one-pass kernel's up to rounding (the stabilized sums are regrouped); step (1) skips the outputs.

/// Which P segments the launcher reads p's prompt in (1: one pass), by the rules above; sm_count SMs.
int SequenceParallelSegments(const MLstmParams& p, int sm_count) {
  if (p.seq_parallel == 1 || p.state_dtype != Dtype::kFloat32 || p.round_state_bf16) return 1;
  if (p.seq > p.max_inference_chunksize || p.seq % p.chunk_size != 0) return 1;  // whole chunks, one HF segment
  const int64_t ctas = p.batch * p.heads * CeilDiv(p.dv, tc::kTcTileColumns);
  auto fits = [&](int64_t segments) {
    return p.seq % (segments * p.chunk_size) == 0 && p.seq / segments >= 4 * p.chunk_size;
  };
  if (p.seq_parallel >= 2) return fits(p.seq_parallel) ? p.seq_parallel : 1;
  int segments = 1;  // the most segments (up to 8) whose CTAs all fit on the SMs at once, one an SM
  while (segments < 8 && ctas * segments * 2 <= sm_count && fits(segments * 2)) segments *= 2;
  return segments;
}

/// Step (2): one thread per value of C and n of a (row, head); P small, so each walks the segments in order. The
/// stabilizer chain is the same for every value of a head and is recomputed by each thread (P steps).
__global__ void CombineSegmentsKernel(const float* __restrict__ c0, const float* __restrict__ n0, const float* __restrict__ m0,
                                      const float* __restrict__ c_seg, const float* __restrict__ n_seg,
                                      const float* __restrict__ m_seg, const float* __restrict__ g_seg,
                                      float* __restrict__ c_start, float* __restrict__ n_start, float* __restrict__ m_start,
                                      int segments, int64_t c_size, int64_t n_size) {
  const int64_t head = blockIdx.y;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < c_size + n_size;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool is_n = e >= c_size;
    const int64_t i = is_n ? e - c_size : e, size = is_n ? n_size : c_size;
    const float* seg = is_n ? n_seg : c_seg;
    float* start = is_n ? n_start : c_start;
    float x = (is_n ? n0 : c0)[head * size + i];
    float m = m0[head];
    start[(head * segments) * size + i] = x;
    for (int s = 1; s < segments; ++s) {
      const int64_t prev = head * segments + s - 1;
      const float g = g_seg[prev], ml = m_seg[prev];
      const float mn = fmaxf(g + m, ml);
      x = expf(g + m - mn) * x + expf(ml - mn) * seg[prev * size + i];
      m = mn;
      start[(head * segments + s) * size + i] = x;
    }
    if (e == 0) {  // the chain, once a head
      float mm = m0[head];
      m_start[head * segments] = mm;
      for (int s = 1; s < segments; ++s) {
        const int64_t prev = head * segments + s - 1;
        mm = fmaxf(g_seg[prev] + mm, m_seg[prev]);
        m_start[head * segments + s] = mm;
      }
    }
  }
}

template <typename T, int KD>
cudaError_t LaunchTcSegments(const MLstmParams& p, int segments, cudaStream_t stream) {
  const int64_t heads = p.batch * p.heads, parts = heads * segments;
  const int64_t c_size = p.dqk * p.dv, n_size = p.dqk;
  // scratch, stream-ordered: per segment the local state and G (1), the start states (2), the final states (3)
  const int64_t per_set = parts * (c_size + n_size + 1);
  float* scratch = nullptr;
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&scratch), sizeof(float) * (3 * per_set + parts), stream);
  if (err != cudaSuccess) return err;
  auto set = [&](int k) { return scratch + k * per_set; };
  float* g_seg = scratch + 3 * per_set;
  MLstmParams seg = p;  // [B, NH, S, D] read as [B, NH·P, S/P, D]: segment s of head h is head h·P + s
  seg.heads = p.heads * segments;
  seg.seq = p.seq / segments;
  // (1) the segments' local states from the empty state
  MLstmParams local = seg;
  local.matH = nullptr, local.matC0 = nullptr, local.vecN0 = nullptr, local.scaM0 = nullptr;
  local.matC = set(0), local.vecN = set(0) + parts * c_size, local.scaM = set(0) + parts * (c_size + n_size);
  err = tc::LaunchTc<T, KD>(local, stream, tc::TcPass{true, g_seg});
  // (2) each segment's start state
  if (err == cudaSuccess) {
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(CeilDiv(c_size + n_size, 256), 1024)), static_cast<unsigned>(heads));
    CombineSegmentsKernel<<<grid, 256, 0, stream>>>(p.C0f(), p.N0f(), p.scaM0, local.Cf(), local.Nf(), local.scaM, g_seg,
                                                   set(1), set(1) + parts * c_size, set(1) + parts * (c_size + n_size),
                                                   segments, c_size, n_size);
    err = cudaGetLastError();
  }
  // (3) every segment from its start: h, and the final states
  MLstmParams full = seg;
  full.matC0 = set(1), full.vecN0 = set(1) + parts * c_size, full.scaM0 = set(1) + parts * (c_size + n_size);
  full.matC = set(2), full.vecN = set(2) + parts * c_size, full.scaM = set(2) + parts * (c_size + n_size);
  if (err == cudaSuccess) err = tc::LaunchTc<T, KD>(full, stream);
  // the call's final state is the last segment's
  const size_t fb = sizeof(float);
  if (err == cudaSuccess)
    err = cudaMemcpy2DAsync(p.matC, c_size * fb, full.Cf() + (segments - 1) * c_size, segments * c_size * fb, c_size * fb, heads,
                            cudaMemcpyDeviceToDevice, stream);
  if (err == cudaSuccess)
    err = cudaMemcpy2DAsync(p.vecN, n_size * fb, full.Nf() + (segments - 1) * n_size, segments * n_size * fb, n_size * fb, heads,
                            cudaMemcpyDeviceToDevice, stream);
  if (err == cudaSuccess)
    err = cudaMemcpy2DAsync(p.scaM, fb, full.scaM + (segments - 1), segments * fb, fb, heads, cudaMemcpyDeviceToDevice, stream);
  const cudaError_t freed = cudaFreeAsync(scratch, stream);
  return err != cudaSuccess ? err : freed;
}

template <typename T, int KD>
cudaError_t LaunchTcFor(const MLstmParams& p, cudaStream_t stream) {
  int sm_count = 0;
  const cudaError_t err = CurrentDeviceSmCount(&sm_count);
  if (err != cudaSuccess) return err;
  const int segments = SequenceParallelSegments(p, sm_count);
  return segments > 1 ? LaunchTcSegments<T, KD>(p, segments, stream) : tc::LaunchTc<T, KD>(p, stream);
}

template <typename T>
cudaError_t LaunchTcDims(const MLstmParams& p, cudaStream_t stream) {
  if (p.dqk <= 64) return LaunchTcFor<T, 64>(p, stream);
  if (p.dqk <= 128) return LaunchTcFor<T, 128>(p, stream);
  return LaunchTcFor<T, 256>(p, stream);
}

}  // namespace

int MLstmSequenceParallelSegments(const MLstmParams& p) {
  int sm_count = 0;
  if (CurrentDeviceSmCount(&sm_count) != cudaSuccess) return 1;
  return MLstmTensorCoreSupports(p) && p.seq > 1 ? SequenceParallelSegments(p, sm_count) : 1;
}

bool MLstmTensorCoreSupports(const MLstmParams& p) {
  return p.dtype != Dtype::kFloat32 && p.dqk <= 256 && p.dqk % 8 == 0 && p.dv % 8 == 0;
}

cudaError_t LaunchMLstmChunkwiseTensorCore(const MLstmParams& p, cudaStream_t stream) {
  if (!MLstmTensorCoreSupports(p)) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
  if (p.dtype == Dtype::kFloat16) return LaunchTcDims<__half>(p, stream);
  return LaunchTcDims<__nv_bfloat16>(p, stream);
}

const char* MLstmChunkwiseKernelName(const MLstmParams& p) {
  if (p.seq == 1) return "step";  // HF's step kernel: one token is a segment of one
  switch (p.cuda_path) {
    case CudaPath::kSimt: return "simt";
    case CudaPath::kTensorCore: return "tensor_core";
    default: return MLstmTensorCoreSupports(p) ? "tensor_core" : "simt";
  }
}

cudaError_t LaunchMLstmChunkwiseFw(const MLstmParams& p, cudaStream_t stream) {
  if (MLstmParamsError(p) != nullptr) return cudaErrorInvalidValue;
  if (p.seq == 1) return LaunchMLstmStepFw(p, stream);  // reads and writes either state type itself
  const bool tensor_core = p.cuda_path == CudaPath::kTensorCore ||
                           (p.cuda_path == CudaPath::kAuto && MLstmTensorCoreSupports(p));
  // the chunkwise kernels take float32 state: a bfloat16 state goes through float32 scratch around them
  return LaunchMLstmWithFloatState(p, stream, tensor_core ? LaunchMLstmChunkwiseTensorCore : LaunchMLstmChunkwiseSimt);
}

}  // namespace xlstm
