// CPU mLSTM kernels: plain C++, float32 math, multithreaded over (B, NH). They are the CPU execution provider's
// implementation and the oracle of the CUDA kernels. The math is HF's native kernels exactly
// (docs/hf-semantics.md, "Recurrent step" and "Chunkwise form"): the chunkwise form inside whole chunks, the
// recurrent form for the tail, on HF's segment/chunk schedule.
// Gates, stabilizer and states are float32 as in HF; the long sums (q̄·C, M·V, q̄·n, Kᵀ·V, q·k) accumulate in float64
// and are rounded once, so the oracle is at least as accurate as HF's float32 matmuls (on the fixtures HF's own
// float32 logits are up to ~3e-4 from float64; float32 sums in another order than HF's BLAS can land on the far side
// of the 1e-4 bar, float64 sums do not).
#pragma once

#include <cstdint>
#include <functional>

#include "kernels/mlstm_params.h"

namespace xlstm {

/// Runs body(i) for i in [0, count), possibly in parallel; returns when all are done.
using ParallelFor = std::function<void(int64_t count, const std::function<void(int64_t)>& body)>;

/// body(i) for every i on the calling thread.
void SerialFor(int64_t count, const std::function<void(int64_t)>& body);

/// A ParallelFor over up to `threads` std::threads (0: hardware concurrency). For tests and tools; the ORT op uses
/// ONNX Runtime's intra-op thread pool instead.
ParallelFor ThreadedFor(int threads = 0);

/// Any S ≥ 1 on HF's schedule (segments of max_inference_chunksize; ⌊T/L⌋·L tokens chunkwise, the rest recurrent;
/// a segment of one token is the step). Writes h, C, n, m.
void MLstmChunkwiseCpu(const MLstmParams& p, const ParallelFor& parallel_for);

/// One token (S = 1) in the recurrent form: HF's mlstm_recurrent_step_native with float32 state.
void MLstmStepCpu(const MLstmParams& p, const ParallelFor& parallel_for);

}  // namespace xlstm
