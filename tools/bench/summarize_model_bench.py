#!/usr/bin/env python3
"""Folds the outputs of tools/bench/run_model_gpu.sh (the stage folders under /tmp/res, or the unpacked $OUT/*.tgz)
into one compact JSON with ratios against the transformers baseline of the same run, and prints the markdown table
of tools/bench/README.md. Usage: summarize_model_bench.py RES_DIR OUT_JSON"""
import json
import os
import re
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "profile"))
from kernel_categories import category  # noqa: E402

res, out_path = sys.argv[1], sys.argv[2]


def load(*p):
    path = os.path.join(res, *p)
    return json.load(open(path)) if os.path.exists(path) else None


def rows(run):
    return {r["batch"]: r for r in run["results"]} if run else {}


def trace(file, steps):
    path = os.path.join(res, "profile", file)
    if not os.path.exists(path):
        return None
    lines = [l.rstrip("\n").split("\t") for l in open(path)][1:]
    total_ns = sum(int(l[1]) for l in lines)
    cats = defaultdict(lambda: [0, 0])
    for count, ns, name in lines:
        c = cats[category(name)]
        c[0] += int(count)
        c[1] += int(ns)
    return {
        "steps": steps,
        "gpu_us_per_step": round(total_ns / steps / 1e3, 1),
        "kernels_per_step": round(sum(int(l[0]) for l in lines) / steps, 1),
        "by_category": {k: {"kernels_per_step": round(v[0] / steps, 1), "us_per_step": round(v[1] / steps / 1e3, 1)}
                        for k, v in sorted(cats.items(), key=lambda kv: -kv[1][1])},
        "top_kernels": [{"count": int(c), "ms": round(int(ns) / 1e6, 2), "name": n[:100]} for c, ns, n in lines[:6]],
    }


ours, graph, int4, hf = load("bench", "ours.json"), load("bench", "ours-graph.json"), load("profile", "ours-int4-graph.json"), load("hf", "hf.json")
summary = {
    "gpu": open(os.path.join(res, "build", "gpu.txt")).read().strip() if os.path.exists(os.path.join(res, "build", "gpu.txt")) else None,
    "commands": {k: v["command"] for k, v in (("ours", ours), ("ours_cuda_graph", graph), ("int4_cuda_graph", int4), ("transformers", hf)) if v},
    "transformers": {k: hf[k] for k in ("torch", "transformers", "kernels", "cache", "dtype")} if hf else None,
    "rows": [],
}
keys = ("ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s", "ms_per_token", "peak_gpu_mib", "device_argmax_mismatches")
for b in sorted(rows(graph)):
    h = rows(hf).get(b, {})
    row = {"batch": b}
    for label, run in (("ours", ours), ("ours_cuda_graph", graph), ("int4_cuda_graph", int4)):
        r = rows(run).get(b)
        if r:
            row[label] = {k: (round(r[k], 2) if isinstance(r[k], float) else r[k]) for k in keys}
    row["transformers"] = {k: round(v, 2) for k, v in h.items() if isinstance(v, (int, float)) and k not in ("batch", "prompt", "new")}
    g = rows(graph)[b]
    if h:
        row["ratios_vs_transformers_cuda_graph"] = {
            "decode": round(g["decode_tokens_per_s"] / h["graph_decode_tokens_per_s"], 2),
            "prefill": round(g["prefill_tokens_per_s"] / h["prefill_tokens_per_s"], 2),
        }
    row["same_tokens_with_and_without_cuda_graph"] = rows(ours)[b]["last_row_tokens"] == g["last_row_tokens"] if ours else None
    summary["rows"].append(row)
kernels = load("kernels", "kernels-h200.json")
if kernels:
    def pick(kernel, impl, dtype, B, S=None):
        for r in kernels["results"]:
            if r["kernel"] == kernel and r["impl"] == impl and r.get("dtype") == dtype and r["B"] == B and (S is None or r.get("S") == S):
                return r
        return None
    summary["kernels"] = {
        "command": kernels["command"],
        "chunkwise_B8_S16384": {d: pick("chunkwise", "ours_tensor_core", d, 8, 16384) for d in ("bfloat16", "float16")},
        "step_bf16_qkv_fp32_state": {f"B{b}": pick("step", "ours_step", "bfloat16", b) for b in (1, 64)},
    }
summary["profile"] = {
    "decode_b1_cuda_graph": trace("kernels-decode-b1.tsv", 265),
    "decode_b16_cuda_graph (incl. two 16-token prompts)": trace("kernels-decode-b16.tsv", 137),
}
ort = os.path.join(res, "profile", "ort-profile-summary.txt")
if os.path.exists(ort):
    summary["ort_node_profile"] = open(ort).read().splitlines()[:6]
acc = os.path.join(res, "accuracy", "summary.txt")
if os.path.exists(acc):
    summary["accuracy_shipped_model"] = [re.sub(r"^\[\d+ s\] ", "", l) for l in open(acc).read().splitlines() if "kjv" in l]
with open(out_path, "w") as f:
    json.dump(summary, f, indent=1)
    f.write("\n")

print("| batch | | TTFT (2,048 tokens) | prefill tok/s | decode tok/s | ms/token | GPU MiB |")
print("|---|---|---|---|---|---|---|")
for row in summary["rows"]:
    for label in ("transformers", "ours", "ours_cuda_graph", "int4_cuda_graph"):
        r = row.get(label)
        if not r:
            continue
        if label == "transformers":
            print(f"| {row['batch']} | transformers eager / CUDA graph | {r['ttft_ms']:.1f} ms | {r['prefill_tokens_per_s']:,.0f} | "
                  f"{r['eager_decode_tokens_per_s']:,.1f} / {r['graph_decode_tokens_per_s']:,.1f} | {r['eager_ms_per_token']:.2f} / {r['graph_ms_per_token']:.2f} | {r['peak_gpu_mib']:,.0f} (torch) |")
        else:
            print(f"| {row['batch']} | {label.replace('_', ' ')} | {r['ttft_ms']:.1f} ms | {r['prefill_tokens_per_s']:,.0f} | {r['decode_tokens_per_s']:,.1f} | "
                  f"{r['ms_per_token']:.3f} | {r['peak_gpu_mib']:,} |")
