#!/usr/bin/env bash
# What `route` adds to the time to first token (issue 17: at most 2 ms at p50 against going to a replica directly), on
# the CPU with the shipped model: three `serve` replicas and a router on loopback. First one request at a time,
# interleaved (ttft_pairs.py: each pair a request through the router and one straight at a replica, the straight ones
# to each replica in turn as the router spreads its own, every request a prompt of its own), then rounds of a light
# load, through the router and straight, alternating: three closed-loop clients through the router, then one client
# straight at each replica (three load tests at once), so each replica sees one client either way.
# Prints one line a round and the medians of the differences; writes every load test's JSON under OUT_DIR. On a
# two-core machine the loaded figures carry the noise of seven processes sharing two cores (the router among them).
#   tools/route/bench_route.sh [OUT_DIR]      (after ./build.sh --target=Test, which exports artifacts/models/kjv-xlstm)
# Env: MODEL (artifacts/models/kjv-xlstm), CLI (the built CLI), SECS (15), ROUNDS (5), BASE_PORT (18210).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
out=${1:-artifacts/route-bench}
mkdir -p "$out"
MODEL=${MODEL:-artifacts/models/kjv-xlstm}
CLI=${CLI:-cli/XLstmOnnx.Cli/bin/Release/net10.0/xlstm-onnx}
SECS=${SECS:-15} ROUNDS=${ROUNDS:-5} BASE=${BASE_PORT:-18210}
[[ -x $CLI ]] || { echo "bench_route.sh: $CLI not built (run ./build.sh --target=Build)" >&2; exit 2; }
[[ -d $MODEL ]] || { echo "bench_route.sh: no model at $MODEL (run ./build.sh --target=Test, or set MODEL)" >&2; exit 2; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT
urls=()
for i in 1 2 3; do
  port=$((BASE + i))
  "$CLI" serve --model "$MODEL" --port "$port" --model-name kjv --max-batch 8 --queue 256 --log-level warning > "$out/serve-$i.log" 2>&1 &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
done
"$CLI" route --replicas "$(IFS=,; echo "${urls[*]}")" --port "$BASE" > "$out/route.log" 2>&1 &
pids+=($!)
for u in "${urls[@]}" "http://127.0.0.1:$BASE"; do
  for _ in $(seq 120); do curl -sf "$u/health" > /dev/null 2>&1 && break; sleep 0.5; done
done
lt() { # lt NAME URL CLIENTS SEED: every load test has prompts of its own (a prompt sent before is a prefix-cache hit)
  "$CLI" loadtest --url "$2" --model-name kjv --clients "$3" --seconds "$SECS" --warmup-seconds 3 --max-tokens 32 \
    --prompt-tokens 16:64 --ignore-eos --check-alone 4 --seed "$4" --out "$out/$1.json" > "$out/$1.log" 2>&1
}
# the router's own cost, one request at a time and interleaved
python3 tools/route/ttft_pairs.py "http://127.0.0.1:$BASE" "$(IFS=,; echo "${urls[*]}")" --pairs 300 --plain 100 --out "$out/pairs.json"
for round in $(seq "$ROUNDS"); do
  lt "router-$round" "http://127.0.0.1:$BASE" 3 $((100 + round))
  direct=()
  for i in 1 2 3; do lt "direct-$round-r$i" "${urls[$((i - 1))]}" 1 $((200 + 10 * round + i)) & direct+=($!); done
  wait "${direct[@]}"
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
diffs = []
for r in range(1, rounds + 1):
    via = json.load(open(f"{out}/router-{r}.json"))
    direct = [json.load(open(f"{out}/direct-{r}-r{i}.json")) for i in (1, 2, 3)]
    d50 = statistics.mean(d["ttft_ms"]["p50"] for d in direct)
    diffs.append(via["ttft_ms"]["p50"] - d50)
    print(f"round {r}, loaded: TTFT p50 through the router {via['ttft_ms']['p50']:.2f} ms, straight to a replica {d50:.2f} ms "
          f"(mean of the three), difference {diffs[-1]:+.2f} ms; router {via['ok']} ok / {via['failed']} failed, "
          f"{via['window_throughput_tokens_per_s']:.0f} tok/s, mismatches vs alone {via['mismatches_vs_alone']} of {via['checked_alone']}; "
          f"direct {sum(d['window_throughput_tokens_per_s'] for d in direct):.0f} tok/s")
print(f"median difference loaded {statistics.median(diffs):+.2f} ms (bound: +2 ms)")
PY
