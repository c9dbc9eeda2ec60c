// The chunkwise mLSTM forward on tensor cores (float16 / bfloat16 q, k, v; float32 gates, accumulators and state).
// docs/hf-semantics.md, "Chunkwise form", on HF's schedule; design in docs/performance.md, "The chunkwise kernels"
// (single pass, chunk-sequential).
//
// Grid: one CTA per (b·NH + head, DV tile of 64 columns); 16 warps. The CTA walks the schedule's pieces in order
// (chunks of up to LT = 64 tokens, recurrent tokens as one-token chunks) and keeps its C tile [KD × 64] in float32
// WMMA accumulators for the whole sequence: the state never goes back to memory until the end, so the only HBM
// traffic is q, k, v in and h out (plus the first and last state). KD = DQK rounded up to 64/128/256 (zero padded).
//
// Per piece of len tokens (all matmuls m16n16k16, T operands, float32 accumulation):
//   (1) cp.async K [LT × KD] and the V tile [LT × 64] into shared memory (Q was prefetched during the previous
//       piece); zeros past len / DQK / DV
//   (2) one warp, float32: b = cumsum(logσ f̃) (shuffle scan), m_j, exp(m_inter − m_j)·s, a_j, m', ḡ, ā
//   (3) Sc = Q Kᵀ                                    (causal blocks only, one 16×16 block per warp)
//   (4) M = Sc·s·exp(b_j − b_s + ĩ_s − m_j) (as T); Q ← Q̄ = Q·exp(m_inter − m_j)·s; den_j = max(|q̄·n + ΣM|, e^−m) + eps
//   (5) H = Q̄ C_T + M V; prefetch the next piece's Q; h = H / den
//   (6) n ← ḡ n + Σ_j ā_j k_j (float32);  V ← ā ⊙ V (as T)
//   (7) C ← ḡ C + Kᵀ V (in registers); C_T ← T(C) for the next piece's (5)
// Rounding to T (Q̄, M, ā ⊙ V, C_T as matmul operands) is the same precision trade as TFLA's xl_chunk kernel.
//
// Included only by the instantiation files inst/mlstm_chunkwise_tc_<type>_kd<KD>.cu (one each, compiled in
// parallel); mlstm_chunkwise_tc_fw.cu dispatches to them.
#pragma once

#include <mma.h>

#include "kernels/mlstm_chunkwise_tc_fw.cuh"
#include "kernels/mlstm_cuda_common.cuh"

namespace xlstm {
namespace tc {

using namespace nvcuda;

constexpr int kTcWarps = 16;
constexpr int kTcThreads = kTcWarps * 32;
constexpr int LT = 64;   // tokens per piece
constexpr int DVT = kTcTileColumns;  // DV columns per CTA

constexpr size_t AlignUp(size_t x) { return (x + 127) / 128 * 128; }

/// Shared-memory layout in bytes (every region 128-byte aligned; WMMA needs 32).
template <typename T, int KD>
struct TcLayout {
  static constexpr int LDQ = KD + 8;   // sQ, sK row stride (T elements; a multiple of 8 as WMMA requires)
  static constexpr int LDV = DVT + 8;  // sV, sM, sCT row stride
  static constexpr int LDS = DVT + 4;  // sAcc (float32) row stride
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = AlignUp(kQ + sizeof(T) * LT * LDQ);
  static constexpr size_t kV = AlignUp(kK + sizeof(T) * LT * LDQ);
  static constexpr size_t kM = AlignUp(kV + sizeof(T) * LT * LDV);
  static constexpr size_t kCT = AlignUp(kM + sizeof(T) * LT * LDV);
  static constexpr size_t kAcc = AlignUp(kCT + sizeof(T) * KD * LDV);   // scores, H, and per-warp staging
  static constexpr size_t kN = AlignUp(kAcc + sizeof(float) * LT * LDS);
  static constexpr size_t kGates = AlignUp(kN + sizeof(float) * KD);
  static constexpr size_t kBytes = AlignUp(kGates + sizeof(float) * (6 * LT + 4));
  static_assert(sizeof(float) * LT * LDS >= sizeof(float) * 256 * kTcWarps, "sAcc doubles as the warps' staging");
};

template <typename T>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragAt = wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major>;
template <typename T>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major>;
template <typename T>
using FragBt = wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

/// 16 bytes global -> shared without registers (sm_80 cp.async); valid = false writes zeros and reads nothing.
__device__ __forceinline__ void CpAsync16(void* smem_dst, const void* gmem_src, bool valid) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
}

__device__ __forceinline__ void CpAsyncWaitAll() { asm volatile("cp.async.wait_all;\n" ::); }

/// Two-at-a-time conversions (one instruction per pair; each value rounded to nearest even as the scalar ones).
template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ type Make(float a, float b) { return __floats2half2_rn(a, b); }
  static __device__ __forceinline__ float2 Split(type v) { return __half22float2(v); }
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ type Make(float a, float b) { return __floats2bfloat162_rn(a, b); }
  static __device__ __forceinline__ float2 Split(type v) { return __bfloat1622float2(v); }
};

/// 8 floats -> 8 T in one 16-byte word.
template <typename T>
__device__ __forceinline__ uint4 Pack8(const float* f) {
  uint4 u;
  auto* h = reinterpret_cast<typename Pair<T>::type*>(&u);
#pragma unroll
  for (int x = 0; x < 4; ++x) h[x] = Pair<T>::Make(f[2 * x], f[2 * x + 1]);
  return u;
}

/// 8 T in one 16-byte word -> 8 floats.
template <typename T>
__device__ __forceinline__ void Unpack8(uint4 u, float* f) {
  const auto* h = reinterpret_cast<const typename Pair<T>::type*>(&u);
#pragma unroll
  for (int x = 0; x < 4; ++x) {
    const float2 v = Pair<T>::Split(h[x]);
    f[2 * x] = v.x;
    f[2 * x + 1] = v.y;
  }
}

/// Starts copying rows [0, len) × columns [0, cols) of a row-major global matrix (row stride ld_src) into shared
/// memory [ROWS × WIDTH] (row stride ld_dst); zeros elsewhere. cols and ld_src are multiples of 8.
template <typename T, int ROWS, int WIDTH>
__device__ __forceinline__ void LoadTileAsync(T* dst, int ld_dst, const T* src, int64_t ld_src, int len, int64_t cols) {
  constexpr int kVecs = WIDTH / 8;
  for (int x = threadIdx.x; x < ROWS * kVecs; x += kTcThreads) {
    const int r = x / kVecs, c = (x % kVecs) * 8;
    const bool valid = r < len && c < cols;
    CpAsync16(dst + r * ld_dst + c, valid ? src + r * ld_src + c : src, valid);
  }
}

template <typename T, int KD>
__global__ void __launch_bounds__(kTcThreads, 1) MLstmChunkwiseTcKernel(const MLstmParams p, int num_tiles, TcPass pass) {
  using L = TcLayout<T, KD>;
  constexpr int LDQ = L::LDQ, LDV = L::LDV, LDS = L::LDS;
  constexpr int kColBlocks = DVT / 16;                      // 4
  constexpr int kCFrags = KD * DVT / (256 * kTcWarps);      // C fragments per warp: KD / 64
  constexpr int kRowBlocks = kCFrags >= kColBlocks ? kCFrags / kColBlocks : 1;  // row blocks per warp
  constexpr int kWarpCols = kCFrags >= kColBlocks ? kColBlocks : kCFrags;       // column blocks per warp
  static_assert(kCFrags >= 1 && (KD / 16) * kColBlocks == kCFrags * kTcWarps, "C tile must split evenly over warps");
  static_assert(kRowBlocks * kWarpCols == kCFrags, "a warp's C fragments form a rectangle");

  extern __shared__ __align__(128) unsigned char smem_tc[];
  T* sQ = reinterpret_cast<T*>(smem_tc + L::kQ);
  T* sK = reinterpret_cast<T*>(smem_tc + L::kK);
  T* sV = reinterpret_cast<T*>(smem_tc + L::kV);
  T* sM = reinterpret_cast<T*>(smem_tc + L::kM);
  T* sCT = reinterpret_cast<T*>(smem_tc + L::kCT);
  float* sAcc = reinterpret_cast<float*>(smem_tc + L::kAcc);
  float* sN = reinterpret_cast<float*>(smem_tc + L::kN);
  float* vecB = reinterpret_cast<float*>(smem_tc + L::kGates);   // b_j
  float* vecI = vecB + LT;                                        // ĩ_j
  float* vecMc = vecI + LT;                                       // m_j
  float* vecSc = vecMc + LT;                                      // exp(m_inter_j − m_j)·s
  float* vecAbar = vecSc + LT;                                    // ā_j = exp(a_j − m')
  float* vecDen = vecAbar + LT;                                   // max(|q̄_j·n + Σ_s M_js|, exp(−m_j)) + eps
  float* scalars = vecDen + LT;                                   // m', ḡ

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t S = p.seq, DK = p.dqk, DV = p.dv;
  const int64_t bh = blockIdx.x / num_tiles;
  const int64_t e0 = static_cast<int64_t>(blockIdx.x % num_tiles) * DVT;
  const int64_t nE = DV - e0 < DVT ? DV - e0 : DVT;
  const float scale = p.qk_scale;
  const T* Qg = static_cast<const T*>(p.matQ) + bh * S * DK;
  const T* Kg = static_cast<const T*>(p.matK) + bh * S * DK;
  const T* Vg = static_cast<const T*>(p.matV) + bh * S * DV + e0;
  T* Hg = static_cast<T*>(p.matH) + bh * S * DV + e0;
  const float* Ig = p.vecI + bh * S;
  const float* Fg = p.vecF + bh * S;
  float* stage = sAcc + warp * 256;  // a warp's 16×16 float32 staging (sAcc is free whenever it is used)
  const int rb0 = (warp * kCFrags / kColBlocks), cb0 = (warp * kCFrags) % kColBlocks;  // this warp's first C block

  // initial state: this warp's C blocks into accumulators (and C_T), n into shared memory
  FragC cfrag[kCFrags];
#pragma unroll
  for (int r = 0; r < kCFrags; ++r) {
    const int d0 = (rb0 + r / kWarpCols) * 16, c0 = (cb0 + r % kWarpCols) * 16;
    for (int x = lane; x < 256; x += 32) {
      const int64_t d = d0 + x / 16, e = c0 + x % 16;
      const float val = (d < DK && e < nE && !pass.states_only) ? p.C0f()[(bh * DK + d) * DV + e0 + e] : 0.0f;
      stage[x] = val;
      sCT[d * LDV + e] = FromF<T>(val);
    }
    __syncwarp();
    wmma::load_matrix_sync(cfrag[r], stage, 16, wmma::mem_row_major);
    __syncwarp();
  }
  for (int d = tid; d < KD; d += kTcThreads) sN[d] = d < DK && !pass.states_only ? p.N0f()[bh * DK + d] : 0.0f;
  float scaM = pass.states_only ? kTcEmptyM : p.scaM0[bh];  // uniform over the CTA
  float gate_sum = 0.0f;  // Σ log σ(f̃) over the sequence (thread 0, states_only)

  int len = static_cast<int>(SchedulePiece(0, S, p.chunk_size, p.max_inference_chunksize, LT));
  if (!pass.states_only) LoadTileAsync<T, LT, KD>(sQ, LDQ, Qg, DK, len, DK);  // the first piece's q (later ones are prefetched)
  __syncthreads();

  for (int64_t t0 = 0; t0 < S;) {
    if (len == 1) {
      // (R) a run of recurrent tokens (a segment's tail, shorter than a chunk): HF's recurrent step per token, with the
      //     state in float32 registers in a known layout instead of the WMMA fragments, so that a token costs a few
      //     register FMAs, one reduction and one barrier instead of a whole piece's seven phases
      //     (docs/performance.md, "The recurrent tail"). Lane l of a warp holds, in each of its C blocks, row l/2 and
      //     the 8 columns (l%2)·8 … +7; the warps of column block 0 hold n for their rows (even lanes).
      int run = 1;
      while (t0 + run < S && run < LT && SchedulePiece(t0 + run, S, p.chunk_size, p.max_inference_chunksize, LT) == 1) ++run;
      CpAsyncWaitAll();  // the first token's q, prefetched: the same rows are loaded again below
      __syncthreads();
      LoadTileAsync<T, LT, KD>(sQ, LDQ, Qg + t0 * DK, DK, run, DK);
      LoadTileAsync<T, LT, KD>(sK, LDQ, Kg + t0 * DK, DK, run, DK);
      LoadTileAsync<T, LT, DVT>(sV, LDV, Vg + t0 * DV, DV, run, nE);
      if (warp == 0) {
        float* lfs = vecSc;   // free during the run: log σ(f̃_j) and ĩ_j, read by all lanes at once
        float* igs = vecAbar;
        for (int j = lane; j < run; j += 32) {
          lfs[j] = LogSigmoidF(Fg[t0 + j]);
          igs[j] = Ig[t0 + j];
        }
        __syncwarp();
        if (lane == 0) {  // m_t = max(log σ(f̃_t) + m_{t−1}, ĩ_t), sequential as HF's steps
          float m = scaM;
          for (int j = 0; j < run; ++j) {
            const float m_new = fmaxf(lfs[j] + m, igs[j]);
            vecB[j] = expf(lfs[j] + m - m_new);  // f̄_j
            vecI[j] = expf(igs[j] - m_new);      // ī_j
            vecMc[j] = m_new;
            m = m_new;
          }
        }
      }
      static_assert(kRowBlocks == 1, "the recurrent run assumes one row block per warp (KD ≤ 256)");
      const int row = rb0 * 16 + lane / 2, col8 = (lane % 2) * 8;  // this lane's C row and first column in a block
      const bool owns_n = cb0 == 0 && lane % 2 == 0;
      float creg[kCFrags][8];
#pragma unroll
      for (int r = 0; r < kCFrags; ++r) {
        wmma::store_matrix_sync(stage, cfrag[r], 16, wmma::mem_row_major);
        __syncwarp();
#pragma unroll
        for (int x = 0; x < 8; ++x) creg[r][x] = stage[(lane / 2) * 16 + col8 + x];
        __syncwarp();
      }
      float nreg = owns_n ? sN[row] : 0.0f;
      CpAsyncWaitAll();
      __syncthreads();
      for (int j = 0; j < run; ++j) {
        const float fb = vecB[j], ib = vecI[j];
        const float kd = ToF(sK[j * LDQ + row]), qd = ToF(sQ[j * LDQ + row]) * scale;
        float qn = 0.0f;
        if (owns_n) {
          nreg = fb * nreg + ib * kd;
          qn = qd * nreg;
        }
        float num[kCFrags][8];
#pragma unroll
        for (int r = 0; r < kCFrags; ++r) {
          float vv[8];
          Unpack8<T>(*reinterpret_cast<const uint4*>(sV + j * LDV + (cb0 + r) * 16 + col8), vv);
#pragma unroll
          for (int x = 0; x < 8; ++x) {
            creg[r][x] = fb * creg[r][x] + ib * (kd * vv[x]);
            num[r][x] = qd * creg[r][x];
          }
        }
        // sums over the warp's 16 rows (lanes of equal parity), then over the warps of a column through shared memory
#pragma unroll
        for (int o = 2; o < 32; o <<= 1) {
#pragma unroll
          for (int r = 0; r < kCFrags; ++r) {
#pragma unroll
            for (int x = 0; x < 8; ++x) num[r][x] += __shfl_xor_sync(0xffffffffu, num[r][x], o);
          }
        }
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) qn += __shfl_xor_sync(0xffffffffu, qn, o);
        float* part = sAcc + (j % 2) * (KD / 16) * LDS;  // [row block][64 columns, then q·n], two sets by token parity
        if (lane < 2) {
#pragma unroll
          for (int r = 0; r < kCFrags; ++r) {
#pragma unroll
            for (int x = 0; x < 8; ++x) part[rb0 * LDS + (cb0 + r) * 16 + col8 + x] = num[r][x];
          }
        }
        if (cb0 == 0 && lane == 0) part[rb0 * LDS + DVT] = qn;
        if (p.round_state_bf16) {  // the stored state after each recurrent token (mlstm_params.h)
#pragma unroll
          for (int r = 0; r < kCFrags; ++r) {
#pragma unroll
            for (int x = 0; x < 8; ++x) creg[r][x] = RoundToBf16(creg[r][x]);
          }
          nreg = RoundToBf16(nreg);
        }
        __syncthreads();
        if (tid < nE) {
          float hn = 0.0f, hq = 0.0f;
          for (int b = 0; b < KD / 16; ++b) {
            hn += part[b * LDS + tid];
            hq += part[b * LDS + DVT];
          }
          const float den = fmaxf(fabsf(hq), expf(-vecMc[j])) + p.eps;
          Hg[(t0 + j) * DV + tid] = FromF<T>(hn / den);
        }
      }
      __syncthreads();  // the last token's sums are read: sAcc is the warps' staging again
      // back to the fragments (and C_T, n) for the pieces after the run
#pragma unroll
      for (int r = 0; r < kCFrags; ++r) {
#pragma unroll
        for (int x = 0; x < 8; ++x) stage[(lane / 2) * 16 + col8 + x] = creg[r][x];
        __syncwarp();
        wmma::load_matrix_sync(cfrag[r], stage, 16, wmma::mem_row_major);
        {
          const float* src = stage + (lane / 2) * 16 + col8;
          *reinterpret_cast<uint4*>(sCT + row * LDV + (cb0 + r) * 16 + col8) = Pack8<T>(src);
        }
        __syncwarp();
      }
      if (owns_n) sN[row] = nreg;
      scaM = vecMc[run - 1];
      t0 += run;
      len = t0 < S ? static_cast<int>(SchedulePiece(t0, S, p.chunk_size, p.max_inference_chunksize, LT)) : 0;
      __syncthreads();  // sQ, sAcc and the gate vectors are free again
      if (len > 0) LoadTileAsync<T, LT, KD>(sQ, LDQ, Qg + t0 * DK, DK, len, DK);
      __syncthreads();
      continue;
    }
    // (1) k and v of this piece (q is in flight already); meanwhile warp 0 does the gate math
    LoadTileAsync<T, LT, KD>(sK, LDQ, Kg + t0 * DK, DK, len, DK);
    LoadTileAsync<T, LT, DVT>(sV, LDV, Vg + t0 * DV, DV, len, nE);

    // (2) gates, float32, one warp, two tokens per lane: b = cumsum(logσ f̃) by a shuffle scan,
    //     m_intra_j = b_j + max_{s≤j}(ĩ_s − b_s), m_j, exp(m_inter − m_j)·s, a_j, m', ḡ, ā
    if (warp == 0) {
      const unsigned all = 0xffffffffu;
      const int j0 = 2 * lane, j1 = 2 * lane + 1;
      const bool v0 = j0 < len, v1 = j1 < len;
      const float lf0 = v0 ? LogSigmoidF(Fg[t0 + j0]) : 0.0f, lf1 = v1 ? LogSigmoidF(Fg[t0 + j1]) : 0.0f;
      const float i0 = v0 ? Ig[t0 + j0] : 0.0f, i1 = v1 ? Ig[t0 + j1] : 0.0f;
      float incl = lf0 + lf1;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(all, incl, o);
        if (lane >= o) incl += y;
      }
      float excl = __shfl_up_sync(all, incl, 1);
      if (lane == 0) excl = 0.0f;
      const float b0 = excl + lf0, b1 = b0 + lf1;
      const float g = __shfl_sync(all, ((len - 1) & 1) ? b1 : b0, (len - 1) >> 1);
      const float u0 = v0 ? i0 - b0 : -INFINITY, u1 = v1 ? i1 - b1 : -INFINITY;
      float pmax = fmaxf(u0, u1);
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const float y = __shfl_up_sync(all, pmax, o);
        if (lane >= o) pmax = fmaxf(pmax, y);
      }
      float emax = __shfl_up_sync(all, pmax, 1);
      if (lane == 0) emax = -INFINITY;
      const float mi0 = b0 + fmaxf(emax, u0), mi1 = b1 + fmaxf(emax, fmaxf(u0, u1));
      const float mx0 = b0 + scaM, mx1 = b1 + scaM;
      const float mc0 = fmaxf(mx0, mi0), mc1 = fmaxf(mx1, mi1);
      const float a0 = v0 ? (g - b0) + i0 : -INFINITY, a1 = v1 ? (g - b1) + i1 : -INFINITY;
      float amax = fmaxf(a0, a1);
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(all, amax, o));
      const float m_next = fmaxf(g + scaM, amax);
      vecB[j0] = v0 ? b0 : 0.0f, vecB[j1] = v1 ? b1 : 0.0f;
      vecI[j0] = i0, vecI[j1] = i1;
      vecMc[j0] = v0 ? mc0 : 0.0f, vecMc[j1] = v1 ? mc1 : 0.0f;
      vecSc[j0] = v0 ? expf(mx0 - mc0) * scale : 0.0f, vecSc[j1] = v1 ? expf(mx1 - mc1) * scale : 0.0f;
      vecAbar[j0] = v0 ? expf(a0 - m_next) : 0.0f, vecAbar[j1] = v1 ? expf(a1 - m_next) : 0.0f;
      if (lane == 0) {
        scalars[0] = m_next;
        scalars[1] = expf(g + scaM - m_next);
        gate_sum += g;
      }
    }
    CpAsyncWaitAll();
    __syncthreads();
    const float scaM_next = scalars[0], scaG_bar = scalars[1];

    // (3)-(5) the piece's outputs; a states-only pass (sequence-parallel prompts) skips them
    if (!pass.states_only) {
    // (3) Sc = Q Kᵀ [LT × LT]: 16 blocks, one per warp; blocks above the diagonal stay zero
    {
      const int jb = warp / 4, sb = warp % 4;
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
      if (sb <= jb && jb * 16 < len) {
        for (int kk = 0; kk < KD; kk += 16) {
          FragA<T> a;
          FragBt<T> b;
          wmma::load_matrix_sync(a, sQ + jb * 16 * LDQ + kk, LDQ);
          wmma::load_matrix_sync(b, sK + sb * 16 * LDQ + kk, LDQ);  // col-major view of K = Kᵀ
          wmma::mma_sync(acc, a, b, acc);
        }
      }
      wmma::store_matrix_sync(sAcc + jb * 16 * LDS + sb * 16, acc, LDS, wmma::mem_row_major);
    }
    __syncthreads();

    // (4) eight threads per row j: M_js (as T, 8 keys each), Σ_s M_js; q̄_j = q_j·exp(m_inter − m_j)·s in place
    //     (KD/8 dims each) with q̄_j·n; then the row's full denominator
    {
      const int j = tid / 8, part = tid % 8;
      const float mc = vecMc[j], bj = vecB[j];
      float mv[8];
      float rs = 0.0f;
#pragma unroll
      for (int x = 0; x < 8; ++x) {
        const int s = part * 8 + x;
        float mval = 0.0f;
        if (j < len && s <= j) mval = (sAcc[j * LDS + s] * scale) * expf(((bj - vecB[s]) + vecI[s]) - mc);
        mv[x] = mval;
        rs += mval;
      }
      *reinterpret_cast<uint4*>(sM + j * LDV + part * 8) = Pack8<T>(mv);
      const float sc = vecSc[j];
      float qn = 0.0f;
#pragma unroll
      for (int x = 0; x < KD / 64; ++x) {
        const int d = part * (KD / 8) + x * 8;
        float qv[8];
        Unpack8<T>(*reinterpret_cast<const uint4*>(sQ + j * LDQ + d), qv);
#pragma unroll
        for (int y = 0; y < 8; ++y) {
          qn += qv[y] * sN[d + y];
          qv[y] *= sc;
        }
        *reinterpret_cast<uint4*>(sQ + j * LDQ + d) = Pack8<T>(qv);
      }
#pragma unroll
      for (int o = 4; o > 0; o >>= 1) {
        rs += __shfl_xor_sync(0xffffffffu, rs, o);
        qn += __shfl_xor_sync(0xffffffffu, qn, o);
      }
      if (part == 0) vecDen[j] = fmaxf(fabsf(qn * sc + rs), expf(-mc)) + p.eps;
    }
    __syncthreads();

    // (5) H = Q̄ C_T + M V [LT × DVT]: 16 blocks, one per warp, into sAcc (float32)
    {
      const int jb = warp / 4, cb = warp % 4;
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
      if (jb * 16 < len) {
        for (int kk = 0; kk < KD; kk += 16) {
          FragA<T> a;
          FragB<T> b;
          wmma::load_matrix_sync(a, sQ + jb * 16 * LDQ + kk, LDQ);
          wmma::load_matrix_sync(b, sCT + kk * LDV + cb * 16, LDV);
          wmma::mma_sync(acc, a, b, acc);
        }
        for (int kk = 0; kk <= jb * 16; kk += 16) {  // M is causal: key blocks up to the diagonal
          FragA<T> a;
          FragB<T> b;
          wmma::load_matrix_sync(a, sM + jb * 16 * LDV + kk, LDV);
          wmma::load_matrix_sync(b, sV + kk * LDV + cb * 16, LDV);
          wmma::mma_sync(acc, a, b, acc);
        }
      }
      wmma::store_matrix_sync(sAcc + jb * 16 * LDS + cb * 16, acc, LDS, wmma::mem_row_major);
    }
    __syncthreads();
    }  // outputs

    // prefetch the next piece's q into sQ (free now) while this piece finishes
    const int64_t t_next = t0 + len;
    const int len_next = t_next < S ? static_cast<int>(SchedulePiece(t_next, S, p.chunk_size, p.max_inference_chunksize, LT)) : 0;
    if (len_next > 0 && !pass.states_only) LoadTileAsync<T, LT, KD>(sQ, LDQ, Qg + t_next * DK, DK, len_next, DK);

    // (5b) h = H / den, 8 columns per thread (16-byte stores)  |  (6) n ← ḡ n + Σ_j ā_j k_j;  V ← ā ⊙ V
    {
      const int j = tid / 8, part = tid % 8;
      if (!pass.states_only && j < len && part * 8 < nE) {
        const float den = vecDen[j];
        float hv[8];
#pragma unroll
        for (int x = 0; x < 8; ++x) hv[x] = sAcc[j * LDS + part * 8 + x] / den;
        *reinterpret_cast<uint4*>(Hg + (t0 + j) * DV + part * 8) = Pack8<T>(hv);
      }
      float vv[8];
      Unpack8<T>(*reinterpret_cast<const uint4*>(sV + j * LDV + part * 8), vv);
      const float ab = vecAbar[j];
#pragma unroll
      for (int x = 0; x < 8; ++x) vv[x] *= ab;
      *reinterpret_cast<uint4*>(sV + j * LDV + part * 8) = Pack8<T>(vv);
    }
    for (int d = tid; d < KD; d += kTcThreads) {
      float n = sN[d] * scaG_bar;
#pragma unroll 4
      for (int j = 0; j < len; ++j) n += ToF(sK[j * LDQ + d]) * vecAbar[j];
      sN[d] = p.round_state_bf16 ? RoundToBf16(n) : n;
    }
    __syncthreads();

    // (7) C ← ḡ C + Kᵀ (ā ⊙ V) in the accumulators (A fragments shared across a warp's row, B across its columns);
    //     then C_T for the next piece's (5), staged through sAcc
#pragma unroll
    for (int r = 0; r < kCFrags; ++r) {
#pragma unroll
      for (int x = 0; x < cfrag[r].num_elements; ++x) cfrag[r].x[x] *= scaG_bar;
    }
    for (int kk = 0; kk < len; kk += 16) {
      FragAt<T> a[kRowBlocks];
      FragB<T> b[kWarpCols];
#pragma unroll
      for (int r = 0; r < kRowBlocks; ++r) wmma::load_matrix_sync(a[r], sK + kk * LDQ + (rb0 + r) * 16, LDQ);
#pragma unroll
      for (int c = 0; c < kWarpCols; ++c) wmma::load_matrix_sync(b[c], sV + kk * LDV + (cb0 + c) * 16, LDV);
#pragma unroll
      for (int r = 0; r < kCFrags; ++r) wmma::mma_sync(cfrag[r], a[r / kWarpCols], b[r % kWarpCols], cfrag[r]);
    }
    if (p.round_state_bf16) {  // the state this piece leaves is the stored one (mlstm_params.h); element-wise on fragments
#pragma unroll
      for (int r = 0; r < kCFrags; ++r) {
#pragma unroll
        for (int x = 0; x < cfrag[r].num_elements; ++x) cfrag[r].x[x] = RoundToBf16(cfrag[r].x[x]);
      }
    }
#pragma unroll
    for (int r = 0; r < kCFrags; ++r) {
      const int d0 = (rb0 + r / kWarpCols) * 16, c0 = (cb0 + r % kWarpCols) * 16;
      wmma::store_matrix_sync(stage, cfrag[r], 16, wmma::mem_row_major);
      __syncwarp();
      {  // lane: row lane/2, 8 columns (lane%2)·8 … +7 — one 16-byte store
        const float* src = stage + (lane / 2) * 16 + (lane % 2) * 8;
        *reinterpret_cast<uint4*>(sCT + (d0 + lane / 2) * LDV + c0 + (lane % 2) * 8) = Pack8<T>(src);
      }
      __syncwarp();
    }
    scaM = scaM_next;
    t0 = t_next;
    len = len_next;
    __syncthreads();
  }

  // final state
#pragma unroll
  for (int r = 0; r < kCFrags; ++r) {
    const int d0 = (rb0 + r / kWarpCols) * 16, c0 = (cb0 + r % kWarpCols) * 16;
    wmma::store_matrix_sync(stage, cfrag[r], 16, wmma::mem_row_major);
    __syncwarp();
    for (int x = lane; x < 256; x += 32) {
      const int64_t d = d0 + x / 16, e = c0 + x % 16;
      if (d < DK && e < nE) p.Cf()[(bh * DK + d) * DV + e0 + e] = stage[x];
    }
    __syncwarp();
  }
  if (e0 == 0) {
    for (int64_t d = tid; d < DK; d += kTcThreads) p.Nf()[bh * DK + d] = sN[d];
    if (tid == 0) p.scaM[bh] = scaM;
    if (tid == 0 && pass.gate_sum != nullptr) pass.gate_sum[bh] = gate_sum;
  }
}

template <typename T, int KD>
struct TcTag {};

template <typename T, int KD>
cudaError_t LaunchTc(const MLstmParams& p, cudaStream_t stream, TcPass pass) {
  const int num_tiles = static_cast<int>(CeilDiv(p.dv, DVT));
  const int64_t blocks = p.batch * p.heads * num_tiles;
  constexpr size_t smem = TcLayout<T, KD>::kBytes;
  cudaError_t err = AllowSharedMemory<TcTag<T, KD>>(MLstmChunkwiseTcKernel<T, KD>, smem);
  if (err != cudaSuccess) return err;
  MLstmChunkwiseTcKernel<T, KD><<<static_cast<unsigned>(blocks), kTcThreads, smem, stream>>>(p, num_tiles, pass);
  return cudaGetLastError();
}

}  // namespace tc
}  // namespace xlstm
