// Kernel benchmark of one mLSTM layer at xLSTM-7b shapes (NH 8, DQK 256, DV 512, chunk 64): the chunkwise kernels
// at B 1 and 8 × S 1024, 4096, 16384 and the decode step at B 1, 8, 64. Each case is captured as a CUDA graph of
// `reps` back-to-back launches (which also shows the launchers are capture-safe) and the replay is timed with
// events: the figure is GPU time per launch. Prints one JSON document on stdout (tools/bench/bench_kernels.py
// merges it with transformers' native kernels timed in the same run).
//
//   xlstm_kernel_bench [--quick]
//   xlstm_kernel_bench --lanes   the mixed graph's two cells (kernels/mlstm_lanes.cuh): the step at B 32 beside the
//                                chunkwise cell at B 1 × S 64..256, alone, one after the other, and forked
//
// TFLOP/s counts B·NH·S·(4·DQK·DV + L·(DQK+DV)) (docs/performance.md, "Counting FLOPs and bytes"). GB/s counts the
// minimum traffic: q, k, v in and h out in the input type, the gates, and the state read once and written once in
// float32.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kernels/mlstm_cuda_common.cuh"
#include "kernels/cuda_check.h"
#include "kernels/mlstm_fw.cuh"
#include "kernels/mlstm_lanes.cuh"

namespace xlstm {
namespace {

__device__ __forceinline__ float HashUniform(uint64_t i, uint32_t seed) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xD1B54A32D192ED03ull;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 33;
  return (static_cast<float>(x >> 40) + 0.5f) * (1.0f / 16777216.0f);  // (0, 1)
}

/// dst[i] = cap(mean + std·z), z ≈ N(0, 1) (sum of four uniforms), cap = 15·tanh(x/15) when soft_cap.
template <typename T>
__global__ void FillKernel(T* dst, int64_t n, uint32_t seed, float mean, float std, bool soft_cap) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float z = HashUniform(4 * i, seed) + HashUniform(4 * i + 1, seed) + HashUniform(4 * i + 2, seed) +
              HashUniform(4 * i + 3, seed) - 2.0f;
    float x = mean + std * z * 1.7320508f;
    if (soft_cap) x = 15.0f * tanhf(x / 15.0f);
    dst[i] = FromF<T>(x);
  }
}

template <typename T>
void Fill(void* dst, int64_t n, uint32_t seed, float mean, float std, bool soft_cap = false) {
  FillKernel<T><<<1024, 256>>>(static_cast<T*>(dst), n, seed, mean, std, soft_cap);
  CHECK_CUDA(cudaGetLastError());
}

void FillTyped(Dtype dtype, void* dst, int64_t n, uint32_t seed) {
  XLSTM_DTYPE_SWITCH(dtype, [&] { Fill<T>(dst, n, seed, 0.0f, 1.0f); });
}

size_t ElementSize(Dtype d) { return d == Dtype::kFloat32 ? 4 : 2; }

struct Buffers {
  std::vector<void*> owned;
  void* Alloc(size_t bytes) {
    void* p = nullptr;
    CHECK_CUDA(cudaMalloc(&p, bytes));
    owned.push_back(p);
    return p;
  }
  ~Buffers() {
    for (void* p : owned) cudaFree(p);
  }
};

struct Row {
  std::string kernel, impl, dtype;
  int64_t B, S;
  double ms, tflops, gbps;
  int reps;
};

constexpr int64_t NH = 8, DQK = 256, DV = 512, L = 64;

double Flops(int64_t B, int64_t S) { return double(B) * NH * S * (4.0 * DQK * DV + double(L) * (DQK + DV)); }

/// GPU time per launch of `launch(rep)`: `reps` launches captured in one graph, replayed (after one warm replay).
template <typename Launch>
double TimeGraph(cudaStream_t stream, int reps, Launch launch) {
  CHECK_CUDA(launch(0));  // uncaptured first launch (as ONNX Runtime does before capturing)
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int r = 0; r < reps; ++r) CHECK_CUDA(launch(r));
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  cudaEvent_t start, stop;
  CHECK_CUDA(cudaEventCreate(&start));
  CHECK_CUDA(cudaEventCreate(&stop));
  CHECK_CUDA(cudaEventRecord(start, stream));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));
  CHECK_CUDA(cudaEventRecord(stop, stream));
  CHECK_CUDA(cudaEventSynchronize(stop));
  float ms = 0.0f;
  CHECK_CUDA(cudaEventElapsedTime(&ms, start, stop));
  CHECK_CUDA(cudaEventDestroy(start));
  CHECK_CUDA(cudaEventDestroy(stop));
  CHECK_CUDA(cudaGraphExecDestroy(exec));
  CHECK_CUDA(cudaGraphDestroy(graph));
  return ms / reps;
}

/// seq_parallel: MLstmParams::seq_parallel (0 the launcher's choice: sequence segments at small B·NH; 1 one pass).
Row BenchChunkwise(cudaStream_t stream, Dtype dtype, CudaPath path, int64_t B, int64_t S, int reps, int seq_parallel = 0) {
  Buffers buf;
  const int64_t H = B * NH;
  const size_t es = ElementSize(dtype);
  MLstmParams p;
  p.dtype = dtype, p.batch = B, p.heads = NH, p.seq = S, p.dqk = DQK, p.dv = DV, p.chunk_size = L;
  p.max_inference_chunksize = 16384, p.eps = 1e-6f, p.qk_scale = QkScale(DQK), p.cuda_path = path;
  p.seq_parallel = seq_parallel;
  void* q = buf.Alloc(H * S * DQK * es);
  void* k = buf.Alloc(H * S * DQK * es);
  void* v = buf.Alloc(H * S * DV * es);
  auto* i = static_cast<float*>(buf.Alloc(H * S * 4));
  auto* f = static_cast<float*>(buf.Alloc(H * S * 4));
  FillTyped(dtype, q, H * S * DQK, 1), FillTyped(dtype, k, H * S * DQK, 2), FillTyped(dtype, v, H * S * DV, 3);
  Fill<float>(i, H * S, 4, -5.0f, 2.0f, true), Fill<float>(f, H * S, 5, 4.0f, 2.0f, true);
  auto* c0 = static_cast<float*>(buf.Alloc(H * DQK * DV * 4));
  auto* n0 = static_cast<float*>(buf.Alloc(H * DQK * 4));
  auto* m0 = static_cast<float*>(buf.Alloc(H * 4));
  CHECK_CUDA(cudaMemset(c0, 0, H * DQK * DV * 4));
  CHECK_CUDA(cudaMemset(n0, 0, H * DQK * 4));
  CHECK_CUDA(cudaMemset(m0, 0, H * 4));
  p.matQ = q, p.matK = k, p.matV = v, p.vecI = i, p.vecF = f, p.matC0 = c0, p.vecN0 = n0, p.scaM0 = m0;
  p.matH = buf.Alloc(H * S * DV * es);
  p.matC = static_cast<float*>(buf.Alloc(H * DQK * DV * 4));
  p.vecN = static_cast<float*>(buf.Alloc(H * DQK * 4));
  p.scaM = static_cast<float*>(buf.Alloc(H * 4));
  CHECK_CUDA(cudaDeviceSynchronize());
  const double ms = TimeGraph(stream, reps, [&](int) { return LaunchMLstmChunkwiseFw(p, stream); });
  const double bytes = double(H) * (S * (2.0 * DQK + 2.0 * DV) * es + S * 8.0 + 2.0 * (DQK * DV + DQK + 1) * 4.0);
  const int segments = p.cuda_path == CudaPath::kSimt ? 1 : MLstmSequenceParallelSegments(p);
  const std::string impl = std::string("ours_") + MLstmChunkwiseKernelName(p) + (segments > 1 ? "_segments" + std::to_string(segments) : "");
  return {"chunkwise", impl, DtypeName(dtype), B, S, ms,
          Flops(B, S) / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e9, reps};
}

/// The decode step; C and n stored as `state` (float32, or bfloat16 as with --state-dtype bf16).
Row BenchStep(cudaStream_t stream, Dtype dtype, int64_t B, int reps, Dtype state = Dtype::kFloat32) {
  Buffers buf;
  const int64_t H = B * NH;
  const size_t es = ElementSize(dtype), ss = ElementSize(state);
  const size_t state_bytes = H * DQK * DV * ss;
  // rotate through enough state sets that they do not fit in the L2 (50 MiB): every step reads C from HBM
  const int sets = static_cast<int>(std::clamp<size_t>((256u << 20) / state_bytes + 1, 2, 64));
  std::vector<void*> states, norms;
  std::vector<float*> stabs;
  for (int s = 0; s < sets; ++s) {
    states.push_back(buf.Alloc(state_bytes));
    norms.push_back(buf.Alloc(H * DQK * ss));
    stabs.push_back(static_cast<float*>(buf.Alloc(H * 4)));
    XLSTM_DTYPE_SWITCH(state, [&] {
      Fill<T>(states.back(), H * DQK * DV, 10 + s, 0.0f, 0.5f);
      Fill<T>(norms.back(), H * DQK, 100 + s, 0.0f, 0.5f);
    });
    Fill<float>(stabs.back(), H, 200 + s, -1.0f, 1.0f);
  }
  MLstmParams p;
  p.state_dtype = state;
  p.dtype = dtype, p.batch = B, p.heads = NH, p.seq = 1, p.dqk = DQK, p.dv = DV, p.chunk_size = L;
  p.max_inference_chunksize = 16384, p.eps = 1e-6f, p.qk_scale = QkScale(DQK);
  void* q = buf.Alloc(H * DQK * es);
  void* k = buf.Alloc(H * DQK * es);
  void* v = buf.Alloc(H * DV * es);
  auto* i = static_cast<float*>(buf.Alloc(H * 4));
  auto* f = static_cast<float*>(buf.Alloc(H * 4));
  FillTyped(dtype, q, H * DQK, 1), FillTyped(dtype, k, H * DQK, 2), FillTyped(dtype, v, H * DV, 3);
  Fill<float>(i, H, 4, -5.0f, 2.0f, true), Fill<float>(f, H, 5, 4.0f, 2.0f, true);
  p.matQ = q, p.matK = k, p.matV = v, p.vecI = i, p.vecF = f;
  p.matH = buf.Alloc(H * DV * es);
  CHECK_CUDA(cudaDeviceSynchronize());
  const double ms = TimeGraph(stream, reps, [&](int r) {
    MLstmParams s = p;  // past = set r, present = set r+1 (double-buffered, as under CUDA graphs in the runtime)
    s.matC0 = states[r % sets], s.vecN0 = norms[r % sets], s.scaM0 = stabs[r % sets];
    s.matC = states[(r + 1) % sets], s.vecN = norms[(r + 1) % sets], s.scaM = stabs[(r + 1) % sets];
    return LaunchMLstmStepFw(s, stream);
  });
  const double bytes = double(H) * (2.0 * DQK * DV * ss + 2.0 * DQK * ss + 2.0 * 4 + (2.0 * DQK + 2.0 * DV) * es + 8.0);
  return {"step", state == Dtype::kFloat32 ? "ours_step" : "ours_step_bf16_state", DtypeName(dtype), B, 1, ms, Flops(B, 1) / (ms * 1e-3) / 1e12, bytes / (ms * 1e-3) / 1e9, reps};
}

/// Device inputs and outputs of one cell call at 7B heads (bfloat16 q, k, v; float32 state), `sets` state sets
/// to rotate through (past = set r, present = set r + 1), so that a decode step reads its state from HBM.
struct CellBuffers {
  Buffers buf;
  MLstmParams p;
  std::vector<void*> c, n, m;

  CellBuffers(int64_t B, int64_t S, int sets, uint32_t seed) {
    const int64_t H = B * NH;
    p.dtype = Dtype::kBFloat16, p.batch = B, p.heads = NH, p.seq = S, p.dqk = DQK, p.dv = DV, p.chunk_size = L;
    p.max_inference_chunksize = 16384, p.eps = 1e-6f, p.qk_scale = QkScale(DQK);
    void* q = buf.Alloc(H * S * DQK * 2);
    void* k = buf.Alloc(H * S * DQK * 2);
    void* v = buf.Alloc(H * S * DV * 2);
    auto* i = static_cast<float*>(buf.Alloc(H * S * 4));
    auto* f = static_cast<float*>(buf.Alloc(H * S * 4));
    FillTyped(p.dtype, q, H * S * DQK, seed), FillTyped(p.dtype, k, H * S * DQK, seed + 1), FillTyped(p.dtype, v, H * S * DV, seed + 2);
    Fill<float>(i, H * S, seed + 3, -5.0f, 2.0f, true), Fill<float>(f, H * S, seed + 4, 4.0f, 2.0f, true);
    for (int s = 0; s < sets; ++s) {
      c.push_back(buf.Alloc(H * DQK * DV * 4)), n.push_back(buf.Alloc(H * DQK * 4)), m.push_back(buf.Alloc(H * 4));
      Fill<float>(static_cast<float*>(c.back()), H * DQK * DV, seed + 10 + s, 0.0f, 0.5f);
      Fill<float>(static_cast<float*>(n.back()), H * DQK, seed + 100 + s, 0.0f, 0.5f);
      Fill<float>(static_cast<float*>(m.back()), H, seed + 200 + s, -1.0f, 1.0f);
    }
    p.matQ = q, p.matK = k, p.matV = v, p.vecI = i, p.vecF = f;
    p.matH = buf.Alloc(H * S * DV * 2);
  }

  MLstmParams At(int r) const {
    MLstmParams s = p;
    const int sets = static_cast<int>(c.size());
    s.matC0 = c[r % sets], s.vecN0 = n[r % sets], s.scaM0 = static_cast<const float*>(m[r % sets]);
    s.matC = c[(r + 1) % sets], s.vecN = n[(r + 1) % sets], s.scaM = static_cast<float*>(m[(r + 1) % sets]);
    return s;
  }
};

/// The mixed graph's two cells at 7B heads: the step at B 32 and a prompt piece of S tokens at B 1, each alone, then
/// both one after the other on one stream and forked (LaunchMLstmLanesFw, with the prompt rows' layout copy), each as
/// a CUDA graph of `reps` launches.
void BenchLanes(cudaStream_t stream, std::vector<Row>& rows, int reps) {
  const int64_t B = 32;
  const size_t state_bytes = B * NH * DQK * DV * 4;
  CellBuffers decode(B, 1, static_cast<int>(std::clamp<size_t>((256u << 20) / state_bytes + 1, 2, 64)), 1);
  LaneStream* made = nullptr;
  CHECK_CUDA(LaneStream::Create(&made));
  std::unique_ptr<LaneStream> side(made);
  CHECK_CUDA(cudaDeviceSynchronize());
  const double step = TimeGraph(stream, reps, [&](int r) { return LaunchMLstmStepFw(decode.At(r), stream); });
  rows.push_back({"lanes", "step alone", "bfloat16", B, 1, step, 0, 0, reps});
  for (int64_t S : {64, 128, 192, 256}) {
    CellBuffers prompt(1, S, 2, 500);
    CHECK_CUDA(cudaDeviceSynchronize());
    const double cell = TimeGraph(stream, reps, [&](int r) { return LaunchMLstmChunkwiseFw(prompt.At(r), stream); });
    // the lanes read the prompt's q, k, v as token-major rows and copy them into the cell's layout first (timed too)
    const TokenRows token_rows{prompt.p.matQ, prompt.p.matK, prompt.p.matV};
    const double one = TimeGraph(stream, reps, [&](int r) { return LaunchMLstmLanesFw(decode.At(r), prompt.At(r), token_rows, stream, nullptr); });
    const double two = TimeGraph(stream, reps, [&](int r) { return LaunchMLstmLanesFw(decode.At(r), prompt.At(r), token_rows, stream, side.get()); });
    rows.push_back({"lanes", "prompt alone", "bfloat16", 1, S, cell, 0, 0, reps});
    rows.push_back({"lanes", "both, one stream", "bfloat16", B, S, one, 0, 0, reps});
    rows.push_back({"lanes", "both, forked", "bfloat16", B, S, two, 0, 0, reps});
    std::fprintf(stderr, "lanes S%lld: step %.1f us, prompt %.1f us, one stream %.1f us, forked %.1f us\n",
                 static_cast<long long>(S), step * 1e3, cell * 1e3, one * 1e3, two * 1e3);
  }
}

}  // namespace
}  // namespace xlstm

int main(int argc, char** argv) {
  using namespace xlstm;
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool lanes = argc > 1 && std::strcmp(argv[1], "--lanes") == 0;
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  std::vector<Row> rows;
  if (lanes) BenchLanes(stream, rows, 100);
  const std::vector<int64_t> seqs = quick ? std::vector<int64_t>{1024} : std::vector<int64_t>{1024, 4096, 16384};
  for (int64_t B : {1, 8}) {
    for (int64_t S : seqs) {
      if (lanes) break;
      const int reps = S * B >= 65536 ? 5 : 20;
      rows.push_back(BenchChunkwise(stream, Dtype::kBFloat16, CudaPath::kTensorCore, B, S, reps));
      if (B == 1)  // the one-pass kernel beside the launcher's choice (segments at batch 1)
        rows.push_back(BenchChunkwise(stream, Dtype::kBFloat16, CudaPath::kTensorCore, B, S, reps, 1));
      rows.push_back(BenchChunkwise(stream, Dtype::kFloat16, CudaPath::kTensorCore, B, S, reps));
      rows.push_back(BenchChunkwise(stream, Dtype::kFloat32, CudaPath::kSimt, B, S, std::max(2, reps / 4)));
      std::fprintf(stderr, "chunkwise B%lld S%lld done\n", static_cast<long long>(B), static_cast<long long>(S));
    }
  }
  for (int64_t B : {1, 8, 64}) {
    if (lanes) break;
    rows.push_back(BenchStep(stream, Dtype::kFloat32, B, 200));
    rows.push_back(BenchStep(stream, Dtype::kBFloat16, B, 200));
    rows.push_back(BenchStep(stream, Dtype::kBFloat16, B, 200, Dtype::kBFloat16));
  }

  std::printf("{\n  \"device\": \"%s\",\n  \"sm\": \"%d%d\",\n  \"sms\": %d,\n  \"cuda_driver\": %d,\n  \"cuda_runtime\": %d,\n",
              prop.name, prop.major, prop.minor, prop.multiProcessorCount, driver, runtime);
  std::printf("  \"shape\": {\"NH\": %lld, \"DQK\": %lld, \"DV\": %lld, \"L\": %lld},\n  \"results\": [\n",
              static_cast<long long>(NH), static_cast<long long>(DQK), static_cast<long long>(DV), static_cast<long long>(L));
  for (size_t r = 0; r < rows.size(); ++r) {
    const Row& x = rows[r];
    std::printf("    {\"kernel\": \"%s\", \"impl\": \"%s\", \"dtype\": \"%s\", \"B\": %lld, \"S\": %lld, \"ms\": %.6f, "
                "\"tflops\": %.3f, \"gbps\": %.1f, \"reps\": %d, \"timing\": \"cuda graph of reps launches\"}%s\n",
                x.kernel.c_str(), x.impl.c_str(), x.dtype.c_str(), static_cast<long long>(x.B), static_cast<long long>(x.S),
                x.ms, x.tflops, x.gbps, x.reps, r + 1 < rows.size() ? "," : "");
  }
  std::printf("  ]\n}\n");
  CHECK_CUDA(cudaStreamDestroy(stream));
  return 0;
}
