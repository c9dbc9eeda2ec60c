#include "cpu/fused_cpu.h"

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/half_types.h"

namespace xlstm {

namespace {

template <typename Fn>
void ForDtype(Dtype dtype, Fn&& fn) {
  switch (dtype) {
    case Dtype::kFloat16: fn(Fp16{}); break;
    case Dtype::kBFloat16: fn(Bf16{}); break;
    default: fn(0.0f); break;
  }
}

float Sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

}  // namespace

void MLstmGatesCpu(const GatesParams& p, const ParallelFor& parallel_for) {
  const int64_t NH = p.heads, S = p.seq;
  const float inf = std::numeric_limits<float>::infinity();
  parallel_for(p.batch * S, [&](int64_t bs) {
    const int64_t b = bs / S, s = bs % S;
    const bool real = p.mask[bs] != 0;
    for (int64_t h = 0; h < NH; ++h) {
      float i = p.gates[bs * 2 * NH + h], f = p.gates[bs * 2 * NH + NH + h];
      if (p.soft_cap > 0.0f) {
        i = p.soft_cap * std::tanh(i / p.soft_cap);
        f = p.soft_cap * std::tanh(f / p.soft_cap);
      }
      p.igate[(b * NH + h) * S + s] = real ? i : -inf;
      p.fgate[(b * NH + h) * S + s] = real ? f : inf;
    }
  });
}

void SwiGluCpu(const SwiGluParams& p, const ParallelFor& parallel_for) {
  ForDtype(p.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    const int64_t F = p.width;
    parallel_for(p.rows, [&](int64_t n) {
      for (int64_t j = 0; j < F; ++j) {
        const float g = ToFloat(x[n * 2 * F + j]), z = ToFloat(x[n * 2 * F + F + j]);
        y[n * F + j] = FromFloat<T>(g * Sigmoid(g) * z);
      }
    });
  });
}

void HeadNormGateCpu(const HeadNormGateParams& p, const ParallelFor& parallel_for) {
  ForDtype(p.dtype, [&](auto zero) {
    using T = decltype(zero);
    const T* hc = static_cast<const T*>(p.h);
    const T* o = static_cast<const T*>(p.o);
    const T* w = static_cast<const T*>(p.weight);
    const T* bias = static_cast<const T*>(p.bias);
    T* y = static_cast<T*>(p.y);
    const int64_t NH = p.heads, S = p.seq, DV = p.dv;
    parallel_for(p.batch * NH * S, [&](int64_t row) {  // row = (b·NH + h)·S + s of hc
      const int64_t b = row / (NH * S), h = (row / S) % NH, s = row % S;
      const T* x = hc + row * DV;
      double sum = 0.0;
      for (int64_t d = 0; d < DV; ++d) sum += ToFloat(x[d]);
      const float mean = static_cast<float>(sum / static_cast<double>(DV));
      double sq = 0.0;
      for (int64_t d = 0; d < DV; ++d) {
        const double c = static_cast<double>(ToFloat(x[d])) - mean;
        sq += c * c;
      }
      const float rstd = 1.0f / std::sqrt(static_cast<float>(sq / static_cast<double>(DV)) + p.eps);
      const int64_t out = (b * S + s) * NH * DV + h * DV;
      for (int64_t d = 0; d < DV; ++d) {
        const float normed = (ToFloat(x[d]) - mean) * rstd * ToFloat(w[h * DV + d]) + ToFloat(bias[h * DV + d]);
        y[out + d] = FromFloat<T>(Sigmoid(ToFloat(o[out + d])) * normed);
      }
    });
  });
}

}  // namespace xlstm
