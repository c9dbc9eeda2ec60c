#!/usr/bin/env bash
# Issue 12, item 5: bf16 fidelity at 7B width against transformers' own bf16, in one run on the GPU machine.
#   (a) a random bf16 checkpoint of xLSTM-7b's width with 2 blocks (make-checkpoint: the 7B preset, --num-blocks 2);
#   (b) transformers' references on the GPU, same cases and inputs: float32 (the usual reference), and bfloat16 as
#       transformers runs a bf16 model by itself (its cache, hence the state between calls, in bf16); and bfloat16 with a
#       float32 cache, the state precision our exports keep (make_reference.py, DTYPES);
#   (c) our bf16 exports (--mlstm-kernels custom, and the standard-op cell) verified on the CUDA EP against each;
#   (d) OUTDIR/bf16-fidelity.txt: relative L2 and max |error| of the forward case's logits, greedy agreement over the
#       new tokens, for ours vs HF-fp32, ours vs HF-bf16 and HF-bf16 vs HF-fp32 (transformers' own gap, for scale).
# Cases: fwd = 1 row x 256 tokens (4 chunks of 64), greedy = a 32-token prompt + 64 new tokens (the fp32 reference draws
# the prompt, redrawn until its top-1/top-2 gaps are >= 0.01; the bf16 ones reuse it: --prompts-from).
#
# Usage (repo root, on the GPU machine, after the staged app was unpacked and customops built with CUDA, as for
# tools/serve/run_serve_gpu.sh):
#   source /tmp/xlstm/env.sh && bash tools/gpu/bf16_fidelity_7b.sh OUTDIR
# Every step logs into OUTDIR/<step>.log and says its exit status; a failed step leaves n/a in the table, the rest goes on.
# Overrides (for a dry run on a small config): CLI, PYTHON, DEVICE (cuda), EXPORT_DTYPE (bf16), CONFIG
# (models/presets/xlstm-7b.json), BLOCKS (2), KERNELS ("custom onnx custom+bf16state"), WORK (/tmp/bf16-fid), FWD_T (256), PROMPT (32),
# NEW (64), F32_STATE (1: also transformers bf16 with a float32 cache).
set -uo pipefail
out=${1:?output folder}; mkdir -p "$out"; out=$(cd "$out" && pwd)
CLI=${CLI:-/tmp/xlstm/.gpu/app/xlstm-onnx}
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
EXPORT_DTYPE=${EXPORT_DTYPE:-bf16}
CONFIG=${CONFIG:-models/presets/xlstm-7b.json}
BLOCKS=${BLOCKS:-2}
KERNELS=${KERNELS:-custom onnx custom+bf16state}
WORK=${WORK:-/tmp/bf16-fid}
FWD_T=${FWD_T:-256}; PROMPT=${PROMPT:-32}; NEW=${NEW:-64}
F32_STATE=${F32_STATE:-1}
SEED=1234
if [[ -z ${XLSTM_CUSTOMOPS_PATH:-} && -f /tmp/cb/libxlstm_customops.so ]]; then export XLSTM_CUSTOMOPS_PATH=/tmp/cb/libxlstm_customops.so; fi
t0=$(date +%s)
: > "$out/progress.txt"
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$out/progress.txt"; }
step() { # step NAME CMD...: runs CMD with its output in $out/NAME.log, says how it ended (OK_RC: other statuses that are results)
  local name=$1; shift
  local s; s=$(date +%s)
  say "$name: start"
  "$@" > "$out/$name.log" 2>&1
  local rc=$?
  if [[ $rc -eq 0 ]]; then say "$name: ok ($(( $(date +%s) - s )) s)"
  elif [[ " ${OK_RC:-} " == *" $rc "* ]]; then say "$name: done, rc=$rc: $OK_RC_MEANS ($(( $(date +%s) - s )) s)"; else say "$name: FAILED rc=$rc ($(( $(date +%s) - s )) s), last lines of $name.log:"; tail -5 "$out/$name.log" | sed 's/^/    /' | tee -a "$out/progress.txt"; fi
  return $rc
}

rm -rf "$WORK"; mkdir -p "$WORK"
ckpt=$WORK/ckpt
say "CLI $CLI; XLSTM_CUSTOMOPS_PATH=${XLSTM_CUSTOMOPS_PATH:-(unset: the library beside the CLI)}; config $CONFIG, $BLOCKS blocks; device $DEVICE; work $WORK"
{ echo "commit $(git rev-parse HEAD 2>/dev/null || echo '?')"
  echo "gpu $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo '?')"; } > "$out/machine.txt"

# (a) the checkpoint: the preset's config with num_blocks = num_hidden_layers = BLOCKS, random bf16 weights
step make-checkpoint "$CLI" make-checkpoint --config "$CONFIG" --num-blocks "$BLOCKS" --dtype bf16 --seed 0 --output "$ckpt"

# (b) transformers' references: fp32 first (it draws the greedy prompt), then bf16 on the same inputs
cases=(--cases "fwd=$FWD_T" "greedy=greedy:$PROMPT+$NEW" --hidden-states --no-fp64 --seed $SEED --device "$DEVICE")
mr=tools/reference/make_reference.py
step ref-fp32 "$PYTHON" $mr --checkpoint "$ckpt" --out "$WORK/ref-fp32.safetensors" --dtype float32 "${cases[@]}"
prompts=(); [[ -f $WORK/ref-fp32.safetensors ]] && prompts=(--prompts-from "$WORK/ref-fp32.safetensors")
step ref-bf16 "$PYTHON" $mr --checkpoint "$ckpt" --out "$WORK/ref-bf16.safetensors" --dtype bfloat16 "${cases[@]}" "${prompts[@]}"
if [[ $F32_STATE == 1 ]]; then
  step ref-bf16-f32state "$PYTHON" $mr --checkpoint "$ckpt" --out "$WORK/ref-bf16-f32state.safetensors" --dtype bfloat16 --cache-dtype float32 "${cases[@]}" "${prompts[@]}"
fi

# (c) ours: bf16 exports (custom ops; the standard-op cell; custom ops with --state-dtype bf16, the state precision
# transformers' own bf16 cache has, m aside), verified against each reference (--atol 1e9: every value inside, the figures are what counts;
# differing greedy ids still make verify exit 1, which is a result here, not a failure of the step)
for k in $KERNELS; do
  flags=(--mlstm-kernels "${k%%+*}"); [[ $k == *+bf16state ]] && flags+=(--state-dtype bf16)   # custom+bf16state: C and n stored in bf16
  step "export-$k" "$CLI" export --checkpoint "$ckpt" --output "$WORK/ours-$k" --dtype "$EXPORT_DTYPE" "${flags[@]}"
  for r in fp32 bf16; do
    [[ -f $WORK/ref-$r.safetensors && -d $WORK/ours-$k ]] || { say "verify-$k-vs-$r: skipped (no export or no reference)"; continue; }
    OK_RC=1 OK_RC_MEANS="values outside the tolerance (greedy ids differ, or a NaN)" step "verify-$k-vs-$r" "$CLI" verify --model "$WORK/ours-$k" --reference "$WORK/ref-$r.safetensors" --device "$DEVICE" --atol 1e9 --rtol 0
  done
done

# (d) transformers' own gaps, then the table
for r in bf16 bf16-f32state; do
  [[ -f $WORK/ref-$r.safetensors && -f $WORK/ref-fp32.safetensors ]] || continue
  step "compare-$r-vs-fp32" "$PYTHON" tools/reference/compare_references.py "$WORK/ref-$r.safetensors" "$WORK/ref-fp32.safetensors" --json "$out/compare-$r-vs-fp32.json"
done

"$PYTHON" - "$out" "$WORK" "$KERNELS" "$EXPORT_DTYPE" "$FWD_T" "$PROMPT" "$NEW" "$CONFIG" "$BLOCKS" "$F32_STATE" > "$out/bf16-fidelity.txt" 2> "$out/table.log" <<'PY'
import json, os, re, struct, sys

out, work, kernels, edtype, fwd_t, prompt, new, config, blocks, f32_state = sys.argv[1:]
prompt, new = int(prompt), int(new)

def metadata(path):
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            return json.loads(f.read(n)).get("__metadata__", {}) or {}
    except OSError:
        return None

def num(word):
    return float(word.replace(",", "."))  # the max-error columns follow the current culture

def verify_row(log):
    """(rel L2, max abs, greedy text) from a verify log: the columns case, check, values, max abs, max rel, outside,
    rel L2, note."""
    path = os.path.join(out, log)
    if not os.path.exists(path):
        return None
    fwd = greedy = None
    for line in open(path, errors="replace"):
        w = line.split()
        if len(w) >= 7 and w[0] == "fwd" and w[1] == "logits":
            fwd = (num(w[6]), num(w[3]))
        if len(w) >= 7 and w[1] == "greedy_ids":
            differing, note = int(w[5]), " ".join(w[7:])
            m = re.search(r"first difference at position (\d+)", note)
            first = int(m.group(1)) - prompt if m else None
            greedy = (int(w[2]) - differing, int(w[2]), first)
    return fwd, greedy

def compare_row(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return None
    res = json.load(open(path))["results"]
    f = next((r for r in res if r["kind"] == "forward"), None)
    g = next((r for r in res if r["kind"] == "greedy"), None)
    return ((f["rel_l2"], f["max_abs"]) if f else None,
            (g["equal"], g["new_tokens"], g["first_diff"]) if g else None)

def cells(row):
    if row is None:
        return ["n/a", "n/a", "n/a"]
    fwd, greedy = row
    a = [f"{fwd[0]:.3e}", f"{fwd[1]:.3e}"] if fwd else ["n/a", "n/a"]
    if greedy:
        eq, n, first = greedy
        a.append(f"{eq}/{n} equal, " + ("none differ" if first is None else f"first differs at new token {first}"))
    else:
        a.append("n/a")
    return a

rows = []
for k in kernels.split():
    cell = {"custom": "custom ops", "onnx": "standard-op cell", "custom+bf16state": "custom ops, bf16 state"}.get(k, k)
    rows.append((f"ours {edtype} ({cell}) vs HF fp32", verify_row(f"verify-{k}-vs-fp32.log")))
    rows.append((f"ours {edtype} ({cell}) vs HF bf16", verify_row(f"verify-{k}-vs-bf16.log")))
rows.append(("HF bf16 vs HF fp32 (transformers' own gap)", compare_row("compare-bf16-vs-fp32.json")))
if f32_state == "1":
    rows.append(("HF bf16, float32 cache, vs HF fp32", compare_row("compare-bf16-f32state-vs-fp32.json")))

machine = {}
if os.path.exists(os.path.join(out, "machine.txt")):
    for line in open(os.path.join(out, "machine.txt")):
        key, _, value = line.strip().partition(" ")
        machine[key] = value.strip() or "?"
print(f"bf16 fidelity at 7B width: {config} with {blocks} blocks, random bf16 weights (make-checkpoint --seed 0)")
print(f"commit {machine.get('commit', '?')}; GPU {machine.get('gpu', '?')}")
for r in ("fp32", "bf16", "bf16-f32state"):
    md = metadata(os.path.join(work, f"ref-{r}.safetensors"))
    if md is None:
        print(f"HF {r}: no reference (see ref-{r}.log)")
        continue
    cases = {c["name"]: c for c in json.loads(md.get("cases", "[]"))}
    g = cases.get("greedy", {})
    print(f"HF {r}: transformers {md.get('transformers_version')}, torch {md.get('torch_version')}, dtype {md.get('dtype')}, "
          f"cache {md.get('cache_dtype')}, {md.get('cuda_device', md.get('device'))}; greedy min top-1/top-2 gap "
          f"{g.get('min_margin', float('nan')):.4f}, generate == manual loop: {g.get('hf_generate_matches')}")
print(f"forward case: 1 x {fwd_t} tokens, every position's logits (after the soft cap); "
      f"greedy: a {prompt}-token prompt + {new} new tokens; rel L2 = ||A - B|| / ||B|| with B the reference side (the second)")
print()
head = ["comparison (A vs B)", "rel L2 logits", "max abs error", f"greedy over {new} new tokens"]
table = [head] + [[name] + cells(row) for name, row in rows]
w = [max(len(r[i]) for r in table) for i in range(len(head))]
print("| " + " | ".join(h.ljust(w[i]) for i, h in enumerate(head)) + " |")
print("|" + "|".join("-" * (x + 2) for x in w) + "|")
for r in table[1:]:
    print("| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |")
PY
say "table: rc=$? ($(wc -l < "$out/bf16-fidelity.txt") lines)"
cat "$out/bf16-fidelity.txt"
say "done"
