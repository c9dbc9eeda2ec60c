#!/usr/bin/env bash
# Issue 12's run on the H200: the roofline table refilled in one machine session, in stages that each fit one
# 10-minute device call (back to back on one warm machine; later stages use /tmp files of earlier ones). From the
# repository root, after tools/serve/publish.sh's staged app was unpacked:
#
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh build     # customops + CUDA CTest, the 7B export
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh bench     # ours: decode B 1-128, prefill B1x2048, B32x256
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh profile   # CUPTI kernel time of those shapes, ORT node profile
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh variants  # --linear-kernels custom; --state-dtype bf16
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh hf        # transformers native, same config, same GPU
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh fidelity  # bf16 at 7B width vs transformers' bf16 (item 5)
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh int4      # --quantize int4: decode B1, B16, prefill
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh best      # --linear-kernels custom --state-dtype bf16
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh kernels   # the cell kernels and the projections alone
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh tests     # the NUnit CUDA tests, one process each
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh final     # second lease: kernels again, ours with float32 and bf16 state
#   source /tmp/xlstm/env.sh && bash tools/bench/run_roofline_gpu.sh segments  # third lease: sequence-parallel prompts, NUnit CUDA tests
#
# Every model is xLSTM-7b's preset with random bf16 weights, custom cell ops, last logits only, device argmax
# (`export --random-weights --preset xlstm-7b --dtype bf16 --mlstm-kernels custom --last-logits-only --next-token`),
# run with CUDA graphs. Each stage leaves its logs and JSON in $OUT/<stage>.tgz and prints a summary.
set -uo pipefail
stage=${1:?stage: build, bench, profile, variants, hf, fidelity, int4, best, kernels, tests, final or segments}
OUT=${OUT:-artifacts/gpu}
R=/tmp/res/$stage
mkdir -p "$R" "$OUT"
CLI=/tmp/xlstm/.gpu/app/xlstm-onnx
export XLSTM_CUSTOMOPS_PATH=/tmp/cb/libxlstm_customops.so
M7=/tmp/m7b
TRACE=/tmp/libkernel_trace.so
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$R/summary.txt"; }
finish() { tar czf "$OUT/$stage.tgz" -C /tmp/res "$stage"; cat "$R/summary.txt"; }
export_7b() { # export_7b DIR LABEL FLAGS...
  local dir=$1 label=$2; shift 2
  rm -rf "$dir"
  "$CLI" export --random-weights --preset xlstm-7b --dtype bf16 --mlstm-kernels custom --last-logits-only --next-token "$@" --output "$dir" > "$R/export-$label.log" 2>&1
  say "7B export ($label) rc=$?: $(grep -E '^exported' "$R/export-$label.log")"
}
bench() { # bench LABEL MODEL BATCHES PROMPT NEW: `bench` with CUDA graphs, medians of 3 after a warm-up
  local label=$1 model=$2 batches=$3 prompt=$4 new=$5
  "$CLI" bench --model "$model" --device cuda --cuda-graph --batch "$batches" --prompt-tokens "$prompt" --new-tokens "$new" --reps 3 --out "$R/$label.json" > "$R/$label.log" 2>&1
  say "bench $label rc=$?"; grep -A20 -E '^batch' "$R/$label.log" | tee -a "$R/summary.txt"
}
ort_headers() { # ONNX Runtime's headers where run_gpu.sh looks for them, so that it builds the op library too
  mkdir -p customops/build && rm -rf customops/build/ort-include && cp -a /tmp/xlstm/.gpu/ort-include customops/build/ort-include
}
cuda_tests() { # cuda_tests PATTERN: the NUnit CudaTests methods whose names match PATTERN, one process each
  local app=$PWD/.gpu-app
  rm -rf "$app"; cp -a /tmp/xlstm/.gpu/app "$app"; cp /tmp/cb/libxlstm_customops.so "$app/"
  for t in $(grep -oE '^    public void [A-Za-z0-9_]+' tests/XLstmOnnx.Tests/CudaTests.cs | awk '{print $3}' | grep -v RequireCuda | grep -E "$1"); do
    (( $(date +%s) - t0 > ${TESTS_SECONDS:-540} )) && { say "out of time: CudaTests.$t and the ones after it not run"; break; }
    timeout 100 "$app/XLstmOnnx.Tests" --filter "FullyQualifiedName~CudaTests.$t" > "$R/nunit-$t.log" 2>&1
    say "NUnit $t rc=$? $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-$t.log" | tr -s ' \n' ' ')"
  done
}
trace() { # trace LABEL MODEL BENCH-ARGS...: CUPTI kernel time by kernel (tools/profile/kernel_trace.cc) of one bench run
  local label=$1 model=$2; shift 2
  [[ -f $TRACE ]] || bash tools/profile/build.sh $TRACE > "$R/trace-build.log" 2>&1
  CUDA_INJECTION64_PATH=$TRACE KERNEL_TRACE_OUT=$R/kernels-$label.tsv "$CLI" bench --model "$model" --device cuda --reps 1 "$@" > "$R/trace-$label.log" 2>&1
  say "trace $label rc=$?: $(sed -n 2,4p "$R/kernels-$label.tsv" | cut -c1-110 | tr '\n' '|')"
}

case $stage in
build)
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$R/gpu.txt"
  ort_headers
  OUT=$R BUILD_DIR=/tmp/cb bash tools/bench/run_gpu.sh --tests-only > "$R/customops.log" 2>&1
  say "customops build + CUDA CTest: rc=$? $(grep -h -E 'cases, ' "$R/customops.log" | tr '\n' ' ')"
  grep -h -E "FAIL|error" "$R/customops.log" | head -20 | tee -a "$R/summary.txt"
  bash tools/profile/build.sh $TRACE > "$R/trace-build.log" 2>&1; say "kernel tracer rc=$?"
  export_7b $M7 7b
  ;;
bench)
  bench ours $M7 1,16,64,128 2048 256
  bench prefill-b32 $M7 32 256 16
  ;;
profile)
  trace decode-b1 $M7 --cuda-graph --batch 1 --prompt-tokens 16 --new-tokens 257
  trace decode-b16 $M7 --cuda-graph --batch 16 --prompt-tokens 16 --new-tokens 129
  trace decode-b64 $M7 --cuda-graph --batch 64 --prompt-tokens 16 --new-tokens 65
  trace prefill-b1 $M7 --batch 1 --prompt-tokens 2048 --new-tokens 2
  trace prefill-b32 $M7 --batch 32 --prompt-tokens 256 --new-tokens 2
  (cd /tmp && "$CLI" bench --model $M7 --device cuda --batch 32 --prompt-tokens 256 --new-tokens 2 --reps 1 --profile /tmp/ortprof-b32 > "$R/ortprof-b32.log" 2>&1)
  python3 tools/profile/summarize_ort_profile.py /tmp/ortprof-b32*.json > "$R/ort-profile-b32.txt" 2>&1
  say "ORT profile B32x256: $(head -8 "$R/ort-profile-b32.txt" | tr '\n' '|')"
  ;;
variants)
  export_7b /tmp/m7b-v 7b-linear-custom --linear-kernels custom
  bench linear-custom /tmp/m7b-v 1,16 2048 256
  trace decode-b1-linear-custom /tmp/m7b-v --cuda-graph --batch 1 --prompt-tokens 16 --new-tokens 257
  export_7b /tmp/m7b-v 7b-bf16-state --state-dtype bf16
  bench bf16-state /tmp/m7b-v 1,16,64,128 2048 256
  trace decode-b64-bf16-state /tmp/m7b-v --cuda-graph --batch 64 --prompt-tokens 16 --new-tokens 65
  rm -rf /tmp/m7b-v
  ;;
hf)
  python3 tools/bench/hf_baseline.py --config models/presets/xlstm-7b.json --batch 1,16 --prompt 2048 --new 64 --reps 3 --out "$R/hf.json" > "$R/hf.log" 2>&1
  say "hf rc=$?"; tail -12 "$R/hf.log" | tee -a "$R/summary.txt"
  ;;
fidelity)
  bash tools/gpu/bf16_fidelity_7b.sh "$R/fid" > "$R/fidelity.log" 2>&1
  say "bf16 fidelity rc=$?"; cat "$R/fid/bf16-fidelity.txt" 2>/dev/null | tee -a "$R/summary.txt"; tail -20 "$R/fid/progress.txt"
  ;;
int4)
  export_7b /tmp/m7b-v 7b-int4 --quantize int4
  bench int4 /tmp/m7b-v 1,16 2048 256
  trace decode-b16-int4 /tmp/m7b-v --cuda-graph --batch 16 --prompt-tokens 16 --new-tokens 129
  rm -rf /tmp/m7b-v
  ;;
best)
  export_7b /tmp/m7b-v 7b-custom-bf16-state --linear-kernels custom --state-dtype bf16
  bench custom-bf16-state /tmp/m7b-v 1,16,64,128 2048 256
  trace decode-b16-custom-bf16-state /tmp/m7b-v --cuda-graph --batch 16 --prompt-tokens 16 --new-tokens 129
  rm -rf /tmp/m7b-v
  ;;
kernels)
  OUT=$R BUILD_DIR=/tmp/cb bash tools/bench/run_gpu.sh > "$R/kernels.log" 2>&1
  say "kernel tests + benchmark rc=$?"; tail -3 "$R/kernels.log" | tee -a "$R/summary.txt"
  /tmp/cb/xlstm_linear_bench --json "$R/linear-bench.json" > "$R/linear-bench.log" 2>&1
  say "linear bench rc=$?"; grep -E "^step" "$R/linear-bench.log" | tee -a "$R/summary.txt"
  ;;
tests)
  cuda_tests "${TESTS_MATCH:-.}"
  ;;
final)
  # the second lease: the step kernel after the change (4 blocks an SM; bf16 state in 128-column tiles) on a fresh
  # machine: customops, CTest and the kernel bench; the 7B export with our projections, float32 and bf16 state; the
  # NUnit CUDA tests of the bf16 state
  ort_headers
  OUT=$R BUILD_DIR=/tmp/cb bash tools/bench/run_gpu.sh > "$R/kernels.log" 2>&1
  say "customops build, CTest, kernel bench rc=$?: $(grep -h -E 'cases, ' "$R/cuda_tests.log" | tr '\n' ' ')"
  cuda_tests Bf16State
  for st in float32 bf16; do
    export_7b /tmp/m7b-v 7b-custom-$st --linear-kernels custom --state-dtype $st
    bench custom-$st /tmp/m7b-v 1,16,64,128 2048 256
  done
  rm -rf /tmp/m7b-v
  ;;
segments)
  # the third lease: sequence-parallel prompts (mlstm_chunkwise_tc_fw.cu) on a fresh machine: customops, CTest and the
  # kernel bench (batch-1 rows with and without segments), every NUnit CUDA test, then the 7B engine at batch 1
  ort_headers
  OUT=$R BUILD_DIR=/tmp/cb bash tools/bench/run_gpu.sh > "$R/kernels.log" 2>&1
  say "customops build, CTest, kernel bench rc=$?: $(grep -h -E 'cases, ' "$R/cuda_tests.log" | tr '\n' ' ')"
  grep -h -E "segments|FAIL" "$R/cuda_tests.log" | cut -c1-160 | tee -a "$R/summary.txt"
  python3 -c "
import json
for r in json.load(open('$R/kernels-h200.json'))['results']:
    if r['kernel'] == 'chunkwise' and r['impl'].startswith('ours_tensor'): print(r['impl'], r['dtype'], 'B', r['B'], 'S', r['S'], round(r['ms'], 3), 'ms', r['tflops'], 'TFLOP/s')
" | tee -a "$R/summary.txt"
  TESTS_SECONDS=${TESTS_SECONDS:-200} cuda_tests .
  export_7b /tmp/m7b-v 7b-custom --linear-kernels custom
  bench segments /tmp/m7b-v 1 2048 256
  trace prefill-b1-segments /tmp/m7b-v --batch 1 --prompt-tokens 2048 --new-tokens 2
  rm -rf /tmp/m7b-v
  ;;
*) echo "unknown stage $stage" >&2; exit 2 ;;
esac
finish
