// The fused ops' CPU kernels against loops written from the definitions with explicit 4-D indexing (the layouts
// are what these ops can get wrong). The end-to-end oracle is the C# fixture verification against transformers.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "cpu/fused_cpu.h"
#include "cpu/half_types.h"
#include "mlstm_test_util.h"  // NormalVector

namespace xlstm {
namespace {

TEST(FusedCpu, GatesCapMaskAndLayout) {
  const int64_t B = 2, S = 3, NH = 4;
  auto g = test::NormalVector(B * S * 2 * NH, 1u, 20.0f);  // beyond the cap, so the cap matters
  std::vector<int64_t> mask = {0, 1, 1, 1, 1, 0};
  std::vector<float> ig(B * NH * S), fg(B * NH * S);
  GatesParams p;
  p.gates = g.data(), p.mask = mask.data(), p.igate = ig.data(), p.fgate = fg.data();
  p.batch = B, p.seq = S, p.heads = NH, p.soft_cap = 15.0f;
  MLstmGatesCpu(p, SerialFor);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t s = 0; s < S; ++s) {
      for (int64_t h = 0; h < NH; ++h) {
        const float* row = &g[(b * S + s) * 2 * NH];
        const float i = 15.0f * std::tanh(row[h] / 15.0f), f = 15.0f * std::tanh(row[NH + h] / 15.0f);
        const float gi = ig[b * NH * S + h * S + s], gf = fg[b * NH * S + h * S + s];
        if (mask[b * S + s]) {
          EXPECT_FLOAT_EQ(gi, i);
          EXPECT_FLOAT_EQ(gf, f);
          EXPECT_LE(std::fabs(gi), 15.0f);
        } else {
          EXPECT_EQ(gi, -std::numeric_limits<float>::infinity());
          EXPECT_EQ(gf, std::numeric_limits<float>::infinity());
        }
      }
    }
  }
}

TEST(FusedCpu, SwiGluGateColumnsFirst) {
  const int64_t N = 3, F = 5;
  auto x = test::NormalVector(N * 2 * F, 2u);
  std::vector<float> y(N * F);
  SwiGluParams p;
  p.dtype = Dtype::kFloat32, p.x = x.data(), p.y = y.data(), p.rows = N, p.width = F;
  SwiGluCpu(p, SerialFor);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < F; ++j) {
      const double g = x[n * 2 * F + j], z = x[n * 2 * F + F + j];
      EXPECT_NEAR(y[n * F + j], g / (1.0 + std::exp(-g)) * z, 1e-6 * (1 + std::fabs(g * z)));
    }
  }
}

TEST(FusedCpu, SwiGluBf16RoundsOnce) {
  const int64_t N = 2, F = 4;
  auto xf = test::NormalVector(N * 2 * F, 3u);
  std::vector<Bf16> x(xf.size()), y(N * F);
  for (size_t i = 0; i < xf.size(); ++i) x[i] = FromFloat<Bf16>(xf[i]);
  SwiGluParams p;
  p.dtype = Dtype::kBFloat16, p.x = x.data(), p.y = y.data(), p.rows = N, p.width = F;
  SwiGluCpu(p, SerialFor);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < F; ++j) {
      const float g = ToFloat(x[n * 2 * F + j]), z = ToFloat(x[n * 2 * F + F + j]);
      EXPECT_EQ(y[n * F + j].bits, FromFloat<Bf16>(g * (1.0f / (1.0f + std::exp(-g))) * z).bits);
    }
  }
}

TEST(FusedCpu, HeadNormGatePerHeadLayerNormThenGate) {
  const int64_t B = 2, NH = 3, S = 4, DV = 8;
  auto h = test::NormalVector(B * NH * S * DV, 4u, 3.0f), o = test::NormalVector(B * S * NH * DV, 5u), w = test::NormalVector(NH * DV, 6u),
       bias = test::NormalVector(NH * DV, 7u, 0.1f);
  std::vector<float> y(B * S * NH * DV);
  HeadNormGateParams p;
  p.dtype = Dtype::kFloat32, p.h = h.data(), p.o = o.data(), p.weight = w.data(), p.bias = bias.data(), p.y = y.data();
  p.batch = B, p.heads = NH, p.seq = S, p.dv = DV, p.eps = 1e-6f;
  HeadNormGateCpu(p, SerialFor);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t hh = 0; hh < NH; ++hh) {
      for (int64_t s = 0; s < S; ++s) {
        const float* x = &h[((b * NH + hh) * S + s) * DV];
        double mean = 0, var = 0;
        for (int64_t d = 0; d < DV; ++d) mean += x[d] / double(DV);
        for (int64_t d = 0; d < DV; ++d) var += (x[d] - mean) * (x[d] - mean) / double(DV);
        for (int64_t d = 0; d < DV; ++d) {
          const int64_t col = hh * DV + d, at = (b * S + s) * NH * DV + col;
          const double normed = (x[d] - mean) / std::sqrt(var + 1e-6) * w[col] + bias[col];
          EXPECT_NEAR(y[at], normed / (1.0 + std::exp(-o[at])), 2e-6 * (1 + std::fabs(normed)));
        }
      }
    }
  }
}

}  // namespace
}  // namespace xlstm
