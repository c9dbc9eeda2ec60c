#include "cpu/linear_cpu.h"

#include "cpu/half_types.h"

namespace xlstm {

namespace {

constexpr int64_t kColumnsPerTask = 64;

template <typename T>
void Run(const LinearParams& p, const ParallelFor& parallel_for) {
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int64_t M = p.rows, K = p.in, N = p.out;
  const int64_t blocks = (N + kColumnsPerTask - 1) / kColumnsPerTask;
  parallel_for(M * blocks, [&](int64_t task) {
    const int64_t m = task / blocks, n0 = (task % blocks) * kColumnsPerTask;
    const int64_t n1 = n0 + kColumnsPerTask < N ? n0 + kColumnsPerTask : N;
    const T* xr = x + m * K;
    for (int64_t n = n0; n < n1; ++n) {
      const T* wr = w + n * K;
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += ToFloat(xr[k]) * ToFloat(wr[k]);
      if (bias != nullptr) sum += ToFloat(bias[n]);
      y[m * N + n] = FromFloat<T>(sum);
    }
  });
}

}  // namespace

void LinearCpu(const LinearParams& p, const ParallelFor& parallel_for) {
  switch (p.dtype) {
    case Dtype::kFloat16: Run<Fp16>(p, parallel_for); break;
    case Dtype::kBFloat16: Run<Bf16>(p, parallel_for); break;
    default: Run<float>(p, parallel_for); break;
  }
}

}  // namespace xlstm
