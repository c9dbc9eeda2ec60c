#!/usr/bin/env bash
# A long load on the CPU against the shipped model (issue 15's acceptance): 200 closed-loop clients for 180 s, the first
# requests sent again alone and compared token by token, and the server's resident memory sampled every 5 s.
# Prints one summary line and writes the load test's JSON and the memory samples.
#   tools/loadtest/soak.sh [OUT_DIR]        (after ./build.sh --target=Test, which exports artifacts/models/kjv-xlstm)
# Env: CLIENTS (200), SECONDS (180), PORT (18200), MODEL (artifacts/models/kjv-xlstm), CLI (the built CLI).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
out=${1:-artifacts/soak}
mkdir -p "$out"
CLIENTS=${CLIENTS:-200} SECS=${SECONDS_RUN:-180} PORT=${PORT:-18200}
MODEL=${MODEL:-artifacts/models/kjv-xlstm}
CLI=${CLI:-cli/XLstmOnnx.Cli/bin/Release/net10.0/xlstm-onnx}
[[ -x $CLI ]] || { echo "soak.sh: $CLI not built (run ./build.sh --target=Build)" >&2; exit 2; }
"$CLI" serve --model "$MODEL" --port "$PORT" --model-name kjv --max-batch 8 --queue 512 --log-level warning > "$out/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 120); do curl -s "127.0.0.1:$PORT/health" > /dev/null 2>&1 && break; sleep 0.5; done
( while kill -0 $server 2>/dev/null; do echo "$(date +%s) $(awk '/VmRSS/ {print $2}' /proc/$server/status)"; sleep 5; done ) > "$out/rss-kib.txt" &
sampler=$!
"$CLI" loadtest --url "http://127.0.0.1:$PORT" --model-name kjv --clients "$CLIENTS" --seconds "$SECS" --warmup-seconds 10 \
  --max-tokens 32 --check-alone 16 --out "$out/loadtest.json" > "$out/loadtest.log" 2>&1
rc=$?
kill $sampler 2>/dev/null || true
python3 - "$out" "$rc" <<'PY'
import json, sys
out, rc = sys.argv[1], sys.argv[2]
d = json.load(open(f"{out}/loadtest.json"))
rss = [int(l.split()[1]) for l in open(f"{out}/rss-kib.txt") if len(l.split()) == 2]
n = len(rss)
first, last = (sum(rss[n // 10: n // 5]) / max(1, n // 5 - n // 10)), (sum(rss[-(n // 10) or -1:]) / max(1, n // 10))
print(f"loadtest rc={rc}: {d['requests']} requests, {d['ok']} ok, {d['failed']} failed, 429s {d.get('rate_limited_429', 0)}, "
      f"checked alone {d['checked_alone']}, mismatches {d['mismatches_vs_alone']}, {d['window_throughput_tokens_per_s']:.0f} tok/s; "
      f"server RSS {first / 1024:.0f} MiB early (10-20% of the run) -> {last / 1024:.0f} MiB at the end, max {max(rss) / 1024:.0f} MiB ({n} samples)")
PY
