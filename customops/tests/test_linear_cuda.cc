// ai.xlstm::Linear on CUDA against its CPU kernel (the oracle), and the decode kernel's promise: a row's result is
// the same bits whatever the number of rows and whatever the other rows hold. Needs a GPU (CTest label "gpu").
// Prints one line per case and exits 1 on any failure.
// Tolerances ("scaled max" = max |Δ| / max(1, max |CPU|)): the GPU sums in another order than the CPU's k order, so
// float32 results differ by float32 rounding of sums of K terms (≤ 2e-5 at K ≤ 4096 and these magnitudes); float16
// and bfloat16 outputs by one rounding of the output type on top (2e-3, 1.6e-2).
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/linear_cpu.h"
#include "kernels/cuda_check.h"
#include "kernels/linear_fw.cuh"
#include "mlstm_test_util.h"  // Encode, Decode

namespace xlstm::test {
namespace {

int failures = 0;

template <typename T>
T* ToDevice(const std::vector<T>& host) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d), host.size() * sizeof(T) + 16));
  CHECK_CUDA(cudaMemcpy(d, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<T> ToHost(const T* d, size_t n) {
  std::vector<T> host(n);
  CHECK_CUDA(cudaMemcpy(host.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

std::vector<float> Random(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

void Check(const std::string& name, bool ok, const std::string& detail) {
  std::printf("%-4s %-60s %s\n", ok ? "ok" : "FAIL", name.c_str(), detail.c_str());
  if (!ok) ++failures;
}

void Compare(const std::string& name, const std::vector<float>& gpu, const std::vector<float>& cpu, double tol) {
  double diff = 0, scale = 1;
  for (size_t i = 0; i < cpu.size(); ++i) {
    diff = std::fmax(diff, std::fabs(double(gpu[i]) - cpu[i]));
    scale = std::fmax(scale, std::fabs(double(cpu[i])));
  }
  if (std::isnan(diff)) diff = INFINITY;
  char detail[96];
  std::snprintf(detail, sizeof detail, "scaled max %.2e (tol %.0e)", diff / scale, tol);
  Check(name, diff / scale <= tol, detail);
}

/// One problem: x [M, K] with 1/sqrt(K)-scaled weights (model-like magnitudes), optional bias.
template <typename H>
struct Problem {
  int64_t M, K, N;
  std::vector<H> x, w, b;
  Problem(int64_t m, int64_t k, int64_t n, bool bias, uint32_t seed) : M(m), K(k), N(n) {
    x = Encode<H>(Random(M * K, seed, 1.0f));
    w = Encode<H>(Random(N * K, seed + 1, 1.0f / std::sqrt(float(K))));
    if (bias) b = Encode<H>(Random(N, seed + 2, 0.5f));
  }
  LinearParams Params(Dtype dtype) const {
    LinearParams p;
    p.dtype = dtype, p.rows = M, p.in = K, p.out = N;
    return p;
  }
};

template <typename H>
std::vector<float> Cpu(const Problem<H>& pr, Dtype dtype) {
  std::vector<H> y(pr.M * pr.N);
  LinearParams p = pr.Params(dtype);
  p.x = pr.x.data(), p.weight = pr.w.data(), p.bias = pr.b.empty() ? nullptr : pr.b.data(), p.y = y.data();
  LinearCpu(p, ThreadedFor());
  return Decode(y);
}

/// Runs the op's CUDA dispatch (decode: our kernel; else cuBLAS) and returns y as raw elements.
template <typename H>
std::vector<H> Gpu(const Problem<H>& pr, Dtype dtype, bool decode, int64_t rows = -1, int64_t first_row = 0,
                   bool invariant = true, int tile_columns = 0) {
  const int64_t M = rows < 0 ? pr.M : rows;
  std::vector<H> xs(pr.x.begin() + first_row * pr.K, pr.x.begin() + (first_row + M) * pr.K);
  H *dx = ToDevice(xs), *dw = ToDevice(pr.w), *db = pr.b.empty() ? nullptr : ToDevice(pr.b);
  H* dy = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&dy), M * pr.N * sizeof(H) + 16));
  LinearParams p = pr.Params(dtype);
  p.rows = M, p.decode = decode, p.batch_invariant = decode && invariant;  // decode cases: every size on our kernels
  p.tile_columns = tile_columns;
  p.x = dx, p.weight = dw, p.bias = db, p.y = dy;
  const std::string err = RunLinearCuda(p, nullptr);
  if (!err.empty()) {
    std::fprintf(stderr, "RunLinearCuda: %s\n", err.c_str());
    std::exit(2);
  }
  CHECK_CUDA(cudaDeviceSynchronize());
  auto y = ToHost(dy, M * pr.N);
  cudaFree(dx), cudaFree(dw), cudaFree(db), cudaFree(dy);
  return y;
}

std::string Shape(int64_t M, int64_t K, int64_t N) {
  return "M" + std::to_string(M) + " K" + std::to_string(K) + " N" + std::to_string(N);
}

template <typename H>
void AgainstCpu(Dtype dtype, int64_t M, int64_t K, int64_t N, bool bias, bool decode, double tol) {
  Problem<H> pr(M, K, N, bias, 21u + uint32_t(M));
  const std::string name = std::string(decode ? "decode " : "prompt ") + DtypeName(dtype) + " " + Shape(M, K, N) + (bias ? " bias" : "");
  Compare(name, Decode(Gpu(pr, dtype, decode)), Cpu(pr, dtype), tol);
}

/// Every row of an M-row decode call equals the same row decoded alone, bit for bit.
template <typename H>
void BatchInvariant(Dtype dtype, int64_t M, int64_t K, int64_t N) {
  Problem<H> pr(M, K, N, true, 97u);
  const auto all = Gpu(pr, dtype, true);
  int64_t differing = 0;
  for (int64_t m = 0; m < M; ++m) {
    const auto one = Gpu(pr, dtype, true, 1, m);
    if (std::memcmp(one.data(), all.data() + m * N, N * sizeof(H)) != 0) ++differing;
  }
  Check(std::string("batch-invariant decode ") + DtypeName(dtype) + " " + Shape(M, K, N), differing == 0,
        std::to_string(differing) + " of " + std::to_string(M) + " rows differ from the row alone");
}

/// The one-pass kernel's 8- and 16-column blocks give the same bits (the launcher picks by N).
template <typename H>
void TileColumnsAgree(Dtype dtype, int64_t M, int64_t K, int64_t N) {
  Problem<H> pr(M, K, N, true, 57u + uint32_t(M));
  const auto eight = Gpu(pr, dtype, true, -1, 0, true, 8), sixteen = Gpu(pr, dtype, true, -1, 0, true, 16);
  Check(std::string("8 = 16 columns a block ") + DtypeName(dtype) + " " + Shape(M, K, N),
        std::memcmp(eight.data(), sixteen.data(), eight.size() * sizeof(H)) == 0, "bitwise");
}

/// A decode step without batch_invariant (--linear-kernels custom) on a shape the tensor-core kernel does not take
/// (the float32 gate projection): cuBLAS, against the CPU.
void CustomModeTakesCublasForFloat32() {
  Problem<float> pr(4, 4096, 16, true, 77u);
  Compare("decode float32 M4 K4096 N16, custom mode (cuBLAS)", Gpu(pr, Dtype::kFloat32, true, -1, 0, false), Cpu(pr, Dtype::kFloat32), 2e-5);
}

}  // namespace
}  // namespace xlstm::test

int main() {
  using namespace xlstm;
  using namespace xlstm::test;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  // the tensor-core decode kernel (K % 64 == 0, N % 16 == 0) at the bucket sizes and between them
  for (int64_t M : {1, 2, 7, 16, 17, 32, 33, 64, 65, 128})
    AgainstCpu<Bf16>(Dtype::kBFloat16, M, 1024, 528, M % 2 == 1, true, 1.6e-2);
  AgainstCpu<Bf16>(Dtype::kBFloat16, 8, 4096, 4096, false, true, 1.6e-2);
  AgainstCpu<Bf16>(Dtype::kBFloat16, 3, 10944, 256, false, true, 1.6e-2);  // xLSTM-7b's down projection K
  AgainstCpu<Fp16>(Dtype::kFloat16, 5, 512, 64, true, true, 2e-3);
  AgainstCpu<Fp16>(Dtype::kFloat16, 40, 512, 64, false, true, 2e-3);
  // the row-dot kernel: float32 (the gate projection) and shapes the MMA kernel does not take
  AgainstCpu<float>(Dtype::kFloat32, 64, 4096, 16, true, true, 2e-5);
  AgainstCpu<float>(Dtype::kFloat32, 3, 100, 7, false, true, 2e-5);
  AgainstCpu<Bf16>(Dtype::kBFloat16, 4, 96, 24, true, true, 1.6e-2);
  // the prompt path (cuBLAS)
  AgainstCpu<Bf16>(Dtype::kBFloat16, 130, 1024, 528, true, false, 1.6e-2);
  AgainstCpu<Bf16>(Dtype::kBFloat16, 64, 4096, 4096, false, false, 1.6e-2);
  AgainstCpu<Fp16>(Dtype::kFloat16, 33, 512, 64, true, false, 2e-3);
  AgainstCpu<float>(Dtype::kFloat32, 130, 4096, 16, true, false, 2e-5);
  // batch invariance, bit for bit
  for (int64_t M : {2, 16, 17, 33, 64, 100}) BatchInvariant<Bf16>(Dtype::kBFloat16, M, 4096, 272);
  BatchInvariant<Fp16>(Dtype::kFloat16, 48, 1024, 64);
  BatchInvariant<float>(Dtype::kFloat32, 32, 4096, 16);
  BatchInvariant<Bf16>(Dtype::kBFloat16, 20, 96, 24);
  BatchInvariant<Bf16>(Dtype::kBFloat16, 40, 10944, 144);  // the down projection's K, partial column chunks
  for (int64_t M : {1, 5, 16}) TileColumnsAgree<Bf16>(Dtype::kBFloat16, M, 4096, 4096);
  TileColumnsAgree<Fp16>(Dtype::kFloat16, 3, 512, 48);
  CustomModeTakesCublasForFloat32();
  AgainstCpu<Bf16>(Dtype::kBFloat16, 64, 10944, 144, true, true, 1.6e-2);
  std::printf("%s\n", failures == 0 ? "all Linear CUDA cases passed" : "Linear CUDA cases FAILED");
  return failures == 0 ? 0 : 1;
}
