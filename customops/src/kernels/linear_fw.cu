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
// Other shapes and float32 (the gate projection) take the row-dot kernel: one warp per output value, lanes stride
// over k, a fixed xor-tree reduction. Also batch-invariant; slower, and only used where the MMA kernel cannot be.
#include <cublas_v2.h>

#include <cstdint>
#include <map>
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

template <typename T, int MT>
__global__ void __launch_bounds__(kThreads) LinearDecodeMmaKernel(const T* __restrict__ x, const T* __restrict__ w,
                                                                  const T* __restrict__ bias, T* __restrict__ y,
                                                                  int M, int K, int N) {
  __shared__ float partial[kWarps][16 * MT][kColumns];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int g = lane / 4, q = lane % 4;
  const int n0 = blockIdx.x * kColumns;
  const int m0 = blockIdx.y * 16 * MT;
  const int blocks = K / kLinearKBlock;

  float c[MT][2][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) c[i][j][e] = 0.0f;

  const uint4 zero = make_uint4(0, 0, 0, 0);
  uint4 wv[2][2], wn[2][2];
  auto load_w = [&](uint4 (&dst)[2][2], int kb) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
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
      for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int s = 0; s < 4; ++s)  // four k16 MMAs: lane q's k pairs (4s, 4s+1) and (4s+2, 4s+3) of its 16
          MmaType<T>::Run(c[i][j], Word(xa, 2 * s), Word(xb, 2 * s), Word(xa, 2 * s + 1), Word(xb, 2 * s + 1),
                          Word(wv[j], 2 * s), Word(wv[j], 2 * s + 1));
    }
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wv[j][0] = wn[j][0];
      wv[j][1] = wn[j][1];
    }
  }

  // C fragment: c[0..1] at (row g, columns 2q, 2q+1), c[2..3] at (row g+8, same columns)
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      partial[warp][16 * i + g][8 * j + 2 * q] = c[i][j][0];
      partial[warp][16 * i + g][8 * j + 2 * q + 1] = c[i][j][1];
      partial[warp][16 * i + g + 8][8 * j + 2 * q] = c[i][j][2];
      partial[warp][16 * i + g + 8][8 * j + 2 * q + 1] = c[i][j][3];
    }
  __syncthreads();
  for (int e = threadIdx.x; e < 16 * MT * kColumns; e += kThreads) {
    const int r = e / kColumns, col = e % kColumns;
    if (m0 + r >= M) continue;
    float sum = 0.0f;
#pragma unroll
    for (int s = 0; s < kWarps; ++s) sum += partial[s][r][col];  // split order
    if (bias != nullptr) sum += ToF<T>(bias[n0 + col]);
    y[static_cast<size_t>(m0 + r) * N + n0 + col] = FromF<T>(sum);
  }
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
cudaError_t LaunchDecode(const LinearParams& p, cudaStream_t stream) {
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* b = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  if (p.rows == 0 || p.out == 0) return cudaSuccess;
  if constexpr (!std::is_same_v<T, float>) {
    if (MmaApplies<T>(p)) {
      const int M = static_cast<int>(p.rows), K = static_cast<int>(p.in), N = static_cast<int>(p.out);
      const int mt = M <= 16 ? 1 : M <= 32 ? 2 : 4;  // rows per block 16·MT; more rows take more blocks
      const dim3 grid(N / kColumns, static_cast<unsigned>(CeilDiv(M, 16 * mt)));
      if (mt == 1) LinearDecodeMmaKernel<T, 1><<<grid, kThreads, 0, stream>>>(x, w, b, y, M, K, N);
      else if (mt == 2) LinearDecodeMmaKernel<T, 2><<<grid, kThreads, 0, stream>>>(x, w, b, y, M, K, N);
      else LinearDecodeMmaKernel<T, 4><<<grid, kThreads, 0, stream>>>(x, w, b, y, M, K, N);
      return cudaGetLastError();
    }
  }
  const int64_t blocks = CeilDiv(p.rows * p.out, kWarps);
  LinearRowDotKernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(x, w, b, y, p.rows, p.in, p.out);
  return cudaGetLastError();
}

template <typename T>
__global__ void BroadcastRowsKernel(const T* __restrict__ bias, T* __restrict__ y, int64_t M, int64_t N) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < M * N) y[i] = bias[i % N];
}

/// cuBLAS handles, one per (device, stream), each with its own workspace so that no call allocates (stream capture
/// forbids it) and no two streams share scratch. They live as long as the process, like the ops that use them.
class CublasHandles {
 public:
  static std::string Get(cudaStream_t stream, cublasHandle_t& handle) {
    static CublasHandles* registry = new CublasHandles();  // never destroyed: CUDA may be gone at exit
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return "cudaGetDevice failed";
    std::lock_guard<std::mutex> lock(registry->mutex_);
    auto key = std::make_pair(device, stream);
    auto it = registry->handles_.find(key);
    if (it != registry->handles_.end()) {
      handle = it->second;
      return "";
    }
    cublasHandle_t h = nullptr;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) return "cublasCreate failed";
    void* workspace = nullptr;
    if (cudaMalloc(&workspace, kWorkspaceBytes) != cudaSuccess) return "cudaMalloc of the cuBLAS workspace failed";
    if (cublasSetWorkspace(h, workspace, kWorkspaceBytes) != CUBLAS_STATUS_SUCCESS) return "cublasSetWorkspace failed";
    if (cublasSetStream(h, stream) != CUBLAS_STATUS_SUCCESS) return "cublasSetStream failed";
    registry->handles_[key] = h;
    handle = h;
    return "";
  }

 private:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLAS's own advice for Hopper
  std::mutex mutex_;
  std::map<std::pair<int, cudaStream_t>, cublasHandle_t> handles_;
};

template <typename T>
cudaDataType_t CublasType() {
  if constexpr (std::is_same_v<T, __half>) return CUDA_R_16F;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return CUDA_R_16BF;
  else return CUDA_R_32F;
}

template <typename T>
std::string RunPrompt(const LinearParams& p, cudaStream_t stream) {
  if (p.rows == 0 || p.out == 0) return "";
  cublasHandle_t h = nullptr;
  std::string err = CublasHandles::Get(stream, h);
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

cudaError_t LaunchLinearDecode(const LinearParams& p, cudaStream_t stream) {
  return XLSTM_DTYPE_SWITCH(p.dtype, [&] { return LaunchDecode<T>(p, stream); });
}

std::string RunLinearCuda(const LinearParams& p, cudaStream_t stream) {
  if (p.decode) {
    const cudaError_t err = LaunchLinearDecode(p, stream);
    return err == cudaSuccess ? "" : std::string("decode kernel launch failed: ") + cudaGetErrorString(err);
  }
  return XLSTM_DTYPE_SWITCH(p.dtype, [&] { return RunPrompt<T>(p, stream); });
}

}  // namespace xlstm
