// The CUDA side of the fused ops: the node's stream from the kernel context, then the launcher.
#include <string>

#include "kernels/fused_fw.cuh"
#include "kernels/linear_fw.cuh"
#include "ops/linear_op.h"
#include "ops/fused_ops.h"

namespace xlstm::ops {

namespace {

Ort::Status Status(const char* op, cudaError_t err) {
  if (err == cudaSuccess) return Ort::Status{nullptr};
  return Ort::Status((std::string(op) + ": CUDA launch failed: " + cudaGetErrorString(err)).c_str(), ORT_EP_FAIL);
}

// The node's stream. It also clears the runtime's last-error note of this thread: an earlier call (ONNX Runtime's or
// the host's) may have failed and been handled by its caller, and cudaGetLastError after our launch would otherwise
// report that failure as ours. An error that spoils the context stays and fails our launch anyway.
cudaStream_t Stream(OrtKernelContext* context) {
  (void)cudaGetLastError();
  return static_cast<cudaStream_t>(Ort::KernelContext(context).GetGPUComputeStream());
}

}  // namespace

Ort::Status RunFusedCuda(OrtKernelContext* context, const GatesParams& p) {
  return Status(kGatesName, LaunchMLstmGates(p, Stream(context)));
}

Ort::Status RunFusedCuda(OrtKernelContext* context, const SwiGluParams& p) {
  return Status(kSwiGluName, LaunchSwiGlu(p, Stream(context)));
}

Ort::Status RunFusedCuda(OrtKernelContext* context, const HeadNormGateParams& p) {
  return Status(kHeadNormGateName, LaunchHeadNormGate(p, Stream(context)));
}

Ort::Status RunLinearCudaOp(OrtKernelContext* context, const LinearParams& p) {
  const std::string err = RunLinearCuda(p, Stream(context));
  if (err.empty()) return Ort::Status{nullptr};
  return Ort::Status((std::string(kLinearName) + ": " + err).c_str(), ORT_EP_FAIL);
}

}  // namespace xlstm::ops
