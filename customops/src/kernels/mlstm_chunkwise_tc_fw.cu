// Dispatch of the tensor-core chunkwise kernel (mlstm_chunkwise_tc_kernel.cuh) over element type and KD, and the
// choice between it, the SIMT kernel and the step kernel.
#include "kernels/mlstm_chunkwise_tc_fw.cuh"
#include "kernels/mlstm_fw.cuh"

namespace xlstm {
namespace {

template <typename T>
cudaError_t LaunchTcDims(const MLstmParams& p, cudaStream_t stream) {
  if (p.dqk <= 64) return tc::LaunchTc<T, 64>(p, stream);
  if (p.dqk <= 128) return tc::LaunchTc<T, 128>(p, stream);
  return tc::LaunchTc<T, 256>(p, stream);
}

}  // namespace

bool MLstmTensorCoreSupports(const MLstmParams& p) {
  return p.dtype != Dtype::kFloat32 && p.dqk <= 256 && p.dqk % 8 == 0 && p.dv % 8 == 0;
}

cudaError_t LaunchMLstmChunkwiseTensorCore(const MLstmParams& p, cudaStream_t stream) {
  if (!MLstmTensorCoreSupports(p)) return cudaErrorInvalidValue;
  if (p.batch * p.heads == 0) return cudaSuccess;
  if (p.dtype == Dtype::kFloat16) return LaunchTcDims<__half>(p, stream);
  return LaunchTcDims<__nv_bfloat16>(p, stream);
}

const char* MLstmChunkwiseKernelName(const MLstmParams& p) {
  if (p.seq == 1) return "step";  // HF's step kernel: one token is a segment of one
  switch (p.cuda_path) {
    case CudaPath::kSimt: return "simt";
    case CudaPath::kTensorCore: return "tensor_core";
    default: return MLstmTensorCoreSupports(p) ? "tensor_core" : "simt";
  }
}

cudaError_t LaunchMLstmChunkwiseFw(const MLstmParams& p, cudaStream_t stream) {
  if (MLstmParamsError(p) != nullptr) return cudaErrorInvalidValue;
  if (p.seq == 1) return LaunchMLstmStepFw(p, stream);  // reads and writes either state type itself
  const bool tensor_core = p.cuda_path == CudaPath::kTensorCore ||
                           (p.cuda_path == CudaPath::kAuto && MLstmTensorCoreSupports(p));
  // the chunkwise kernels take float32 state: a bfloat16 state goes through float32 scratch around them
  return LaunchMLstmWithFloatState(p, stream, tensor_core ? LaunchMLstmChunkwiseTensorCore : LaunchMLstmChunkwiseSimt);
}

}  // namespace xlstm
