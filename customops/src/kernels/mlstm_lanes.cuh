// The mixed graph's two cells in one launch call (docs/exported-graph.md, "The mixed graph"): the decode lane's step
// (B rows, one token each) and the prompt lane's chunkwise form (P rows of L tokens), both read from the stream's q, k,
// v rows. The decode rows [B, NH·D] are the step's [B, NH, 1, D] as they are; the prompt rows are token-major
// [P·L, NH·D], so one kernel first copies them into the cell's [P, NH, L, D] (stream-ordered scratch). At batch 1 the prompt's
// chunkwise kernel fills about half of the SMs for its whole run (its chunks go one after another), while the step is
// bound by the state it streams; run one after the other, a mixed step pays for both. Here the prompt's kernel is
// forked onto a second stream and joined back, so the two overlap. The fork and join are events, which CUDA-graph
// capture records as two branches of the graph (docs/serving.md, "Two cells at once").
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/mlstm_params.h"

namespace xlstm {

/// A second stream on one device and the two events that fork it from a caller's stream and join it back. Owns all
/// three. Create it outside stream capture (creating a stream while a capture runs is not allowed everywhere).
class LaneStream {
 public:
  /// Creates the stream (the device's highest priority, so that without a graph the prompt's few long CTAs start
  /// first) and the events on the current device. Returns the first error; *out is null then.
  static cudaError_t Create(LaneStream** out);
  ~LaneStream();
  LaneStream(const LaneStream&) = delete;
  LaneStream& operator=(const LaneStream&) = delete;

  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cudaEvent_t fork() const { return fork_; }
  cudaEvent_t join() const { return join_; }

 private:
  LaneStream() = default;
  int device_ = -1;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t fork_ = nullptr;
  cudaEvent_t join_ = nullptr;
};

/// Enqueues the prompt lane's layout copy (its q, k, v taken from `rows`, token-major) and the decode lane's step
/// (decode.seq = 1) on `stream`, and the prompt lane's chunkwise cell on `side`'s stream, forked after the copy and
/// joined back before this returns: what is enqueued on `stream` afterwards sees both lanes' outputs. side == nullptr
/// runs both on `stream`, prompt first. A lane with no rows is skipped. The lanes' outputs must not overlap each other
/// or the inputs (they are separate graph values). Returns the first error; the join is enqueued whatever happened, so
/// a capture is never left with an unjoined stream.
cudaError_t LaunchMLstmLanesFw(const MLstmParams& decode, const MLstmParams& prompt, const TokenRows& rows,
                               cudaStream_t stream, LaneStream* side);

/// dst [P, NH, L, D] from token-major src [P·L, NH·D] for q, k (D = dqk) and v (D = dv) of p in one launch, elements of
/// p.dtype; dst holds q, then k, then v, each contiguous. The layout copy MLstmLanes runs before the prompt's cell.
cudaError_t LaunchTokenRowsToHeads(const MLstmParams& p, const TokenRows& rows, void* dst, cudaStream_t stream);

}  // namespace xlstm
