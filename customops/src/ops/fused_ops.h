// The ONNX Runtime side of the fused ops around the cell (kernels/fused_params.h has the math):
//
//   ai.xlstm::MLstmGates(gates float [B·S, 2NH], attention_mask int64 [B, S]) -> (igate, fgate float [B, NH, S])
//     attribute soft_cap (float, required; 0: no cap)
//   ai.xlstm::SwiGlu(x T [N, 2F]) -> y T [N, F]
//   ai.xlstm::MultiHeadNormGate(h T [B, NH, S, DV], o T [B·S, NH·DV], weight T [NH·DV], bias T [NH·DV]) -> y T [B·S, NH·DV]
//     attribute eps (float, required)
//   The mixed graph's two lanes (decode rows first, B of one token each, then P prompt rows of L tokens) in one node, each
//   lane as the op above on its own rows of the stream (docs/exported-graph.md, "The mixed graph"):
//   ai.xlstm::MLstmGatesLanes(gates float [B + P·L, 2NH], decode_attention_mask int64 [B, 1],
//                             prompt_attention_mask int64 [P, L]) -> (decode igate, fgate [B, NH, 1], prompt igate, fgate [P, NH, L])
//     attribute soft_cap
//   ai.xlstm::MultiHeadNormGateLanes(decode_h T [B, NH, 1, DV], prompt_h T [P, NH, L, DV], o T [B + P·L, NH·DV], weight,
//                                    bias T [NH·DV]) -> y T [B + P·L, NH·DV]
//     attribute eps
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
inline constexpr const char* kGatesLanesName = "MLstmGatesLanes";
inline constexpr const char* kHeadNormGateLanesName = "MultiHeadNormGateLanes";

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

/// Runs one lane's part of a lanes op (p's rows), or nothing when the lane has no rows.
template <typename Params, bool kCuda>
Ort::Status RunLane(OrtKernelContext* context, const Params& p, int64_t rows) {
  return rows == 0 ? Ort::Status{nullptr} : RunFused<Params, kCuda>(context, p);
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

/// MLstmGatesLanes: MLstmGates on the decode rows of the stream's gate pre-activations, then on the prompt rows.
template <bool kCuda>
struct MLstmGatesLanesKernel {
  MLstmGatesLanesKernel(const OrtApi* api, const OrtKernelInfo* info)
      : soft_cap_(RequiredFloat(api, info, kGatesLanesName, "soft_cap", "HF's gate_soft_cap, 0 for none", error_)) {}

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<float>& gates,
                      const Ort::Custom::Tensor<int64_t>& decode_mask, const Ort::Custom::Tensor<int64_t>& prompt_mask,
                      Ort::Custom::Tensor<float>& decode_igate, Ort::Custom::Tensor<float>& decode_fgate,
                      Ort::Custom::Tensor<float>& prompt_igate, Ort::Custom::Tensor<float>& prompt_fgate) {
    if (!error_.empty()) return Ort::Status(error_.c_str(), ORT_INVALID_ARGUMENT);
    if (!(soft_cap_ >= 0.0f)) return Ort::Status("MLstmGatesLanes: attribute 'soft_cap' must be 0 (none) or positive.", ORT_INVALID_ARGUMENT);
    const auto& g = gates.Shape();
    const auto& dm = decode_mask.Shape();
    const auto& pm = prompt_mask.Shape();
    if (dm.size() != 2 || dm[1] != 1) return ShapeError(kGatesLanesName, "decode_attention_mask", dm, "[B, 1] (one token a decode row)");
    if (pm.size() != 2) return ShapeError(kGatesLanesName, "prompt_attention_mask", pm, "rank 2 [P, L]");
    const int64_t rows = dm[0] + pm[0] * pm[1];
    if (g.size() != 2 || g[0] != rows || g[1] % 2 != 0) {
      return ShapeError(kGatesLanesName, "gates", g, "[B + P·L, 2·NH] = [" + std::to_string(rows) + ", 2·NH] for decode_attention_mask " +
                        ShapeString(dm) + " and prompt_attention_mask " + ShapeString(pm));
    }
    GatesParams d, p;
    d.heads = p.heads = g[1] / 2;
    d.soft_cap = p.soft_cap = soft_cap_;
    d.batch = dm[0], d.seq = 1, p.batch = pm[0], p.seq = pm[1];
    d.gates = gates.Data(), p.gates = gates.Data() + dm[0] * g[1];
    d.mask = decode_mask.Data(), p.mask = prompt_mask.Data();
    d.igate = decode_igate.Allocate({d.batch, d.heads, 1});
    d.fgate = decode_fgate.Allocate({d.batch, d.heads, 1});
    p.igate = prompt_igate.Allocate({p.batch, p.heads, p.seq});
    p.fgate = prompt_fgate.Allocate({p.batch, p.heads, p.seq});
    Ort::Status status = RunLane<GatesParams, kCuda>(context, d, d.batch);
    return status.IsOK() ? RunLane<GatesParams, kCuda>(context, p, p.batch * p.seq) : std::move(status);
  }

 private:
  std::string error_;  // declared before soft_cap_: the constructor writes it while reading the attribute
  float soft_cap_;
};

/// MultiHeadNormGateLanes: MultiHeadNormGate on each lane's cell output, writing that lane's rows of the stream.
template <typename T, bool kCuda>
struct HeadNormGateLanesKernel {
  HeadNormGateLanesKernel(const OrtApi* api, const OrtKernelInfo* info)
      : eps_(RequiredFloat(api, info, kHeadNormGateLanesName, "eps", "HF's norm_eps", error_)) {}

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& decode_h, const Ort::Custom::Tensor<T>& prompt_h,
                      const Ort::Custom::Tensor<T>& o, const Ort::Custom::Tensor<T>& weight, const Ort::Custom::Tensor<T>& bias,
                      Ort::Custom::Tensor<T>& y) {
    if (!error_.empty()) return Ort::Status(error_.c_str(), ORT_INVALID_ARGUMENT);
    if (!(eps_ >= 0.0f)) return Ort::Status("MultiHeadNormGateLanes: attribute 'eps' must be a non-negative number.", ORT_INVALID_ARGUMENT);
    const auto& dh = decode_h.Shape();
    const auto& ph = prompt_h.Shape();
    if (dh.size() != 4 || dh[2] != 1) return ShapeError(kHeadNormGateLanesName, "decode_h", dh, "[B,NH,1,DV]");
    const int64_t B = dh[0], NH = dh[1], DV = dh[3];
    if (ph.size() != 4 || ph[1] != NH || ph[3] != DV) {
      return ShapeError(kHeadNormGateLanesName, "prompt_h", ph, "[P," + std::to_string(NH) + ",L," + std::to_string(DV) + "] = [P,NH,L,DV] with decode_h " + ShapeString(dh) + "'s NH and DV");
    }
    const int64_t rows = B + ph[0] * ph[2];
    const std::string flat = "[" + std::to_string(rows) + "," + std::to_string(NH * DV) + "] = [B + P·L, NH·DV] for decode_h " +
                             ShapeString(dh) + " and prompt_h " + ShapeString(ph);
    if (o.Shape() != std::vector<int64_t>{rows, NH * DV}) return ShapeError(kHeadNormGateLanesName, "o", o.Shape(), flat);
    const std::string vec = "[" + std::to_string(NH * DV) + "] = [NH·DV]";
    if (weight.Shape() != std::vector<int64_t>{NH * DV}) return ShapeError(kHeadNormGateLanesName, "weight", weight.Shape(), vec);
    if (bias.Shape() != std::vector<int64_t>{NH * DV}) return ShapeError(kHeadNormGateLanesName, "bias", bias.Shape(), vec);
    T* out = y.Allocate({rows, NH * DV});
    HeadNormGateParams d, p;
    d.dtype = p.dtype = DtypeOf<T>::value;
    d.heads = p.heads = NH, d.dv = p.dv = DV, d.eps = p.eps = eps_;
    d.weight = p.weight = weight.Data(), d.bias = p.bias = bias.Data();
    d.batch = B, d.seq = 1, p.batch = ph[0], p.seq = ph[2];
    d.h = decode_h.Data(), d.o = o.Data(), d.y = out;
    p.h = prompt_h.Data(), p.o = o.Data() + B * NH * DV, p.y = out + B * NH * DV;  // the prompt rows follow the decode rows
    Ort::Status status = RunLane<HeadNormGateParams, kCuda>(context, d, B);
    return status.IsOK() ? RunLane<HeadNormGateParams, kCuda>(context, p, p.batch * p.seq) : std::move(status);
  }

 private:
  std::string error_;  // declared before eps_: the constructor writes it while reading the attribute
  float eps_;
};

}  // namespace xlstm::ops
