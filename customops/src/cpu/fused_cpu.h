// CPU kernels of the fused ops (kernels/fused_params.h): the CPU execution provider's implementation and the oracle
// of the CUDA kernels. Float32 math as the ops define it; the layer-norm statistics are summed in float64.
#pragma once

#include "cpu/mlstm_cpu.h"
#include "kernels/fused_params.h"

namespace xlstm {

void MLstmGatesCpu(const GatesParams& p, const ParallelFor& parallel_for);
void SwiGluCpu(const SwiGluParams& p, const ParallelFor& parallel_for);
void HeadNormGateCpu(const HeadNormGateParams& p, const ParallelFor& parallel_for);

}  // namespace xlstm
