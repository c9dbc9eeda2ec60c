// CPU kernel of ai.xlstm::Linear (kernels/linear_params.h): the CPU execution provider's implementation and the
// oracle of the CUDA paths. Float32 sums in k order, one rounding to T at the end; every row on its own.
#pragma once

#include "cpu/mlstm_cpu.h"
#include "kernels/linear_params.h"

namespace xlstm {

void LinearCpu(const LinearParams& p, const ParallelFor& parallel_for);

}  // namespace xlstm
