#include "ops/fused_ops.h"

#include <functional>

#include "cpu/fused_cpu.h"

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

}  // namespace xlstm::ops
