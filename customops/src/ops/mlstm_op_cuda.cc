// The CUDA execution provider's side of the mLSTM ops: the node's compute stream comes from the kernel context
// (no ONNX Runtime sources or CUDA provider headers needed); the launchers only enqueue work on it.
#include <cstdlib>
#include <cstring>
#include <string>

#include "kernels/mlstm_fw.cuh"
#include "kernels/mlstm_lanes.cuh"
#include "ops/mlstm_op.h"

namespace xlstm::ops {

namespace {

std::string Describe(const MLstmParams& p) {
  return "q [" + std::to_string(p.batch) + "," + std::to_string(p.heads) + "," + std::to_string(p.seq) + "," +
         std::to_string(p.dqk) + "], DV " + std::to_string(p.dv) + ", " + DtypeName(p.dtype);
}

/// XLSTM_LANES_ONE_STREAM=1: MLstmLanes keeps both lanes on the compute stream (to measure what the fork gains).
bool LanesOnOneStream() {
  static const bool one = [] {
    const char* v = std::getenv("XLSTM_LANES_ONE_STREAM");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return one;
}

/// The node's second stream on the current device, made on the first call outside stream capture; null when the
/// lanes run on one stream (asked for, being captured before one was made, another device, or it could not be made).
LaneStream* SideStream(LaneStreamOwner& side, cudaStream_t stream) {
  if (LanesOnOneStream()) return nullptr;
  int device = -1;
  if (cudaGetDevice(&device) != cudaSuccess) return nullptr;
  if (side != nullptr) return side->device() == device ? side.get() : nullptr;
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) return nullptr;
  LaneStream* made = nullptr;
  if (LaneStream::Create(&made) != cudaSuccess) {
    (void)cudaGetLastError();  // not fatal: the lanes run one after the other
    return nullptr;
  }
  side.reset(made);
  return made;
}

}  // namespace

void LaneStreamDeleter::operator()(LaneStream* s) const { delete s; }

Ort::Status RunCuda(OrtKernelContext* context, const MLstmParams& p, Form form) {
  auto stream = static_cast<cudaStream_t>(Ort::KernelContext(context).GetGPUComputeStream());
  // a last-error note an earlier, handled call left on this thread is not ours to report (fused_ops_cuda.cc, Stream)
  (void)cudaGetLastError();
  const cudaError_t err = form == Form::kStep ? LaunchMLstmStepFw(p, stream) : LaunchMLstmChunkwiseFw(p, stream);
  if (err == cudaSuccess) return Ort::Status{nullptr};
  const std::string message = std::string(OpName(form)) + ": CUDA kernel '" + MLstmChunkwiseKernelName(p) +
                              "' failed to launch for " + Describe(p) + ": " + cudaGetErrorString(err);
  return Ort::Status(message.c_str(), ORT_EP_FAIL);
}

Ort::Status RunCudaLanes(OrtKernelContext* context, const MLstmParams& decode, const MLstmParams& prompt,
                         const TokenRows& rows, LaneStreamOwner& side) {
  auto stream = static_cast<cudaStream_t>(Ort::KernelContext(context).GetGPUComputeStream());
  (void)cudaGetLastError();  // as in RunCuda
  const cudaError_t err = LaunchMLstmLanesFw(decode, prompt, rows, stream, SideStream(side, stream));
  if (err == cudaSuccess) return Ort::Status{nullptr};
  const std::string message = std::string(kLanesName) + ": CUDA launch failed for the decode lane's step (" +
                              Describe(decode) + ") and the prompt lane's '" + MLstmChunkwiseKernelName(prompt) +
                              "' after its layout copy (" + Describe(prompt) + "): " + cudaGetErrorString(err);
  return Ort::Status(message.c_str(), ORT_EP_FAIL);
}

}  // namespace xlstm::ops
