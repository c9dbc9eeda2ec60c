// The two-lane launcher (mlstm_lanes.cuh): the step's and the chunkwise kernels, and the prompt rows' layout copy.
#include <algorithm>
#include <cstdint>

#include "kernels/mlstm_cuda_common.cuh"
#include "kernels/mlstm_fw.cuh"
#include "kernels/mlstm_lanes.cuh"

namespace xlstm {

cudaError_t LaneStream::Create(LaneStream** out) {
  *out = nullptr;
  auto* s = new LaneStream();
  int least = 0, greatest = 0;
  cudaError_t err = cudaGetDevice(&s->device_);
  if (err == cudaSuccess) err = cudaDeviceGetStreamPriorityRange(&least, &greatest);
  if (err == cudaSuccess) err = cudaStreamCreateWithPriority(&s->stream_, cudaStreamNonBlocking, greatest);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&s->fork_, cudaEventDisableTiming);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&s->join_, cudaEventDisableTiming);
  if (err != cudaSuccess) {
    delete s;
    return err;
  }
  *out = s;
  return cudaSuccess;
}

LaneStream::~LaneStream() {
  // errors are ignored: at process exit the context may already be gone, and a destructor cannot report them
  if (join_ != nullptr) (void)cudaEventDestroy(join_);
  if (fork_ != nullptr) (void)cudaEventDestroy(fork_);
  if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
}

namespace {

bool HasRows(const MLstmParams& p) { return p.batch * p.heads > 0; }

cudaError_t LaunchStepLane(const MLstmParams& decode, cudaStream_t stream) {
  return HasRows(decode) ? LaunchMLstmStepFw(decode, stream) : cudaSuccess;
}

size_t ElementBytes(Dtype d) { return d == Dtype::kFloat32 ? 4 : 2; }

/// One tensor of the layout copy: token-major src [P·L, NH·W] -> dst [P, NH, L, W], W in units U.
struct HeadsJob {
  const void* src;
  void* dst;
  int64_t width;  // W: units a head's row
};

/// blockIdx.y picks q, k or v; dst[((p·NH + h)·L + t)·W + w] = src[((p·L + t)·NH + h)·W + w].
template <typename U>
__global__ void TokenRowsToHeadsKernel(HeadsJob q, HeadsJob k, HeadsJob v, int64_t P, int64_t NH, int64_t L) {
  const HeadsJob job = blockIdx.y == 0 ? q : blockIdx.y == 1 ? k : v;
  const int64_t W = job.width, total = P * NH * L * W;
  const U* src = static_cast<const U*>(job.src);
  U* dst = static_cast<U*>(job.dst);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t w = i % W;
    int64_t r = i / W;
    const int64_t t = r % L;
    r /= L;
    const int64_t h = r % NH, p = r / NH;
    dst[i] = src[((p * L + t) * NH + h) * W + w];
  }
}

bool Aligned(const void* ptr, size_t unit) { return reinterpret_cast<uintptr_t>(ptr) % unit == 0; }

template <typename U>
cudaError_t LaunchHeads(const MLstmParams& p, const TokenRows& rows, void* dst, cudaStream_t stream) {
  const size_t es = ElementBytes(p.dtype);
  const int64_t qk_bytes = p.batch * p.heads * p.seq * p.dqk * static_cast<int64_t>(es);
  auto* base = static_cast<unsigned char*>(dst);
  const int64_t unit = static_cast<int64_t>(sizeof(U)), bytes = static_cast<int64_t>(es);
  const HeadsJob q{rows.q, base, p.dqk * bytes / unit};
  const HeadsJob k{rows.k, base + qk_bytes, q.width};
  const HeadsJob v{rows.v, base + 2 * qk_bytes, p.dv * bytes / unit};
  const int64_t largest = p.batch * p.heads * p.seq * (q.width > v.width ? q.width : v.width);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(CeilDiv(largest, 256), 1024));
  TokenRowsToHeadsKernel<U><<<dim3(blocks, 3), 256, 0, stream>>>(q, k, v, p.batch, p.heads, p.seq);
  return cudaGetLastError();
}

/// The prompt lane's rows laid out as [P, NH, L, D] in stream-ordered scratch on `stream`; *p gets prompt with q, k, v
/// there. On an error the scratch is freed and *scratch is null.
cudaError_t LayOutPrompt(const MLstmParams& prompt, const TokenRows& rows, cudaStream_t stream, MLstmParams* p, void** scratch) {
  const size_t es = ElementBytes(prompt.dtype);
  const size_t bytes = static_cast<size_t>(prompt.batch * prompt.heads * prompt.seq * (2 * prompt.dqk + prompt.dv)) * es;
  *scratch = nullptr;
  cudaError_t err = cudaMallocAsync(scratch, bytes, stream);
  if (err != cudaSuccess) return err;
  err = LaunchTokenRowsToHeads(prompt, rows, *scratch, stream);
  if (err != cudaSuccess) {
    (void)cudaFreeAsync(*scratch, stream);
    *scratch = nullptr;
    return err;
  }
  const size_t qk = static_cast<size_t>(prompt.batch * prompt.heads * prompt.seq * prompt.dqk) * es;
  *p = prompt;
  p->matQ = *scratch;
  p->matK = static_cast<unsigned char*>(*scratch) + qk;
  p->matV = static_cast<unsigned char*>(*scratch) + 2 * qk;
  return cudaSuccess;
}

/// The prompt lane's cell on `stream` (after LayOutPrompt), then its scratch freed there.
cudaError_t RunPromptCell(const MLstmParams& p, void* scratch, cudaStream_t stream) {
  const cudaError_t err = LaunchMLstmChunkwiseFw(p, stream);
  const cudaError_t freed = cudaFreeAsync(scratch, stream);
  return err != cudaSuccess ? err : freed;
}

}  // namespace

cudaError_t LaunchTokenRowsToHeads(const MLstmParams& p, const TokenRows& rows, void* dst, cudaStream_t stream) {
  if (!HasRows(p)) return cudaSuccess;
  const size_t es = ElementBytes(p.dtype);
  // the widest unit that divides every head row and aligns every pointer (16 bytes at 7B: 512- and 1,024-byte rows)
  const size_t qk_row = static_cast<size_t>(p.dqk) * es, v_row = static_cast<size_t>(p.dv) * es;
  const size_t qk_all = static_cast<size_t>(p.batch * p.heads * p.seq) * qk_row;  // where k and v start in dst
  auto fits = [&](size_t unit) {
    return qk_row % unit == 0 && v_row % unit == 0 && qk_all % unit == 0 && Aligned(rows.q, unit) &&
           Aligned(rows.k, unit) && Aligned(rows.v, unit) && Aligned(dst, unit);
  };
  if (fits(16)) return LaunchHeads<uint4>(p, rows, dst, stream);
  if (fits(4)) return LaunchHeads<unsigned>(p, rows, dst, stream);
  return LaunchHeads<unsigned short>(p, rows, dst, stream);
}

cudaError_t LaunchMLstmLanesFw(const MLstmParams& decode, const MLstmParams& prompt, const TokenRows& rows,
                               cudaStream_t stream, LaneStream* side) {
  if (decode.seq != 1) return cudaErrorInvalidValue;
  // the prompt rows' layout copy first, on `stream`: launched on the side stream it would start the chunkwise kernel
  // after the step's many CTAs were queued, and the GPU would run the two one after the other
  MLstmParams cell;
  void* scratch = nullptr;
  if (HasRows(prompt)) {
    const cudaError_t err = LayOutPrompt(prompt, rows, stream, &cell, &scratch);
    if (err != cudaSuccess) return err;
  }
  if (side == nullptr || !HasRows(decode) || !HasRows(prompt)) {
    const cudaError_t err = HasRows(prompt) ? RunPromptCell(cell, scratch, stream) : cudaSuccess;
    return err != cudaSuccess ? err : LaunchStepLane(decode, stream);
  }
  // fork: the side stream waits for everything already on `stream` (the lanes' gates, the layout copy)
  cudaError_t err = cudaEventRecord(side->fork(), stream);
  if (err == cudaSuccess) err = cudaStreamWaitEvent(side->stream(), side->fork(), 0);
  if (err != cudaSuccess) {
    (void)cudaFreeAsync(scratch, stream);
    return err;
  }
  // the prompt's cell first: its CTAs are few and long, the step's many and short
  const cudaError_t prompt_err = RunPromptCell(cell, scratch, side->stream());
  // join, whatever the launch did: a capture must not end with the side stream still forked
  const cudaError_t record_err = cudaEventRecord(side->join(), side->stream());
  const cudaError_t step_err = LaunchStepLane(decode, stream);
  const cudaError_t wait_err = record_err == cudaSuccess ? cudaStreamWaitEvent(stream, side->join(), 0) : record_err;
  if (prompt_err != cudaSuccess) return prompt_err;
  if (step_err != cudaSuccess) return step_err;
  return wait_err;
}

}  // namespace xlstm
