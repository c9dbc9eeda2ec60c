#include "ops/mlstm_op.h"

#include <cstring>
#include <functional>
#include <sstream>

#include "cpu/half_types.h"
#include "cpu/mlstm_cpu.h"

namespace xlstm::ops {

namespace {

/// The int64 attribute `name` of the node; when it is missing, sets `error` (if not yet set) naming the op and it.
int64_t RequiredInt(const OrtApi* api, const OrtKernelInfo* info, const char* op, const char* name, const char* meaning,
                    std::string& error) {
  int64_t value = 0;
  OrtStatus* status = api->KernelInfoGetAttribute_int64(info, name, &value);
  if (status == nullptr) return value;
  api->ReleaseStatus(status);
  if (error.empty()) error = MissingAttribute(op, name, "int", meaning);
  return 0;
}

/// Expects `actual` to equal `expected`; otherwise writes the message that names the op, the input and both shapes.
bool Expect(Form form, const std::string& input, const std::vector<int64_t>& actual, const std::vector<int64_t>& expected,
            const char* meaning, const std::vector<int64_t>& q, const std::vector<int64_t>& v, std::string& error) {
  if (actual == expected) return true;
  std::ostringstream s;
  s << OpName(form) << ": input '" << input << "' has shape " << ShapeString(actual) << "; expected "
    << ShapeString(expected) << " (" << meaning << ", from q " << ShapeString(q) << " = [B,NH,S,DQK] and v "
    << ShapeString(v) << " = [B,NH,S,DV]).";
  error = s.str();
  return false;
}

struct ParallelJob {
  const std::function<void(int64_t)>* body;
};

void RunJob(void* data, size_t i) { (*static_cast<ParallelJob*>(data)->body)(static_cast<int64_t>(i)); }

}  // namespace

std::string MissingAttribute(const char* op, const char* name, const char* type, const char* meaning) {
  return std::string(op) + ": attribute '" + name + "' (" + type + ", " + meaning +
         ") is missing; the exporter writes it on every node from the model's config.json. Re-export the model.";
}

float RequiredFloat(const OrtApi* api, const OrtKernelInfo* info, const char* op, const char* name, const char* meaning,
                    std::string& error) {
  float value = 0.0f;
  OrtStatus* status = api->KernelInfoGetAttribute_float(info, name, &value);
  if (status == nullptr) return value;
  api->ReleaseStatus(status);
  if (error.empty()) error = MissingAttribute(op, name, "float", meaning);
  return 0.0f;
}

MLstmAttributes::MLstmAttributes(const OrtApi* api, const OrtKernelInfo* info, Form form) {
  const std::string op = OpName(form);
  if (form != Form::kStep) {  // the chunkwise cell, alone or as the prompt lane
    chunk_size = RequiredInt(api, info, op.c_str(), "chunk_size", "HF's chunk_size", error);
    max_inference_chunksize =
        RequiredInt(api, info, op.c_str(), "max_inference_chunksize", "HF's max_inference_chunksize", error);
  } else {
    // S = 1: a segment of one token, the step form, whatever L and the segment length are
    chunk_size = 1;
    max_inference_chunksize = 1;
  }
  eps = RequiredFloat(api, info, op.c_str(), "eps", "HF's eps of the cell's denominator", error);
  if (error.empty() && chunk_size < 1) {
    error = op + ": attribute 'chunk_size' must be at least 1; found " + std::to_string(chunk_size) + ".";
  }
  if (error.empty() && max_inference_chunksize < 1) {
    error = op + ": attribute 'max_inference_chunksize' must be at least 1; found " +
            std::to_string(max_inference_chunksize) + ".";
  }
  if (error.empty() && !(eps >= 0.0f)) {
    error = op + ": attribute 'eps' must be a non-negative number; found " + std::to_string(eps) + ".";
  }
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string CheckShapes(Form form, const char* lane, bool one_token, const std::vector<int64_t>& q,
                        const std::vector<int64_t>& k, const std::vector<int64_t>& v, const std::vector<int64_t>& i,
                        const std::vector<int64_t>& f, const std::vector<int64_t>& c, const std::vector<int64_t>& n,
                        const std::vector<int64_t>& m, MLstmParams& p) {
  const std::string op = OpName(form), l = lane;
  if (q.size() != 4) return op + ": input '" + l + "q' has shape " + ShapeString(q) + "; expected rank 4 [B,NH,S,DQK].";
  if (v.size() != 4) return op + ": input '" + l + "v' has shape " + ShapeString(v) + "; expected rank 4 [B,NH,S,DV].";
  const int64_t B = q[0], NH = q[1], S = q[2], DQK = q[3], DV = v[3];
  std::string error;
  if (!Expect(form, l + "v", v, {B, NH, S, DV}, "[B,NH,S,DV] with q's B, NH, S", q, v, error)) return error;
  if (S < 1) return op + ": input '" + l + "q' has shape " + ShapeString(q) + "; the sequence axis S must be at least 1.";
  if (one_token && S != 1) {
    const std::string why = form == Form::kStep ? "the step op takes one token (use MLstmChunkwise)"
                                                : "the decode lane takes one token a row";
    return op + ": input '" + l + "q' has shape " + ShapeString(q) + "; expected S = 1 ([" + std::to_string(B) + "," +
           std::to_string(NH) + ",1," + std::to_string(DQK) + "]): " + why + ".";
  }
  if (!Expect(form, l + "k", k, {B, NH, S, DQK}, "[B,NH,S,DQK], as q", q, v, error) ||
      !Expect(form, l + "igate", i, {B, NH, S}, "[B,NH,S]", q, v, error) ||
      !Expect(form, l + "fgate", f, {B, NH, S}, "[B,NH,S]", q, v, error) ||
      !Expect(form, l + "C", c, {B, NH, DQK, DV}, "[B,NH,DQK,DV]", q, v, error) ||
      !Expect(form, l + "n", n, {B, NH, DQK}, "[B,NH,DQK]", q, v, error) ||
      !Expect(form, l + "m", m, {B, NH, 1}, "[B,NH,1]", q, v, error)) {
    return error;
  }
  p.batch = B;
  p.heads = NH;
  p.seq = S;
  p.dqk = DQK;
  p.dv = DV;
  return {};
}

ParallelFor OrtParallelFor(OrtKernelContext* context) {
  return [context](int64_t count, const std::function<void(int64_t)>& body) {
    ParallelJob job{&body};
    Ort::KernelContext(context).ParallelFor(&RunJob, static_cast<size_t>(count), 0, &job);
  };
}

Ort::Status RunCpu(OrtKernelContext* context, const MLstmParams& p, Form form) {
  ParallelFor parallel_for = OrtParallelFor(context);
  auto run = [&](const MLstmParams& q) {
    if (form == Form::kStep) {
      MLstmStepCpu(q, parallel_for);
    } else {
      MLstmChunkwiseCpu(q, parallel_for);
    }
  };
  if (p.state_dtype == Dtype::kFloat32) {
    run(p);
    return Ort::Status{nullptr};
  }
  const int64_t nc = p.batch * p.heads * p.dqk * p.dv, nn = p.batch * p.heads * p.dqk;
  std::vector<float> c0(nc), n0(nn), c(nc), n(nn);
  const auto* c0_in = static_cast<const Bf16*>(p.matC0);
  const auto* n0_in = static_cast<const Bf16*>(p.vecN0);
  for (int64_t i = 0; i < nc; ++i) c0[i] = ToFloat(c0_in[i]);
  for (int64_t i = 0; i < nn; ++i) n0[i] = ToFloat(n0_in[i]);
  MLstmParams f = p;
  f.state_dtype = Dtype::kFloat32;
  f.round_state_bf16 = true;  // rounded after every piece: the final rounding below is then exact
  f.matC0 = c0.data(), f.vecN0 = n0.data(), f.matC = c.data(), f.vecN = n.data();
  run(f);
  auto* c_out = static_cast<Bf16*>(p.matC);
  auto* n_out = static_cast<Bf16*>(p.vecN);
  for (int64_t i = 0; i < nc; ++i) c_out[i] = FromFloat<Bf16>(c[i]);
  for (int64_t i = 0; i < nn; ++i) n_out[i] = FromFloat<Bf16>(n[i]);
  return Ort::Status{nullptr};
}

std::string CheckLaneRows(const std::vector<int64_t>& q, const std::vector<int64_t>& k, const std::vector<int64_t>& v,
                          const std::vector<int64_t>& decode_igate, const std::vector<int64_t>& prompt_igate,
                          const std::vector<int64_t>& decode_c, std::vector<int64_t> (&decode_qkv)[3],
                          std::vector<int64_t> (&prompt_qkv)[3]) {
  const std::string op = kLanesName;
  if (decode_igate.size() != 3 || decode_igate[2] != 1) {
    return op + ": input 'decode_igate' has shape " + ShapeString(decode_igate) + "; expected [B,NH,1] (one token a decode row).";
  }
  const int64_t B = decode_igate[0], NH = decode_igate[1];
  if (prompt_igate.size() != 3 || prompt_igate[1] != NH) {
    return op + ": input 'prompt_igate' has shape " + ShapeString(prompt_igate) + "; expected [P," + std::to_string(NH) +
           ",L] = [P,NH,L] with decode_igate " + ShapeString(decode_igate) + "'s NH.";
  }
  if (decode_c.size() != 4) return op + ": input 'decode_C' has shape " + ShapeString(decode_c) + "; expected rank 4 [B,NH,DQK,DV].";
  const int64_t P = prompt_igate[0], L = prompt_igate[2], DQK = decode_c[2], DV = decode_c[3], rows = B + P * L;
  const std::string from = " (B, NH from decode_igate " + ShapeString(decode_igate) + ", P, L from prompt_igate " +
                           ShapeString(prompt_igate) + ", DQK, DV from decode_C " + ShapeString(decode_c) + ").";
  const std::vector<int64_t> qk{rows, NH * DQK}, vv{rows, NH * DV};
  if (q != qk) return op + ": input 'q' has shape " + ShapeString(q) + "; expected " + ShapeString(qk) + " = [B + P·L, NH·DQK]" + from;
  if (k != qk) return op + ": input 'k' has shape " + ShapeString(k) + "; expected " + ShapeString(qk) + " = [B + P·L, NH·DQK]" + from;
  if (v != vv) return op + ": input 'v' has shape " + ShapeString(v) + "; expected " + ShapeString(vv) + " = [B + P·L, NH·DV]" + from;
  decode_qkv[0] = decode_qkv[1] = {B, NH, 1, DQK};
  decode_qkv[2] = {B, NH, 1, DV};
  prompt_qkv[0] = prompt_qkv[1] = {P, NH, L, DQK};
  prompt_qkv[2] = {P, NH, L, DV};
  return {};
}

namespace {

/// dst [P, NH, L, D] from token-major src [P·L, NH·D], elements of `bytes` bytes.
std::vector<unsigned char> ToHeads(const void* src, int64_t P, int64_t NH, int64_t L, int64_t D, size_t bytes) {
  std::vector<unsigned char> dst(static_cast<size_t>(P * NH * L * D) * bytes);
  const auto* s = static_cast<const unsigned char*>(src);
  const size_t row = static_cast<size_t>(D) * bytes;
  for (int64_t p = 0; p < P; ++p)
    for (int64_t h = 0; h < NH; ++h)
      for (int64_t t = 0; t < L; ++t)
        std::memcpy(dst.data() + static_cast<size_t>((p * NH + h) * L + t) * row, s + static_cast<size_t>((p * L + t) * NH + h) * row, row);
  return dst;
}

}  // namespace

Ort::Status RunCpuLanes(OrtKernelContext* context, const MLstmParams& decode, const MLstmParams& prompt, const TokenRows& rows) {
  if (decode.batch * decode.heads > 0) {
    Ort::Status status = RunCpu(context, decode, Form::kStep);
    if (!status.IsOK()) return status;
  }
  if (prompt.batch * prompt.heads == 0) return Ort::Status{nullptr};
  const size_t bytes = prompt.dtype == Dtype::kFloat32 ? 4 : 2;
  const auto q = ToHeads(rows.q, prompt.batch, prompt.heads, prompt.seq, prompt.dqk, bytes);
  const auto k = ToHeads(rows.k, prompt.batch, prompt.heads, prompt.seq, prompt.dqk, bytes);
  const auto v = ToHeads(rows.v, prompt.batch, prompt.heads, prompt.seq, prompt.dv, bytes);
  MLstmParams p = prompt;
  p.matQ = q.data(), p.matK = k.data(), p.matV = v.data();
  return RunCpu(context, p, Form::kChunkwise);
}

#ifndef XLSTM_WITH_CUDA
// CPU-only builds have no LaneStream type and never make one (mlstm_op_cuda.cc defines the CUDA builds' deleter).
void LaneStreamDeleter::operator()(LaneStream*) const {}
#endif

}  // namespace xlstm::ops
