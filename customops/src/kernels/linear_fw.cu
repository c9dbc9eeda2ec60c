// ai.xlstm::Linear on CUDA (kernels/linear_params.h has the contract and the summation order).
//
// Decode kernel, for float16/bfloat16 when K is a multiple of 64, N of 16 and the rows are 16-byte aligned:
//   * a block of 8 warps owns 16 output columns (two n8 tiles) and up to 16·MT rows (MT m16 tiles);
//   * warp w sums the K blocks w, w+8, w+16, ... (kLinearSplits = 8): per block every lane loads 16 consecutive
//     weights of one column (two 16-byte loads; a column's 64 weights come from 4 lanes, 128 contiguous bytes) and
//     the same 16 k of two rows of x, and issues four m16n8k16 MMAs. The MMA's k order inside a block is a fixed
//     permutation of the physical k (lane q's 16 k are its k pairs 2q, 2q+8 of four MMAs), the same for A and B;
//   * the warps' float sums meet in shared memory and are added in warp order, then the bias, then one rounding.
// Rows of an M-tile that M does not reach are zeros in the MMA and are not written. Nothing in a row's arithmetic
// depends on M or on other rows: the result is the same bits at every batch size.
// Above 16 rows every block of the kernel above would read all of x for its 16 columns, so x's traffic through L2
// grows with M·N/16 and a 64-row step runs at half the bandwidth. There the same sums are computed with the split
// across blocks: block (s, c) holds split s's slice of x in shared memory, walks its columns in groups of 16 with
// the same MMA chain, and writes the split's float sums to a workspace; a second kernel adds the 8 splits in split
// order, then the bias, then rounds. Same operations in the same order on every value: the same bits as the first
// kernel, so the batch size may cross from one kernel to the other.
// Other shapes and float32 (the gate projection) take the row-dot kernels: for K ≥ 2048 a block per output value
// (threads stride over k, a fixed xor tree per warp, the warps in order), else a warp per value. Also batch-invariant
// (chosen by K alone); only used where the MMA kernel cannot be, and without batch_invariant cuBLAS takes those shapes.
// The one-pass kernel computes 16 columns a block, or 8 when N is small for the GPU; the same arithmetic per column.
#include <cublas_v2.h>

#include <cstdint>
#include <algorithm>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>

#include "kernels/linear_fw.cuh"
#include "kernels/mlstm_cuda_common.cuh"

namespace xlstm {

namespace {

constexpr int kWarps = kLinearSplits;  // one warp per split
constexpr int kThreads = 32 * kWarps;
constexpr int kColumns = 16;           // per block: two n8 tiles

template <typename T>
struct MmaType;
template <>
struct MmaType<__nv_bfloat16> {
  static __device__ __forceinline__ void Run(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};
template <>
struct MmaType<__half> {
  static __device__ __forceinline__ void Run(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                             uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

__device__ __forceinline__ uint32_t Word(const uint4 (&v)[2], int j) {  // 32-bit word j (0..7) of 16 halves
  const uint4& u = v[j >> 2];
  switch (j & 3) {
    case 0: return u.x;
    case 1: return u.y;
    case 2: return u.z;
    default: return u.w;
  }
}

/// Weights are read once per step: stream them past L1 (evict-first).
__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) { return __ldcs(p); }

/// The four k16 MMAs of one 64-wide K block for one m16 tile and one n8 tile: lane q's k pairs (4s, 4s+1) and
/// (4s+2, 4s+3) of its 16 k, for A (rows g and g+8: xa, xb) and B (column g: wv) alike.
template <typename T>
__device__ __forceinline__ void MmaBlock(float (&c)[4], const uint4 (&xa)[2], const uint4 (&xb)[2], const uint4 (&wv)[2]) {
#pragma unroll
  for (int s = 0; s < 4; ++s)
    MmaType<T>::Run(c, Word(xa, 2 * s), Word(xb, 2 * s), Word(xa, 2 * s + 1), Word(xb, 2 * s + 1), Word(wv, 2 * s),
                    Word(wv, 2 * s + 1));
}

template <typename T, int MT, int NT>
__global__ void __launch_bounds__(kThreads) LinearDecodeMmaKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                                  const T* __restrict__ bias, T* __restrict__ y,
                                                                  int M, int K, int N) {
  __shared__ float partial[kWarps][16 * MT][8 * NT];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, q = lane % 4;
  const int n0 = blockIdx.x * 8 * NT;
  const int m0 = blockIdx.y * 16 * MT;
  const int blocks = K / kLinearKBlock;

  float c[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) c[i][j][e] = 0.0f;

  const uint4 zero = make_uint4(0, 0, 0, 0);
  uint4 wv[NT][2], wn[NT][2];
  auto load_w = [&](uint4 (&dst)[NT][2], int kb) {
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      const uint4* p = reinterpret_cast<const uint4*>(w + static_cast<size_t>(n0 + 8 * j + g) * K + kb * kLinearKBlock + q * 16);
      dst[j][0] = LoadStreaming(p);
      dst[j][1] = LoadStreaming(p + 1);
    }
  };
  int kb = warp;
  if (kb < blocks) load_w(wv, kb);
  for (; kb < blocks; kb += kWarps) {
    if (kb + kWarps < blocks) load_w(wn, kb + kWarps);  // the next block's weights are in flight during these MMAs
    const int k0 = kb * kLinearKBlock + q * 16;
#pragma unroll
    for (int i = 0; i < MT; ++i) {
      const int r0 = m0 + 16 * i + g, r1 = r0 + 8;
      uint4 xa[2], xb[2];
      const uint4* pa = reinterpret_cast<const uint4*>(x + static_cast<size_t>(r0) * K + k0);
      const uint4* pb = reinterpret_cast<const uint4*>(x + static_cast<size_t>(r1) * K + k0);
      xa[0] = r0 < M ? __ldg(pa) : zero;
      xa[1] = r0 < M ? __ldg(pa + 1) : zero;
      xb[0] = r1 < M ? __ldg(pb) : zero;
      xb[1] = r1 < M ? __ldg(pb + 1) : zero;
#pragma unroll
      for (int j = 0; j < NT; ++j) MmaBlock<T>(c[i][j], xa, xb, wv[j]);
    }
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      wv[j][0] = wn[j][0];
      wv[j][1] = wn[j][1];
    }
  }

  // C fragment: c[0..1] at (row g, columns 2q, 2q+1), c[2..3] at (row g+8, same columns)
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      partial[warp][16 * i + g][8 * j + 2 * q] = c[i][j][0];
      partial[warp][16 * i + g][8 * j + 2 * q + 1] = c[i][j][1];
      partial[warp][16 * i + g + 8][8 * j + 2 * q] = c[i][j][2];
      partial[warp][16 * i + g + 8][8 * j + 2 * q + 1] = c[i][j][3];
    }
  __syncthreads();
  for (int e = threadIdx.x; e < 16 * MT * 8 * NT; e += kThreads) {
    const int r = e / (8 * NT), col = e % (8 * NT);
    if (m0 + r >= M) continue;
    float sum = 0.0f;
#pragma unroll
    for (int s = 0; s < kWarps; ++s) sum += partial[s][r][col];  // split order
    if (bias != nullptr) sum += ToF<T>(bias[n0 + col]);
    y[static_cast<size_t>(m0 + r) * N + n0 + col] = FromF<T>(sum);
  }
}

/// x rows of one split in shared memory: per local K block j and row r, 64 values and 8 of padding (144 bytes a row:
/// the 8 rows a 16-byte load touches fall on different banks).
constexpr int kSmemRowHalves = kLinearKBlock + 8;

/// Block (split s = blockIdx.x, column chunk blockIdx.y, rows 64·blockIdx.z...): split s's partial sums of its
/// columns, written as float to ws[s][m][n].
template <typename T, int MT>
__global__ void __launch_bounds__(kThreads) LinearSplitMmaKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                                 float* __restrict__ ws, int M, int K, int N) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* xs = reinterpret_cast<T*>(smem_raw);
  const int split = blockIdx.x;
  const int rows = 16 * MT, m0 = blockIdx.z * rows;
  const int blocks = K / kLinearKBlock;
  const int local = (blocks - split + kLinearSplits - 1) / kLinearSplits;  // this split's K blocks: split, split+8, ...
  // stage x[m0 .. m0+rows, split's blocks] (16 bytes a thread a step; rows past M are zeros)
  const int chunks = local * rows * (kLinearKBlock / 8);
  for (int e = threadIdx.x; e < chunks; e += kThreads) {
    const int piece = e % (kLinearKBlock / 8), r = (e / (kLinearKBlock / 8)) % rows, j = e / (kLinearKBlock / 8 * rows);
    const int kb = split + kLinearSplits * j;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (m0 + r < M) v = __ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(m0 + r) * K + kb * kLinearKBlock + piece * 8));
    *reinterpret_cast<uint4*>(xs + (static_cast<size_t>(j) * rows + r) * kSmemRowHalves + piece * 8) = v;
  }
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, q = lane % 4;
  const int groups = N / kColumns;
  for (int cg = blockIdx.y * kWarps + warp; cg < groups; cg += gridDim.y * kWarps) {
    const int n0 = cg * kColumns;
    float c[MT][2][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int jn = 0; jn < 2; ++jn)
#pragma unroll
        for (int e = 0; e < 4; ++e) c[i][jn][e] = 0.0f;
    uint4 wv[2][2], wn[2][2];
    auto load_w = [&](uint4 (&dst)[2][2], int j) {
      const int kb = split + kLinearSplits * j;
#pragma unroll
      for (int jn = 0; jn < 2; ++jn) {
        const uint4* p = reinterpret_cast<const uint4*>(w + static_cast<size_t>(n0 + 8 * jn + g) * K + kb * kLinearKBlock + q * 16);
        dst[jn][0] = LoadStreaming(p);
        dst[jn][1] = LoadStreaming(p + 1);
      }
    };
    if (local > 0) load_w(wv, 0);
    for (int j = 0; j < local; ++j) {
      if (j + 1 < local) load_w(wn, j + 1);
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const T* ra = xs + (static_cast<size_t>(j) * rows + 16 * i + g) * kSmemRowHalves + q * 16;
        const T* rb = ra + 8 * kSmemRowHalves;
        uint4 xa[2], xb[2];
        xa[0] = reinterpret_cast<const uint4*>(ra)[0];
        xa[1] = reinterpret_cast<const uint4*>(ra)[1];
        xb[0] = reinterpret_cast<const uint4*>(rb)[0];
        xb[1] = reinterpret_cast<const uint4*>(rb)[1];
#pragma unroll
        for (int jn = 0; jn < 2; ++jn) MmaBlock<T>(c[i][jn], xa, xb, wv[jn]);
      }
#pragma unroll
      for (int jn = 0; jn < 2; ++jn) {
        wv[jn][0] = wn[jn][0];
        wv[jn][1] = wn[jn][1];
      }
    }
    float* out = ws + static_cast<size_t>(split) * M * N;
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
      for (int jn = 0; jn < 2; ++jn) {
        const int r0 = m0 + 16 * i + g, col = n0 + 8 * jn + 2 * q;
        if (r0 < M) *reinterpret_cast<float2*>(out + static_cast<size_t>(r0) * N + col) = make_float2(c[i][jn][0], c[i][jn][1]);
        if (r0 + 8 < M) *reinterpret_cast<float2*>(out + static_cast<size_t>(r0 + 8) * N + col) = make_float2(c[i][jn][2], c[i][jn][3]);
      }
  }
}

/// y[m, n] = round(Σ_s ws[s][m][n] in split order + bias[n]): the first kernel's last step, value for value.
template <typename T>
__global__ void LinearSplitSumKernel(const float* __restrict__ ws, const T* __restrict__ bias, T* __restrict__ y, int64_t M, int64_t N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M * N) return;
  float sum = 0.0f;
#pragma unroll
  for (int s = 0; s < kLinearSplits; ++s) sum += ws[s * M * N + i];  // split order
  if (bias != nullptr) sum += ToF<T>(bias[i % N]);
  y[i] = FromF<T>(sum);
}

/// Where a kernel's scratch lives: per (device, stream), grown during a warm (uncaptured) call and never freed, because
/// a captured CUDA graph keeps the address it saw. Also the stream's cuBLAS handle and its workspace (no call allocates).
class StreamResources {
 public:
  static StreamResources& For(cudaStream_t stream, std::string& error) {
    static auto* registry = new Registry();  // never destroyed: CUDA may be gone at exit
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) error = "cudaGetDevice failed";
    std::lock_guard<std::mutex> lock(registry->mutex);
    auto& slot = registry->streams[std::make_pair(device, stream)];
    if (!slot) slot.reset(new StreamResources(stream));
    return *slot;
  }

  /// At least `bytes` of device scratch; "" or why not (growing while the stream is being captured is refused).
  std::string Scratch(size_t bytes, void*& ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (bytes > scratch_bytes_) {
      cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
      cudaStreamIsCapturing(stream_, &capturing);
      if (capturing != cudaStreamCaptureStatusNone) {
        return "the workspace must grow to " + std::to_string(bytes) + " bytes during CUDA-graph capture (run the shape uncaptured first)";
      }
      void* p = nullptr;
      if (cudaMalloc(&p, bytes) != cudaSuccess) return "cudaMalloc of " + std::to_string(bytes) + " bytes of workspace failed";
      scratch_ = p;  // the previous buffer stays allocated: a captured graph may still use it
      scratch_bytes_ = bytes;
    }
    ptr = scratch_;
    return "";
  }

  std::string Cublas(cublasHandle_t& handle) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (cublas_ == nullptr) {
      cublasHandle_t h = nullptr;
      if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return "cublasCreate failed";
      void* workspace = nullptr;
      if (cudaMalloc(&workspace, kCublasWorkspaceBytes) != cudaSuccess) return "cudaMalloc of the cuBLAS workspace failed";
      if (cublasSetWorkspace(h, workspace, kCublasWorkspaceBytes) != CUBLAS_STATUS_SUCCESS) return "cublasSetWorkspace failed";
      if (cublasSetStream(h, stream_) != CUBLAS_STATUS_SUCCESS) return "cublasSetStream failed";
      cublas_ = h;
    }
    handle = cublas_;
    return "";
  }

 private:
  struct Registry {
    std::mutex mutex;
    std::map<std::pair<int, cudaStream_t>, std::unique_ptr<StreamResources>> streams;
  };
  static constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;  // cuBLAS's own advice for Hopper

  explicit StreamResources(cudaStream_t stream) : stream_(stream) {}

  cudaStream_t stream_;
  std::mutex mutex_;
  void* scratch_ = nullptr;
  size_t scratch_bytes_ = 0;
  cublasHandle_t cublas_ = nullptr;
};

struct SplitMmaTag {};
constexpr int kMaxThreadsPerSm = 2048;

int SmCount() {
  static const int count = [] {
    int device = 0, sms = 0;
    cudaGetDevice(&device);
    return cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) == cudaSuccess && sms > 0 ? sms : 132;
  }();
  return count;
}

template <typename T>
std::string LaunchSplit(const LinearParams& p, cudaStream_t stream) {
  const int M = static_cast<int>(p.rows), K = static_cast<int>(p.in), N = static_cast<int>(p.out);
  const int mt = M <= 32 ? 2 : 4;
  const int rows = 16 * mt;
  const int local = static_cast<int>(CeilDiv(K / kLinearKBlock, kLinearSplits));
  const size_t smem = static_cast<size_t>(local) * rows * kSmemRowHalves * sizeof(T);
  std::string error;
  StreamResources& res = StreamResources::For(stream, error);
  if (!error.empty()) return error;
  void* ws = nullptr;
  error = res.Scratch(sizeof(float) * kLinearSplits * static_cast<size_t>(M) * N, ws);
  if (!error.empty()) return error;
  // one wave: as many column chunks as the SMs hold blocks of this shared-memory size (8 splits each)
  const int groups = N / kColumns;
  const int per_sm = std::max(1, std::min(kMaxThreadsPerSm / kThreads, static_cast<int>((228 * 1024) / (smem + 1024))));
  const int chunks = static_cast<int>(std::clamp<int64_t>(std::min<int64_t>(SmCount() * per_sm / kLinearSplits, CeilDiv(groups, kWarps)), 1, 64));
  const dim3 grid(kLinearSplits, chunks, static_cast<unsigned>(CeilDiv(M, rows)));
  cudaError_t err;
  if (mt == 2) {
    auto kernel = LinearSplitMmaKernel<T, 2>;
    err = AllowSharedMemory<std::pair<SplitMmaTag, T>>(kernel, smem);
    if (err == cudaSuccess) kernel<<<grid, kThreads, smem, stream>>>(static_cast<const T*>(p.x), static_cast<const T*>(p.weight), static_cast<float*>(ws), M, K, N);
  } else {
    auto kernel = LinearSplitMmaKernel<T, 4>;
    err = AllowSharedMemory<std::pair<std::pair<SplitMmaTag, T>, int>>(kernel, smem);
    if (err == cudaSuccess) kernel<<<grid, kThreads, smem, stream>>>(static_cast<const T*>(p.x), static_cast<const T*>(p.weight), static_cast<float*>(ws), M, K, N);
  }
  if (err == cudaSuccess) err = cudaGetLastError();
  if (err != cudaSuccess) return std::string("split kernel launch failed: ") + cudaGetErrorString(err);
  const int64_t total = p.rows * p.out;
  LinearSplitSumKernel<T><<<static_cast<unsigned>(CeilDiv(total, 256)), 256, 0, stream>>>(
      static_cast<const float*>(ws), static_cast<const T*>(p.bias), static_cast<T*>(p.y), p.rows, p.out);
  err = cudaGetLastError();
  return err == cudaSuccess ? "" : std::string("split sum launch failed: ") + cudaGetErrorString(err);
}

/// Whether the split kernel's x slice fits in shared memory (227 KiB a block on the H200).
template <typename T>
bool SplitFits(const LinearParams& p) {
  const int rows = p.rows <= 32 ? 32 : 64;
  const int64_t local = CeilDiv(p.in / kLinearKBlock, kLinearSplits);
  return local * rows * kSmemRowHalves * static_cast<int64_t>(sizeof(T)) <= 227 * 1024;
}

/// One warp per output value: lane l sums k = l, l+32, ... in order, then a fixed xor tree. Any T, any shape.
template <typename T>
__global__ void __launch_bounds__(kThreads) LinearRowDotKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                               const T* __restrict__ bias, T* __restrict__ y,
                                                               int64_t M, int64_t K, int64_t N) {
  const int64_t out = static_cast<int64_t>(blockIdx.x) * kWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (out >= M * N) return;
  const int64_t m = out / N, n = out % N;
  const T* xr = x + m * K;
  const T* wr = w + n * K;
  float sum = 0.0f;
  for (int64_t k = lane; k < K; k += 32) sum += ToF<T>(xr[k]) * ToF<T>(wr[k]);
  sum = WarpSum(sum);
  if (lane == 0) {
    if (bias != nullptr) sum += ToF<T>(bias[n]);
    y[out] = FromF<T>(sum);
  }
}

/// One block per output value, for long rows (the float32 gate projection: 16 values a row, K = 4096): thread t sums
/// k = t, t+256, ... in order, then a fixed xor tree in each warp, then the 8 warps' sums in warp order. Chosen by K
/// alone, so a value's arithmetic never depends on M.
template <typename T>
__global__ void __launch_bounds__(kThreads) LinearRowDotWideKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                                   const T* __restrict__ bias, T* __restrict__ y,
                                                                   int64_t N, int64_t K) {
  __shared__ float warps[kWarps];
  const int64_t out = blockIdx.x, m = out / N, n = out % N;
  const T* xr = x + m * K;
  const T* wr = w + n * K;
  float sum = 0.0f;
  for (int64_t k = threadIdx.x; k < K; k += kThreads) sum += ToF<T>(xr[k]) * ToF<T>(wr[k]);
  sum = WarpSum(sum);
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) total += warps[i];  // warp order
    if (bias != nullptr) total += ToF<T>(bias[n]);
    y[out] = FromF<T>(total);
  }
}

/// Rows at least this long take the wide row-dot kernel (a block per value) instead of a warp per value.
constexpr int64_t kWideRowDot = 2048;

template <typename T>
bool MmaApplies(const LinearParams& p) {
  if constexpr (std::is_same_v<T, float>) {
    return false;
  } else {
    const auto aligned = [](const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; };
    return p.in % kLinearKBlock == 0 && p.out % kColumns == 0 && aligned(p.x) && aligned(p.weight) &&
           p.in < (int64_t{1} << 30) && p.out < (int64_t{1} << 30) && p.rows < (int64_t{1} << 30);
  }
}

template <typename T>
std::string LaunchDecode(const LinearParams& p, cudaStream_t stream) {
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* b = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  if (p.rows == 0 || p.out == 0) return "";
  if constexpr (!std::is_same_v<T, float>) {
    if (MmaApplies<T>(p) && p.rows > 16 && SplitFits<T>(p)) return LaunchSplit<T>(p, stream);
    if (MmaApplies<T>(p)) {
      const int M = static_cast<int>(p.rows), K = static_cast<int>(p.in), N = static_cast<int>(p.out);
      const int mt = M <= 16 ? 1 : M <= 32 ? 2 : 4;  // rows per block 16·MT; more rows take more blocks
      // 16 columns a block, or 8 when that leaves fewer than 3 blocks an SM (N = 4096: 256 blocks on 132 SMs leave
      // half of them one block short in the last round); a column's arithmetic is the same either way
      const int nt = p.tile_columns == 8 || (p.tile_columns == 0 && N / kColumns < 3 * SmCount()) ? 1 : 2;
      const dim3 grid(N / (8 * nt), static_cast<unsigned>(CeilDiv(M, 16 * mt)));
      if (nt == 1) {
        if (mt == 1) LinearDecodeMmaKernel<T, 1, 1><<<grid, kThreads, 0, stream>>>(x, w, b, y, M, K, N);
        else if (mt == 2) LinearDecodeMmaKernel<T, 2, 1><<<grid, kThreads, 0, stream>>>(x, w, b, y, M, K, N);
        else LinearDecodeMmaKernel<T, 4, 1><<<grid, kThreads, 0, stream>>>(x, w, b, y, M, K, N);
      } else {
        if (mt == 1) LinearDecodeMmaKernel<T, 1, 2><<<grid, kThreads, 0, stream>>>(x, w, b, y, M, K, N);
        else if (mt == 2) LinearDecodeMmaKernel<T, 2, 2><<<grid, kThreads, 0, stream>>>(x, w, b, y, M, K, N);
        else LinearDecodeMmaKernel<T, 4, 2><<<grid, kThreads, 0, stream>>>(x, w, b, y, M, K, N);
      }
      const cudaError_t err = cudaGetLastError();
      return err == cudaSuccess ? "" : std::string("decode kernel launch failed: ") + cudaGetErrorString(err);
    }
  }
  if (p.in >= kWideRowDot && p.rows * p.out < (int64_t{1} << 31)) {
    LinearRowDotWideKernel<T><<<static_cast<unsigned>(p.rows * p.out), kThreads, 0, stream>>>(x, w, b, y, p.out, p.in);
    const cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? "" : std::string("row-dot kernel launch failed: ") + cudaGetErrorString(err);
  }
  const int64_t blocks = CeilDiv(p.rows * p.out, kWarps);
  LinearRowDotKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, w, b, y, p.rows, p.in, p.out);
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? "" : std::string("row-dot kernel launch failed: ") + cudaGetErrorString(err);
}

template <typename T>
__global__ void BroadcastRowsKernel(const T* __restrict__ bias, T* __restrict__ y, int64_t M, int64_t N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < M * N) y[i] = bias[i % N];
}

template <typename T>
cudaDataType_t CublasType() {
  if constexpr (std::is_same_v<T, __half>) return CUDA_R_16F;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return CUDA_R_16BF;
  else return CUDA_R_32F;
}

template <typename T>
std::string RunPrompt(const LinearParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.out == 0) return "";
  std::string err;
  StreamResources& res = StreamResources::For(stream, err);
  if (!err.empty()) return err;
  cublasHandle_t h = nullptr;
  err = res.Cublas(h);
  if (!err.empty()) return err;
  const float alpha = 1.0f;
  float beta = 0.0f;
  if (p.bias != nullptr) {  // y = bias, then y = x Wᵀ + y: one rounding, as ONNX Gemm with C
    const int64_t total = p.rows * p.out;
    BroadcastRowsKernel<T><<<static_cast<unsigned>(CeilDiv(total, 256)), 256, 0, stream>>>(
        static_cast<const T*>(p.bias), static_cast<T*>(p.y), p.rows, p.out);
    if (cudaGetLastError() != cudaSuccess) return "bias broadcast launch failed";
    beta = 1.0f;
  }
  // column-major view: yᵀ [N, M] = (W [N, K] row-major = Wᵀ col-major, transposed) · (xᵀ: x row-major [M, K])
  const cublasStatus_t s = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.out), static_cast<int>(p.rows),
                                        static_cast<int>(p.in), &alpha, p.weight, CublasType<T>(), static_cast<int>(p.in),
                                        p.x, CublasType<T>(), static_cast<int>(p.in), &beta, p.y, CublasType<T>(),
                                        static_cast<int>(p.out), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (s != CUBLAS_STATUS_SUCCESS) return std::string("cublasGemmEx failed: ") + cublasGetStatusString(s);
  return "";
}

}  // namespace

std::string LaunchLinearDecode(const LinearParams& p, cudaStream_t stream) {
  return XLSTM_DTYPE_SWITCH(p.dtype, [&] { return LaunchDecode<T>(p, stream); });
}

std::string RunLinearCuda(const LinearParams& p, cudaStream_t stream) {
  // without batch_invariant our kernels run only where they beat cuBLAS (LinearOwnKernelWins: by rows and outputs)
  const bool own = p.decode && (p.batch_invariant ||
                                (LinearOwnKernelWins(p.rows, p.out) && XLSTM_DTYPE_SWITCH(p.dtype, [&] { return MmaApplies<T>(p); })));
  if (own) return LaunchLinearDecode(p, stream);
  return XLSTM_DTYPE_SWITCH(p.dtype, [&] { return RunPrompt<T>(p, stream); });
}

}  // namespace xlstm
