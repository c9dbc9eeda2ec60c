#!/usr/bin/env python3
"""Folds the stage folders of tools/bench/run_roofline_gpu.sh (issue 12's run on the H200) into the markdown report
of tools/bench/results/roofline-h200-2026-11-30/README.md: the roofline table (ours, transformers native from the same
lease, the physical limits), the kernel profile per decode step and per prompt call, and the bf16 fidelity table.

    python3 tools/bench/summarize_roofline.py tools/bench/results/roofline-h200-2026-11-30 > report.md

RESULTS holds lease1/<stage>/ (build, bench, variants, best, hf, profile, fidelity, int4, kernels, tests),
lease2/final/ (the second lease: the step kernel after its change) and lease3/segments/ (the third: sequence-parallel
prompts)."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "profile"))
from kernel_categories import by_category, read  # noqa: E402

res = sys.argv[1]

# xLSTM-7b on one H200 (docs/performance.md, "Limits on one H200")
READ_TBPS = 4.17            # measured device read bandwidth
GEMM_TFLOPS = 771.0         # measured bf16 GEMM
WEIGHT_BYTES = 13.32e9      # weights read per decode step (all but the embedding table)
STATE_F32 = 32 * 8 * (256 * 512 + 256) * 4 * 2   # C and n read and written per sequence and step, float32
STATE_BF16 = STATE_F32 / 2
FLOP_PER_TOKEN = 13.46e9


def load(*p):
    path = os.path.join(res, *p)
    return json.load(open(path)) if os.path.exists(path) else None


def row(run, batch):
    return next((r for r in run["results"] if r["batch"] == batch), None) if run else None


def decode_limit(batch, state_bytes):
    return batch / ((WEIGHT_BYTES + batch * state_bytes) / (READ_TBPS * 1e12))


def fmt(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


ours = load("lease1", "bench", "ours.json")
b32 = load("lease1", "bench", "prefill-b32.json")
custom1 = load("lease1", "variants", "linear-custom.json")
best1 = load("lease1", "best", "custom-bf16-state.json")
int4 = load("lease1", "int4", "int4.json")
hf = load("lease1", "hf", "hf.json")
custom2 = load("lease2", "final", "custom-float32.json")
bf16_2 = load("lease2", "final", "custom-bf16.json")
k1 = load("lease1", "kernels", "kernels-h200.json")
k2 = load("lease2", "final", "kernels-h200.json")
seg = load("lease3", "segments", "segments.json")
k3 = load("lease3", "segments", "kernels-h200.json")


def hf_row(batch):
    return next((r for r in hf["results"] if r["batch"] == batch), None) if hf else None


def kernel(k, kern, impl, dtype, B, S):
    if not k:
        return None
    return next((r for r in k["results"] if r["kernel"] == kern and r["impl"] == impl and r["dtype"] == dtype and r["B"] == B and r["S"] == S), None)


print("## The table (issue 12), refilled\n")
print("Decode and prefill in tokens/s, `bench --cuda-graph --prompt-tokens 2048 --new-tokens 256 --reps 3` (medians of 3);")
print("transformers 5.17 native (`tools/bench/hf_baseline.py`, bf16, its cache in bf16, decode replayed as a CUDA graph) in")
print("the same lease. Lease 1: every column but the last two; lease 2 (another machine session): the step kernel after")
print("its change, with our projections (`--linear-kernels custom`, now the default) and float32 or bf16 state; lease 3:")
print("sequence-parallel prompts (custom projections, float32 state; B1 only).\n")
print("| | transformers native | ours, Gemm (lease 1) | ours, custom Linear (lease 1) | ours, custom + bf16 state (lease 1, old step) "
      "| ours, custom (lease 2) | ours, custom + bf16 state (lease 2) | ours, custom + segments (lease 3) | limit (fp32 / bf16 state) | target |")
print("|---|---|---|---|---|---|---|---|---|---|")
targets = {1: "≥ 270", 16: "≥ 3,300", 64: "≥ 7,800", 128: "–"}
for b in (1, 16, 64, 128):
    h = hf_row(b)
    hf_dec = 1000.0 / h["graph_ms_per_token"] * b if h and h.get("graph_ms_per_token") else None
    cells = [fmt(hf_dec, 1)]
    for run in (ours, custom1, best1, custom2, bf16_2, seg):
        r = row(run, b)
        cells.append(fmt(r["decode_tokens_per_s"], 1) if r else "–")
    lim = f"{decode_limit(b, STATE_F32):,.0f} / {decode_limit(b, STATE_BF16):,.0f}"
    print(f"| decode B{b} | " + " | ".join(cells) + f" | {lim} | {targets[b]} |")
for b, p, run_list in ((1, 2048, (ours, custom1, best1, custom2, bf16_2, seg)), (32, 256, (b32, None, None, None, None, None))):
    h = hf_row(b) if p == 2048 else None
    cells = [fmt(h["prefill_tokens_per_s"]) if h else "–"] + [fmt(row(r, b)["prefill_tokens_per_s"]) if row(r, b) else "–" for r in run_list]
    limit = GEMM_TFLOPS * 1e12 / FLOP_PER_TOKEN
    print(f"| prefill B{b} × {p} | " + " | ".join(cells) + f" | ≈ {limit:,.0f} | ≥ 45,000 |")
mem = [row(r, 1)["peak_gpu_mib"] if row(r, 1) else None for r in (ours, custom1, best1, custom2, bf16_2, seg)]
h1 = hf_row(1)
print(f"| GPU MiB at B1 (process) | {fmt(h1['peak_mib']) if h1 and h1.get('peak_mib') else '–'} (torch peak) | "
      + " | ".join(fmt(m) for m in mem) + " | ≈ 13,930 | ≤ 14,200 |")
i1, i16 = row(int4, 1), row(int4, 16)
if i1 and i16:
    print(f"\nint4 (`--quantize int4`, MatMulNBits, lease 1): decode B1 {i1['decode_tokens_per_s']:,.1f}, B16 {i16['decode_tokens_per_s']:,.1f} tok/s, "
          f"prefill B1 × 2048 {i1['prefill_tokens_per_s']:,.0f} tok/s, {i1['peak_gpu_mib']:,} MiB at B1 "
          f"(limit at B1 ≈ {1 / ((3.86e9 + STATE_F32) / (READ_TBPS * 1e12)):,.0f} tok/s for the 3.86 GB of int4 weights and scales a step reads; "
          f"target B1 ≥ 500, B16 ≥ bf16's).")

print("\n## The cell kernels alone (one layer, `xlstm_kernel_bench`, CUDA graph of back-to-back launches)\n")
print("| | lease 1 | lease 2 | lease 3 (B1: 2 segments; one pass beside it) | transformers native fp32 (lease 1) | target |")
print("|---|---|---|---|---|---|")
for B, S, tgt in ((8, 16384, "≤ 10.0 ms"), (1, 16384, "≤ 1.8 ms"), (1, 4096, "–"), (1, 1024, "–")):
    a, b = kernel(k1, "chunkwise", "ours_tensor_core", "bfloat16", B, S), kernel(k2, "chunkwise", "ours_tensor_core", "bfloat16", B, S)
    f = kernel(k1, "chunkwise", "ours_tensor_core", "float16", B, S)
    h = kernel(k1, "chunkwise", "hf_native_chunkwise", "float32", B, S)
    one = kernel(k3, "chunkwise", "ours_tensor_core", "bfloat16", B, S)
    two = kernel(k3, "chunkwise", "ours_tensor_core_segments2", "bfloat16", B, S)
    two16 = kernel(k3, "chunkwise", "ours_tensor_core_segments2", "float16", B, S) or kernel(k3, "chunkwise", "ours_tensor_core", "float16", B, S)
    l3 = (f"{two['ms']:.2f} ms, {two['tflops']:.1f} TFLOP/s (one pass {one['ms']:.2f} ms; fp16 {two16['ms']:.2f} ms)" if two
          else f"{one['ms']:.2f} ms (fp16 {two16['ms']:.2f} ms)" if one else "–")
    print(f"| chunkwise bf16 B{B} S{S} | {a['ms']:.2f} ms, {a['tflops']:.1f} TFLOP/s (fp16 {f['ms']:.2f} ms) | {b['ms']:.2f} ms | "
          f"{l3} | {h['ms']:.1f} ms | {tgt} |")
for B in (1, 8, 64):
    for impl, label in (("ours_step", "float32 state"), ("ours_step_bf16_state", "bf16 state")):
        a, b = kernel(k1, "step", impl, "bfloat16", B, 1), kernel(k2, "step", impl, "bfloat16", B, 1)
        if a and b:
            print(f"| step B{B}, {label} | {a['ms'] * 1e3:.1f} µs, {a['gbps'] / 1e3:.2f} TB/s | {b['ms'] * 1e3:.1f} µs, {b['gbps'] / 1e3:.2f} TB/s | | | |")


def profile_table(title, traces):
    print(f"\n### {title}\n")
    cats = {}
    for label, rows in traces:
        for k, v in rows.items():
            cats.setdefault(k, {})[label] = v
    labels = [l for l, _ in traces]
    print("| µs per call (kernels) | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for k in sorted(cats, key=lambda k: -max(v[1] for v in cats[k].values())):
        print(f"| {k} | " + " | ".join(f"{cats[k][l][1]:,.0f} ({cats[k][l][0]:.0f})" if l in cats[k] else "–" for l in labels) + " |")
    print("| **GPU time** | " + " | ".join(f"**{sum(v[1] for v in rows.values()):,.0f}**" for _, rows in traces) + " |")


def trace_rows(stage, name, lease="lease1"):
    """A CUPTI trace's rows (count, ns, kernel), or [] where the run left none."""
    path = os.path.join(res, lease, stage, f"kernels-{name}.tsv")
    return read(path) if os.path.exists(path) else []


def decode_trace(stage, name):
    """Per decode step: the steps are the step kernel's launches over the 32 layers; kernels launched fewer times than
    there are steps belong to the trace's two 16-token prompts and are left out (a prompt GEMM launched more often,
    at B64 the 256x128 tile's 3 a layer, stays in: about 0.25 ms a step there)."""
    rows = trace_rows(stage, name)
    steps = sum(c for c, _, n in rows if "MLstmStep" in n) / 32
    return by_category([r for r in rows if r[0] >= steps], steps) if steps else {}


def prompt_call(stage, name, decode_step, lease="lease1"):
    """Per prompt call: a prefill trace holds 2 prompt calls and 6 uncaptured decode steps (the bench's warm-up and its
    one timed step); decode_step is a step's categories at the same batch, subtracted 6 times."""
    total = by_category(trace_rows(stage, name, lease))
    return {k: (max(0.0, (total.get(k, (0.0, 0.0))[0] - 6 * decode_step.get(k, (0.0, 0.0))[0]) / 2),
                max(0.0, (total.get(k, (0.0, 0.0))[1] - 6 * decode_step.get(k, (0.0, 0.0))[1]) / 2))
            for k in set(total) | set(decode_step)}


print("\n## Kernel profile (CUPTI, `tools/profile/kernel_trace.cc`, lease 1)")
d1, d16, d64 = decode_trace("profile", "decode-b1"), decode_trace("profile", "decode-b16"), decode_trace("profile", "decode-b64")
d1_custom = decode_trace("variants", "decode-b1-linear-custom")
profile_table("Decode, per step (CUDA graphs)", [
    ("B1 Gemm", d1),
    ("B1 custom Linear", d1_custom),
    ("B16 Gemm", d16),
    ("B16 custom + bf16 state", decode_trace("best", "decode-b16-custom-bf16-state")),
    ("B64 Gemm", d64),
    ("B64 bf16 state (old step)", decode_trace("variants", "decode-b64-bf16-state")),
])
d32 = {k: tuple((d16.get(k, (0.0, 0.0))[i] + d64.get(k, (0.0, 0.0))[i]) / 2 for i in (0, 1)) for k in set(d16) | set(d64)}
profile_table("A prompt call (Gemm export, no CUDA graph): the trace's two calls less its 6 decode steps (B32: the mean of the B16 and B64 steps)",
              [("B1 × 2048", prompt_call("profile", "prefill-b1", d1)), ("B32 × 256", prompt_call("profile", "prefill-b32", d32)),
               ("B1 × 2048, custom + segments (lease 3)", prompt_call("segments", "prefill-b1-segments", d1_custom, "lease3"))])

fid = os.path.join(res, "lease1", "fidelity", "fid", "bf16-fidelity.txt")
if os.path.exists(fid):
    print("\n## bf16 fidelity at 7B width (`tools/gpu/bf16_fidelity_7b.sh`, lease 1)\n")
    print(open(fid).read())
