#include "cpu/mlstm_cpu.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <thread>
#include <vector>

#include "cpu/half_types.h"

namespace xlstm {

void SerialFor(int64_t count, const std::function<void(int64_t)>& body) {
  for (int64_t i = 0; i < count; ++i) body(i);
}

ParallelFor ThreadedFor(int threads) {
  return [threads](int64_t count, const std::function<void(int64_t)>& body) {
    int64_t n = threads > 0 ? threads : static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
    n = std::min(n, count);
    if (n <= 1) return SerialFor(count, body);
    std::atomic<int64_t> next{0};
    std::vector<std::thread> pool;
    for (int64_t w = 0; w < n; ++w) {
      pool.emplace_back([&] {
        for (int64_t i = next++; i < count; i = next++) body(i);
      });
    }
    for (auto& t : pool) t.join();
  };
}

namespace {

/// torch's logsigmoid: min(x, 0) − log1p(exp(−|x|)), stable for any x.
inline float LogSigmoid(float x) { return std::min(x, 0.0f) - std::log1p(std::exp(-std::fabs(x))); }

/// The cell of one (batch, head): owns its float32 state while it walks HF's schedule.
template <typename T>
class HeadCell {
 public:
  HeadCell(const MLstmParams& p, int64_t bh)
      : p_(p),
        S_(p.seq),
        DK_(p.dqk),
        DV_(p.dv),
        q_(static_cast<const T*>(p.matQ) + bh * p.seq * p.dqk),
        k_(static_cast<const T*>(p.matK) + bh * p.seq * p.dqk),
        v_(static_cast<const T*>(p.matV) + bh * p.seq * p.dv),
        i_(p.vecI + bh * p.seq),
        f_(p.vecF + bh * p.seq),
        h_(static_cast<T*>(p.matH) + bh * p.seq * p.dv),
        matC_(p.C0f() + bh * p.dqk * p.dv, p.C0f() + (bh + 1) * p.dqk * p.dv),
        vecN_(p.N0f() + bh * p.dqk, p.N0f() + (bh + 1) * p.dqk),
        scaM_(p.scaM0[bh]),
        bh_(bh) {}

  void Run() {
    for (int64_t t = 0; t < S_;) {
      const int64_t len = SchedulePiece(t, S_, p_.chunk_size, p_.max_inference_chunksize, p_.chunk_size);
      if (ScheduleIsChunk(t, S_, p_.chunk_size, p_.max_inference_chunksize)) {
        Chunk(t, len);
      } else {
        Step(t);
      }
      if (p_.round_state_bf16) {  // mlstm_params.h: the state each piece leaves is the stored one
        for (auto& c : matC_) c = ToFloat(FromFloat<Bf16>(c));
        for (auto& n : vecN_) n = ToFloat(FromFloat<Bf16>(n));
      }
      t += len;
    }
    std::copy(matC_.begin(), matC_.end(), p_.Cf() + bh_ * DK_ * DV_);
    std::copy(vecN_.begin(), vecN_.end(), p_.Nf() + bh_ * DK_);
    p_.scaM[bh_] = scaM_;
  }

 private:
  float Q(int64_t t, int64_t d) const { return ToFloat(q_[t * DK_ + d]); }
  float K(int64_t t, int64_t d) const { return ToFloat(k_[t * DK_ + d]); }
  float V(int64_t t, int64_t e) const { return ToFloat(v_[t * DV_ + e]); }

  /// docs/hf-semantics.md, "Recurrent step" (HF's mlstm_recurrent_step_native).
  void Step(int64_t t) {
    const float scaI = i_[t];
    const float scaF_log = LogSigmoid(f_[t]);
    const float scaM_new = std::max(scaF_log + scaM_, scaI);
    const float scaF_act = std::exp(scaF_log + scaM_ - scaM_new);
    const float scaI_act = std::exp(scaI - scaM_new);
    vecV_.resize(DV_);
    for (int64_t e = 0; e < DV_; ++e) vecV_[e] = V(t, e);
    num_.assign(DV_, 0.0);
    double qn = 0.0;
    for (int64_t d = 0; d < DK_; ++d) {
      const float k = K(t, d);
      const float q = Q(t, d) * p_.qk_scale;
      float* row = &matC_[d * DV_];
      for (int64_t e = 0; e < DV_; ++e) {
        row[e] = scaF_act * row[e] + scaI_act * (k * vecV_[e]);
        num_[e] += double(q) * row[e];
      }
      vecN_[d] = scaF_act * vecN_[d] + scaI_act * k;
      qn += q * vecN_[d];
    }
    const double den = std::max(std::fabs(qn), double(std::exp(-scaM_new))) + p_.eps;
    for (int64_t e = 0; e < DV_; ++e) h_[t * DV_ + e] = FromFloat<T>(float(num_[e] / den));
    scaM_ = scaM_new;
  }

  /// docs/hf-semantics.md, "Chunkwise form", for one chunk of len tokens starting at t0: outputs from the
  /// chunk-start state, then the state at the chunk's end.
  void Chunk(int64_t t0, int64_t len) {
    vecB_.resize(len);
    vecI_.resize(len);
    vecA_.resize(len);
    float acc = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
      acc += LogSigmoid(f_[t0 + j]);  // b_j = Σ_{r≤j} logσ(f̃_r), sequential as torch's cumsum
      vecB_[j] = acc;
      vecI_[j] = i_[t0 + j];
    }
    const float scaG = vecB_[len - 1];
    float scaA_max = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < len; ++j) {
      vecA_[j] = (scaG - vecB_[j]) + vecI_[j];  // a_j = g − b_j + ĩ_j
      scaA_max = std::max(scaA_max, vecA_[j]);
    }
    const float scaM_next = std::max(scaG + scaM_, scaA_max);

    // outputs: h_j = (q̄_j C + Σ_s M_js v_s) / (max(|q̄_j n + Σ_s M_js|, exp(−m_j)) + eps)
    matKf_.resize(len * DK_);
    matVf_.resize(len * DV_);
    for (int64_t j = 0; j < len; ++j) {
      for (int64_t d = 0; d < DK_; ++d) matKf_[j * DK_ + d] = K(t0 + j, d);
      for (int64_t e = 0; e < DV_; ++e) matVf_[j * DV_ + e] = V(t0 + j, e);
    }
    vecQ_.resize(DK_);
    vecM_.resize(len);
    for (int64_t j = 0; j < len; ++j) {
      const float scaM_inter = vecB_[j] + scaM_;
      float scaM_intra = -std::numeric_limits<float>::infinity();
      for (int64_t s = 0; s <= j; ++s) scaM_intra = std::max(scaM_intra, (vecB_[j] - vecB_[s]) + vecI_[s]);
      const float scaM_comb = std::max(scaM_inter, scaM_intra);
      const float scaB_bar = std::exp(scaM_inter - scaM_comb);
      for (int64_t d = 0; d < DK_; ++d) vecQ_[d] = Q(t0 + j, d);
      double rowsum = 0.0;
      for (int64_t s = 0; s <= j; ++s) {
        double qk = 0.0;
        for (int64_t d = 0; d < DK_; ++d) qk += double(vecQ_[d]) * matKf_[s * DK_ + d];
        vecM_[s] = (float(qk) * p_.qk_scale) * std::exp(((vecB_[j] - vecB_[s]) + vecI_[s]) - scaM_comb);
        rowsum += vecM_[s];
      }
      // HF's grouping: (q̄ C) + (M V), each a sum of its own; sums in float64, rounded once
      num_.assign(DV_, 0.0);
      intra_.assign(DV_, 0.0);
      double qn = 0.0;
      for (int64_t d = 0; d < DK_; ++d) {
        const float qg = vecQ_[d] * scaB_bar * p_.qk_scale;
        const float* row = &matC_[d * DV_];
        for (int64_t e = 0; e < DV_; ++e) num_[e] += qg * row[e];
        qn += qg * vecN_[d];
      }
      for (int64_t s = 0; s <= j; ++s) {
        const float* vs = &matVf_[s * DV_];
        for (int64_t e = 0; e < DV_; ++e) intra_[e] += vecM_[s] * vs[e];
      }
      const double den = std::max(std::fabs(qn + rowsum), double(std::exp(-scaM_comb))) + p_.eps;
      for (int64_t e = 0; e < DV_; ++e) h_[(t0 + j) * DV_ + e] = FromFloat<T>(float((num_[e] + intra_[e]) / den));
    }

    // state: C' = ḡ C + (K ⊙ ā)ᵀ V, n' = ḡ n + (K ⊙ ā)ᵀ 1, m' = max(g + m, max_j a_j)
    // HF's grouping: ḡ C + (K ⊙ ā)ᵀ V with the matmul summed on its own (in float64)
    const float scaG_bar = std::exp(scaG + scaM_ - scaM_next);
    kv_.assign(DK_ * DV_, 0.0);
    ksum_.assign(DK_, 0.0);
    for (int64_t j = 0; j < len; ++j) {
      const float scaA_bar = std::exp(vecA_[j] - scaM_next);
      const float* vj = &matVf_[j * DV_];
      for (int64_t d = 0; d < DK_; ++d) {
        const float kg = matKf_[j * DK_ + d] * scaA_bar;
        double* row = &kv_[d * DV_];
        for (int64_t e = 0; e < DV_; ++e) row[e] += kg * vj[e];
        ksum_[d] += kg;
      }
    }
    for (int64_t x = 0; x < DK_ * DV_; ++x) matC_[x] = float(scaG_bar * matC_[x] + kv_[x]);
    for (int64_t d = 0; d < DK_; ++d) vecN_[d] = float(scaG_bar * vecN_[d] + ksum_[d]);
    scaM_ = scaM_next;
  }

  const MLstmParams& p_;
  const int64_t S_, DK_, DV_;
  const T* q_;
  const T* k_;
  const T* v_;
  const float* i_;
  const float* f_;
  T* h_;
  std::vector<float> matC_, vecN_;
  float scaM_;
  const int64_t bh_;
  std::vector<float> vecB_, vecI_, vecA_, vecQ_, vecV_, vecM_, matKf_, matVf_;
  std::vector<double> num_, intra_, kv_, ksum_;
};

template <typename T>
void RunAll(const MLstmParams& p, const ParallelFor& parallel_for) {
  parallel_for(p.batch * p.heads, [&p](int64_t bh) { HeadCell<T>(p, bh).Run(); });
}

void Check(const MLstmParams& p) {
  if (const char* error = MLstmParamsError(p)) throw std::invalid_argument(error);
}

}  // namespace

void MLstmChunkwiseCpu(const MLstmParams& p, const ParallelFor& parallel_for) {
  Check(p);
  switch (p.dtype) {
    case Dtype::kFloat32: return RunAll<float>(p, parallel_for);
    case Dtype::kFloat16: return RunAll<Fp16>(p, parallel_for);
    case Dtype::kBFloat16: return RunAll<Bf16>(p, parallel_for);
  }
}

void MLstmStepCpu(const MLstmParams& p, const ParallelFor& parallel_for) {
  if (p.seq != 1) throw std::invalid_argument("mLSTM step: the sequence length must be 1");
  MLstmChunkwiseCpu(p, parallel_for);  // one token is a segment of one: the step form
}

}  // namespace xlstm
