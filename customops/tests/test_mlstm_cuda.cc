// CUDA kernels against the CPU kernels (the oracle) on the same inputs. Needs a GPU: CTest label "gpu"; CI has
// none and does not build it (no CUDA toolkit there). Prints one line per case and exits 1 on any failure.
//
// Stated tolerances (GPU vs CPU on identical inputs; "scaled max" = max |Δ| / max(1, max |CPU|)):
//   float32 (SIMT, step): scaled max ≤ 5e-5 on h, C, n, m (float32 sums in another order; observed ~1e-6).
//   float16/bfloat16 on the SIMT kernel and the step: float32 math as on the CPU, so only h's rounding differs:
//     h rel-L2 ≤ 2e-3 (float16) / 1e-2 (bfloat16); C, n, m scaled max ≤ 5e-5.
//   tensor cores: Q̄, M, K̄ and C are rounded to the input type as matmul operands (as in TFLA's kernels):
//     h and C rel-L2 ≤ 5e-3 (float16) / 2e-2 (bfloat16); n scaled max ≤ 1e-4 (float32 from exact k); m ≤ 1e-5.
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda_check.h"
#include "kernels/mlstm_fw.cuh"
#include "kernels/mlstm_lanes.cuh"
#include "mlstm_test_util.h"

namespace xlstm::test {
namespace {

class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) { CHECK_CUDA(cudaMalloc(&ptr_, bytes ? bytes : 1)); }
  ~DeviceBuffer() { cudaFree(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  template <typename T>
  T* As() const { return static_cast<T*>(ptr_); }
  template <typename T>
  static DeviceBuffer* From(const std::vector<T>& host) {
    auto* b = new DeviceBuffer(host.size() * sizeof(T));
    CHECK_CUDA(cudaMemcpy(b->ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    return b;
  }
  template <typename T>
  std::vector<T> To(size_t count) const {
    std::vector<T> host(count);
    CHECK_CUDA(cudaMemcpy(host.data(), ptr_, count * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_;
};

template <typename H>
Result RunCudaTyped(const Problem& p, Dtype dtype, CudaPath path, bool step_op, int seq_parallel) {
  std::unique_ptr<DeviceBuffer> q(DeviceBuffer::From(Encode<H>(p.q))), k(DeviceBuffer::From(Encode<H>(p.k))),
      v(DeviceBuffer::From(Encode<H>(p.v))), i(DeviceBuffer::From(p.i)), f(DeviceBuffer::From(p.f)),
      c0(DeviceBuffer::From(p.c0)), n0(DeviceBuffer::From(p.n0)), m0(DeviceBuffer::From(p.m0));
  const size_t nh = p.Heads() * p.S * p.DV;
  DeviceBuffer h(nh * sizeof(H)), c(p.c0.size() * 4), n(p.n0.size() * 4), m(p.m0.size() * 4);
  MLstmParams prm = ParamsFor(p, dtype);
  prm.cuda_path = path;
  prm.seq_parallel = seq_parallel;
  prm.matQ = q->As<void>(), prm.matK = k->As<void>(), prm.matV = v->As<void>();
  prm.vecI = i->As<float>(), prm.vecF = f->As<float>();
  prm.matC0 = c0->As<float>(), prm.vecN0 = n0->As<float>(), prm.scaM0 = m0->As<float>();
  prm.matH = h.As<void>(), prm.matC = c.As<float>(), prm.vecN = n.As<float>(), prm.scaM = m.As<float>();
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CHECK_CUDA(step_op ? LaunchMLstmStepFw(prm, stream) : LaunchMLstmChunkwiseFw(prm, stream));
  CHECK_CUDA(cudaStreamSynchronize(stream));
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaStreamDestroy(stream));
  Result r;
  r.h = Decode(h.To<H>(nh));
  r.c = c.To<float>(p.c0.size()), r.n = n.To<float>(p.n0.size()), r.m = m.To<float>(p.m0.size());
  return r;
}

Result RunCuda(const Problem& p, Dtype dtype, CudaPath path, bool step_op, int seq_parallel = 0) {
  switch (dtype) {
    case Dtype::kFloat16: return RunCudaTyped<Fp16>(p, dtype, path, step_op, seq_parallel);
    case Dtype::kBFloat16: return RunCudaTyped<Bf16>(p, dtype, path, step_op, seq_parallel);
    default: return RunCudaTyped<float>(p, dtype, path, step_op, seq_parallel);
  }
}

struct Case {
  std::string name;
  Problem p;
  Dtype dtype;
  CudaPath path;
  bool step_op = false;
  int seq_parallel = 0;  // MLstmParams::seq_parallel: 0 the launcher's choice, 1 one pass, P ≥ 2 P segments
};

int failures = 0;

void Run(const Case& cs) {
  const Problem p = RoundedTo(cs.p, cs.dtype);  // both sides see exactly the stored values
  MLstmParams prm = ParamsFor(p, cs.dtype);
  prm.cuda_path = cs.path;
  prm.seq_parallel = cs.seq_parallel;
  std::string kernel = cs.step_op ? "step" : MLstmChunkwiseKernelName(prm);
  const int segments = kernel == "tensor_core" ? MLstmSequenceParallelSegments(prm) : 1;
  const Result gpu = RunCuda(p, cs.dtype, cs.path, cs.step_op, cs.seq_parallel);
  const Result cpu = RunCpu(p, cs.dtype, ThreadedFor());
  const Error eh = Compare(gpu.h, cpu.h), ec = Compare(gpu.c, cpu.c), en = Compare(gpu.n, cpu.n), em = Compare(gpu.m, cpu.m);
  const bool half = cs.dtype != Dtype::kFloat32, f16 = cs.dtype == Dtype::kFloat16;
  bool ok = eh.finite && ec.finite && en.finite && em.finite;
  if (kernel == "tensor_core") {
    const double tol = f16 ? 5e-3 : 2e-2;
    ok = ok && eh.rel_l2 <= tol && ec.rel_l2 <= tol && en.scaled_max <= 1e-4 && em.scaled_max <= 1e-5;
  } else if (half) {
    ok = ok && eh.rel_l2 <= (f16 ? 2e-3 : 1e-2) && ec.scaled_max <= 5e-5 && en.scaled_max <= 5e-5 && em.scaled_max <= 5e-5;
  } else {
    ok = ok && eh.scaled_max <= 5e-5 && ec.scaled_max <= 5e-5 && en.scaled_max <= 5e-5 && em.scaled_max <= 5e-5;
  }
  std::printf("%-4s %-34s %-9s %-12s B%-3lld NH%-2lld S%-5lld DQK%-4lld DV%-4lld L%-4lld | h max %.2e l2 %.2e | C max %.2e l2 %.2e | n %.2e | m %.2e\n",
              ok ? "PASS" : "FAIL", cs.name.c_str(), DtypeName(cs.dtype),
              (segments > 1 ? kernel + " P" + std::to_string(segments) : kernel).c_str(), static_cast<long long>(p.B),
              static_cast<long long>(p.NH), static_cast<long long>(p.S), static_cast<long long>(p.DK),
              static_cast<long long>(p.DV), static_cast<long long>(p.L), eh.scaled_max, eh.rel_l2, ec.scaled_max, ec.rel_l2,
              en.scaled_max, em.scaled_max);
  std::fflush(stdout);
  if (!ok) ++failures;
}

template <typename H>
Result RunCudaStateBf16(const Problem& p, Dtype dtype, bool step_op) {
  std::unique_ptr<DeviceBuffer> q(DeviceBuffer::From(Encode<H>(p.q))), k(DeviceBuffer::From(Encode<H>(p.k))),
      v(DeviceBuffer::From(Encode<H>(p.v))), i(DeviceBuffer::From(p.i)), f(DeviceBuffer::From(p.f)),
      c0(DeviceBuffer::From(Encode<Bf16>(p.c0))), n0(DeviceBuffer::From(Encode<Bf16>(p.n0))), m0(DeviceBuffer::From(p.m0));
  const size_t nh = p.Heads() * p.S * p.DV;
  DeviceBuffer h(nh * sizeof(H)), c(p.c0.size() * 2), n(p.n0.size() * 2), m(p.m0.size() * 4);
  MLstmParams prm = ParamsFor(p, dtype);
  prm.state_dtype = Dtype::kBFloat16;
  prm.matQ = q->As<void>(), prm.matK = k->As<void>(), prm.matV = v->As<void>();
  prm.vecI = i->As<float>(), prm.vecF = f->As<float>();
  prm.matC0 = c0->As<void>(), prm.vecN0 = n0->As<void>(), prm.scaM0 = m0->As<float>();
  prm.matH = h.As<void>(), prm.matC = c.As<void>(), prm.vecN = n.As<void>(), prm.scaM = m.As<float>();
  CHECK_CUDA(step_op ? LaunchMLstmStepFw(prm, nullptr) : LaunchMLstmChunkwiseFw(prm, nullptr));
  CHECK_CUDA(cudaDeviceSynchronize());
  Result r;
  r.h = Decode(h.To<H>(nh));
  r.c = Decode(c.To<Bf16>(p.c0.size())), r.n = Decode(n.To<Bf16>(p.n0.size())), r.m = m.To<float>(p.m0.size());
  return r;
}

/// A bfloat16 state (--state-dtype bf16): C0 and n0 stored in bfloat16, C' and n' written in bfloat16 by the step kernel
/// itself (S = 1) or through float32 scratch (S > 1). Oracle: the CPU kernels on the same stored values, rounding the
/// state after every piece as the op does (mlstm_params.h), their final C' and n' rounded to bfloat16 (exact then). Tolerances: h as the float32-state case of its kernel; C', n' within 2^-7 of
/// the scale (scaled max): both sides round float32 results that differ by ~1e-6 to the nearest bfloat16, so a value
/// next to a rounding boundary may land one bfloat16 step (2^-8 relative) apart.
void RunStateBf16(const std::string& name, Problem p, Dtype dtype, bool step_op) {
  p = RoundedTo(p, dtype);
  for (auto& x : p.c0) x = RoundTrip<Bf16>(x);
  for (auto& x : p.n0) x = RoundTrip<Bf16>(x);
  const Result cpu = RunCpu(p, dtype, ThreadedFor(), false, /*round_state_bf16=*/true);
  const Result gpu = dtype == Dtype::kBFloat16 ? RunCudaStateBf16<Bf16>(p, dtype, step_op) : RunCudaStateBf16<float>(p, dtype, step_op);
  std::vector<float> c_ref = cpu.c, n_ref = cpu.n;
  for (auto& x : c_ref) x = RoundTrip<Bf16>(x);
  for (auto& x : n_ref) x = RoundTrip<Bf16>(x);
  const Error eh = Compare(gpu.h, cpu.h), ec = Compare(gpu.c, c_ref), en = Compare(gpu.n, n_ref), em = Compare(gpu.m, cpu.m);
  MLstmParams prm = ParamsFor(p, dtype);
  const std::string kernel = step_op ? "step" : MLstmChunkwiseKernelName(prm);
  const double h_tol = kernel == "tensor_core" ? 2e-2 : dtype == Dtype::kBFloat16 ? 1e-2 : 5e-5;
  const bool ok = eh.finite && ec.finite && en.finite && em.finite && (dtype == Dtype::kFloat32 ? eh.scaled_max : eh.rel_l2) <= h_tol &&
                  (kernel == "tensor_core" ? ec.rel_l2 <= 2e-2 : ec.scaled_max <= 7.8e-3) && en.scaled_max <= 7.8e-3 && em.scaled_max <= 1e-5;
  std::printf("%-4s %-34s %-9s %-12s bf16 state S%-5lld | h max %.2e l2 %.2e | C max %.2e | n %.2e | m %.2e\n", ok ? "PASS" : "FAIL",
              name.c_str(), DtypeName(dtype), kernel.c_str(), static_cast<long long>(p.S), eh.scaled_max, eh.rel_l2, ec.scaled_max,
              en.scaled_max, em.scaled_max);
  std::fflush(stdout);
  if (!ok) ++failures;
}

/// One lane's gates, state and outputs on the device, for the two-lane launcher (state in float32 or bfloat16); q, k, v
/// live in the stream's buffers (RunLanes).
struct LaneBuffers {
  std::unique_ptr<DeviceBuffer> i, f, c0, n0, m0, h, c, n, m;
  size_t nh = 0, nc = 0, nn = 0, nm = 0;
  MLstmParams prm;

  LaneBuffers(const Problem& p, bool bf16_state) {
    i.reset(DeviceBuffer::From(p.i)), f.reset(DeviceBuffer::From(p.f));
    c0.reset(bf16_state ? DeviceBuffer::From(Encode<Bf16>(p.c0)) : DeviceBuffer::From(p.c0));
    n0.reset(bf16_state ? DeviceBuffer::From(Encode<Bf16>(p.n0)) : DeviceBuffer::From(p.n0));
    m0.reset(DeviceBuffer::From(p.m0));
    nh = p.Heads() * p.S * p.DV, nc = p.c0.size(), nn = p.n0.size(), nm = p.m0.size();
    const size_t es = bf16_state ? 2 : 4;
    h.reset(new DeviceBuffer(nh * 2)), c.reset(new DeviceBuffer(nc * es)), n.reset(new DeviceBuffer(nn * es));
    m.reset(new DeviceBuffer(nm * 4));
    prm = ParamsFor(p, Dtype::kBFloat16);
    if (bf16_state) prm.state_dtype = Dtype::kBFloat16;
    prm.vecI = i->As<float>(), prm.vecF = f->As<float>();
    prm.matC0 = c0->As<void>(), prm.vecN0 = n0->As<void>(), prm.scaM0 = m0->As<float>();
    prm.matH = h->As<void>(), prm.matC = c->As<void>(), prm.vecN = n->As<void>(), prm.scaM = m->As<float>();
  }

  /// Every output's bytes (h, C', n', m'), to compare runs bit for bit.
  std::vector<unsigned char> Bytes() const {
    const size_t es = prm.state_dtype == Dtype::kBFloat16 ? 2 : 4;
    std::vector<unsigned char> all;
    const DeviceBuffer* parts[] = {h.get(), c.get(), n.get(), m.get()};
    const size_t sizes[] = {nh * 2, nc * es, nn * es, nm * 4};
    for (int x = 0; x < 4; ++x) {
      const auto part = parts[x]->To<unsigned char>(sizes[x]);
      all.insert(all.end(), part.begin(), part.end());
    }
    return all;
  }

  void Spoil(cudaStream_t stream) const {  // outputs start as garbage before each run
    CHECK_CUDA(cudaMemsetAsync(h->As<void>(), 0xff, nh * 2, stream));
    CHECK_CUDA(cudaMemsetAsync(c->As<void>(), 0xff, 64, stream));
  }
};

/// The stream's rows of one of q, k, v: the decode problem's [B, NH, 1, D] as [B, NH·D], then the prompt problem's
/// [P, NH, L, D] token-major as [P·L, NH·D] (what the mixed graph's projections leave), bfloat16.
std::vector<Bf16> StreamRows(const std::vector<float>& decode, const Problem& pp, const std::vector<float>& prompt, int64_t D) {
  std::vector<float> rows(decode);
  rows.resize(decode.size() + prompt.size());
  float* out = rows.data() + decode.size();
  for (int64_t p = 0; p < pp.B; ++p)
    for (int64_t t = 0; t < pp.S; ++t)
      for (int64_t h = 0; h < pp.NH; ++h)
        for (int64_t d = 0; d < D; ++d) out[((p * pp.S + t) * pp.NH + h) * D + d] = prompt[((p * pp.NH + h) * pp.S + t) * D + d];
  return Encode<Bf16>(rows);
}

/// MLstmLanes' launcher (the mixed graph's two cells) on the stream's q, k, v rows: run on one stream, forked onto a
/// second stream, and forked inside a captured CUDA graph (as ONNX Runtime captures a mixed step), it gives the bits of
/// the step and the chunkwise kernel run directly on the lanes in the cell's own layout. So the prompt rows' layout
/// copy is exact and the fork changes nothing (each kernel is checked against the CPU above). Decode lane: 7B heads,
/// 16 rows; prompt lane: two rows of two chunks (a whole-chunk prompt piece; P > 1 checks the copy's row order).
void RunLanes(bool bf16_state) {
  const Problem dp = RoundedTo(MakeProblem(16, 8, 1, 256, 512, 64, 80u), Dtype::kBFloat16);
  const Problem pp = RoundedTo(MakeProblem(2, 8, 128, 256, 512, 64, 81u), Dtype::kBFloat16);
  std::unique_ptr<DeviceBuffer> qs(DeviceBuffer::From(StreamRows(dp.q, pp, pp.q, 256))),
      ks(DeviceBuffer::From(StreamRows(dp.k, pp, pp.k, 256))), vs(DeviceBuffer::From(StreamRows(dp.v, pp, pp.v, 512)));
  std::unique_ptr<DeviceBuffer> pq(DeviceBuffer::From(Encode<Bf16>(pp.q))), pk(DeviceBuffer::From(Encode<Bf16>(pp.k))),
      pv(DeviceBuffer::From(Encode<Bf16>(pp.v)));
  LaneBuffers decode(dp, bf16_state), prompt(pp, bf16_state);
  const size_t decode_qk = dp.q.size() * 2, decode_v = dp.v.size() * 2;  // bytes of the decode rows
  decode.prm.matQ = qs->As<void>(), decode.prm.matK = ks->As<void>(), decode.prm.matV = vs->As<void>();
  const TokenRows rows{qs->As<unsigned char>() + decode_qk, ks->As<unsigned char>() + decode_qk, vs->As<unsigned char>() + decode_v};
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  LaneStream* made = nullptr;
  CHECK_CUDA(LaneStream::Create(&made));
  std::unique_ptr<LaneStream> side(made);
  auto collect = [&] {
    CHECK_CUDA(cudaStreamSynchronize(stream));
    CHECK_CUDA(cudaGetLastError());
    auto bytes = decode.Bytes(), more = prompt.Bytes();
    bytes.insert(bytes.end(), more.begin(), more.end());
    return bytes;
  };
  // the oracle: each lane's kernel on its own, the prompt's q, k, v in the cell's [P, NH, L, D]
  decode.Spoil(stream), prompt.Spoil(stream);
  MLstmParams direct = prompt.prm;
  direct.matQ = pq->As<void>(), direct.matK = pk->As<void>(), direct.matV = pv->As<void>();
  CHECK_CUDA(LaunchMLstmStepFw(decode.prm, stream));
  CHECK_CUDA(LaunchMLstmChunkwiseFw(direct, stream));
  const auto expected = collect();
  auto run = [&](LaneStream* s, bool captured) {
    decode.Spoil(stream), prompt.Spoil(stream);
    if (!captured) {
      CHECK_CUDA(LaunchMLstmLanesFw(decode.prm, prompt.prm, rows, stream, s));
    } else {
      cudaGraph_t graph;
      cudaGraphExec_t exec;
      CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
      CHECK_CUDA(LaunchMLstmLanesFw(decode.prm, prompt.prm, rows, stream, s));
      CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
      CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
      CHECK_CUDA(cudaGraphLaunch(exec, stream));
      CHECK_CUDA(cudaStreamSynchronize(stream));
      CHECK_CUDA(cudaGraphExecDestroy(exec));
      CHECK_CUDA(cudaGraphDestroy(graph));
    }
    return collect();
  };
  const auto one_stream = run(nullptr, false);
  const auto forked = run(side.get(), false);
  const auto captured = run(side.get(), true);
  const bool ok = one_stream == expected && forked == expected && captured == expected;
  std::printf("%-4s %-34s %-9s two lanes   %s state | one stream %s, forked %s, captured %s each kernel alone\n", ok ? "PASS" : "FAIL",
              "lanes: step B16 + chunkwise P2 L128", "bfloat16", bf16_state ? "bf16" : "fp32", one_stream == expected ? "==" : "!=",
              forked == expected ? "==" : "!=", captured == expected ? "==" : "!=");
  std::fflush(stdout);
  if (!ok) ++failures;
  side.reset();
  CHECK_CUDA(cudaStreamDestroy(stream));
}

}  // namespace
}  // namespace xlstm::test

int main() {
  using namespace xlstm;
  using namespace xlstm::test;
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 0;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);

  const Dtype F32 = Dtype::kFloat32, F16 = Dtype::kFloat16, BF16 = Dtype::kBFloat16;
  const CudaPath AUTO = CudaPath::kAuto, SIMT = CudaPath::kSimt, TC = CudaPath::kTensorCore;
  std::vector<Case> cases;
  // the committed fixtures' cell shapes (what the C# tests export), float32 as exported
  cases.push_back({"fixture single_basic", MakeProblem(1, 4, 53, 16, 32, 16, 1u), F32, AUTO});
  cases.push_back({"fixture fused_bias", MakeProblem(2, 2, 29, 32, 32, 8, 2u), F32, AUTO});
  cases.push_back({"fixture segmented (MIC 20)", MakeProblem(2, 4, 61, 32, 16, 8, 3u, true, 20), F32, AUTO});
  cases.push_back({"fixture tied_dims", MakeProblem(1, 4, 45, 16, 32, 32, 4u), F32, AUTO});
  for (Dtype d : {F32, F16, BF16}) cases.push_back({"one token (step path)", MakeProblem(2, 3, 1, 16, 24, 16, 5u), d, AUTO});
  // odd head dims: only the SIMT kernel takes them
  for (Dtype d : {F32, BF16}) cases.push_back({"odd dims", MakeProblem(2, 3, 70, 20, 36, 16, 6u), d, AUTO});
  // lengths around the tile: below, exactly, one to three chunks plus remainders
  for (int64_t S : {5, 64, 65, 130, 200}) {
    for (Dtype d : {F32, BF16, F16}) {
      cases.push_back({"DQK 64 S " + std::to_string(S), MakeProblem(2, 2, S, 64, 64, 64, 10u + S), d, AUTO});
    }
  }
  cases.push_back({"DQK 128 segmented (MIC 100)", MakeProblem(1, 2, 200, 128, 128, 64, 20u, true, 100), BF16, TC});
  cases.push_back({"DQK 128 segmented (MIC 100)", MakeProblem(1, 2, 200, 128, 128, 64, 20u, true, 100), F32, SIMT});
  // xLSTM-7b head dims
  const Problem big = MakeProblem(1, 2, 300, 256, 512, 64, 30u);
  cases.push_back({"7b dims", big, F32, SIMT});
  cases.push_back({"7b dims", big, BF16, TC});
  cases.push_back({"7b dims", big, F16, TC});
  cases.push_back({"7b dims", big, BF16, SIMT});
  // a recurrent tail of 63 tokens after a chunk, and a prompt shorter than a chunk (all recurrent): the run of
  // one-token pieces the tensor-core kernel steps through in registers
  cases.push_back({"7b dims S 127 (tail 63)", MakeProblem(1, 8, 127, 256, 512, 64, 33u), BF16, TC});
  // sequence-parallel prompts (mlstm_chunkwise_tc_fw.cu): segments from the empty state, their start states combined,
  // then every segment from its start; from a random state and from HF's zero start (m = 0), chunk 64 and 128
  for (int P : {2, 4}) {
    cases.push_back({"7b dims S 1024 segments", MakeProblem(1, 2, 1024, 256, 512, 64, 36u), BF16, TC, false, P});
    cases.push_back({"7b dims S 1024 segments", MakeProblem(1, 2, 1024, 256, 512, 64, 36u), F16, TC, false, P});
  }
  cases.push_back({"7b dims S 512 segments, zero state", MakeProblem(1, 8, 512, 256, 512, 64, 37u, false), BF16, TC, false, 2});
  cases.push_back({"7b dims S 1024 segments, chunk 128", MakeProblem(1, 2, 1024, 256, 512, 128, 38u), BF16, TC, false, 2});
  cases.push_back({"DQK 128 S 512 segments (B2)", MakeProblem(2, 3, 512, 128, 96, 64, 39u), BF16, TC, false, 2});
  // the launcher's own choice at the 7B layer of a batch-1 prompt (2 segments on the H200)
  cases.push_back({"7b layer S 2048 (auto)", MakeProblem(1, 8, 2048, 256, 512, 64, 40u), BF16, TC});
  cases.push_back({"7b dims S 40 (all recurrent)", MakeProblem(2, 2, 40, 256, 512, 64, 34u), BF16, TC});
  cases.push_back({"DQK 128 S 100 (tail 36)", MakeProblem(1, 2, 100, 128, 96, 64, 35u), F16, TC});
  cases.push_back({"7b dims zero state", MakeProblem(2, 1, 256, 256, 512, 64, 31u, false), BF16, TC});
  cases.push_back({"7b dims chunk 128 (split in 64s)", MakeProblem(2, 1, 300, 256, 512, 128, 32u), BF16, TC});
  cases.push_back({"7b dims chunk 128", MakeProblem(1, 1, 300, 256, 512, 128, 32u), F32, SIMT});
  // attention-mask padding: ĩ = −inf, f̃ = +inf leave the state untouched (the graph masks gates this way)
  {
    Problem masked = MakeProblem(2, 2, 150, 64, 64, 64, 60u);
    for (int64_t h = 0; h < masked.Heads(); ++h) {
      for (int64_t t = 0; t < masked.S; ++t) {
        if (t < 20 + 7 * h || t % 13 == 5) {
          masked.i[h * masked.S + t] = -INFINITY;
          masked.f[h * masked.S + t] = INFINITY;
        }
      }
    }
    for (Dtype d : {F32, BF16}) cases.push_back({"masked positions", masked, d, AUTO});
    // whole-chunk prompts (serve --pad-prompts): 7B heads, masked lead positions filling the first of two chunks, from
    // a zero state (a new prompt) and from a random one (after a cached prefix)
    for (bool random_state : {false, true}) {
      Problem lead = MakeProblem(1, 8, 128, 256, 512, 64, random_state ? 63u : 62u, random_state);
      for (int64_t h = 0; h < lead.Heads(); ++h) {
        for (int64_t t = 0; t < 1 + 9 * h; ++t) {
          lead.i[h * lead.S + t] = -INFINITY;
          lead.f[h * lead.S + t] = INFINITY;
        }
      }
      cases.push_back({random_state ? "7b dims masked lead, random state" : "7b dims masked lead, zero state", lead, BF16, TC});
    }
    Problem one = MakeProblem(2, 2, 1, 64, 64, 64, 61u);
    one.i[0] = -INFINITY, one.f[0] = INFINITY;
    cases.push_back({"masked positions (step)", one, F32, AUTO, true});
  }
  // decode steps at the benchmark's batch sizes (wide and narrow tiles), and DV not a multiple of 4
  for (int64_t B : {1, 8, 64}) {
    for (Dtype d : {F32, BF16}) cases.push_back({"step 7b dims", MakeProblem(B, 8, 1, 256, 512, 64, 40u + B), d, AUTO, true});
  }
  cases.push_back({"step DV 22", MakeProblem(3, 2, 1, 16, 22, 16, 50u), F32, AUTO, true});
  cases.push_back({"step DV 22", MakeProblem(3, 2, 1, 16, 22, 16, 50u), F16, AUTO, true});

  for (const auto& c : cases) Run(c);
  // the state stored in bfloat16 (--state-dtype bf16)
  for (int64_t B : {1, 64}) RunStateBf16("step 7b dims", MakeProblem(B, 8, 1, 256, 512, 64, 70u + B), BF16, true);
  RunStateBf16("step DV 22", MakeProblem(3, 2, 1, 16, 22, 16, 72u), F32, true);
  RunStateBf16("chunkwise 7b dims", MakeProblem(1, 2, 130, 256, 512, 64, 73u), BF16, false);
  RunStateBf16("chunkwise 7b dims tail 63", MakeProblem(1, 2, 127, 256, 512, 64, 75u), BF16, false);
  RunStateBf16("chunkwise odd dims", MakeProblem(2, 3, 70, 20, 36, 16, 74u), F32, false);
  // the mixed graph's two cells, forked onto two streams (kernels/mlstm_lanes.cuh)
  for (bool bf16_state : {false, true}) RunLanes(bf16_state);
  std::printf("%zu cases, %d failed\n", cases.size() + 8, failures);
  return failures == 0 ? 0 : 1;
}
