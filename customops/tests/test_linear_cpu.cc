// ai.xlstm::Linear's CPU kernel against a double-precision loop over the definition y = x Wᵀ + b (W in the
// checkpoint's [out, in] layout: the layout is what a projection gets wrong). The CUDA paths are tested against
// this kernel (tests/test_linear_cuda.cc).
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "cpu/half_types.h"
#include "mlstm_test_util.h"  // NormalVector
#include "cpu/linear_cpu.h"

namespace xlstm {
namespace {

double Reference(const std::vector<float>& x, const std::vector<float>& w, const std::vector<float>* bias, int64_t K,
                 int64_t m, int64_t n) {
  double sum = 0;
  for (int64_t k = 0; k < K; ++k) sum += double(x[m * K + k]) * w[n * K + k];
  return sum + (bias ? (*bias)[n] : 0.0);
}

TEST(LinearCpu, Float32MatchesTheDefinitionWithAndWithoutBias) {
  const int64_t M = 5, K = 37, N = 70;  // N spans two column tasks
  auto x = test::NormalVector(M * K, 1u), w = test::NormalVector(N * K, 2u, 0.2f), b = test::NormalVector(N, 3u);
  for (bool with_bias : {false, true}) {
    std::vector<float> y(M * N);
    LinearParams p;
    p.dtype = Dtype::kFloat32, p.rows = M, p.in = K, p.out = N;
    p.x = x.data(), p.weight = w.data(), p.bias = with_bias ? b.data() : nullptr, p.y = y.data();
    LinearCpu(p, SerialFor);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n)
        // float32 sums of 37 products of size ~0.2: a few float32 ulps of the largest partial sums
        EXPECT_NEAR(y[m * N + n], Reference(x, w, with_bias ? &b : nullptr, K, m, n), 1e-5) << "m=" << m << " n=" << n;
  }
}

TEST(LinearCpu, Bfloat16RoundsOnceAtTheEnd) {
  const int64_t M = 3, K = 64, N = 16;
  auto xf = test::NormalVector(M * K, 4u), wf = test::NormalVector(N * K, 5u, 0.1f), bf = test::NormalVector(N, 6u);
  std::vector<Bf16> x(M * K), w(N * K), b(N), y(M * N);
  for (size_t i = 0; i < x.size(); ++i) x[i] = FromFloat<Bf16>(xf[i]), xf[i] = ToFloat(x[i]);
  for (size_t i = 0; i < w.size(); ++i) w[i] = FromFloat<Bf16>(wf[i]), wf[i] = ToFloat(w[i]);
  for (size_t i = 0; i < b.size(); ++i) b[i] = FromFloat<Bf16>(bf[i]), bf[i] = ToFloat(b[i]);
  LinearParams p;
  p.dtype = Dtype::kBFloat16, p.rows = M, p.in = K, p.out = N;
  p.x = x.data(), p.weight = w.data(), p.bias = b.data(), p.y = y.data();
  LinearCpu(p, SerialFor);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      const double want = Reference(xf, wf, &bf, K, m, n);
      // one bfloat16 rounding: half an ulp, 2^-8 relative (the float32 sum's own error is far below that)
      EXPECT_NEAR(ToFloat(y[m * N + n]), want, std::fabs(want) * 0.0040 + 1e-6) << "m=" << m << " n=" << n;
    }
}

TEST(LinearCpu, ARowDoesNotDependOnTheOtherRows) {
  const int64_t M = 4, K = 50, N = 9;
  auto x = test::NormalVector(M * K, 7u), w = test::NormalVector(N * K, 8u);
  std::vector<float> all(M * N), one(N);
  LinearParams p;
  p.dtype = Dtype::kFloat32, p.rows = M, p.in = K, p.out = N, p.x = x.data(), p.weight = w.data(), p.y = all.data();
  LinearCpu(p, SerialFor);
  for (int64_t m = 0; m < M; ++m) {
    LinearParams r = p;
    r.rows = 1, r.x = x.data() + m * K, r.y = one.data();
    LinearCpu(r, SerialFor);
    for (int64_t n = 0; n < N; ++n) EXPECT_EQ(one[n], all[m * N + n]) << "m=" << m << " n=" << n;
  }
}

}  // namespace
}  // namespace xlstm
