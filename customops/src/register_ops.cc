// The one registration table of the library (onnxruntime-extensions' cuda_ops.cc idea): every op, element type
// and execution provider in one list, added to one "ai.xlstm" domain per session options.
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "ops/fused_ops.h"
#include "ops/linear_op.h"
#include "ops/mlstm_op.h"
#include "xlstm_customops.h"

namespace {

using xlstm::ops::Form;
using xlstm::ops::MLstmKernel;
using xlstm::ops::MLstmLanesKernel;
using LiteOp = Ort::Custom::OrtLiteCustomOp;

constexpr const char* kCpu = "CPUExecutionProvider";
constexpr const char* kCuda = "CUDAExecutionProvider";

template <typename T, bool kOnCuda>
void AddOps(std::vector<std::unique_ptr<LiteOp>>& ops) {
  const char* ep = kOnCuda ? kCuda : kCpu;
  // the state (C, n) in float32, or bfloat16 (--state-dtype bf16)
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<MLstmKernel<T, float, Form::kChunkwise, kOnCuda>>(xlstm::ops::kChunkwiseName, ep));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<MLstmKernel<T, float, Form::kStep, kOnCuda>>(xlstm::ops::kStepName, ep));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<MLstmKernel<T, Ort::BFloat16_t, Form::kChunkwise, kOnCuda>>(xlstm::ops::kChunkwiseName, ep));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<MLstmKernel<T, Ort::BFloat16_t, Form::kStep, kOnCuda>>(xlstm::ops::kStepName, ep));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<MLstmLanesKernel<T, float, kOnCuda>>(xlstm::ops::kLanesName, ep));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<MLstmLanesKernel<T, Ort::BFloat16_t, kOnCuda>>(xlstm::ops::kLanesName, ep));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<xlstm::ops::SwiGluKernel<T, kOnCuda>>(xlstm::ops::kSwiGluName, ep));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<xlstm::ops::HeadNormGateKernel<T, kOnCuda>>(xlstm::ops::kHeadNormGateName, ep));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<xlstm::ops::HeadNormGateLanesKernel<T, kOnCuda>>(xlstm::ops::kHeadNormGateLanesName, ep));
  ops.emplace_back(Ort::Custom::CreateLiteCustomOp<xlstm::ops::LinearKernel<T, kOnCuda>>(xlstm::ops::kLinearName, ep));
  if constexpr (std::is_same_v<T, float>) {  // the gates are float32 whatever the model type
    ops.emplace_back(Ort::Custom::CreateLiteCustomOp<xlstm::ops::MLstmGatesKernel<kOnCuda>>(xlstm::ops::kGatesName, ep));
    ops.emplace_back(Ort::Custom::CreateLiteCustomOp<xlstm::ops::MLstmGatesLanesKernel<kOnCuda>>(xlstm::ops::kGatesLanesName, ep));
  }
}

/// The ops live as long as the process: ONNX Runtime keeps pointers to them in every session that uses them.
const std::vector<std::unique_ptr<LiteOp>>& Ops() {
  static const std::vector<std::unique_ptr<LiteOp>> ops = [] {
    std::vector<std::unique_ptr<LiteOp>> list;
    AddOps<float, false>(list);
    AddOps<Ort::Float16_t, false>(list);
    AddOps<Ort::BFloat16_t, false>(list);
#ifdef XLSTM_WITH_CUDA
    AddOps<float, true>(list);
    AddOps<Ort::Float16_t, true>(list);
    AddOps<Ort::BFloat16_t, true>(list);
#endif
    return list;
  }();
  return ops;
}

std::mutex domains_mutex;
std::vector<Ort::CustomOpDomain>& Domains() {  // one per registration, kept alive with the ops
  static std::vector<Ort::CustomOpDomain> domains;
  return domains;
}

}  // namespace

extern "C" ORT_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    const OrtApi* any = api_base->GetApi(1);
    const std::string message = std::string("libxlstm_customops was built against ONNX Runtime API version ") +
                                std::to_string(ORT_API_VERSION) + " (1." + std::to_string(ORT_API_VERSION) +
                                "); this ONNX Runtime is " + api_base->GetVersionString() + ".";
    return any != nullptr ? any->CreateStatus(ORT_FAIL, message.c_str()) : nullptr;
  }
  Ort::InitApi(api);
  try {
    Ort::CustomOpDomain domain{xlstm::ops::kDomain};
    for (const auto& op : Ops()) domain.Add(op.get());
    Ort::UnownedSessionOptions{options}.Add(domain);
    std::lock_guard<std::mutex> lock(domains_mutex);
    Domains().push_back(std::move(domain));
    return nullptr;
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  } catch (const std::exception& e) {
    return Ort::Status(e).release();
  }
}
