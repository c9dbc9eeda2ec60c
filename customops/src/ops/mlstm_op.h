// The ONNX Runtime side of the mLSTM ops (docs/style.md, "Op, launcher, kernel"). This layer reads attributes,
// checks shapes (errors name the op, the input and both shapes), allocates the outputs and hands an MLstmParams to
// the CPU kernels or the CUDA launchers. It holds no math.
//
//   ai.xlstm::MLstmChunkwise(q, k, v, igate, fgate, C, n, m) -> (h, C', n', m')   any S ≥ 1 (S = 1: the step)
//   ai.xlstm::MLstmStep     (q, k, v, igate, fgate, C, n, m) -> (h, C', n', m')   S = 1 only
//   ai.xlstm::MLstmLanes    (q, k [B + P·L, NH·DQK], v [B + P·L, NH·DV]: the stream's rows, B decode rows of one token
//                            first, then P prompt rows of L tokens, token-major, as the projections leave them;
//                            decode igate, fgate [B,NH,1], C, n, m; prompt igate, fgate [P,NH,L], C, n, m)
//                           -> (decode h [B,NH,1,DV], C', n', m', prompt h [P,NH,L,DV], C', n', m')
//                           the mixed graph's two cells in one node: the step on the decode rows, HF's schedule on the
//                           prompt rows; on CUDA the prompt's runs beside the step on a second stream
//                           (kernels/mlstm_lanes.cuh)
//     q, k [B,NH,S,DQK], v [B,NH,S,DV], h [B,NH,S,DV]: float, float16 or bfloat16 (one type per node)
//     igate, fgate [B,NH,S], m [B,NH,1]: float
//     C [B,NH,DQK,DV], n [B,NH,DQK]: float or bfloat16 (--state-dtype bf16; in and out alike, one type per node)
//     attributes, all required (no defaults: a missing one is an error naming the op and the attribute):
//       MLstmChunkwise, MLstmLanes: chunk_size (int ≥ 1), max_inference_chunksize (int ≥ 1), eps (float ≥ 0)
//       MLstmStep: eps (float ≥ 0)
#pragma once

#include <cstdint>
#include <memory>
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
inline constexpr const char* kLanesName = "MLstmLanes";

/// Which op a node is: the cell on HF's schedule, the step, or the mixed graph's two lanes (a step and a chunkwise cell).
enum class Form { kChunkwise, kStep, kLanes };

inline const char* OpName(Form form) {
  return form == Form::kChunkwise ? kChunkwiseName : form == Form::kStep ? kStepName : kLanesName;
}

/// The node's attributes; a bad value is kept as an error that Compute returns (no exception leaves CreateKernel).
struct MLstmAttributes {
  int64_t chunk_size = 0;
  int64_t max_inference_chunksize = 0;
  float eps = -1.0f;
  std::string error;

  MLstmAttributes(const OrtApi* api, const OrtKernelInfo* info, Form form);
};

/// Checks the eight input shapes against q's [B, NH, S, DQK] and v's DV and fills p's sizes; returns "" or the error.
/// `lane` prefixes the input names in errors ("decode_", "prompt_" for MLstmLanes; "" otherwise); one_token requires S = 1.
std::string CheckShapes(Form form, const char* lane, bool one_token, const std::vector<int64_t>& q, const std::vector<int64_t>& k,
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

}  // namespace xlstm::ops

namespace xlstm {
class LaneStream;  // kernels/mlstm_lanes.cuh (CUDA builds)
}  // namespace xlstm

namespace xlstm::ops {

/// Deletes a LaneStream (defined beside it in CUDA builds; CPU-only builds never make one).
struct LaneStreamDeleter {
  void operator()(LaneStream* s) const;
};

/// One MLstmLanes node's second stream, made on the first call that is not being captured (kept null until then, and
/// when it cannot be made: the lanes then run one after the other on the compute stream, with the same results).
using LaneStreamOwner = std::unique_ptr<LaneStream, LaneStreamDeleter>;

/// The CPU form of MLstmLanes: the decode lane's step, then the prompt lane's cell on a [P, NH, L, D] copy of its rows.
Ort::Status RunCpuLanes(OrtKernelContext* context, const MLstmParams& decode, const MLstmParams& prompt, const TokenRows& rows);

/// The CUDA form of MLstmLanes on the node's compute stream, the prompt lane forked onto `side` (defined only in CUDA
/// builds). XLSTM_LANES_ONE_STREAM=1 in the environment keeps both lanes on the compute stream (for measuring).
Ort::Status RunCudaLanes(OrtKernelContext* context, const MLstmParams& decode, const MLstmParams& prompt,
                         const TokenRows& rows, LaneStreamOwner& side);

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

/// Fills p from one cell's inputs (q, k, v by pointer and [B,NH,S,D] shape: a lane's q may be part of a larger tensor)
/// and tensors (shapes checked, outputs allocated) for `form`; returns "" or the error. `lane` names the lane's inputs
/// in errors (CheckShapes).
template <typename T, typename S>
std::string BindLane(Form form, const char* lane, bool one_token, const MLstmAttributes& attrs, const T* q,
                     const std::vector<int64_t>& q_shape, const T* k, const std::vector<int64_t>& k_shape, const T* v,
                     const std::vector<int64_t>& v_shape, const Ort::Custom::Tensor<float>& igate,
                     const Ort::Custom::Tensor<float>& fgate, const Ort::Custom::Tensor<S>& c0,
                     const Ort::Custom::Tensor<S>& n0, const Ort::Custom::Tensor<float>& m0, Ort::Custom::Tensor<T>& h,
                     Ort::Custom::Tensor<S>& c, Ort::Custom::Tensor<S>& n, Ort::Custom::Tensor<float>& m, MLstmParams& p) {
  std::string error = CheckShapes(form, lane, one_token, q_shape, k_shape, v_shape, igate.Shape(), fgate.Shape(),
                                  c0.Shape(), n0.Shape(), m0.Shape(), p);
  if (!error.empty()) return error;
  p.dtype = DtypeOf<T>::value;
  p.state_dtype = DtypeOf<S>::value;
  // the step (and the decode lane) is a segment of one token whatever the schedule settings are
  p.chunk_size = one_token ? 1 : attrs.chunk_size;
  p.max_inference_chunksize = one_token ? 1 : attrs.max_inference_chunksize;
  p.eps = attrs.eps;
  p.qk_scale = QkScale(p.dqk);
  p.matQ = q;
  p.matK = k;
  p.matV = v;
  p.vecI = igate.Data();
  p.vecF = fgate.Data();
  p.matC0 = c0.Data();
  p.vecN0 = n0.Data();
  p.scaM0 = m0.Data();
  p.matH = h.Allocate({p.batch, p.heads, p.seq, p.dv});
  p.matC = c.Allocate({p.batch, p.heads, p.dqk, p.dv});
  p.vecN = n.Allocate({p.batch, p.heads, p.dqk});
  p.scaM = m.Allocate({p.batch, p.heads, 1});
  return {};
}

/// An exception from ONNX Runtime's API or the kernels as a status that names the op.
inline Ort::Status StatusOf(Form form, const std::exception& e, OrtErrorCode code) {
  return Ort::Status((std::string(OpName(form)) + ": " + e.what()).c_str(), code);
}

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
      const std::string error = BindLane<T, S>(kForm, "", kForm == Form::kStep, attrs_, q.Data(), q.Shape(), k.Data(), k.Shape(),
                                               v.Data(), v.Shape(), igate, fgate, c0, n0, m0, h, c, n, m, p);
      if (!error.empty()) return Ort::Status(error.c_str(), ORT_INVALID_ARGUMENT);
      if (p.batch * p.heads == 0) return Ort::Status{nullptr};
      if constexpr (kCuda) {
        return RunCuda(context, p, kForm);
      } else {
        return RunCpu(context, p, kForm);
      }
    } catch (const Ort::Exception& e) {
      return StatusOf(kForm, e, e.GetOrtErrorCode());
    } catch (const std::exception& e) {
      return StatusOf(kForm, e, ORT_RUNTIME_EXCEPTION);
    }
  }

 private:
  MLstmAttributes attrs_;
};

/// Checks MLstmLanes' stream inputs q, k, v [B + P·L, NH·D] against the lanes' gates (NH, B, P, L) and states (DQK, DV);
/// fills the lanes' [B,NH,S,D] shapes for CheckShapes. Returns "" or the error.
std::string CheckLaneRows(const std::vector<int64_t>& q, const std::vector<int64_t>& k, const std::vector<int64_t>& v,
                          const std::vector<int64_t>& decode_igate, const std::vector<int64_t>& prompt_igate,
                          const std::vector<int64_t>& decode_c, std::vector<int64_t> (&decode_qkv)[3],
                          std::vector<int64_t> (&prompt_qkv)[3]);

/// MLstmLanes: the decode lane (the step, S = 1) and the prompt lane (HF's schedule) of the mixed graph in one node,
/// reading both from the stream's q, k, v.
template <typename T, typename S, bool kCuda>
struct MLstmLanesKernel {
  MLstmLanesKernel(const OrtApi* api, const OrtKernelInfo* info) : attrs_(api, info, Form::kLanes) {}

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<T>& q, const Ort::Custom::Tensor<T>& k,
                      const Ort::Custom::Tensor<T>& v, const Ort::Custom::Tensor<float>& decode_igate,
                      const Ort::Custom::Tensor<float>& decode_fgate, const Ort::Custom::Tensor<S>& decode_c0,
                      const Ort::Custom::Tensor<S>& decode_n0, const Ort::Custom::Tensor<float>& decode_m0,
                      const Ort::Custom::Tensor<float>& prompt_igate, const Ort::Custom::Tensor<float>& prompt_fgate,
                      const Ort::Custom::Tensor<S>& prompt_c0, const Ort::Custom::Tensor<S>& prompt_n0,
                      const Ort::Custom::Tensor<float>& prompt_m0, Ort::Custom::Tensor<T>& decode_h,
                      Ort::Custom::Tensor<S>& decode_c, Ort::Custom::Tensor<S>& decode_n, Ort::Custom::Tensor<float>& decode_m,
                      Ort::Custom::Tensor<T>& prompt_h, Ort::Custom::Tensor<S>& prompt_c, Ort::Custom::Tensor<S>& prompt_n,
                      Ort::Custom::Tensor<float>& prompt_m) {
    try {
      if (!attrs_.error.empty()) return Ort::Status(attrs_.error.c_str(), ORT_INVALID_ARGUMENT);
      std::vector<int64_t> dqkv[3], pqkv[3];
      std::string error = CheckLaneRows(q.Shape(), k.Shape(), v.Shape(), decode_igate.Shape(), prompt_igate.Shape(),
                                        decode_c0.Shape(), dqkv, pqkv);
      MLstmParams decode, prompt;
      if (error.empty()) {
        // the decode rows [B, NH·D] are the [B, NH, 1, D] the step reads: used in place
        error = BindLane<T, S>(Form::kLanes, "decode_", true, attrs_, q.Data(), dqkv[0], k.Data(), dqkv[1], v.Data(), dqkv[2],
                               decode_igate, decode_fgate, decode_c0, decode_n0, decode_m0, decode_h, decode_c, decode_n,
                               decode_m, decode);
      }
      TokenRows rows;
      if (error.empty()) {
        // the prompt rows follow; token-major, so the cell reads a [P, NH, L, D] copy (RunCpuLanes, RunCudaLanes)
        const int64_t B = dqkv[0][0];
        rows.q = q.Data() + B * dqkv[0][1] * dqkv[0][3];
        rows.k = k.Data() + B * dqkv[1][1] * dqkv[1][3];
        rows.v = v.Data() + B * dqkv[2][1] * dqkv[2][3];
        error = BindLane<T, S>(Form::kLanes, "prompt_", false, attrs_, nullptr, pqkv[0], nullptr, pqkv[1], nullptr, pqkv[2],
                               prompt_igate, prompt_fgate, prompt_c0, prompt_n0, prompt_m0, prompt_h, prompt_c, prompt_n,
                               prompt_m, prompt);
      }
      if (!error.empty()) return Ort::Status(error.c_str(), ORT_INVALID_ARGUMENT);
      if constexpr (kCuda) {
        return RunCudaLanes(context, decode, prompt, rows, side_);
      } else {
        return RunCpuLanes(context, decode, prompt, rows);
      }
    } catch (const Ort::Exception& e) {
      return StatusOf(Form::kLanes, e, e.GetOrtErrorCode());
    } catch (const std::exception& e) {
      return StatusOf(Form::kLanes, e, ORT_RUNTIME_EXCEPTION);
    }
  }

 private:
  MLstmAttributes attrs_;
  LaneStreamOwner side_;  // CUDA only: this node's second stream
};

}  // namespace xlstm::ops
