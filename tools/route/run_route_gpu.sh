#!/usr/bin/env bash
# Issue 17 on a host with two H200s (device kind nvidia-h200-x2): one `serve` replica of the 7B preset per GPU and
# `route` in front of them, on loopback, the router on cores of its own (32 cores). Stages, back to back on one warm
# machine (the second uses the first's /tmp files). From the repository root, after the staged app was unpacked
# (tools/serve/publish.sh prints the staging runs):
#
#   source /tmp/xlstm/env.sh && bash tools/route/run_route_gpu.sh build   # customops (CUDA) and its CTest, the 7B export
#   source /tmp/xlstm/env.sh && bash tools/route/run_route_gpu.sh scale   # one replica alone, then two behind the router:
#       served throughput (32 clients at one replica, 64 through the router), requests per replica, time to first token
#       through the router against straight at a replica (interleaved pairs, and unloaded load tests), greedy streams
#       against their solo runs, and what moving a conversation costs at 7B (tools/route/handoff_bench.py)
#   source /tmp/xlstm/env.sh && bash tools/route/run_route_gpu.sh handoff   # after build: what moving a conversation costs, alone
#   source /tmp/xlstm/env.sh && bash tools/route/run_route_gpu.sh overhead  # after build: the router's own cost, three ways
#       (interleaved pairs on kept-alive connections, with proxy-only requests; pairs on a new connection each, as the
#       first run measured; unloaded load tests alternating router and replica, 5 rounds), then greedy streams through
#       the router against their solo runs on a --linear-kernels batch-invariant export (64 clients, two replicas;
#       INVARIANT=0 leaves that part out)
#
# Each stage leaves its logs and JSON in $OUT/<stage>.tgz and prints a summary.
set -uo pipefail
stage=${1:?stage: build, scale, overhead or handoff}
OUT=${OUT:-artifacts/gpu}
R=/tmp/res/$stage
mkdir -p "$R" "$OUT"
CLI=/tmp/xlstm/.gpu/app/xlstm-onnx
export XLSTM_CUSTOMOPS_PATH=/tmp/cb/libxlstm_customops.so
M7=/tmp/m7b                     # xLSTM-7b config, random bf16 weights, custom ops, last logits, next_token, mixed graph
TOKEN=route-gpu-run
ROUTER=18300 P0=18301 P1=18302
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$R/summary.txt"; }
finish() { tar czf "$OUT/$stage.tgz" -C /tmp/res "$stage"; cat "$R/summary.txt"; }
trap finish EXIT
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; }
up() { # up PORT LABEL
  for _ in $(seq 480); do curl -sf 127.0.0.1:$1/health > /dev/null 2>&1 && break; sleep 0.5; done
  say "$2 on :$1 up: $(curl -s 127.0.0.1:$1/health)"
}
lt() { # lt NAME URL ARGS...: a load test
  local name=$1 url=$2; shift 2
  "$CLI" loadtest --url "$url" --model-name x --out "$R/lt-$name.json" "$@" > "$R/lt-$name.log" 2>&1
  say "loadtest $name rc=$?: $(python3 -c "import json; d=json.load(open('$R/lt-$name.json')); print({k: d.get(k) for k in ['ok', 'failed', 'checked_alone', 'mismatches_vs_alone', 'window_throughput_tokens_per_s']}, 'ttft p50', d['ttft_ms']['p50'], 'unloaded ttft p50', (d.get('unloaded_ttft_ms') or {}).get('p50'))" 2>&1)"
}

replicas() { # replicas MODEL: one serve a GPU on $P0 and $P1, the router on $ROUTER in front of them
  for g in 0 1; do
    CUDA_VISIBLE_DEVICES=$g "$CLI" serve --model "$1" --device cuda --cuda-graph --max-batch 32 --queue 512 --max-prompt-tokens 20000 \
      --internal-token $TOKEN --port $((P0 + g)) --model-name x --log-level warning > "$R/serve-r$g-$(basename "$1").log" 2>&1 &
    pids+=($!)
  done
  "$CLI" route --replicas http://127.0.0.1:$P0,http://127.0.0.1:$P1 --port $ROUTER --internal-token $TOKEN --health-interval-ms 500 > "$R/route-$(basename "$1").log" 2>&1 &
  pids+=($!)
  up $P0 r0; up $P1 r1; up $ROUTER router
  for _ in $(seq 100); do [[ $(curl -s 127.0.0.1:$ROUTER/health | grep -o '"healthy":true' | wc -l) == 2 ]] && break; sleep 0.2; done
  say "router sees: $(curl -s 127.0.0.1:$ROUTER/health | grep -o '"healthy":[a-z]*' | tr '\n' ' ')"
}

case $stage in
handoff)
  # after build: moving a conversation alone (tools/route/handoff_bench.py), with each hand-off's parts from the router's log
  trap 'cleanup; finish' EXIT
  replicas $M7
  python3 tools/route/handoff_bench.py http://127.0.0.1:$ROUTER --replicas r0=http://127.0.0.1:$P0,r1=http://127.0.0.1:$P1 --token $TOKEN \
    --contexts 512,4096,16384 --reps 3 --vocab 50304 --model x --out "$R/handoff.json" > "$R/handoff.log" 2>&1
  say "handoff_bench rc=$?"; grep -E "^context|Error|error" "$R/handoff.log" | tee -a "$R/summary.txt"
  grep -E "hand-off" "$R"/route-*.log | sed 's/.*hand-off/hand-off/' | tee -a "$R/summary.txt"
  ;;
overhead)
  trap 'cleanup; finish' EXIT
  replicas $M7
  python3 tools/route/ttft_pairs.py http://127.0.0.1:$ROUTER http://127.0.0.1:$P0 --pairs 300 --plain 300 --vocab 50304 --model x --out "$R/pairs.json" > "$R/pairs.log" 2>&1
  say "pairs, kept-alive connections rc=$?: $(cat "$R/pairs.log")"
  python3 tools/route/ttft_pairs.py http://127.0.0.1:$ROUTER http://127.0.0.1:$P0 --pairs 300 --plain 100 --vocab 50304 --model x --new-connections --out "$R/pairs-new-connections.json" > "$R/pairs-new.log" 2>&1
  say "pairs, a new connection a request rc=$?: $(cat "$R/pairs-new.log")"
  for round in 1 2 3 4 5; do
    for target in router r0; do
      url=http://127.0.0.1:$ROUTER; [[ $target == r0 ]] && url=http://127.0.0.1:$P0
      seed=$((round + 100)); [[ $target == r0 ]] && seed=$((round + 200))  # prompts of their own: none cached by the other run
      "$CLI" loadtest --url $url --model-name x --clients 1 --seconds 1 --max-tokens 8 --prompt-tokens 64:160 --unloaded 40 --check-alone 0 \
        --seed $seed --out "$R/unloaded-$target-$round.json" > /dev/null 2>&1
    done
  done
  python3 - "$R" <<'PY' | tee -a "$R/summary.txt"
import json, statistics, sys
R = sys.argv[1]
d = []
for r in range(1, 6):
    via, direct = (json.load(open(f"{R}/unloaded-{t}-{r}.json"))["unloaded_ttft_ms"]["p50"] for t in ("router", "r0"))
    d.append(via - direct)
    print(f"round {r}: unloaded TTFT p50 through the router {via:.2f} ms, straight to r0 {direct:.2f} ms, difference {via - direct:+.2f} ms")
print(f"median difference {statistics.median(d):+.2f} ms (bound +2 ms)")
PY
  [[ ${INVARIANT:-1} == 1 ]] || exit 0
  cleanup; pids=()
  # greedy streams under load through the router against their solo runs, on the export whose GEMMs are batch-invariant
  "$CLI" export --random-weights --preset xlstm-7b --dtype bf16 --mlstm-kernels custom --last-logits-only --next-token --linear-kernels batch-invariant --output /tmp/m7b-inv > "$R/export-inv.log" 2>&1
  say "7B export (batch-invariant) rc=$?: $(grep -E '^exported' "$R/export-inv.log")"
  replicas /tmp/m7b-inv
  lt router-64-invariant http://127.0.0.1:$ROUTER --clients 64 --seconds 25 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 8
  curl -s 127.0.0.1:$ROUTER/metrics | grep -E "^xlstm_router_requests" | tee -a "$R/summary.txt"
  ;;
build)
  nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader | tee "$R/gpu.txt"
  nvidia-smi topo -m > "$R/topo.txt" 2>&1; nproc | tee -a "$R/gpu.txt"
  mkdir -p customops/build && rm -rf customops/build/ort-include && cp -a /tmp/xlstm/.gpu/ort-include customops/build/ort-include
  OUT=$R BUILD_DIR=/tmp/cb bash tools/bench/run_gpu.sh --tests-only > "$R/customops.log" 2>&1
  say "customops build + CUDA CTest: rc=$? $(grep -h -E 'cases, ' "$R/customops.log" | tr '\n' ' ')"
  [[ -f /tmp/cb/libxlstm_customops.so ]] || exit 1
  rm -rf $M7
  "$CLI" export --random-weights --preset xlstm-7b --dtype bf16 --mlstm-kernels custom --last-logits-only --next-token --mixed-graph --output $M7 > "$R/export.log" 2>&1
  say "7B export rc=$?: $(grep -E '^exported' "$R/export.log")"
  ;;
scale)
  trap 'cleanup; finish' EXIT
  # one replica a GPU, 32 slots each (run 8's middle load), the internal token for hand-offs
  replicas $M7
  # time to first token, router against straight, one request at a time, interleaved (the router's own cost)
  python3 tools/route/ttft_pairs.py http://127.0.0.1:$ROUTER http://127.0.0.1:$P0 --pairs 200 --plain 200 --vocab 50304 --model x --out "$R/pairs.json" > "$R/pairs.log" 2>&1
  say "interleaved pairs rc=$?: $(cat "$R/pairs.log")"
  # one replica alone, then both through the router: throughput, per-replica counts, TTFT, greedy against solo
  lt alone-32 http://127.0.0.1:$P0 --seed 11 --clients 32 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 2 --unloaded 20
  curl -s 127.0.0.1:$ROUTER/metrics > "$R/router-metrics-before.txt"
  lt router-64 http://127.0.0.1:$ROUTER --seed 12 --clients 64 --seconds 30 --warmup-seconds 6 --max-tokens 128 --prompt-tokens 64:160 --ignore-eos --check-alone 4 --unloaded 20
  curl -s 127.0.0.1:$ROUTER/metrics > "$R/router-metrics-after.txt"
  for g in 0 1; do curl -s 127.0.0.1:$((P0 + g))/metrics > "$R/metrics-r$g.txt"; done
  python3 - "$R" <<'PY' | tee -a "$R/summary.txt"
import json, re, sys
R = sys.argv[1]
def routed(f):
    n = {}
    for line in open(f):
        m = re.match(r'xlstm_router_requests_total\{.*replica="(r\d)".*\} (\S+)', line)
        if m: n[m.group(1)] = n.get(m.group(1), 0) + float(m.group(2))
    return n
b, a = routed(f"{R}/router-metrics-before.txt"), routed(f"{R}/router-metrics-after.txt")
load = {r: a.get(r, 0) - b.get(r, 0) for r in sorted(set(a) | set(b))}
alone, via = (json.load(open(f"{R}/lt-{n}.json")) for n in ("alone-32", "router-64"))
t1, t2 = alone["window_throughput_tokens_per_s"], via["window_throughput_tokens_per_s"]
spread = (max(load.values()) - min(load.values())) / max(load.values()) if load else float("nan")
print(f"requests per replica through the router during the 64-client load: {load} (max-min over max {spread:.1%}; bound 15%)")
print(f"served: one replica, 32 clients {t1:.0f} tok/s; two replicas through the router, 64 clients {t2:.0f} tok/s = {t2 / t1:.2f}x one replica ({t2 / (2 * t1):.1%} of 2x)")
print(f"unloaded TTFT p50: router {via['unloaded_ttft_ms']['p50']:.2f} ms, straight to r0 {alone['unloaded_ttft_ms']['p50']:.2f} ms")
PY
  # what moving a conversation costs: hand-off against rebuilding, contexts of 512 to 16,384 tokens
  python3 tools/route/handoff_bench.py http://127.0.0.1:$ROUTER --replicas r0=http://127.0.0.1:$P0,r1=http://127.0.0.1:$P1 --token $TOKEN \
    --contexts 512,4096,16384 --reps 3 --vocab 50304 --model x --out "$R/handoff.json" > "$R/handoff.log" 2>&1
  say "handoff_bench rc=$?"; grep -E "^context|Error|error" "$R/handoff.log" | tee -a "$R/summary.txt"
  curl -s 127.0.0.1:$ROUTER/metrics | grep -E "^xlstm_router_(handoffs|handoff_bytes|handoff_seconds_(sum|count))" | tee -a "$R/summary.txt"
  grep -E "hand-off" "$R"/route-*.log | sed 's/.*hand-off/hand-off/' | tail -4 | tee -a "$R/summary.txt"
  ;;
esac
