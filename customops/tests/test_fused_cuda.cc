// The fused ops' CUDA kernels against their CPU kernels (the oracle) on the same random inputs. Needs a GPU (CTest
// label "gpu"). Prints one line per case and exits 1 on any failure.
// Tolerances ("scaled max" = max |Δ| / max(1, max |CPU|)): gates ≤ 1e-6 (tanhf/division ulps); float32 SwiGLU and
// head norm ≤ 1e-5 (float sums in another order: the CPU norm sums in float64); float16/bfloat16 ≤ one rounding of
// the output type, 2e-3 / 1.6e-2.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cpu/fused_cpu.h"
#include "cpu/half_types.h"
#include "kernels/cuda_check.h"
#include "kernels/fused_fw.cuh"
#include "mlstm_test_util.h"  // Encode, Decode

namespace xlstm::test {
namespace {

int failures = 0;

template <typename T>
T* ToDevice(const std::vector<T>& host) {
  T* d = nullptr;
  CHECK_CUDA(cudaMalloc(reinterpret_cast<void**>(&d), host.size() * sizeof(T) + 1));
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

void Report(const std::string& name, const std::vector<float>& gpu, const std::vector<float>& cpu, double tol) {
  double diff = 0, scale = 1;
  for (size_t i = 0; i < cpu.size(); ++i) {
    if (std::isinf(cpu[i]) || std::isinf(gpu[i])) {
      if (gpu[i] != cpu[i]) diff = INFINITY;
      continue;
    }
    diff = std::fmax(diff, std::fabs(double(gpu[i]) - cpu[i]));
    scale = std::fmax(scale, std::fabs(double(cpu[i])));
  }
  const bool ok = diff / scale <= tol;
  std::printf("%-4s %-44s scaled max %.2e (tol %.0e)\n", ok ? "ok" : "FAIL", name.c_str(), diff / scale, tol);
  if (!ok) ++failures;
}

void GatesCase(int64_t B, int64_t S, int64_t NH, float cap) {
  auto g = Random(B * S * 2 * NH, 11u, 20.0f);
  std::vector<int64_t> mask(B * S);
  for (size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 7 + 3) % 5 != 0;
  std::vector<float> ci(B * NH * S), cf(B * NH * S);
  GatesParams p;
  p.batch = B, p.seq = S, p.heads = NH, p.soft_cap = cap;
  p.gates = g.data(), p.mask = mask.data(), p.igate = ci.data(), p.fgate = cf.data();
  MLstmGatesCpu(p, SerialFor);
  float *dg = ToDevice(g), *di = ToDevice(ci), *df = ToDevice(cf);
  int64_t* dm = ToDevice(mask);
  GatesParams d = p;
  d.gates = dg, d.mask = dm, d.igate = di, d.fgate = df;
  CHECK_CUDA(LaunchMLstmGates(d, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  const std::string name = "gates B" + std::to_string(B) + " S" + std::to_string(S) + " NH" + std::to_string(NH) + " cap " + std::to_string(int(cap));
  Report(name + " igate", ToHost(di, ci.size()), ci, 1e-6);
  Report(name + " fgate", ToHost(df, cf.size()), cf, 1e-6);
  cudaFree(dg), cudaFree(di), cudaFree(df), cudaFree(dm);
}

template <typename H>
void SwiGluCase(Dtype dtype, int64_t N, int64_t F, double tol) {
  auto x = Encode<H>(Random(N * 2 * F, 12u, 2.0f));
  std::vector<H> y(N * F);
  SwiGluParams p;
  p.dtype = dtype, p.rows = N, p.width = F, p.x = x.data(), p.y = y.data();
  SwiGluCpu(p, SerialFor);
  H *dx = ToDevice(x), *dy = ToDevice(y);
  SwiGluParams d = p;
  d.x = dx, d.y = dy;
  CHECK_CUDA(LaunchSwiGlu(d, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  Report(std::string("swiglu ") + DtypeName(dtype) + " N" + std::to_string(N) + " F" + std::to_string(F), Decode(ToHost(dy, y.size())), Decode(y), tol);
  cudaFree(dx), cudaFree(dy);
}

template <typename H>
void HeadNormCase(Dtype dtype, int64_t B, int64_t NH, int64_t S, int64_t DV, double tol) {
  auto h = Encode<H>(Random(B * NH * S * DV, 13u, 3.0f)), o = Encode<H>(Random(B * S * NH * DV, 14u, 1.0f)),
       w = Encode<H>(Random(NH * DV, 15u, 1.0f)), bias = Encode<H>(Random(NH * DV, 16u, 0.1f));
  std::vector<H> y(B * S * NH * DV);
  HeadNormGateParams p;
  p.dtype = dtype, p.batch = B, p.heads = NH, p.seq = S, p.dv = DV, p.eps = 1e-6f;
  p.h = h.data(), p.o = o.data(), p.weight = w.data(), p.bias = bias.data(), p.y = y.data();
  HeadNormGateCpu(p, SerialFor);
  H *dh = ToDevice(h), *dO = ToDevice(o), *dw = ToDevice(w), *db = ToDevice(bias), *dy = ToDevice(y);
  HeadNormGateParams d = p;
  d.h = dh, d.o = dO, d.weight = dw, d.bias = db, d.y = dy;
  CHECK_CUDA(LaunchHeadNormGate(d, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  Report(std::string("head norm gate ") + DtypeName(dtype) + " B" + std::to_string(B) + " NH" + std::to_string(NH) +
             " S" + std::to_string(S) + " DV" + std::to_string(DV),
         Decode(ToHost(dy, y.size())), Decode(y), tol);
  cudaFree(dh), cudaFree(dO), cudaFree(dw), cudaFree(db), cudaFree(dy);
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
  GatesCase(1, 1, 8, 15.0f);
  GatesCase(3, 37, 4, 15.0f);
  GatesCase(2, 5, 3, 0.0f);
  SwiGluCase<float>(Dtype::kFloat32, 7, 33, 1e-5);
  SwiGluCase<Bf16>(Dtype::kBFloat16, 16, 10944, 1.6e-2);
  SwiGluCase<Fp16>(Dtype::kFloat16, 5, 100, 2e-3);
  HeadNormCase<float>(Dtype::kFloat32, 2, 3, 5, 24, 1e-5);
  HeadNormCase<Bf16>(Dtype::kBFloat16, 2, 8, 3, 512, 1.6e-2);
  HeadNormCase<Bf16>(Dtype::kBFloat16, 1, 8, 1, 512, 1.6e-2);
  HeadNormCase<Fp16>(Dtype::kFloat16, 1, 4, 17, 200, 2e-3);
  HeadNormCase<float>(Dtype::kFloat32, 1, 2, 2, 1000, 1e-5);
  std::printf("fused: %d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
