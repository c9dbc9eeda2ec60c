// The chunkwise mLSTM forward on CUDA cores, float32 values with every dot product and sum accumulated in double
// (as the CPU oracle does): the float32 path, where we verify against transformers to 1e-4, and the fallback for shapes
// the tensor-core kernel does not take (DQK > 256, DQK or DV not a multiple of 8).
// The math: docs/hf-semantics.md, "Chunkwise form", on HF's schedule.
//
// Grid: one CTA per (b·NH + head, DV tile of 32 columns), 256 threads. The CTA keeps its C tile [DQK × 32], n and
// m in shared memory for the whole sequence and walks the schedule's pieces in order (a chunk of up to LC tokens,
// or one recurrent token, which is the chunkwise form with one token). Only the final state is written.
#include <cmath>

#include "kernels/mlstm_cuda_common.cuh"
#include "kernels/mlstm_fw.cuh"

namespace xlstm {
namespace {

constexpr int kSimtThreads = 256;
constexpr int kSimtDvt = 32;

/// Shared-memory layout (floats) for DQK = dk and pieces of up to lc tokens.
struct SimtLayout {
  int64_t dk, lc;
  XLSTM_HOST_DEVICE int64_t ldq() const { return dk + 1; }  // padded rows: threads reading different rows hit different banks
  XLSTM_HOST_DEVICE int64_t ldm() const { return lc + 1; }
  XLSTM_HOST_DEVICE int64_t matC() const { return 0; }                               // [DQK][DVT]
  XLSTM_HOST_DEVICE int64_t vecN() const { return matC() + dk * kSimtDvt; }          // [DQK]
  XLSTM_HOST_DEVICE int64_t matQ() const { return vecN() + dk; }                     // [LC][DQK+1]
  XLSTM_HOST_DEVICE int64_t matK() const { return matQ() + lc * ldq(); }             // [LC][DQK+1]
  XLSTM_HOST_DEVICE int64_t matV() const { return matK() + lc * ldq(); }             // [LC][DVT]
  XLSTM_HOST_DEVICE int64_t matM() const { return matV() + lc * kSimtDvt; }          // [LC][LC+1]
  XLSTM_HOST_DEVICE int64_t gates() const { return matM() + lc * ldm(); }            // 7 vectors [LC]
  XLSTM_HOST_DEVICE int64_t floats() const { return gates() + 7 * lc; }
  XLSTM_HOST_DEVICE size_t bytes() const { return sizeof(float) * static_cast<size_t>(floats()); }
};

template <typename T>
__global__ void __launch_bounds__(kSimtThreads) MLstmChunkwiseSimtKernel(const MLstmParams p, int num_tiles, int lc) {
  extern __shared__ float smem_simt[];
  const int64_t S = p.seq, DK = p.dqk, DV = p.dv;
  const SimtLayout lay{DK, lc};
  float* matC = smem_simt + lay.matC();
  float* vecN = smem_simt + lay.vecN();
  float* matQ = smem_simt + lay.matQ();
  float* matK = smem_simt + lay.matK();
  float* matV = smem_simt + lay.matV();
  float* matM = smem_simt + lay.matM();
  float* vecLf = smem_simt + lay.gates();  // logσ(f̃)
  float* vecB = vecLf + lc;                // cumulative log forget gate b_j
  float* vecI = vecB + lc;                 // ĩ_j
  float* vecMc = vecI + lc;                // combined stabilizer m_j
  float* vecSc = vecMc + lc;               // exp(m_inter_j − m_j)
  float* vecA = vecSc + lc;                // a_j = g − b_j + ĩ_j
  float* vecQn = vecA + lc;                // q·n (raw), then the full denominator term
  const int64_t ldq = lay.ldq(), ldm = lay.ldm();

  const int64_t bh = blockIdx.x / num_tiles;
  const int64_t e0 = static_cast<int64_t>(blockIdx.x % num_tiles) * kSimtDvt;
  const int64_t nE = DV - e0 < kSimtDvt ? DV - e0 : kSimtDvt;
  const int tid = threadIdx.x;
  const T* Qg = static_cast<const T*>(p.matQ) + bh * S * DK;
  const T* Kg = static_cast<const T*>(p.matK) + bh * S * DK;
  const T* Vg = static_cast<const T*>(p.matV) + bh * S * DV;
  T* Hg = static_cast<T*>(p.matH) + bh * S * DV;
  const float* Ig = p.vecI + bh * S;
  const float* Fg = p.vecF + bh * S;

  for (int64_t x = tid; x < DK * kSimtDvt; x += kSimtThreads) {
    const int64_t d = x / kSimtDvt, e = x % kSimtDvt;
    matC[x] = e < nE ? p.C0f()[(bh * DK + d) * DV + e0 + e] : 0.0f;
  }
  for (int64_t d = tid; d < DK; d += kSimtThreads) vecN[d] = p.N0f()[bh * DK + d];
  float scaM = p.scaM0[bh];  // uniform: every thread updates it identically
  __syncthreads();

  for (int64_t t0 = 0; t0 < S;) {
    const int len = static_cast<int>(SchedulePiece(t0, S, p.chunk_size, p.max_inference_chunksize, lc));
    for (int j = tid; j < len; j += kSimtThreads) {
      vecLf[j] = LogSigmoidF(Fg[t0 + j]);
      vecI[j] = Ig[t0 + j];
    }
    for (int64_t x = tid; x < len * DK; x += kSimtThreads) {
      const int64_t j = x / DK, d = x % DK;
      matQ[j * ldq + d] = ToF(Qg[(t0 + j) * DK + d]);
      matK[j * ldq + d] = ToF(Kg[(t0 + j) * DK + d]);
    }
    for (int64_t x = tid; x < len * kSimtDvt; x += kSimtThreads) {
      const int64_t j = x / kSimtDvt, e = x % kSimtDvt;
      matV[x] = e < nE ? ToF(Vg[(t0 + j) * DV + e0 + e]) : 0.0f;
    }
    __syncthreads();
    if (tid == 0) {  // b = cumsum(logσ f̃), sequential like torch's CPU cumsum
      float acc = 0.0f;
      for (int j = 0; j < len; ++j) vecB[j] = (acc += vecLf[j]);
    }
    __syncthreads();
    const float scaG = vecB[len - 1];
    for (int j = tid; j < len; j += kSimtThreads) {
      const float m_inter = vecB[j] + scaM;
      float m_intra = -INFINITY;
      for (int s = 0; s <= j; ++s) m_intra = fmaxf(m_intra, (vecB[j] - vecB[s]) + vecI[s]);
      const float m_comb = fmaxf(m_inter, m_intra);
      vecMc[j] = m_comb;
      vecSc[j] = expf(m_inter - m_comb);
      vecA[j] = (scaG - vecB[j]) + vecI[j];
    }
    __syncthreads();
    float a_max = -INFINITY;
    for (int j = 0; j < len; ++j) a_max = fmaxf(a_max, vecA[j]);
    const float scaM_next = fmaxf(scaG + scaM, a_max);
    const float scaG_bar = expf(scaG + scaM - scaM_next);

    // gated scores M_js = (q_j·k_s)·s·exp(b_j − b_s + ĩ_s − m_j) for s ≤ j, and q_j·n
    for (int64_t x = tid; x < static_cast<int64_t>(len) * len; x += kSimtThreads) {
      const int64_t j = x / len, s = x % len;
      float mval = 0.0f;
      if (s <= j) {
        double qk = 0.0;
        for (int64_t d = 0; d < DK; ++d) qk += static_cast<double>(matQ[j * ldq + d]) * matK[s * ldq + d];
        mval = static_cast<float>((qk * p.qk_scale) * expf(((vecB[j] - vecB[s]) + vecI[s]) - vecMc[j]));
      }
      matM[j * ldm + s] = mval;
    }
    for (int j = tid; j < len; j += kSimtThreads) {
      double qn = 0.0;
      for (int64_t d = 0; d < DK; ++d) qn += static_cast<double>(matQ[j * ldq + d]) * vecN[d];
      vecQn[j] = static_cast<float>(qn);
    }
    __syncthreads();
    for (int j = tid; j < len; j += kSimtThreads) {
      double rs = 0.0;
      for (int s = 0; s <= j; ++s) rs += matM[j * ldm + s];
      vecQn[j] = static_cast<float>(static_cast<double>(vecQn[j]) * vecSc[j] * p.qk_scale + rs);
    }
    __syncthreads();

    // h_j = (q̄_j·C + Σ_s M_js v_s) / (max(|q̄_j·n + Σ_s M_js|, exp(−m_j)) + eps)
    for (int64_t x = tid; x < static_cast<int64_t>(len) * kSimtDvt; x += kSimtThreads) {
      const int64_t j = x / kSimtDvt, e = x % kSimtDvt;
      double inter = 0.0, intra = 0.0;
      for (int64_t d = 0; d < DK; ++d) inter += static_cast<double>(matQ[j * ldq + d]) * matC[d * kSimtDvt + e];
      for (int64_t s = 0; s <= j; ++s) intra += static_cast<double>(matM[j * ldm + s]) * matV[s * kSimtDvt + e];
      const double num = inter * vecSc[j] * p.qk_scale + intra;
      const double den = fmax(fabs(static_cast<double>(vecQn[j])), static_cast<double>(expf(-vecMc[j]))) + p.eps;
      if (e < nE) Hg[(t0 + j) * DV + e0 + e] = FromF<T>(static_cast<float>(num / den));
    }
    __syncthreads();

    // C' = ḡ C + Σ_j (k_j ā_j) v_jᵀ, n' = ḡ n + Σ_j k_j ā_j, with ā_j = exp(a_j − m')
    for (int j = tid; j < len; j += kSimtThreads) vecLf[j] = expf(vecA[j] - scaM_next);  // reuse as ā
    __syncthreads();
    for (int64_t x = tid; x < DK * kSimtDvt; x += kSimtThreads) {
      const int64_t d = x / kSimtDvt, e = x % kSimtDvt;
      double c = static_cast<double>(matC[x]) * scaG_bar;
      for (int j = 0; j < len; ++j) c += static_cast<double>(matK[j * ldq + d] * vecLf[j]) * matV[j * kSimtDvt + e];
      matC[x] = p.round_state_bf16 ? RoundToBf16(static_cast<float>(c)) : static_cast<float>(c);
    }
    for (int64_t d = tid; d < DK; d += kSimtThreads) {
      double n = static_cast<double>(vecN[d]) * scaG_bar;
      for (int j = 0; j < len; ++j) n += static_cast<double>(matK[j * ldq + d]) * vecLf[j];
      vecN[d] = p.round_state_bf16 ? RoundToBf16(static_cast<float>(n)) : static_cast<float>(n);
    }
    scaM = scaM_next;
    t0 += len;
    __syncthreads();
  }

  for (int64_t x = tid; x < DK * kSimtDvt; x += kSimtThreads) {
    const int64_t d = x / kSimtDvt, e = x % kSimtDvt;
    if (e < nE) p.Cf()[(bh * DK + d) * DV + e0 + e] = matC[x];
  }
  if (e0 == 0) {
    for (int64_t d = tid; d < DK; d += kSimtThreads) p.Nf()[bh * DK + d] = vecN[d];
    if (tid == 0) p.scaM[bh] = scaM;
  }
}

template <typename T>
struct SimtTag {};

/// Longest piece that keeps the CTA at two per SM (≤ ~100 KiB), capped by the chunk size and 64.
int64_t SimtPieceLength(const MLstmParams& p) {
  int64_t lc = p.chunk_size < 64 ? p.chunk_size : 64;
  while (lc > 1 && SimtLayout{p.dqk, lc}.bytes() > 100 * 1024) lc /= 2;
  return lc < 1 ? 1 : lc;
}

}  // namespace

cudaError_t LaunchMLstmChunkwiseSimt(const MLstmParams& p, cudaStream_t stream) {
  if (p.batch * p.heads == 0) return cudaSuccess;
  const int64_t lc = SimtPieceLength(p);
  const size_t smem = SimtLayout{p.dqk, lc}.bytes();
  const int num_tiles = static_cast<int>(CeilDiv(p.dv, kSimtDvt));
  const int64_t blocks = p.batch * p.heads * num_tiles;
  return XLSTM_DTYPE_SWITCH(p.dtype, [&] {
    cudaError_t err = AllowSharedMemory<SimtTag<T>>(MLstmChunkwiseSimtKernel<T>, smem);
    if (err != cudaSuccess) return err;
    MLstmChunkwiseSimtKernel<T><<<static_cast<unsigned>(blocks), kSimtThreads, smem, stream>>>(p, num_tiles,
                                                                                              static_cast<int>(lc));
    return cudaGetLastError();
  });
}

}  // namespace xlstm
