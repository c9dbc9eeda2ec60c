// Decode projections of xLSTM-7b: our batch-invariant kernel (ai.xlstm::Linear, S = 1) against cuBLAS (the op's
// prompt path, cublasGemmEx as ONNX Runtime's Gemm calls it), both on the same weights, back to back.
//   xlstm_linear_bench [--json FILE]
// Each shape is timed over enough copies of its weights (≥ 512 MiB in all, cycled) that no call finds them in L2:
// the weight bytes over the time is the bandwidth the call streams at, against the H200's 4.8 TB/s
// (tools/bench/README.md measures 4.17 TB/s for a plain device read). Per M it also sums one whole decode step's
// projections (32 blocks × 4 + lm_head), ours and cuBLAS's, and the op's pick without batch_invariant (`custom`: ours
// where kernels/linear_params.h's LinearOwnKernelWins says it is faster, cuBLAS elsewhere).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cuda_check.h"
#include "kernels/linear_fw.cuh"

namespace {

struct Shape {
  const char* name;
  int64_t n, k;
  int per_step;  // calls per decode step of xLSTM-7b
};

// xLSTM-7b (hidden 4096, 8 heads, qk 2048, v 4096, FFN 10944, vocab 50304, 32 blocks), fused weights
const Shape kShapes[] = {
    {"qkvo_proj", 12288, 4096, 32}, {"out_proj", 4096, 4096, 32}, {"proj_up_gate_z", 21888, 4096, 32},
    {"proj_down", 4096, 10944, 32}, {"lm_head", 50304, 4096, 1},
};

double TimeMs(const Shape& s, int64_t M, bool decode, int reps, int tile_columns = 0, bool invariant = true) {
  const size_t wbytes = size_t(s.n) * s.k * 2;
  const int copies = int((size_t{512} << 20) / wbytes) + 1;
  std::vector<void*> ws(copies);
  for (auto& w : ws) {
    CHECK_CUDA(cudaMalloc(&w, wbytes));
    CHECK_CUDA(cudaMemset(w, 0x11, wbytes));  // small finite bf16 values
  }
  void *x = nullptr, *y = nullptr;
  CHECK_CUDA(cudaMalloc(&x, size_t(M) * s.k * 2));
  CHECK_CUDA(cudaMemset(x, 0x22, size_t(M) * s.k * 2));
  CHECK_CUDA(cudaMalloc(&y, size_t(M) * s.n * 2));
  xlstm::LinearParams p;
  p.dtype = xlstm::Dtype::kBFloat16, p.rows = M, p.in = s.k, p.out = s.n, p.x = x, p.y = y;
  p.decode = decode, p.batch_invariant = decode && invariant;  // ours: the batch-invariant kernels at every M; else cuBLAS
  p.tile_columns = tile_columns;                  // 0: the launcher's choice
  auto call = [&](int i) {
    p.weight = ws[i % copies];
    const std::string err = xlstm::RunLinearCuda(p, nullptr);
    if (!err.empty()) {
      std::fprintf(stderr, "%s\n", err.c_str());
      std::exit(2);
    }
  };
  for (int i = 0; i < copies; ++i) call(i);  // warm-up (cuBLAS handle, heuristics)
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  CHECK_CUDA(cudaEventRecord(a));
  for (int i = 0; i < reps; ++i) call(i);
  CHECK_CUDA(cudaEventRecord(b));
  CHECK_CUDA(cudaEventSynchronize(b));
  float ms = 0;
  CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
  for (auto w : ws) cudaFree(w);
  cudaFree(x), cudaFree(y);
  return double(ms) / reps;
}

}  // namespace

int main(int argc, char** argv) {
  FILE* json = nullptr;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--json") == 0) json = std::fopen(argv[i + 1], "w");
  if (json) std::fprintf(json, "[\n");
  bool first = true;
  std::printf("%-16s %4s %10s %10s %10s %10s %8s %12s %10s\n", "shape", "M", "ours ms", "ours TB/s", "cuBLAS ms", "cuBLAS TB/s", "ratio",
              "16-col ms", "custom ms");
  for (int64_t M : {1, 2, 4, 8, 16, 32, 64, 128}) {
    double step_ours = 0, step_cublas = 0, step_custom = 0, step_bytes = 0;
    for (const auto& s : kShapes) {
      const double ours = TimeMs(s, M, true, 200), cublas = TimeMs(s, M, false, 200);
      const double sixteen = M <= 16 ? TimeMs(s, M, true, 200, 16) : ours;  // the one-pass kernel at 16 columns a block
      const double custom = TimeMs(s, M, true, 200, 0, false);  // the op's own pick by shape
      const double bytes = double(s.n) * s.k * 2;
      step_ours += ours * s.per_step, step_cublas += cublas * s.per_step, step_custom += custom * s.per_step;
      step_bytes += bytes * s.per_step;
      std::printf("%-16s %4lld %10.4f %10.2f %10.4f %10.2f %8.2f %12.4f %10.4f\n", s.name, (long long)M, ours, bytes / ours / 1e9,
                  cublas, bytes / cublas / 1e9, cublas / ours, sixteen, custom);
      if (json) {
        std::fprintf(json, "%s  {\"shape\": \"%s\", \"n\": %lld, \"k\": %lld, \"m\": %lld, \"ours_ms\": %.5f, \"cublas_ms\": %.5f, \"custom_ms\": %.5f, \"ours_tbps\": %.3f, \"cublas_tbps\": %.3f}",
                     first ? "" : ",\n", s.name, (long long)s.n, (long long)s.k, (long long)M, ours, cublas, custom,
                     bytes / ours / 1e9, bytes / cublas / 1e9);
        first = false;
      }
    }
    std::printf("%-16s %4lld %10.3f %10.2f %10.3f %10.2f %8.2f   (one decode step's projections; custom %.3f ms, %.2f TB/s)\n",
                "step", (long long)M, step_ours, step_bytes / step_ours / 1e9, step_cublas, step_bytes / step_cublas / 1e9,
                step_cublas / step_ours, step_custom, step_bytes / step_custom / 1e9);
    if (json) {
      std::fprintf(json, ",\n  {\"shape\": \"step\", \"m\": %lld, \"ours_ms\": %.4f, \"cublas_ms\": %.4f, \"custom_ms\": %.4f, \"weight_bytes\": %.0f}",
                   (long long)M, step_ours, step_cublas, step_custom, step_bytes);
    }
  }
  if (json) {
    std::fprintf(json, "\n]\n");
    std::fclose(json);
  }
  return 0;
}
