// The two-lane launcher (mlstm_lanes.cuh): host code only; the kernels are the step's and the chunkwise ones.
#include "kernels/mlstm_fw.cuh"
#include "kernels/mlstm_lanes.cuh"

namespace xlstm {

cudaError_t LaneStream::Create(LaneStream** out) {
  *out = nullptr;
  auto* s = new LaneStream();
  int least = 0, greatest = 0;
  cudaError_t err = cudaGetDevice(&s->device_);
  if (err == cudaSuccess) err = cudaDeviceGetStreamPriorityRange(&least, &greatest);
  if (err == cudaSuccess) err = cudaStreamCreateWithPriority(&s->stream_, cudaStreamNonBlocking, greatest);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&s->fork_, cudaEventDisableTiming);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&s->join_, cudaEventDisableTiming);
  if (err != cudaSuccess) {
    delete s;
    return err;
  }
  *out = s;
  return cudaSuccess;
}

LaneStream::~LaneStream() {
  // errors are ignored: at process exit the context may already be gone, and a destructor cannot report them
  if (join_ != nullptr) (void)cudaEventDestroy(join_);
  if (fork_ != nullptr) (void)cudaEventDestroy(fork_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

namespace {

bool HasRows(const MLstmParams& p) { return p.batch * p.heads > 0; }

cudaError_t LaunchStepLane(const MLstmParams& decode, cudaStream_t stream) {
  return HasRows(decode) ? LaunchMLstmStepFw(decode, stream) : cudaSuccess;
}

cudaError_t LaunchPromptLane(const MLstmParams& prompt, cudaStream_t stream) {
  return HasRows(prompt) ? LaunchMLstmChunkwiseFw(prompt, stream) : cudaSuccess;
}

}  // namespace

cudaError_t LaunchMLstmLanesFw(const MLstmParams& decode, const MLstmParams& prompt, cudaStream_t stream, LaneStream* side) {
  if (decode.seq != 1) return cudaErrorInvalidValue;
  if (side == nullptr || !HasRows(decode) || !HasRows(prompt)) {
    const cudaError_t err = LaunchPromptLane(prompt, stream);
    return err != cudaSuccess ? err : LaunchStepLane(decode, stream);
  }
  // fork: the side stream waits for everything already on `stream` (the lanes' q, k, v and gates)
  cudaError_t err = cudaEventRecord(side->fork(), stream);
  if (err != cudaSuccess) return err;
  err = cudaStreamWaitEvent(side->stream(), side->fork(), 0);
  if (err != cudaSuccess) return err;
  // the prompt first: its CTAs are few and long, the step's many and short
  const cudaError_t prompt_err = LaunchPromptLane(prompt, side->stream());
  // join, whatever the launch did: a capture must not end with the side stream still forked
  const cudaError_t record_err = cudaEventRecord(side->join(), side->stream());
  const cudaError_t step_err = LaunchStepLane(decode, stream);
  const cudaError_t wait_err = record_err == cudaSuccess ? cudaStreamWaitEvent(stream, side->join(), 0) : record_err;
  if (prompt_err != cudaSuccess) return prompt_err;
  if (step_err != cudaSuccess) return step_err;
  return wait_err;
}

}  // namespace xlstm
