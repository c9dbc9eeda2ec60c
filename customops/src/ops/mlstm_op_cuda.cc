// The CUDA execution provider's side of the mLSTM ops: the node's compute stream comes from the kernel context
// (no ONNX Runtime sources or CUDA provider headers needed); the launchers only enqueue work on it.
#include <string>

#include "kernels/mlstm_fw.cuh"
#include "ops/mlstm_op.h"

namespace xlstm::ops {

Ort::Status RunCuda(OrtKernelContext* context, const MLstmParams& p, Form form) {
  auto stream = static_cast<cudaStream_t>(Ort::KernelContext(context).GetGPUComputeStream());
  // a last-error note an earlier, handled call left on this thread is not ours to report (fused_ops_cuda.cc, Stream)
  (void)cudaGetLastError();
  const cudaError_t err = form == Form::kStep ? LaunchMLstmStepFw(p, stream) : LaunchMLstmChunkwiseFw(p, stream);
  if (err == cudaSuccess) return Ort::Status{nullptr};
  const std::string message = std::string(OpName(form)) + ": CUDA kernel '" + MLstmChunkwiseKernelName(p) +
                              "' failed to launch for q [" + std::to_string(p.batch) + "," + std::to_string(p.heads) +
                              "," + std::to_string(p.seq) + "," + std::to_string(p.dqk) + "], DV " + std::to_string(p.dv) +
                              ", " + DtypeName(p.dtype) + ": " + cudaGetErrorString(err);
  return Ort::Status(message.c_str(), ORT_EP_FAIL);
}

}  // namespace xlstm::ops
