// The ONNX Runtime side of the mLSTM ops (docs/style.md, "Op, launcher, kernel"). This layer reads attributes,
// checks shapes (errors name the op, the input and both shapes), allocates the outputs and hands an MLstmParams to
// the CPU kernels or the CUDA launchers. It holds no math.
//
//   ai.xlstm::MLstmChunkwise(q, k, v, igate, fgate, C, n, m) -> (h, C', n', m')   any S ≥ 1 (S = 1: the step)
//   ai.xlstm::MLstmStep     (q, k, v, igate, fgate, C, n, m) -> (h, C', n', m')   S = 1 only
//     q, k [B,NH,S,DQK], v [B,NH,S,DV], h [B,NH,S,DV]: float, float16 or bfloat16 (one type per node)
//     igate, fgate [B,NH,S], m [B,NH,1]: float
//     C [B,NH,DQK,DV], n [B,NH,DQK]: float or bfloat16 (--state-dtype bf16; in and out alike, one type per node)
//     attributes, all required (no defaults: a missing one is an error naming the op and the attribute):
//       MLstmChunkwise: chunk_size (int ≥ 1), max_inference_chunksize (int ≥ 1), eps (float ≥ 0)
//       MLstmStep: eps (float ≥ 0)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/mlstm_cpu.h"
#include "kernels/mlstm_params.h"
#include "onnxruntime_lite_custom_op.h"

namespace xlstm::ops {

inline constexpr const char* kDomain = "ai.xlstm";
inline constexpr int kDomainVersion = 1;
inline constexpr const char* kChunkwiseName = "MLstmChunkwise";
inline constexpr const char* kStepName = "MLstmStep";

enum class Form { kChunkwise, kStep };

inline const char* OpName(Form form) { return form == Form::kChunkwise ? kChunkwiseName : kStepName; }

/// The node's attributes; a bad value is kept as an error that Compute returns (no exception leaves CreateKernel).
struct MLstmAttributes {
  int64_t chunk_size = 0;
  int64_t max_inference_chunksize = 0;
  float eps = -1.0f;
  std::string error;

  MLstmAttributes(const OrtApi* api, const OrtKernelInfo* info, Form form);
};

/// Checks the eight input shapes against q's [B, NH, S, DQK] and v's DV and fills p's sizes; returns "" or the error.
std::string CheckShapes(Form form, const std::vector<int64_t>& q, const std::vector<int64_t>& k,
                        const std::vector<int64_t>& v, const std::vector<int64_t>& i, const std::vector<int64_t>& f,
                        const std::vector<int64_t>& c, const std::vector<int64_t>& n, const std::vector<int64_t>& m,
                        MLstmParams& p);

std::string ShapeString(const std::vector<int64_t>& shape);

/// "<op>: attribute '<name>' (<type>, <meaning>) is missing; ...": what every op says about a missing attribute.
std::string MissingAttribute(const char* op, const char* name, const char* type, const char* meaning);

/// The float attribute `name` of the node; when it is missing, sets `error` (if not yet set) naming the op and it.
float RequiredFloat(const OrtApi* api, const OrtKernelInfo* info, const char* op, const char* name, const char* meaning,
                    std::string& error);

/// ONNX Runtime's intra-op thread pool as a ParallelFor.
ParallelFor OrtParallelFor(OrtKernelContext* context);

/// Runs the CPU kernels on ONNX Runtime's intra-op thread pool (a bfloat16 state through float32 copies: converted in,
/// the float32 kernels, rounded once on the way out).
Ort::Status RunCpu(OrtKernelContext* context, const MLstmParams& p, Form form);

/// Enqueues the CUDA kernels on the node's compute stream (defined only in CUDA builds).
Ort::Status RunCuda(OrtKernelContext* context, const MLstmParams& p, Form form);

template <typename T>
struct DtypeOf;
template <>
struct DtypeOf<float> {
  static constexpr Dtype value = Dtype::kFloat32;
};
template <>
struct DtypeOf<Ort::Float16_t> {
  static constexpr Dtype value = Dtype::kFloat16;
};
template <>
struct DtypeOf<Ort::BFloat16_t> {
  static constexpr Dtype value = Dtype::kBFloat16;
};

/// One registration per (element type, state type, form, execution provider); ONNX Runtime picks by the node's types
/// and EP. S is the stored type of C and n (float or bfloat16); the math is float32 either way.
template <typename T, typename S, Form kForm, bool kCuda>
struct MLstmKernel {
  MLstmKernel(const OrtApi* api, const OrtKernelInfo* info) : attrs_(api, info, kForm) {}

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& q, const Ort::Custom::Tensor<T>& k,
                      const Ort::Custom::Tensor<T>& v, const Ort::Custom::Tensor<float>& igate,
                      const Ort::Custom::Tensor<float>& fgate, const Ort::Custom::Tensor<S>& c0,
                      const Ort::Custom::Tensor<S>& n0, const Ort::Custom::Tensor<float>& m0,
                      Ort::Custom::Tensor<T>& h, Ort::Custom::Tensor<S>& c, Ort::Custom::Tensor<S>& n,
                      Ort::Custom::Tensor<float>& m) {
    try {
      if (!attrs_.error.empty()) return Ort::Status(attrs_.error.c_str(), ORT_INVALID_ARGUMENT);
      MLstmParams p;
      const std::string shape_error = CheckShapes(kForm, q.Shape(), k.Shape(), v.Shape(), igate.Shape(), fgate.Shape(),
                                                  c0.Shape(), n0.Shape(), m0.Shape(), p);
      if (!shape_error.empty()) return Ort::Status(shape_error.c_str(), ORT_INVALID_ARGUMENT);
      p.dtype = DtypeOf<T>::value;
      p.state_dtype = DtypeOf<S>::value;
      p.chunk_size = attrs_.chunk_size;
      p.max_inference_chunksize = attrs_.max_inference_chunksize;
      p.eps = attrs_.eps;
      p.qk_scale = QkScale(p.dqk);
      p.matQ = q.Data();
      p.matK = k.Data();
      p.matV = v.Data();
      p.vecI = igate.Data();
      p.vecF = fgate.Data();
      p.matC0 = c0.Data();
      p.vecN0 = n0.Data();
      p.scaM0 = m0.Data();
      p.matH = h.Allocate({p.batch, p.heads, p.seq, p.dv});
      p.matC = c.Allocate({p.batch, p.heads, p.dqk, p.dv});
      p.vecN = n.Allocate({p.batch, p.heads, p.dqk});
      p.scaM = m.Allocate({p.batch, p.heads, 1});
      if (p.batch * p.heads == 0) return Ort::Status{nullptr};
      if constexpr (kCuda) {
        return RunCuda(context, p, kForm);
      } else {
        return RunCpu(context, p, kForm);
      }
    } catch (const Ort::Exception& e) {
      return Ort::Status((std::string(OpName(kForm)) + ": " + e.what()).c_str(), e.GetOrtErrorCode());
    } catch (const std::exception& e) {
      return Ort::Status((std::string(OpName(kForm)) + ": " + e.what()).c_str(), ORT_RUNTIME_EXCEPTION);
    }
  }

 private:
  MLstmAttributes attrs_;
};

}  // namespace xlstm::ops
