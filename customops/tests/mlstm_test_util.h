// Test helpers: random problems with model-like gates, a plain double-precision recurrent reference (the recurrent
// step of docs/hf-semantics.md applied token by token: the definition the chunkwise form must reproduce), and error
// measures.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cpu/half_types.h"
#include "cpu/mlstm_cpu.h"
#include "kernels/mlstm_params.h"

namespace xlstm::test {

/// n values of N(0, scale²) from mt19937(seed): the tests' random inputs.
inline std::vector<float> NormalVector(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

/// One cell call's inputs, as float32 host vectors (already rounded to the dtype under test where that matters).
struct Problem {
  int64_t B = 1, NH = 1, S = 1, DK = 16, DV = 16, L = 16, MIC = 16384;
  float eps = 1e-6f;
  std::vector<float> q, k, v, i, f, c0, n0, m0;

  int64_t Heads() const { return B * NH; }
};

/// kModel: gates like a trained model's (input gates mostly negative, forget gates mostly open), so the normalizer
/// max(|q·n|, exp(−m)) stays away from zero and h is well conditioned. kStress: input gates spread over the whole
/// ±15 soft-cap range, so exp(−m) can be ~1e-6 and h = num/|q·n| is as ill-conditioned as the math allows (there
/// any float32 form, recurrent or chunkwise, loses digits: compare against the float32 recurrent form's error).
enum class Gates { kModel, kStress };

/// q, k, v standard normal; gates soft-capped at ±15. With random_state the initial C, n, m are random.
inline Problem MakeProblem(int64_t B, int64_t NH, int64_t S, int64_t DK, int64_t DV, int64_t L, uint32_t seed,
                           bool random_state = true, int64_t MIC = 16384, Gates gates = Gates::kModel) {
  Problem p;
  p.B = B, p.NH = NH, p.S = S, p.DK = DK, p.DV = DV, p.L = L, p.MIC = MIC;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto cap = [](float x) { return 15.0f * std::tanh(x / 15.0f); };
  const int64_t H = B * NH;
  p.q.resize(H * S * DK), p.k.resize(H * S * DK), p.v.resize(H * S * DV), p.i.resize(H * S), p.f.resize(H * S);
  for (auto& x : p.q) x = normal(rng);
  for (auto& x : p.k) x = normal(rng);
  for (auto& x : p.v) x = normal(rng);
  const bool stress = gates == Gates::kStress;
  for (auto& x : p.i) x = stress ? cap(-2.0f + 6.0f * normal(rng)) : cap(-5.0f + 2.0f * normal(rng));
  for (auto& x : p.f) x = stress ? cap(3.0f + 3.0f * normal(rng)) : cap(4.0f + 2.0f * normal(rng));
  p.c0.assign(H * DK * DV, 0.0f), p.n0.assign(H * DK, 0.0f), p.m0.assign(H, 0.0f);
  if (random_state) {
    for (auto& x : p.c0) x = 0.5f * normal(rng);
    for (auto& x : p.n0) x = 0.5f * normal(rng);
    for (auto& x : p.m0) x = stress ? 3.0f * normal(rng) : -1.0f + normal(rng);
  }
  return p;
}

/// The sub-problem of tokens [t0, t1) starting from the given state (for "a prompt fed in pieces").
inline Problem Slice(const Problem& p, int64_t t0, int64_t t1, const std::vector<float>& c0, const std::vector<float>& n0,
                     const std::vector<float>& m0) {
  Problem s = p;
  s.S = t1 - t0;
  const int64_t H = p.Heads();
  s.q.resize(H * s.S * p.DK), s.k.resize(H * s.S * p.DK), s.v.resize(H * s.S * p.DV), s.i.resize(H * s.S), s.f.resize(H * s.S);
  for (int64_t h = 0; h < H; ++h) {
    std::copy_n(&p.q[(h * p.S + t0) * p.DK], s.S * p.DK, &s.q[h * s.S * p.DK]);
    std::copy_n(&p.k[(h * p.S + t0) * p.DK], s.S * p.DK, &s.k[h * s.S * p.DK]);
    std::copy_n(&p.v[(h * p.S + t0) * p.DV], s.S * p.DV, &s.v[h * s.S * p.DV]);
    std::copy_n(&p.i[h * p.S + t0], s.S, &s.i[h * s.S]);
    std::copy_n(&p.f[h * p.S + t0], s.S, &s.f[h * s.S]);
  }
  s.c0 = c0, s.n0 = n0, s.m0 = m0;
  return s;
}

/// Rounds q, k, v to the precision of dtype (so that a float32 run sees exactly what a float16/bfloat16 run sees).
inline Problem RoundedTo(Problem p, Dtype dtype) {
  auto round = [dtype](std::vector<float>& xs) {
    for (auto& x : xs) x = dtype == Dtype::kFloat16 ? RoundTrip<Fp16>(x) : dtype == Dtype::kBFloat16 ? RoundTrip<Bf16>(x) : x;
  };
  round(p.q), round(p.k), round(p.v);
  return p;
}

struct Result {
  std::vector<float> h, c, n, m;
};

template <typename T>
std::vector<T> Encode(const std::vector<float>& xs) {
  std::vector<T> out(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) out[i] = FromFloat<T>(xs[i]);
  return out;
}

template <typename T>
std::vector<float> Decode(const std::vector<T>& xs) {
  std::vector<float> out(xs.size());
  for (size_t i = 0; i < xs.size(); ++i) out[i] = ToFloat(xs[i]);
  return out;
}

/// MLstmParams for host or device pointers (all sizes and attributes from the problem).
inline MLstmParams ParamsFor(const Problem& p, Dtype dtype) {
  MLstmParams prm;
  prm.dtype = dtype;
  prm.batch = p.B, prm.heads = p.NH, prm.seq = p.S, prm.dqk = p.DK, prm.dv = p.DV;
  prm.chunk_size = p.L, prm.max_inference_chunksize = p.MIC, prm.eps = p.eps, prm.qk_scale = QkScale(p.DK);
  return prm;
}

template <typename T>
Result RunCpuTyped(const Problem& p, Dtype dtype, const ParallelFor& pf, bool step, bool round_state_bf16) {
  const auto q = Encode<T>(p.q), k = Encode<T>(p.k), v = Encode<T>(p.v);
  std::vector<T> h(p.Heads() * p.S * p.DV);
  Result r;
  r.c.resize(p.c0.size()), r.n.resize(p.n0.size()), r.m.resize(p.m0.size());
  MLstmParams prm = ParamsFor(p, dtype);
  prm.matQ = q.data(), prm.matK = k.data(), prm.matV = v.data(), prm.vecI = p.i.data(), prm.vecF = p.f.data();
  prm.matC0 = p.c0.data(), prm.vecN0 = p.n0.data(), prm.scaM0 = p.m0.data();
  prm.matH = h.data(), prm.matC = r.c.data(), prm.vecN = r.n.data(), prm.scaM = r.m.data();
  prm.round_state_bf16 = round_state_bf16;
  if (step) {
    MLstmStepCpu(prm, pf);
  } else {
    MLstmChunkwiseCpu(prm, pf);
  }
  r.h = Decode(h);
  return r;
}

/// The CPU kernels (q, k, v stored as dtype).
inline Result RunCpu(const Problem& p, Dtype dtype = Dtype::kFloat32, const ParallelFor& pf = SerialFor, bool step = false,
                     bool round_state_bf16 = false) {
  switch (dtype) {
    case Dtype::kFloat16: return RunCpuTyped<Fp16>(p, dtype, pf, step, round_state_bf16);
    case Dtype::kBFloat16: return RunCpuTyped<Bf16>(p, dtype, pf, step, round_state_bf16);
    default: return RunCpuTyped<float>(p, dtype, pf, step, round_state_bf16);
  }
}

/// The recurrence token by token in double precision (no chunks, no segments).
inline Result RecurrentReference(const Problem& p) {
  Result r;
  r.h.assign(p.Heads() * p.S * p.DV, 0.0f), r.c.resize(p.c0.size()), r.n.resize(p.n0.size()), r.m.resize(p.m0.size());
  const double scale = std::pow(static_cast<double>(p.DK), -0.5);
  for (int64_t h = 0; h < p.Heads(); ++h) {
    std::vector<double> C(p.c0.begin() + h * p.DK * p.DV, p.c0.begin() + (h + 1) * p.DK * p.DV);
    std::vector<double> n(p.n0.begin() + h * p.DK, p.n0.begin() + (h + 1) * p.DK), num(p.DV);
    double m = p.m0[h];
    for (int64_t t = 0; t < p.S; ++t) {
      const double fi = p.f[h * p.S + t], ii = p.i[h * p.S + t];
      const double lf = std::min(fi, 0.0) - std::log1p(std::exp(-std::fabs(fi)));
      const double m_new = std::max(lf + m, ii);
      const double fa = std::exp(lf + m - m_new), ia = std::exp(ii - m_new);
      std::fill(num.begin(), num.end(), 0.0);
      double qn = 0.0;
      for (int64_t d = 0; d < p.DK; ++d) {
        const double kd = p.k[(h * p.S + t) * p.DK + d], qd = p.q[(h * p.S + t) * p.DK + d] * scale;
        for (int64_t e = 0; e < p.DV; ++e) {
          double& c = C[d * p.DV + e];
          c = fa * c + ia * kd * p.v[(h * p.S + t) * p.DV + e];
          num[e] += qd * c;
        }
        n[d] = fa * n[d] + ia * kd;
        qn += qd * n[d];
      }
      const double den = std::max(std::fabs(qn), std::exp(-m_new)) + p.eps;
      for (int64_t e = 0; e < p.DV; ++e) r.h[(h * p.S + t) * p.DV + e] = static_cast<float>(num[e] / den);
      m = m_new;
    }
    for (int64_t x = 0; x < p.DK * p.DV; ++x) r.c[h * p.DK * p.DV + x] = static_cast<float>(C[x]);
    for (int64_t d = 0; d < p.DK; ++d) r.n[h * p.DK + d] = static_cast<float>(n[d]);
    r.m[h] = static_cast<float>(m);
  }
  return r;
}

/// Error of `actual` against `expected`: the max abs difference over max(1, max |expected|), and the relative L2.
struct Error {
  double scaled_max = 0.0, rel_l2 = 0.0;
  bool finite = true;
  std::string ToString() const {
    return "scaled max " + std::to_string(scaled_max) + ", rel L2 " + std::to_string(rel_l2) + (finite ? "" : ", NON-FINITE");
  }
};

inline Error Compare(const std::vector<float>& actual, const std::vector<float>& expected) {
  Error e;
  if (actual.size() != expected.size()) {
    e.finite = false;
    return e;
  }
  double max_diff = 0.0, max_ref = 1.0, diff2 = 0.0, ref2 = 0.0;
  for (size_t x = 0; x < actual.size(); ++x) {
    if (!std::isfinite(actual[x])) e.finite = false;
    const double d = static_cast<double>(actual[x]) - expected[x];
    max_diff = std::max(max_diff, std::fabs(d));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(expected[x])));
    diff2 += d * d;
    ref2 += static_cast<double>(expected[x]) * expected[x];
  }
  e.scaled_max = max_diff / max_ref;
  e.rel_l2 = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  return e;
}

}  // namespace xlstm::test
