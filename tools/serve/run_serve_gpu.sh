#!/usr/bin/env bash
# Issue 11's serving run on the H200, in stages that each fit one 10-minute device call (back to back on one warm
# machine: later stages use /tmp files of earlier ones). From the repository root, after the staged app was unpacked
# (tools/serve/publish.sh prints the staging runs):
#
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh build     # customops (CUDA), CUDA tests (CTest, NUnit), 7B export
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh serve     # bench (the engine) and serve under load, same run
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh extra     # a 16k prompt while others decode; one decode batch size
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh profile   # kernel time of served steps, the previous engine and this one
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh linear        # run 4: customops, Linear kernel tests and bench, NUnit
#                                                                                 CUDA tests, 7B exports (--linear-kernels batch-invariant, custom, onnx)
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh linear-bench  # run 4: the engine with each export
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh linear-serve  # run 4: the three loads on the batch-invariant export
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh state         # run 5: customops, CUDA tests (CTest, NUnit), the 7B export
#                                                                                 with float32 and with bf16 state
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh state-bench   # run 5: the engine on each export (B 1 to 128)
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh state-serve   # run 5: the loads on the bf16-state export
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh mixed         # run 6: customops and CTest, the 7B export with --mixed-graph,
#                                                                                 the engine (B 8, 32, 64)
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh tail          # run 6: customops (CTest), time to first token around chunk
#                                                                                 boundaries (recurrent tails of 0 to 63 tokens), the engine
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh mixed-trace   # run 6: CUPTI kernel time of the 32-slot load, mixed steps on/off
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh mixed-32      # run 6: 32 slots, 32 clients, 128 tokens, mixed steps on and off
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh mixed-64      # run 6: 64 slots: 8 clients, then 64 clients and 1,024 tokens
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh pad         # run 7: customops (CTest), the kernel trial of
#                                                                                 tools/serve/trial/*.patch if present, the 7B export, the engine
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh pad-serve   # run 7: the loads with prompts padded to whole chunks, and not
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh pad-trace   # run 7: CUPTI kernel time of the 32-slot load, whole-chunk prompts
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh pad-tests   # run 7: the NUnit CUDA tests, one process each
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh pad2        # run 7, second lease: customops, export, engine, 32 slots with
#                                                                                 one and two prompts a mixed step
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh pad2-64     # run 7, second lease: 64 slots, NUnit CUDA serving tests
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh pad3        # run 7, third lease: the defaults at 32 slots, NUnit CUDA serving
#                                                                                 tests one by one, CUPTI of the load
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh lanes       # run 8: customops (CTest), xlstm_kernel_bench --lanes, the 7B
#                                                                                 export, the engine, the 32-slot load with the two cells
#                                                                                 forked and on one stream (XLSTM_LANES_ONE_STREAM=1)
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh lanes-more  # run 8: CUPTI by step kind, two prompts a step, 64 slots
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh lanes-tests # run 8: the NUnit CUDA tests, one process each
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh lanes2      # run 8: the mixed graph without lane splits: customops,
#                                                                                 kernel bench, export, engine, the 32-slot load three times
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh lanes2-more # run 8: NUnit CUDA tests, 64 slots
#   source /tmp/xlstm/env.sh && bash tools/serve/run_serve_gpu.sh lanes3      # run 8: the prompt's layout copy before the fork: customops,
#                                                                                 kernel bench, export, engine, two 32-slot loads, the NUnit
#                                                                                 CUDA mixed-step serving tests
#
# Each stage leaves its logs and JSON in $OUT/<stage>.tgz and prints a summary.
set -uo pipefail
stage=${1:?stage: lanes, lanes-more, lanes-tests, lanes2, lanes2-more, lanes3, build, serve, extra, profile, final, linear, linear-bench, linear-serve, state, state-check, state-bench, state-serve, mixed, tail, mixed-trace, mixed-32, mixed-64, mixed-final, pad, pad-serve, pad-trace, pad-tests, pad2, pad2-64, pad3, pad3-extra, pad3-tests or pad4}
OUT=${OUT:-artifacts/gpu}
R=/tmp/res/$stage
mkdir -p "$R" "$OUT"
APP=$PWD/.gpu-app                 # the published tests, inside the repository (tests find it by walking up); copied per call
CLI=/tmp/xlstm/.gpu/app/xlstm-onnx
export XLSTM_CUSTOMOPS_PATH=/tmp/cb/libxlstm_customops.so
M7=/tmp/m7b                       # xLSTM-7b config, random bf16 weights, custom ops, last logits, next_token
PORT=18100
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$R/summary.txt"; }
finish() { tar czf "$OUT/$stage.tgz" -C /tmp/res "$stage"; cat "$R/summary.txt"; }

up() { # up LABEL: waits until the server started in the background answers (or has died)
  for _ in $(seq 480); do curl -s 127.0.0.1:$PORT/health > /dev/null 2>&1 && break; kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
  say "server $1 up: $(grep -h serving "$R/serve-$1.log" | head -1)"
}
serve() { # serve LABEL ARGS...: starts a server on $PORT in the background, waits until it answers
  local label=$1; shift
  "$@" --port $PORT --model-name x --log-level warning > "$R/serve-$label.log" 2>&1 &
  server=$!
  up "$label"
}
traced_serve() { # traced_serve LABEL ARGS...: serve under the CUPTI kernel tracer (tools/profile), kernels in $R/kernels-LABEL.tsv
  local label=$1; shift
  [[ -f /tmp/libkernel_trace.so ]] || bash tools/profile/build.sh /tmp/libkernel_trace.so > "$R/trace-build.log" 2>&1
  CUDA_INJECTION64_PATH=/tmp/libkernel_trace.so KERNEL_TRACE_OUT=$R/kernels-$label.tsv KERNEL_TRACE_STEPS=$R/steps-$label.tsv "$@" --port $PORT --model-name x --log-level warning > "$R/serve-$label.log" 2>&1 &
  server=$!
  up "$label"
}
stop() { kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; }
customops() { # builds customops/ with nvcc into /tmp/cb and runs its CUDA CTest (the CPU kernels are the oracle)
  mkdir -p customops/build && rm -rf customops/build/ort-include && cp -a /tmp/xlstm/.gpu/ort-include customops/build/ort-include
  OUT=$R BUILD_DIR=/tmp/cb bash tools/bench/run_gpu.sh --tests-only > "$R/customops.log" 2>&1
  say "customops build + CUDA CTest: rc=$? $(grep -h -E 'cases, ' "$R/customops.log" | tr '\n' ' ')"
}
export_7b() { # export_7b DIR LABEL FLAGS...: the xLSTM-7b preset, random bf16 weights, custom ops, last logits, next_token, FLAGS
  local dir=$1 label=$2; shift 2
  rm -rf "$dir"
  "$CLI" export --random-weights --preset xlstm-7b --dtype bf16 --mlstm-kernels custom --last-logits-only --next-token "$@" --output "$dir" > "$R/export-$label.log" 2>&1
  say "7B export ($label) rc=$?: $(grep -E '^exported' "$R/export-$label.log")"
}
engine_bench() { # engine_bench LABEL MODEL BATCHES: the engine alone (`bench`, the same prompt and decode lengths in every run)
  local label=$1 model=$2 batches=$3
  "$CLI" bench --model "$model" --device cuda --cuda-graph --batch "$batches" --prompt-tokens 128 --new-tokens 256 --reps 2 --out "$R/$label.json" > "$R/$label.log" 2>&1
  say "$label rc=$?"; tail -n $(( $(tr ',' '\n' <<< "$batches" | wc -l) + 1 )) "$R/$label.log" | tee -a "$R/summary.txt"
}
load32() { # load32 LABEL FLAGS...: 32 slots, 32 clients, 128 new tokens (the issue's middle load), then the step metrics
  local label=$1; shift
  serve 32-$label "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512 "$@"
  lt 32x128-$label --clients 32 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 2 --unloaded 6
  say "$(grep -E '^xlstm_(mixed_step|decode_step_seconds_(sum|count))' "$R/metrics-32x128-$label.txt" | sed 's/{.*}//' | tr '\n' ' ')"
  stop
}
built_or_stop() { # after customops: ends the stage (results kept) when the library did not build or a CTest case failed
  if [[ ! -f /tmp/cb/libxlstm_customops.so ]] || ! grep -q "cases, 0 failed" "$R/customops.log" || grep -q "^FAIL " "$R/customops.log"; then
    grep -h -E "error|FAIL" "$R/build.log" "$R/customops.log" | head -30 | tee -a "$R/summary.txt"; finish; exit 1
  fi
}
lanes_bench() { # the mixed graph's two cells, one layer: alone, one stream, forked (xlstm_kernel_bench --lanes)
  /tmp/cb/xlstm_kernel_bench --lanes > "$R/kernels-lanes.json" 2> "$R/kernels-lanes.log"
  say "xlstm_kernel_bench --lanes rc=$?"; cat "$R/kernels-lanes.log" | tee -a "$R/summary.txt"
}
loads64() { # 64 slots: 8 clients, then 64 clients, 1,024 new tokens each
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512
  lt 8x1024 --clients 8 --seconds 15 --warmup-seconds 4 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 1
  lt 64x1024 --clients 64 --seconds 45 --warmup-seconds 15 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 1
  stop
}
cuda_tests() { # cuda_tests [METHOD...]: NUnit CudaTests methods (all when none named), one process each (in one process
  # they crash: tools/serve/README.md, run 7), with the library just built
  rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; cp /tmp/cb/libxlstm_customops.so "$APP/"
  local methods=("$@")
  (( ${#methods[@]} )) || methods=($(grep -oE '^    public void [A-Za-z0-9_]+' tests/XLstmOnnx.Tests/CudaTests.cs | awk '{print $3}' | grep -v RequireCuda))
  for t in "${methods[@]}"; do
    timeout 100 "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~CudaTests.$t" > "$R/nunit-$t.log" 2>&1
    say "NUnit $t rc=$? $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-$t.log" | tr -s ' \n' ' ')"
    grep -E "requests served|Exception|Expected|But was" "$R/nunit-$t.log" | head -6 | tee -a "$R/summary.txt"
  done
}
lt() { # lt NAME ARGS...: a load test against the server on $PORT
  local name=$1; shift
  "$CLI" loadtest --url http://127.0.0.1:$PORT --model-name x --out "$R/lt-$name.json" "$@" > "$R/lt-$name.log" 2>&1
  say "loadtest $name rc=$?: $(python3 -c "import json; d=json.load(open('$R/lt-$name.json')); print({k: d.get(k) for k in ['ok', 'failed', 'checked_alone', 'mismatches_vs_alone', 'window_throughput_tokens_per_s', 'throughput_tokens_per_s']}, 'ttft p50', d['ttft_ms']['p50'], 'itl p50', d['itl_ms']['p50'])" 2>&1)"
  curl -s 127.0.0.1:$PORT/metrics > "$R/metrics-$name.txt"
}

case $stage in
build)
  [[ -d $APP ]] || cp -a /tmp/xlstm/.gpu/app "$APP"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$R/gpu.txt"
  customops
  grep -E "error" "$R/build.log" | head -20
  cp /tmp/cb/libxlstm_customops.so "$APP/"
  bash tools/profile/build.sh /tmp/libkernel_trace.so 2>&1 | tee -a "$R/summary.txt"
  "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~Cuda" > "$R/nunit-cuda.log" 2>&1
  say "NUnit CUDA tests rc=$?: $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-cuda.log" | tr -s ' \n' ' ')"
  grep -B2 -A12 "failed " "$R/nunit-cuda.log" | head -60
  export_7b $M7 7b
  ;;
serve)
  # the engine alone (Generator: all rows prefilled together, then greedy steps), same batch sizes as the loads below
  engine_bench bench $M7 1,8,32,64
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512 --max-prompt-tokens 20000
  lt 64x1024 --clients 64 --seconds 50 --warmup-seconds 15 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 4
  lt 8x512 --clients 8 --seconds 20 --warmup-seconds 4 --max-tokens 512 --prompt-tokens 64:160 --ignore-eos --check-alone 2 --unloaded 4
  stop
  serve 32 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512
  lt 32x128 --clients 32 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 8 --unloaded 6
  stop
  ;;
final)
  # the shipped defaults after run 2, on a fresh machine, in one call: build and CUDA tests, then the two loads the last
  # change touched, with the engine's figures of the same run
  [[ -d $APP/XLstmOnnx.Tests ]] || { rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; }
  customops
  "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~Cuda" > "$R/nunit-cuda.log" 2>&1
  say "NUnit CUDA tests rc=$?: $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-cuda.log" | tr -s ' \n' ' ')"
  export_7b $M7 7b
  engine_bench bench $M7 32,64
  serve 32 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512
  lt 32x128 --clients 32 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 4 --unloaded 6
  stop
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512
  lt 64x1024 --clients 64 --seconds 45 --warmup-seconds 15 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 1
  stop
  ;;
linear)
  # run 4 (ai.xlstm::Linear): build, kernel tests and bench, NUnit CUDA tests, the 7B export three ways
  [[ -d $APP/XLstmOnnx.Tests ]] || { rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; }
  customops
  /tmp/cb/xlstm_linear_bench --json "$R/linear-bench.json" > "$R/linear-bench.log" 2>&1
  say "linear bench rc=$?"; grep -E "^step" "$R/linear-bench.log" | tee -a "$R/summary.txt"
  "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~Cuda" > "$R/nunit-cuda.log" 2>&1
  say "NUnit CUDA tests rc=$?: $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-cuda.log" | tr -s ' \n' ' ')"
  grep -B2 -A12 "failed " "$R/nunit-cuda.log" | head -60
  for m in invariant custom gemm; do
    flag=batch-invariant; [[ $m == custom ]] && flag=custom; [[ $m == gemm ]] && flag=onnx
    export_7b /tmp/m7b-$m 7b-$m --linear-kernels $flag
  done
  ;;
linear-bench)
  for m in gemm custom invariant; do engine_bench bench-$m /tmp/m7b-$m 1,8,16,32,64; done
  ;;
linear-serve)
  # the issue's three loads on the batch-invariant export: greedy streams under load against the same requests alone
  M7=/tmp/m7b-invariant
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512
  lt 64x1024 --clients 64 --seconds 45 --warmup-seconds 15 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 4
  lt 8x512 --clients 8 --seconds 20 --warmup-seconds 4 --max-tokens 512 --prompt-tokens 64:160 --ignore-eos --check-alone 4 --unloaded 4
  stop
  serve 32 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512
  lt 32x128 --clients 32 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 8 --unloaded 6
  stop
  ;;
state)
  # run 5 (--state-dtype bf16): build and CUDA tests, then the engine with the state in float32 and in bfloat16
  [[ -d $APP/XLstmOnnx.Tests ]] || { rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; }
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$R/gpu.txt"
  customops
  cp /tmp/cb/libxlstm_customops.so "$APP/"
  timeout 300 "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~Cuda" > "$R/nunit-cuda.log" 2>&1
  say "NUnit CUDA tests rc=$?: $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-cuda.log" | tr -s ' \n' ' ')"
  grep -B2 -A12 "failed " "$R/nunit-cuda.log" | head -40
  for st in float32 bf16; do
    export_7b /tmp/m7b-$st 7b-$st --state-dtype $st
  done
  ;;
state-check)
  # run 5 on a fresh machine in one call: customops and CTest, both 7B exports, a kernel trace of the bf16-state step at
  # batch 64, the engine on each, then the NUnit CUDA tests one at a time (a crash names its test)
  customops
  for st in float32 bf16; do
    export_7b /tmp/m7b-$st 7b-$st --state-dtype $st
  done
  bash tools/profile/build.sh /tmp/libkernel_trace.so > "$R/trace-build.log" 2>&1
  for st in float32 bf16; do
    CUDA_INJECTION64_PATH=/tmp/libkernel_trace.so KERNEL_TRACE_OUT=$R/kernels-b64-$st.tsv "$CLI" bench --model /tmp/m7b-$st --device cuda --cuda-graph --batch 64 --prompt-tokens 128 --new-tokens 256 --reps 1 > /dev/null 2>&1
    say "trace b64 $st: $(head -2 "$R/kernels-b64-$st.tsv" | tail -1 | cut -c1-120)"
  done
  for st in float32 bf16; do engine_bench bench-$st /tmp/m7b-$st 1,16,64,128; done
  rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; cp /tmp/cb/libxlstm_customops.so "$APP/"
  for t in $(grep -B3 "public void" tests/XLstmOnnx.Tests/CudaTests.cs | grep "public void" | sed 's/.*public void \([A-Za-z0-9]*\).*/\1/' | grep -v RequireCuda); do
    (( $(date +%s) - t0 > 500 )) && { say "out of time: CudaTests.$t and the ones after it not run"; break; }
    timeout 100 "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~CudaTests.$t" > "$R/nunit-$t.log" 2>&1
    say "NUnit $t rc=$? $(grep -E '^  (total|failed|succeeded):' "$R/nunit-$t.log" | tr -s ' \n' ' ')"
  done
  ;;
state-bench)
  for st in float32 bf16; do engine_bench bench-$st /tmp/m7b-$st 1,16,64,128; done
  ;;
state-serve)
  # run 5: served loads on the bf16-state export (greedy streams under load against the same requests alone)
  M7=/tmp/m7b-bf16
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512
  lt 64x1024 --clients 64 --seconds 45 --warmup-seconds 15 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 2
  stop
  serve 32 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512
  lt 32x128 --clients 32 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 4 --unloaded 6
  stop
  ;;
mixed)
  # run 6 on a fresh machine: customops (CTest against the CPU oracle), the 7B export with the mixed graph, the engine
  customops
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 8,32,64
  ;;
mixed-32)
  # 32 slots, 32 clients, 128 new tokens: prompts read inside decode steps (the mixed graph), then between them (run 1-5's engine)
  for mode in on off; do load32 $mode --mixed-steps $mode; done
  ;;
tail)
  # run 6 after the recurrent-run change of the tensor-core kernel: customops (CTest), the 7B export with the mixed
  # graph, time to first token at batch 1 around one and two chunks (tails of 0, 1, 32, 63 tokens), the engine
  [[ -f /tmp/cb/libxlstm_customops.so ]] || customops
  [[ -d $M7 ]] || export_7b $M7 7b-mixed --mixed-graph
  for pt in 64 65 96 127 128 160; do
    "$CLI" bench --model $M7 --device cuda --cuda-graph --batch 1 --prompt-tokens $pt --new-tokens 8 --reps 3 --out "$R/ttft-$pt.json" > "$R/ttft-$pt.log" 2>&1
    say "prompt $pt: $(tail -1 "$R/ttft-$pt.log")"
  done
  engine_bench bench $M7 8,32,64
  ;;
mixed-final)
  # run 6, last lease: customops, the export, the engine at 8 and 32, then the 32-slot load with mixed steps and 8
  # clients on 64 slots (each piece now one step where a prompt's chunks and tail fit one: one mixed step per prompt)
  customops
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 8,32
  serve 32 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512
  lt 32x128 --clients 32 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 2 --unloaded 6
  say "$(grep -E '^xlstm_(mixed_steps|decode_step_seconds_(sum|count))' "$R/metrics-32x128.txt" | sed 's/{.*}//' | tr '\n' ' ')"
  stop
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512
  lt 8x1024 --clients 8 --seconds 15 --warmup-seconds 4 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 0
  stop
  ;;
mixed-trace)
  # kernel time (CUPTI) of the 32-slot load with prompts read inside decode steps and between them
  for mode in on off; do
    traced_serve 32-$mode "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512 --mixed-steps $mode
    lt trace-$mode --clients 32 --seconds 20 --warmup-seconds 4 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 0
    say "$(grep -E '^xlstm_(mixed_steps|mixed_step_prompt_tokens|decode_step_seconds_(sum|count)|prompt_tokens)' "$R/metrics-trace-$mode.txt" | sed 's/{.*}//' | tr '\n' ' ')"
    stop
    head -25 "$R/kernels-32-$mode.tsv" | cut -c1-160 | tee -a "$R/summary.txt"
  done
  ;;
mixed-64)
  # 64 slots with the mixed graph: 8 clients (buckets), then 64 clients and 1,024 new tokens
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512
  lt 8x1024 --clients 8 --seconds 20 --warmup-seconds 4 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 2
  lt 64x1024 --clients 64 --seconds 45 --warmup-seconds 15 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 2
  stop
  ;;
pad)
  # run 7: customops and CTest (masked lead positions in the tensor-core kernel); a kernel variant from a patch in
  # tools/serve/trial/ (untracked, carried along) built beside it with its own CTest, and time to first token at prompts
  # with recurrent tails with each library (bench reads prompts in transformers' schedule: the tail runs)
  customops
  cp /tmp/cb/libxlstm_customops.so /tmp/libmain.so
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 8,32,64
  ttft() { # ttft LABEL LIB
    for pt in 96 127 128 160; do
      XLSTM_CUSTOMOPS_PATH=$2 "$CLI" bench --model $M7 --device cuda --cuda-graph --batch 1 --prompt-tokens $pt --new-tokens 8 --reps 3 --out "$R/ttft-$1-$pt.json" > "$R/ttft-$1-$pt.log" 2>&1
      say "$1 prompt $pt: $(tail -1 "$R/ttft-$1-$pt.log")"
    done
  }
  ttft main /tmp/libmain.so
  for patch in tools/serve/trial/*.patch; do
    [[ -f $patch ]] || continue
    name=$(basename "$patch" .patch)
    rm -rf /tmp/trial && mkdir -p /tmp/trial && cp -a customops tools /tmp/trial/
    (cd /tmp/trial && patch -p1 < "$OLDPWD/$patch" > "$R/trial-$name-patch.log" 2>&1 && OUT=$R/trial-$name BUILD_DIR=/tmp/cbt bash tools/bench/run_gpu.sh --tests-only > "$R/trial-$name.log" 2>&1)
    say "trial $name: rc=$? $(grep -h -E 'cases, |build failed' "$R/trial-$name.log" | tr '\n' ' ')"
    [[ -f /tmp/cbt/libxlstm_customops.so ]] && ttft "$name" /tmp/cbt/libxlstm_customops.so
    [[ -x /tmp/cbt/xlstm_kernel_bench ]] && /tmp/cbt/xlstm_kernel_bench --tail > "$R/trial-$name-tail.txt" 2>&1 && tail -6 "$R/trial-$name-tail.txt" | tee -a "$R/summary.txt"
  done
  ;;
pad-serve)
  # run 7: 32 slots, 32 clients, 128 tokens, prompts padded to whole chunks (auto on CUDA) and not; then 64 slots
  for pad in auto off; do load32 $pad --pad-prompts $pad; done
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512
  lt 8x1024 --clients 8 --seconds 15 --warmup-seconds 4 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 0
  lt 64x1024 --clients 64 --seconds 45 --warmup-seconds 15 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 1
  stop
  ;;
pad-trace)
  # run 7: CUPTI kernel time of the 32-slot load with whole-chunk prompts in mixed steps
  traced_serve 32-pad "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512
  lt trace-pad --clients 32 --seconds 20 --warmup-seconds 4 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 0
  say "$(grep -E '^xlstm_(mixed_steps|mixed_step_prompt_tokens|decode_step_seconds_(sum|count)|prompt_tokens)' "$R/metrics-trace-pad.txt" | sed 's/{.*}//' | tr '\n' ' ')"
  stop
  head -30 "$R/kernels-32-pad.tsv" | cut -c1-160 | tee -a "$R/summary.txt"
  ;;
pad2)
  # run 7, second lease: customops (CTest), the export, the engine, then 32 slots with two prompts a mixed step and one
  customops
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 8,32,64
  for rows in 2 1; do load32 rows$rows --mixed-prompt-rows $rows; done
  ;;
pad2-64)
  # run 7, second lease: 64 slots (8 clients, then 64 clients and 1,024 tokens), then the NUnit CUDA serving tests
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512
  lt 8x1024 --clients 8 --seconds 15 --warmup-seconds 4 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 0
  lt 64x1024 --clients 64 --seconds 45 --warmup-seconds 15 --max-tokens 1024 --prompt-tokens 64:160 --ignore-eos --check-alone 1
  say "$(grep -E '^xlstm_(mixed_step|decode_step_seconds_(sum|count))' "$R/metrics-64x1024.txt" | sed 's/{.*}//' | tr '\n' ' ')"
  stop
  rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; cp /tmp/cb/libxlstm_customops.so "$APP/"
  for t in ServingWholeChunkPromptsOnCudaEqualsServedAloneAndTheCpu ServingOnCudaWithGraphsEqualsServedAloneAndTheCpu; do
    timeout 150 "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~CudaTests.$t" > "$R/nunit-$t.log" 2>&1
    say "NUnit $t rc=$? $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-$t.log" | tr -s ' \n' ' ')"
    grep -E "engine started|requests served|did not end|Assert|Expected|But was" "$R/nunit-$t.log" | head -20 | tee -a "$R/summary.txt"
  done
  ;;
pad3)
  # run 7, third lease: customops (CTest), export, engine, the 32-slot load with the defaults, the NUnit CUDA serving
  # tests one process each, then (time allowing) CUPTI on the same load
  customops
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 8,32,64
  serve 32 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512
  lt 32x128 --clients 32 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 2 --unloaded 6
  say "$(grep -E '^xlstm_(mixed_step|decode_step_seconds_(sum|count))' "$R/metrics-32x128.txt" | sed 's/{.*}//' | tr '\n' ' ')"
  stop
  rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; cp /tmp/cb/libxlstm_customops.so "$APP/"
  for t in ServingOnCudaWithGraphsEqualsServedAloneAndTheCpu ServingWholeChunkPromptsOnCudaEqualsServedAloneAndTheCpu \
           ServingMixedStepsOnCudaEqualsServedAloneAndTheCpu ServingWholeChunkMixedStepsOnCudaEqualsServedAloneAndTheCpu; do
    timeout 100 "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~CudaTests.$t" > "$R/nunit-$t.log" 2>&1
    say "NUnit $t rc=$? $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-$t.log" | tr -s ' \n' ' ')"
    grep -E "engine started|requests served|did not end|Exception|Assert|Expected|But was" "$R/nunit-$t.log" | head -12 | tee -a "$R/summary.txt"
  done
  if (( $(date +%s) - t0 < 420 )); then
    traced_serve 32 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512
    lt trace --clients 32 --seconds 20 --warmup-seconds 4 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 0
    stop
    head -16 "$R/kernels-32.tsv" | cut -c1-140 | tee -a "$R/summary.txt"
  fi
  ;;
lanes)
  # run 8: the mixed graph's two cells in one MLstmLanes node, the prompt's forked beside the step (kernels/mlstm_lanes.cuh)
  customops
  lanes_bench
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 8,32,64
  load32 forked
  XLSTM_LANES_ONE_STREAM=1 load32 one-stream
  load32 forked-2
  ;;
lanes-more)
  # run 8, second lease: customops, export, engine; CUPTI of the 32-slot load by step kind; the 32-slot load with two
  # prompts a mixed step; 64 slots (8 clients, then 64 clients and 1,024 tokens)
  customops
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 8,32,64
  traced_serve 32 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512
  lt trace --clients 32 --seconds 20 --warmup-seconds 4 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 0
  say "$(grep -E '^xlstm_(mixed_step|decode_step_seconds_(sum|count))' "$R/metrics-trace.txt" | sed 's/{.*}//' | tr '\n' ' ')"
  stop
  head -12 "$R/kernels-32.tsv" | cut -c1-140 | tee -a "$R/summary.txt"
  grep -E "/(span|busy)" "$R/steps-32.tsv" | tee -a "$R/summary.txt"
  load32 rows2 --mixed-prompt-rows 2
  loads64
  ;;
lanes2)
  # run 8, third lease: the mixed graph with one Split a layer (MLstmLanes, MLstmGatesLanes, MultiHeadNormGateLanes)
  customops
  built_or_stop
  lanes_bench
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 8,32,64
  load32 a
  load32 b
  load32 c
  ;;
lanes2-more)
  # run 8, third lease, second call: the NUnit CUDA tests one process each, then 64 slots (8 clients, then 64 clients
  # and 1,024 tokens)
  cuda_tests
  loads64
  ;;
lanes3)
  # run 8, last lease: the prompt rows' layout copy on the compute stream before the fork (kernels/mlstm_lanes_fw.cu)
  customops
  built_or_stop
  lanes_bench
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 32
  load32 a
  load32 b
  cuda_tests ServingMixedStepsOnCudaEqualsServedAloneAndTheCpu ServingWholeChunkMixedStepsOnCudaEqualsServedAloneAndTheCpu \
             Bf16StateServingOnCudaEqualsServedAlone
  ;;
lanes-tests)
  # run 8: the NUnit CUDA tests, one process per test method (in one process they crash: tools/serve/README.md, run 7)
  cuda_tests
  ;;
pad4)
  # run 7, last lease: HEAD end to end on a fresh machine: customops (CTest), the export, the engine at 32, the 32-slot load
  customops
  export_7b $M7 7b-mixed --mixed-graph
  engine_bench bench $M7 32
  load32 defaults
  ;;
pad3-tests)
  # run 7, third lease: every NUnit CUDA test in one process (sessions of earlier tests disposed before later ones start)
  rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; cp /tmp/cb/libxlstm_customops.so "$APP/"
  timeout 170 "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~CudaTests" > "$R/nunit-cuda-one-process.log" 2>&1
  say "NUnit CudaTests in one process rc=$? $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-cuda-one-process.log" | tr -s ' \n' ' ')"
  grep -E "^failed|Exception :" "$R/nunit-cuda-one-process.log" | head -10 | tee -a "$R/summary.txt"
  ;;
pad3-extra)
  # run 7, third lease: the 32-slot load without the prefix cache (what storing every prompt's state costs), then all
  # NUnit CUDA tests in one process (sessions of earlier tests disposed before the mixed ones start)
  serve 32-nocache "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 32 --queue 512 --prefix-cache-mb 0
  lt 32x128-nocache --clients 32 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 0
  say "$(grep -E '^xlstm_(mixed_step|decode_step_seconds_(sum|count))' "$R/metrics-32x128-nocache.txt" | sed 's/{.*}//' | tr '\n' ' ')"
  stop
  rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; cp /tmp/cb/libxlstm_customops.so "$APP/"
  timeout 170 "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~CudaTests" > "$R/nunit-cuda-one-process.log" 2>&1
  say "NUnit CudaTests in one process rc=$? $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-cuda-one-process.log" | tr -s ' \n' ' ')"
  grep -E "^failed|Exception :" "$R/nunit-cuda-one-process.log" | head -10 | tee -a "$R/summary.txt"
  ;;
pad-tests)
  # run 7: the NUnit CUDA tests of serving (and the rest of CudaTests), each in its own process (a crash names its test)
  rm -rf "$APP"; cp -a /tmp/xlstm/.gpu/app "$APP"; cp /tmp/cb/libxlstm_customops.so "$APP/"
  for t in $(grep -B3 "public void" tests/XLstmOnnx.Tests/CudaTests.cs | grep "public void" | sed 's/.*public void \([A-Za-z0-9]*\).*/\1/' | grep -v RequireCuda); do
    timeout 120 "$APP/XLstmOnnx.Tests" --filter "FullyQualifiedName~CudaTests.$t" > "$R/nunit-$t.log" 2>&1
    say "NUnit $t rc=$? $(grep -E '^  (total|failed|succeeded|skipped):' "$R/nunit-$t.log" | tr -s ' \n' ' ')"
  done
  ;;
extra)
  # the long prompt (16,384 tokens) read while 16 streams decode; then one decode batch size only (every step at 64 rows,
  # as the previous engine did): whether streams under load then equal the requests alone
  serve 64 "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512 --max-prompt-tokens 20000
  lt long --clients 16 --seconds 25 --warmup-seconds 8 --max-tokens 2000 --prompt-tokens 64:160 --ignore-eos --long-prompt 16384 --check-alone 0
  stop
  serve one-bucket "$CLI" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512 --decode-buckets 64
  lt one-bucket --clients 16 --seconds 15 --warmup-seconds 3 --max-tokens 256 --prompt-tokens 64:160 --ignore-eos --check-alone 4
  stop
  ;;
profile)
  # GPU kernel time (CUPTI) of a served load, the previous engine (one masked prefill over all slots, host sampling)
  # against this one, same load; with the servers' step counts the tables give kernel time per served step
  rm -rf /tmp/oldapp && cp -al /tmp/xlstm/.gpu/app /tmp/oldapp && rm /tmp/oldapp/{xlstm-onnx.dll,XLstmOnnx.Runtime.dll,XLstmOnnx.GraphBuilder.dll} && cp /tmp/xlstm/.gpu/old/*.dll /tmp/oldapp/
  for v in old new; do
    bin=$CLI; [[ $v == old ]] && bin=/tmp/oldapp/xlstm-onnx
    extra=(); [[ $v == new ]] && extra=(--log-level warning)
    CUDA_INJECTION64_PATH=/tmp/libkernel_trace.so KERNEL_TRACE_OUT=$R/kernels-$v.tsv \
      "$bin" serve --model $M7 --device cuda --cuda-graph --max-batch 64 --queue 512 --port $PORT --model-name x "${extra[@]}" > "$R/serve-$v.log" 2>&1 &
    server=$!
    for _ in $(seq 480); do curl -s 127.0.0.1:$PORT/health > /dev/null 2>&1 && break; kill -0 "$server" 2>/dev/null || break; sleep 0.5; done
    "$CLI" loadtest --url http://127.0.0.1:$PORT --model-name x --clients 64 --seconds 30 --warmup-seconds 10 --max-tokens 1024 --prompt-tokens 64:160 \
      --ignore-eos --check-alone 0 --out "$R/lt-profile-$v.json" > "$R/lt-profile-$v.log" 2>&1
    curl -s 127.0.0.1:$PORT/metrics > "$R/metrics-profile-$v.txt"
    stop
    say "$v: $(python3 -c "import json; d=json.load(open('$R/lt-profile-$v.json')); print('window tok/s', d['window_throughput_tokens_per_s'], 'itl p50', d['itl_ms']['p50'])") $(grep -E '^xlstm_decode_step_seconds_(sum|count)' "$R/metrics-profile-$v.txt" | tr '\n' ' ')"
    head -12 "$R/kernels-$v.tsv" | cut -c1-150 | tee -a "$R/summary.txt"
  done
  ;;
*) echo "unknown stage $stage" >&2; exit 2 ;;
esac
finish
