// The ONNX Runtime side of ai.xlstm::Linear (kernels/linear_params.h has the math and the two CUDA paths):
//
//   ai.xlstm::Linear(x T [M, K], weight T [N, K], input_ids int64 [B, S], bias T [N] optional) -> y T [M, N]
//     M = B·S. input_ids is read for its shape only: S = 1 is a decode step.
//     attribute batch_invariant (int, required): 1 runs every decode step on our batch-invariant kernels (CUDA);
//     0 only the decode shapes where our kernel beats cuBLAS (kernels/linear_params.h, LinearOwnKernelWins), cuBLAS elsewhere.
//   T: float, float16 or bfloat16.
// Shapes are checked here (errors name the op, the input, the expected and the actual shape).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "kernels/linear_params.h"
#include "ops/fused_ops.h"

namespace xlstm::ops {

inline constexpr const char* kLinearName = "Linear";

Ort::Status RunLinearCpu(OrtKernelContext* context, const LinearParams& p);
Ort::Status RunLinearCudaOp(OrtKernelContext* context, const LinearParams& p);

template <typename T, bool kCuda>
struct LinearKernel {
  LinearKernel(const OrtApi* api, const OrtKernelInfo* info) {
    int64_t value = 0;
    if (OrtStatus* status = api->KernelInfoGetAttribute_int64(info, "batch_invariant", &value)) {
      api->ReleaseStatus(status);
      error_ = MissingAttribute(kLinearName, "batch_invariant", "int 0 or 1", "1: every decode step on the batch-invariant kernels");
    } else if (value != 0 && value != 1) {
      error_ = "Linear: attribute 'batch_invariant' must be 0 or 1; found " + std::to_string(value) + ".";
    }
    batch_invariant_ = value == 1;
  }

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& x, const Ort::Custom::Tensor<T>& weight,
                      const Ort::Custom::Tensor<int64_t>& input_ids, std::optional<const Ort::Custom::Tensor<T>*> bias,
                      Ort::Custom::Tensor<T>& y) {
    if (!error_.empty()) return Ort::Status(error_.c_str(), ORT_INVALID_ARGUMENT);
    const auto& xs = x.Shape();
    const auto& ws = weight.Shape();
    const auto& ids = input_ids.Shape();
    if (ids.size() != 2) return ShapeError(kLinearName, "input_ids", ids, "rank 2 [B, S]");
    // [B·S, K], or [B, K] for a last-position-only lm_head
    if (xs.size() != 2 || (xs[0] != ids[0] * ids[1] && xs[0] != ids[0])) {
      return ShapeError(kLinearName, "x", xs, "[B·S, K] = [" + std::to_string(ids[0] * ids[1]) + ", K] or [B, K] = [" +
                                                  std::to_string(ids[0]) + ", K] for input_ids " + ShapeString(ids));
    }
    const int64_t M = xs[0];
    if (ws.size() != 2 || ws[1] != xs[1]) {
      return ShapeError(kLinearName, "weight", ws, "[N, K] = [N, " + std::to_string(xs[1]) + "] for x " + ShapeString(xs));
    }
    LinearParams p;
    p.dtype = DtypeOf<T>::value;
    p.rows = M, p.in = xs[1], p.out = ws[0];
    p.decode = ids[1] == 1;
    p.batch_invariant = batch_invariant_;
    if (bias.has_value() && *bias != nullptr) {
      const auto& bs = (*bias)->Shape();
      if (bs != std::vector<int64_t>{p.out}) return ShapeError(kLinearName, "bias", bs, "[N] = [" + std::to_string(p.out) + "]");
      p.bias = (*bias)->Data();
    }
    p.x = x.Data();
    p.weight = weight.Data();
    p.y = y.Allocate({p.rows, p.out});
    if constexpr (kCuda) {
      return RunLinearCudaOp(context, p);
    } else {
      return RunLinearCpu(context, p);
    }
  }

 private:
  std::string error_;
  bool batch_invariant_ = false;
};

}  // namespace xlstm::ops
