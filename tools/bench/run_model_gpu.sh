#!/usr/bin/env bash
# Issue 5's whole-model run on the H200, in stages that each fit one 10-minute device call (run them back to back
# on one warm machine: later stages use /tmp files of earlier ones). From the repository root, after the staged CLI
# was unpacked (tools/gpu/publish.sh):
#
#   source /tmp/xlstm/env.sh && bash tools/bench/run_model_gpu.sh build     # customops, checks, 7B export
#   source /tmp/xlstm/env.sh && bash tools/bench/run_model_gpu.sh kernels   # the cell kernels alone vs transformers'
#   source /tmp/xlstm/env.sh && bash tools/bench/run_model_gpu.sh bench     # ours: eager steps and CUDA graphs
#   source /tmp/xlstm/env.sh && bash tools/bench/run_model_gpu.sh hf        # transformers, same config, same GPU
#   source /tmp/xlstm/env.sh && bash tools/bench/run_model_gpu.sh profile   # kernel times, node placement, int4
#   source /tmp/xlstm/env.sh && bash tools/bench/run_model_gpu.sh accuracy  # int4 vs bf16 vs fp32 on the shipped model
#
# Each stage leaves its logs and JSON in $OUT/<stage>.tgz and prints a summary.
set -uo pipefail
stage=${1:?stage: build, kernels, bench, hf, profile or accuracy}
OUT=${OUT:-artifacts/gpu}
R=/tmp/res/$stage
mkdir -p "$R" "$OUT"
CLI=/tmp/xlstm/.gpu/cli/xlstm-onnx
export XLSTM_CUSTOMOPS_PATH=/tmp/cb/libxlstm_customops.so
M7=/tmp/m7b            # xLSTM-7b config, random bf16 weights, custom ops, last logits, next_token
Q7=/tmp/m7b-int4
FX_PROMPT=99,44,86,93,87,38,30,45,48,85,63
FX_EXPECT="85 84 34 20 68 83 79 58 107 92 85 84 34 20 78 35"   # transformers' greedy ids (tools/gpu/results/cuda-greedy.txt)
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$R/summary.txt"; }

case $stage in
build)
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | tee "$R/gpu.txt"
  { command -v nsys; ls /usr/local/cuda*/bin 2>/dev/null | grep -i nsys; ls /opt/nvidia 2>/dev/null; } > "$R/nsys.txt" 2>&1
  OUT=$R BUILD_DIR=/tmp/cb bash tools/bench/run_gpu.sh --tests-only > "$R/customops.log" 2>&1
  say "customops build + CUDA tests: rc=$? ($(grep -c '\[       OK \]' "$R/customops.log") OK, $(grep -c FAILED "$R/customops.log") FAILED lines)"
  bash tools/profile/build.sh /tmp/libkernel_trace.so 2>&1 | tee -a "$R/summary.txt"
  # CUDA-graph decode against transformers' greedy ids, and against the uncaptured steps
  "$CLI" export --checkpoint tests/fixtures/fused_bias --mlstm-kernels custom --last-logits-only --next-token --output /tmp/fx > "$R/fx-export.log" 2>&1
  for g in "" --cuda-graph; do
    ids=$("$CLI" generate --model /tmp/fx --prompt-ids $FX_PROMPT --greedy --max-new-tokens 16 --print-ids --device cuda $g 2>>"$R/fx.log" | tail -1)
    say "fused_bias fp32 greedy ${g:-(no graph)}: $ids $([[ $ids == "$FX_EXPECT" ]] && echo EQUAL transformers || echo DIFFERENT from transformers: $FX_EXPECT)"
  done
  "$CLI" export --checkpoint models/kjv-xlstm --dtype bf16 --mlstm-kernels custom --last-logits-only --next-token --output /tmp/kjv > "$R/kjv-export.log" 2>&1
  a=$("$CLI" generate --model /tmp/kjv --prompt "In the beginning" --greedy --max-new-tokens 40 --print-ids --device cuda 2>>"$R/kjv.log" | tail -1)
  b=$("$CLI" generate --model /tmp/kjv --prompt "In the beginning" --greedy --max-new-tokens 40 --print-ids --device cuda --cuda-graph 2>>"$R/kjv.log" | tail -1)
  say "kjv bf16 greedy, graph vs no graph: $([[ $a == "$b" ]] && echo EQUAL || echo "DIFFERENT: $a | $b")"
  "$CLI" bench --model /tmp/kjv --device cuda --cuda-graph --batch 1,8 --prompt-tokens 100 --new-tokens 40 --reps 1 --out "$R/kjv-graph-bench.json" > "$R/kjv-bench.log" 2>&1
  say "kjv graph bench rc=$?: $(grep -h device_argmax_mismatches "$R/kjv-graph-bench.json" | tr -d ' \n')"
  cat "$R/kjv-bench.log" | tee -a "$R/summary.txt"
  # continuous batching with CUDA graphs: slots are reset and refilled between captured steps
  "$CLI" serve --model /tmp/kjv --device cuda --cuda-graph --model-name kjv --port 18093 --max-batch 8 > "$R/serve.log" 2>&1 &
  server=$!
  for _ in $(seq 60); do curl -s 127.0.0.1:18093/health > /dev/null 2>&1 && break; sleep 0.5; done
  "$CLI" loadtest --url http://127.0.0.1:18093 --model-name kjv --clients 16 --seconds 10 --max-tokens 32 > "$R/loadtest.log" 2>&1
  say "serve --cuda-graph + loadtest rc=$?: $(grep -E '"(requests|errors|mismatches_vs_single_request|throughput_tokens_per_s)"' "$R/loadtest.log" | head -4 | tr '\n' ' ')"
  kill $server 2>/dev/null; wait $server 2>/dev/null
  [[ ${SKIP_7B:-0} == 1 ]] && { tar czf "$OUT/$stage.tgz" -C /tmp/res "$stage"; cat "$R/summary.txt"; exit 0; }
  rm -rf $M7
  /usr/bin/time -v "$CLI" export --random-weights --preset xlstm-7b --dtype bf16 --mlstm-kernels custom --last-logits-only --next-token --output $M7 \
    > "$R/export-7b.log" 2> "$R/export-7b.time"
  say "7B export rc=$?: $(grep -E '^exported|^memory' "$R/export-7b.log" | tr '\n' ' ') $(grep -E 'Maximum resident' "$R/export-7b.time")"
  du -sh $M7 | tee -a "$R/summary.txt"
  ;;
kernels)
  # the mLSTM kernels alone at 7B shapes, ours against transformers' native ones (tools/bench/README.md, first table)
  OUT=$R BUILD_DIR=/tmp/cb bash tools/bench/run_gpu.sh > "$R/kernels.log" 2>&1
  say "kernel tests + benchmark rc=$?: $(grep -h 'failed' "$R/cuda_tests.log" | tr '\n' ' ')"
  tail -3 "$R/kernels.log"
  ;;
bench)
  for g in "" --cuda-graph; do
    "$CLI" bench --model $M7 --device cuda $g --batch 1,16 --prompt-tokens 2048 --new-tokens 256 --reps 3 --out "$R/ours${g:+-graph}.json" 2>&1 | tee "$R/ours${g:+-graph}.log"
    say "ours ${g:-(no graph)} rc=${PIPESTATUS[0]}"
  done
  ;;
hf)
  python3 tools/bench/hf_baseline.py --config models/presets/xlstm-7b.json --batch 1,16 --prompt 2048 --new 64 --reps 3 --out "$R/hf.json" 2>&1 | tee "$R/hf.log"
  say "hf rc=${PIPESTATUS[0]}"
  ;;
profile)
  [[ -f /tmp/libkernel_trace.so ]] || bash tools/profile/build.sh /tmp/libkernel_trace.so 2>&1 | tee -a "$R/summary.txt"; tail -3 /tmp/kernel_trace_build.log 2>/dev/null
  # GPU kernel time by kernel (CUPTI), captured decode at batch 1: 261 steps and two 16-token prompts
  CUDA_INJECTION64_PATH=/tmp/libkernel_trace.so KERNEL_TRACE_OUT=$R/kernels-decode-b1.tsv \
    "$CLI" bench --model $M7 --device cuda --cuda-graph --batch 1 --prompt-tokens 16 --new-tokens 257 --reps 1 > "$R/trace-decode.log" 2>&1
  say "decode trace rc=$?: $(head -c 300 "$R/kernels-decode-b1.tsv" | tail -n +2 | head -3 | cut -c1-120 | tr '\n' '|')"
  CUDA_INJECTION64_PATH=/tmp/libkernel_trace.so KERNEL_TRACE_OUT=$R/kernels-decode-b16.tsv \
    "$CLI" bench --model $M7 --device cuda --cuda-graph --batch 16 --prompt-tokens 16 --new-tokens 129 --reps 1 > "$R/trace-decode-b16.log" 2>&1
  say "decode trace B16 rc=$?"
  CUDA_INJECTION64_PATH=/tmp/libkernel_trace.so KERNEL_TRACE_OUT=$R/kernels-prefill-b1.tsv \
    "$CLI" bench --model $M7 --device cuda --batch 1 --prompt-tokens 2048 --new-tokens 2 --reps 1 > "$R/trace-prefill.log" 2>&1
  say "prefill trace rc=$?"
  # ONNX Runtime's node profile of uncaptured steps: node count per call and where every node ran
  (cd /tmp && "$CLI" bench --model $M7 --device cuda --batch 1 --prompt-tokens 16 --new-tokens 8 --reps 1 --profile /tmp/ortprof > "$R/ortprof.log" 2>&1)
  python3 tools/profile/summarize_ort_profile.py /tmp/ortprof*.json > "$R/ort-profile-summary.txt" 2>&1
  say "ORT profile: $(head -5 "$R/ort-profile-summary.txt" | tr '\n' '|')"
  rm -rf $Q7
  "$CLI" export --random-weights --preset xlstm-7b --dtype bf16 --quantize int4 --mlstm-kernels custom --last-logits-only --next-token --output $Q7 > "$R/export-int4.log" 2>&1
  say "int4 export rc=$?: $(grep -E '^exported' "$R/export-int4.log")"
  "$CLI" bench --model $Q7 --device cuda --cuda-graph --batch 1,16 --prompt-tokens 2048 --new-tokens 256 --reps 3 --out "$R/ours-int4-graph.json" 2>&1 | tee "$R/int4.log"
  say "int4 bench rc=${PIPESTATUS[0]}"
  ;;
accuracy)
  # int4 against bf16 and fp32 on the shipped model (custom ops, CUDA): logit error and greedy ids against
  # transformers' fp32 reference, and held-out perplexity (carry .gpu/kjv/val.txt: tools/train/prepare_kjv.py)
  for v in "fp32:--dtype fp32" "bf16:--dtype bf16" "bf16-int4-b32:--dtype bf16 --quantize int4 --block-size 32"; do
    name=${v%%:*}; rm -rf /tmp/acc/$name
    "$CLI" export --checkpoint models/kjv-xlstm --mlstm-kernels custom ${v#*:} --output /tmp/acc/$name > /dev/null 2>&1 || { say "$name: export failed"; continue; }
    "$CLI" verify --model /tmp/acc/$name --reference models/kjv-xlstm/reference.safetensors --device cuda --atol 1e9 > "$R/verify-$name.log" 2>&1
    worst=$(grep -E ' logits ' "$R/verify-$name.log" | awk '{print $4}' | sort -g | tail -1)
    greedy=$(grep greedy_ids "$R/verify-$name.log" | awk '{print $6" differing of "$3}')
    ppl=$("$CLI" score --model /tmp/acc/$name --text .gpu/kjv/val.txt --window 1024 --device cuda 2>/dev/null | tail -1)
    say "kjv $name on CUDA: worst |logit error| $worst; greedy ids: $greedy; held-out: $ppl"
  done
  ;;
*) echo "unknown stage $stage" >&2; exit 2 ;;
esac
tar czf "$OUT/$stage.tgz" -C /tmp/res "$stage"
cat "$R/summary.txt"
