#include "ops/fused_ops.h"

#include <functional>

#include "cpu/fused_cpu.h"

namespace xlstm::ops {

float FloatAttributeOr(const OrtApi* api, const OrtKernelInfo* info, const char* name, float fallback) {
  float value = 0.0f;
  OrtStatus* status = api->KernelInfoGetAttribute_float(info, name, &value);
  if (status != nullptr) {
    api->ReleaseStatus(status);
    return fallback;
  }
  return value;
}

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
