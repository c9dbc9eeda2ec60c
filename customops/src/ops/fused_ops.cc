#include "ops/fused_ops.h"

#include <functional>

#include "cpu/fused_cpu.h"
#include "cpu/linear_cpu.h"
#include "ops/linear_op.h"

namespace xlstm::ops {

Ort::Status RunFusedCpu(OrtKernelContext* context, const GatesParams& p) {
  MLstmGatesCpu(p, OrtParallelFor(context));
  return Ort::Status{nullptr};
}

Ort::Status RunFusedCpu(OrtKernelContext* context, const SwiGluParams& p) {
  SwiGluCpu(p, OrtParallelFor(context));
  return Ort::Status{nullptr};
}

Ort::Status RunFusedCpu(OrtKernelContext* context, const HeadNormGateParams& p) {
  HeadNormGateCpu(p, OrtParallelFor(context));
  return Ort::Status{nullptr};
}

Ort::Status RunLinearCpu(OrtKernelContext* context, const LinearParams& p) {
  LinearCpu(p, OrtParallelFor(context));
  return Ort::Status{nullptr};
}

}  // namespace xlstm::ops
