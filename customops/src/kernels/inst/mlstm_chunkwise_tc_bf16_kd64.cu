// One instantiation of the tensor-core chunkwise kernel (split per file to compile in parallel).
#include "kernels/mlstm_chunkwise_tc_kernel.cuh"

namespace xlstm {
namespace tc {
template cudaError_t LaunchTc<__nv_bfloat16, 64>(const MLstmParams&, cudaStream_t, TcPass);
}  // namespace tc
}  // namespace xlstm
