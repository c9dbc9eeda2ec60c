// Parameters of one mLSTM cell call, shared by the CPU kernels, the CUDA launchers and the ORT op wrappers.
// Plain C++ (no ONNX Runtime, no CUDA types) so that tests and benchmarks can use the kernels without either.
//
// Shapes use mlstm_kernels' letters: B batch, NH heads, S tokens, DQK q/k head dim, DV v head dim, L chunk size.
//   q, k  [B, NH, S, DQK]   v, h [B, NH, S, DV]    (element type: dtype)
//   igate, fgate [B, NH, S] (pre-activations, already soft-capped; float32)
//   C [B, NH, DQK, DV]   n [B, NH, DQK] (state_dtype: float32, or bfloat16 with --state-dtype bf16)   m [B, NH, 1]
//   (float32 always); in and out. The math is float32 whatever the state is stored in.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define XLSTM_HOST_DEVICE __host__ __device__
#else
#define XLSTM_HOST_DEVICE
#endif

namespace xlstm {

/// Element type of q, k, v and h, and of the stored C and n (MLstmParams::state_dtype). Gates and the stabilizer m are
/// always float32.
enum class Dtype { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline const char* DtypeName(Dtype t) {
  switch (t) {
    case Dtype::kFloat32: return "float32";
    case Dtype::kFloat16: return "float16";
    case Dtype::kBFloat16: return "bfloat16";
  }
  return "?";
}

/// Which CUDA chunkwise kernel runs (tests and benchmarks pin one; the op uses kAuto).
enum class CudaPath { kAuto = 0, kSimt = 1, kTensorCore = 2 };

struct MLstmParams {
  Dtype dtype = Dtype::kFloat32;   // element type of matQ, matK, matV, matH
  const void* matQ = nullptr;      // [B, NH, S, DQK]
  const void* matK = nullptr;      // [B, NH, S, DQK]
  const void* matV = nullptr;      // [B, NH, S, DV]
  const float* vecI = nullptr;     // [B, NH, S] input-gate pre-activations ĩ
  const float* vecF = nullptr;     // [B, NH, S] forget-gate pre-activations f̃
  // C and n are stored as state_dtype: float32, or bfloat16 (half the bytes a decode step streams). Only the CUDA step
  // kernel reads and writes bfloat16 itself; every other kernel takes float32 (C0f() ...), and the op converts around
  // them (mlstm_op.h). m stays float32: 8 values a layer, and rounding it would rescale the whole normalizer.
  Dtype state_dtype = Dtype::kFloat32;
  // With a bfloat16 state, C and n are rounded to bfloat16 after every piece of the schedule (each chunk, each recurrent
  // token), not only at the end of the call: the state a piece leaves is then the state stored between calls, so a
  // prompt read in pieces that end on piece boundaries (the serving engine's) gives the bits of one call. The op sets it
  // for the float32 kernels it runs on converted copies; the step kernel's one piece is rounded as it is stored.
  bool round_state_bf16 = false;
  const void* matC0 = nullptr;     // [B, NH, DQK, DV] initial matrix memory
  const void* vecN0 = nullptr;     // [B, NH, DQK] initial normalizer
  const float* scaM0 = nullptr;    // [B, NH, 1] initial stabilizer (0 means "start", as HF's cache)
  void* matH = nullptr;            // [B, NH, S, DV] output, element type dtype
  void* matC = nullptr;            // [B, NH, DQK, DV] final matrix memory
  void* vecN = nullptr;            // [B, NH, DQK] final normalizer
  float* scaM = nullptr;           // [B, NH, 1] final stabilizer

  // The state as float32, for the kernels that take only that (state_dtype must be kFloat32).
  XLSTM_HOST_DEVICE const float* C0f() const { return static_cast<const float*>(matC0); }
  XLSTM_HOST_DEVICE const float* N0f() const { return static_cast<const float*>(vecN0); }
  XLSTM_HOST_DEVICE float* Cf() const { return static_cast<float*>(matC); }
  XLSTM_HOST_DEVICE float* Nf() const { return static_cast<float*>(vecN); }

  int64_t batch = 0;               // B
  int64_t heads = 0;               // NH
  int64_t seq = 0;                 // S (≥ 1)
  int64_t dqk = 0;                 // DQK
  int64_t dv = 0;                  // DV
  // The schedule settings and eps have no defaults here: they come from the node's attributes (the exporter writes
  // the model's config.json values), and MLstmParamsError refuses a call that did not set them.
  int64_t chunk_size = 0;               // L: HF's chunk_size (≥ 1)
  int64_t max_inference_chunksize = 0;  // HF's segment length, model-level segmentation (≥ 1)
  float eps = -1.0f;                    // ≥ 0, added to the denominator after the max (docs/numerics.md, "The denominator")
  float qk_scale = 0.0f;                // DQK^-0.5, applied to q only (docs/numerics.md, "Only q is scaled")
  CudaPath cuda_path = CudaPath::kAuto;
  // Sequence-parallel prompts on the tensor-core kernel (mlstm_chunkwise_tc_fw.cu): 0, the launcher's choice (segments
  // when one CTA per (row, head, tile) leaves SMs idle); 1, never; P ≥ 2, P segments where the prompt allows them
  // (tests and benchmarks pin it).
  int seq_parallel = 0;
};

/// A prompt lane's q, k and v where the mixed graph's stream holds them (ai.xlstm::MLstmLanes): token-major rows
/// [P·L, NH·D] (D = DQK for q and k, DV for v), which the op lays out as the cell's [P, NH, L, D] before the cell runs.
struct TokenRows {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
};

/// Why the cell cannot run with p (a sequence length, schedule setting or eps that is not set or out of range),
/// or nullptr. The ops check their attributes first and name them; this is the kernels' own precondition.
inline const char* MLstmParamsError(const MLstmParams& p) {
  if (p.seq < 1) return "mLSTM: the sequence length S must be at least 1";
  if (p.chunk_size < 1) return "mLSTM: chunk_size must be at least 1 (not set?)";
  if (p.max_inference_chunksize < 1) return "mLSTM: max_inference_chunksize must be at least 1 (not set?)";
  if (!(p.eps >= 0.0f)) return "mLSTM: eps must be a non-negative number (not set?)";
  return nullptr;
}

/// DQK^-0.5 as HF computes it (a Python float, rounded to float32 when it meets a float32 tensor).
inline float QkScale(int64_t dqk) { return static_cast<float>(std::pow(static_cast<double>(dqk), -0.5)); }

/// HF's native schedule (docs/hf-semantics.md, "The inference schedule"), token by token: the sequence is cut into
/// segments of max_inference_chunksize; in each segment of T tokens the first ⌊T/L⌋·L run in the chunkwise form,
/// chunk by chunk, and the rest one token at a time in the recurrent form (a segment of one token is HF's step kernel: the same math). Returns the length of the
/// piece that starts at token t: a chunk of L tokens (cut to at most max_piece when L is larger: the chunkwise form
/// is exact over any split), or 1 for a recurrent token. The C# Schedule (graph builder) states the same rules; both
/// are tested against tests/golden/hf_schedule.txt.
XLSTM_HOST_DEVICE inline int64_t SchedulePiece(int64_t t, int64_t seq, int64_t chunk, int64_t segment, int64_t max_piece) {
  const int64_t seg0 = (t / segment) * segment;
  const int64_t seg_len = (seq - seg0 < segment) ? seq - seg0 : segment;
  const int64_t pos = t - seg0;
  if (seg_len == 1) return 1;
  const int64_t chunked = (seg_len / chunk) * chunk;
  if (pos < chunked) {
    const int64_t left = chunk - pos % chunk;
    return left < max_piece ? left : max_piece;
  }
  return 1;
}

/// Whether the piece of length len at token t is a chunk (chunkwise form) rather than a recurrent token.
XLSTM_HOST_DEVICE inline bool ScheduleIsChunk(int64_t t, int64_t seq, int64_t chunk, int64_t segment) {
  const int64_t seg0 = (t / segment) * segment;
  const int64_t seg_len = (seq - seg0 < segment) ? seq - seg0 : segment;
  if (seg_len == 1) return false;
  return t - seg0 < (seg_len / chunk) * chunk;
}

}  // namespace xlstm
