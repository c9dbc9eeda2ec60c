#include "ops/mlstm_op.h"

#include <functional>
#include <sstream>

#include "cpu/mlstm_cpu.h"

namespace xlstm::ops {

namespace {

/// An int64 attribute, or `fallback` when the node has none (required: fallback < 0 and the error names it).
int64_t IntAttribute(const OrtApi* api, const OrtKernelInfo* info, const char* name, int64_t fallback, bool* present) {
  int64_t value = 0;
  OrtStatus* status = api->KernelInfoGetAttribute_int64(info, name, &value);
  if (status != nullptr) {
    api->ReleaseStatus(status);
    *present = false;
    return fallback;
  }
  *present = true;
  return value;
}

/// Expects `actual` to equal `expected`; otherwise writes the message that names the op, the input and both shapes.
bool Expect(Form form, const char* input, const std::vector<int64_t>& actual, const std::vector<int64_t>& expected,
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

float FloatAttribute(const OrtApi* api, const OrtKernelInfo* info, const char* name, float fallback) {
  float value = 0.0f;
  OrtStatus* status = api->KernelInfoGetAttribute_float(info, name, &value);
  if (status != nullptr) {
    api->ReleaseStatus(status);
    return fallback;
  }
  return value;
}

MLstmAttributes::MLstmAttributes(const OrtApi* api, const OrtKernelInfo* info, Form form) {
  bool present = false;
  chunk_size = IntAttribute(api, info, "chunk_size", 64, &present);
  if (!present && form == Form::kChunkwise) {
    error = std::string(OpName(form)) + ": attribute 'chunk_size' is required (HF's chunk_size, e.g. 64).";
  }
  max_inference_chunksize = IntAttribute(api, info, "max_inference_chunksize", 16384, &present);
  eps = FloatAttribute(api, info, "eps", 1e-6f);
  if (error.empty() && chunk_size < 1) {
    error = std::string(OpName(form)) + ": attribute 'chunk_size' must be at least 1; found " + std::to_string(chunk_size) + ".";
  }
  if (error.empty() && max_inference_chunksize < 1) {
    error = std::string(OpName(form)) + ": attribute 'max_inference_chunksize' must be at least 1; found " +
            std::to_string(max_inference_chunksize) + ".";
  }
  if (error.empty() && !(eps >= 0.0f)) {
    error = std::string(OpName(form)) + ": attribute 'eps' must be a non-negative number; found " + std::to_string(eps) + ".";
  }
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string CheckShapes(Form form, const std::vector<int64_t>& q, const std::vector<int64_t>& k,
                        const std::vector<int64_t>& v, const std::vector<int64_t>& i, const std::vector<int64_t>& f,
                        const std::vector<int64_t>& c, const std::vector<int64_t>& n, const std::vector<int64_t>& m,
                        MLstmParams& p) {
  const std::string op = OpName(form);
  if (q.size() != 4) return op + ": input 'q' has shape " + ShapeString(q) + "; expected rank 4 [B,NH,S,DQK].";
  if (v.size() != 4) return op + ": input 'v' has shape " + ShapeString(v) + "; expected rank 4 [B,NH,S,DV].";
  const int64_t B = q[0], NH = q[1], S = q[2], DQK = q[3], DV = v[3];
  std::string error;
  if (!Expect(form, "v", v, {B, NH, S, DV}, "[B,NH,S,DV] with q's B, NH, S", q, v, error)) return error;
  if (S < 1) return op + ": input 'q' has shape " + ShapeString(q) + "; the sequence axis S must be at least 1.";
  if (form == Form::kStep && S != 1) {
    return op + ": input 'q' has shape " + ShapeString(q) + "; expected S = 1 ([" + std::to_string(B) + "," +
           std::to_string(NH) + ",1," + std::to_string(DQK) + "]): the step op takes one token (use MLstmChunkwise).";
  }
  if (!Expect(form, "k", k, {B, NH, S, DQK}, "[B,NH,S,DQK], as q", q, v, error) ||
      !Expect(form, "igate", i, {B, NH, S}, "[B,NH,S]", q, v, error) ||
      !Expect(form, "fgate", f, {B, NH, S}, "[B,NH,S]", q, v, error) ||
      !Expect(form, "C", c, {B, NH, DQK, DV}, "[B,NH,DQK,DV]", q, v, error) ||
      !Expect(form, "n", n, {B, NH, DQK}, "[B,NH,DQK]", q, v, error) ||
      !Expect(form, "m", m, {B, NH, 1}, "[B,NH,1]", q, v, error)) {
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
  if (form == Form::kStep) {
    MLstmStepCpu(p, parallel_for);
  } else {
    MLstmChunkwiseCpu(p, parallel_for);
  }
  return Ort::Status{nullptr};
}

}  // namespace xlstm::ops
