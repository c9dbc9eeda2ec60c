// The ONNX Runtime side of the fused ops around the cell (kernels/fused_params.h has the math):
//
//   ai.xlstm::MLstmGates(gates float [B·S, 2NH], attention_mask int64 [B, S]) -> (igate, fgate float [B, NH, S])
//     attribute soft_cap (float, required; 0: no cap)
//   ai.xlstm::SwiGlu(x T [N, 2F]) -> y T [N, F]
//   ai.xlstm::MultiHeadNormGate(h T [B, NH, S, DV], o T [B·S, NH·DV], weight T [NH·DV], bias T [NH·DV]) -> y T [B·S, NH·DV]
//     attribute eps (float, required)
// A missing attribute is an error that names the op and the attribute (no defaults).
//   T: float, float16 or bfloat16.
// Shapes are checked here (errors name the op, the input, the expected and the actual shape); the math is in the
// CPU kernels (cpu/fused_cpu.h) and the CUDA launchers (kernels/fused_fw.cuh).
#pragma once

#include <string>
#include <vector>

#include "kernels/fused_params.h"
#include "ops/mlstm_op.h"

namespace xlstm::ops {

inline constexpr const char* kGatesName = "MLstmGates";
inline constexpr const char* kSwiGluName = "SwiGlu";
inline constexpr const char* kHeadNormGateName = "MultiHeadNormGate";

Ort::Status RunFusedCpu(OrtKernelContext* context, const GatesParams& p);
Ort::Status RunFusedCpu(OrtKernelContext* context, const SwiGluParams& p);
Ort::Status RunFusedCpu(OrtKernelContext* context, const HeadNormGateParams& p);
Ort::Status RunFusedCuda(OrtKernelContext* context, const GatesParams& p);
Ort::Status RunFusedCuda(OrtKernelContext* context, const SwiGluParams& p);
Ort::Status RunFusedCuda(OrtKernelContext* context, const HeadNormGateParams& p);

inline Ort::Status ShapeError(const char* op, const char* input, const std::vector<int64_t>& actual, const std::string& expected) {
  const std::string m = std::string(op) + ": input '" + input + "' has shape " + ShapeString(actual) + "; expected " + expected + ".";
  return Ort::Status(m.c_str(), ORT_INVALID_ARGUMENT);
}

template <typename Params, bool kCuda>
Ort::Status RunFused(OrtKernelContext* context, const Params& p) {
  if constexpr (kCuda) {
    return RunFusedCuda(context, p);
  } else {
    return RunFusedCpu(context, p);
  }
}

template <bool kCuda>
struct MLstmGatesKernel {
  MLstmGatesKernel(const OrtApi* api, const OrtKernelInfo* info)
      : soft_cap_(RequiredFloat(api, info, kGatesName, "soft_cap", "HF's gate_soft_cap, 0 for none", error_)) {}

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<float>& gates,
                      const Ort::Custom::Tensor<int64_t>& mask, Ort::Custom::Tensor<float>& igate,
                      Ort::Custom::Tensor<float>& fgate) {
    if (!error_.empty()) return Ort::Status(error_.c_str(), ORT_INVALID_ARGUMENT);
    const auto& g = gates.Shape();
    const auto& m = mask.Shape();
    if (m.size() != 2) return ShapeError(kGatesName, "attention_mask", m, "rank 2 [B,S]");
    if (g.size() != 2 || g[0] != m[0] * m[1] || g[1] % 2 != 0) {
      return ShapeError(kGatesName, "gates", g, "[B·S, 2·NH] = [" + std::to_string(m[0] * m[1]) + ", 2·NH] for attention_mask " + ShapeString(m));
    }
    if (!(soft_cap_ >= 0.0f)) return Ort::Status("MLstmGates: attribute 'soft_cap' must be 0 (none) or positive.", ORT_INVALID_ARGUMENT);
    GatesParams p;
    p.batch = m[0], p.seq = m[1], p.heads = g[1] / 2, p.soft_cap = soft_cap_;
    p.gates = gates.Data();
    p.mask = mask.Data();
    p.igate = igate.Allocate({p.batch, p.heads, p.seq});
    p.fgate = fgate.Allocate({p.batch, p.heads, p.seq});
    return RunFused<GatesParams, kCuda>(context, p);
  }

 private:
  std::string error_;  // declared before soft_cap_: the constructor writes it while reading the attribute
  float soft_cap_;
};

template <typename T, bool kCuda>
struct SwiGluKernel {
  SwiGluKernel(const OrtApi*, const OrtKernelInfo*) {}

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& x, Ort::Custom::Tensor<T>& y) {
    const auto& s = x.Shape();
    if (s.size() != 2 || s[1] % 2 != 0) return ShapeError(kSwiGluName, "x", s, "[N, 2F] (gate columns, then z)");
    SwiGluParams p;
    p.dtype = DtypeOf<T>::value;
    p.rows = s[0], p.width = s[1] / 2;
    p.x = x.Data();
    p.y = y.Allocate({p.rows, p.width});
    return RunFused<SwiGluParams, kCuda>(context, p);
  }
};

template <typename T, bool kCuda>
struct HeadNormGateKernel {
  HeadNormGateKernel(const OrtApi* api, const OrtKernelInfo* info)
      : eps_(RequiredFloat(api, info, kHeadNormGateName, "eps", "HF's norm_eps", error_)) {}

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& h, const Ort::Custom::Tensor<T>& o,
                      const Ort::Custom::Tensor<T>& weight, const Ort::Custom::Tensor<T>& bias, Ort::Custom::Tensor<T>& y) {
    if (!error_.empty()) return Ort::Status(error_.c_str(), ORT_INVALID_ARGUMENT);
    if (!(eps_ >= 0.0f)) return Ort::Status("MultiHeadNormGate: attribute 'eps' must be a non-negative number.", ORT_INVALID_ARGUMENT);
    const auto& hs = h.Shape();
    if (hs.size() != 4) return ShapeError(kHeadNormGateName, "h", hs, "rank 4 [B,NH,S,DV]");
    const int64_t B = hs[0], NH = hs[1], S = hs[2], DV = hs[3];
    const std::string flat = "[" + std::to_string(B * S) + "," + std::to_string(NH * DV) + "] = [B·S, NH·DV] for h " + ShapeString(hs);
    if (o.Shape() != std::vector<int64_t>{B * S, NH * DV}) return ShapeError(kHeadNormGateName, "o", o.Shape(), flat);
    const std::string vec = "[" + std::to_string(NH * DV) + "] = [NH·DV] for h " + ShapeString(hs);
    if (weight.Shape() != std::vector<int64_t>{NH * DV}) return ShapeError(kHeadNormGateName, "weight", weight.Shape(), vec);
    if (bias.Shape() != std::vector<int64_t>{NH * DV}) return ShapeError(kHeadNormGateName, "bias", bias.Shape(), vec);
    HeadNormGateParams p;
    p.dtype = DtypeOf<T>::value;
    p.batch = B, p.heads = NH, p.seq = S, p.dv = DV, p.eps = eps_;
    p.h = h.Data(), p.o = o.Data(), p.weight = weight.Data(), p.bias = bias.Data();
    p.y = y.Allocate({B * S, NH * DV});
    return RunFused<HeadNormGateParams, kCuda>(context, p);
  }

 private:
  std::string error_;  // declared before eps_: the constructor writes it while reading the attribute
  float eps_;
};

}  // namespace xlstm::ops
