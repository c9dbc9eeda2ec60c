#!/usr/bin/env bash
# On the GPU machine, from the repository root: builds customops/ with CUDA, runs the CUDA-vs-CPU kernel tests and
# the kernel benchmark (ours against transformers' native kernels, same run). Logs and JSON go to $OUT.
#
#   OUT=/some/dir bash tools/bench/run_gpu.sh [--tests-only]
#
# The op library itself is built too when ONNX Runtime's headers travel along in customops/build/ort-include
# (copy them there from the NuGet package before the run); the tests and the benchmark do not need them.
set -uo pipefail
OUT=${OUT:-artifacts/gpu}
mkdir -p "$OUT"
build=${BUILD_DIR:-/tmp/xlstm-customops-build}
nvcc=$(command -v nvcc || ls -d /usr/local/cuda*/bin/nvcc 2>/dev/null | sort -V | tail -1)
[[ -x $nvcc ]] || { echo "run_gpu.sh: no nvcc found" >&2; exit 2; }
ort=()
if [[ -f customops/build/ort-include/onnxruntime_lite_custom_op.h ]]; then
  ort=(-DXLSTM_OP_LIBRARY=ON -DORT_INCLUDE_DIR="$PWD/customops/build/ort-include")
else
  ort=(-DXLSTM_OP_LIBRARY=OFF)
fi
configure=(cmake -S customops -B "$build" -DCMAKE_BUILD_TYPE=Release -DXLSTM_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc"
           -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90a}" -DXLSTM_TESTS=OFF -DXLSTM_WERROR=OFF "${ort[@]}")
echo "+ ${configure[*]}" | tee "$OUT/build.log"
start=$(date +%s)
if ! "${configure[@]}" >> "$OUT/build.log" 2>&1 || ! cmake --build "$build" -j "$(nproc)" -- -k >> "$OUT/build.log" 2>&1; then
  grep -E "error|Error|warning" "$OUT/build.log" | head -80
  echo "run_gpu.sh: build failed (full log: $OUT/build.log)"
  exit 1
fi
echo "build: $(( $(date +%s) - start )) s"
nm -D --defined-only "$build/libxlstm_customops.so" 2>/dev/null | grep -q RegisterCustomOps && echo "op library: built with CUDA"
"$build/xlstm_cuda_tests" 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
"$build/xlstm_fused_cuda_tests" 2>&1 | tee -a "$OUT/cuda_tests.log"
[[ ${PIPESTATUS[0]} == 0 ]] || tests_rc=1
"$build/xlstm_linear_cuda_tests" 2>&1 | tee -a "$OUT/cuda_tests.log"
[[ ${PIPESTATUS[0]} == 0 ]] || tests_rc=1
[[ ${1:-} == --tests-only ]] && exit "$tests_rc"
python3 tools/bench/bench_kernels.py --ours "$build/xlstm_kernel_bench" --out "$OUT/kernels-h200.json" \
  --command "OUT=\$OUT bash tools/bench/run_gpu.sh   (customops built with nvcc $("$nvcc" --version | grep -o 'release [0-9.]*'), sm_${CUDA_ARCHS:-90a})" \
  2> "$OUT/bench.log"
bench_rc=$?
tail -5 "$OUT/bench.log"
exit $(( tests_rc != 0 ? tests_rc : bench_rc ))
