#!/usr/bin/env python3
"""Summarizes ONNX Runtime profiles (SessionOptions.EnableProfiling; `xlstm-onnx bench --profile PREFIX`): calls, nodes
per call, which execution provider ran each node (a CPU node in a CUDA session is a fallback), and host time per op
type. Node times here are host-side (launch) times on the CUDA EP, not GPU times: see tools/profile/kernel_trace.cc."""
import collections
import json
import sys

for path in sys.argv[1:]:
    events = json.load(open(path))
    runs = [e for e in events if e.get("name") == "model_run"]
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    providers = collections.Counter(e["args"].get("provider", "?") for e in nodes)
    print(f"{path}: {len(runs)} calls, {len(nodes)} node executions, {len(nodes) / max(1, len(runs)):.1f} per call")
    print("providers: " + ", ".join(f"{p} {n}" for p, n in providers.most_common()))
    cpu = collections.Counter(e["args"].get("op_name", "?") for e in nodes if e["args"].get("provider") == "CPUExecutionProvider")
    print("CPU nodes by op: " + (", ".join(f"{o} {n}" for o, n in cpu.most_common()) or "none"))
    by_op = collections.defaultdict(lambda: [0, 0])
    for e in nodes:
        s = by_op[e["args"].get("op_name", "?")]
        s[0] += 1
        s[1] += e.get("dur", 0)
    print(f"{'op':<28}{'count':>8}{'per call':>10}{'host us':>12}{'us each':>10}")
    for op, (n, us) in sorted(by_op.items(), key=lambda kv: -kv[1][1]):
        print(f"{op:<28}{n:>8}{n / max(1, len(runs)):>10.1f}{us:>12}{us / n:>10.1f}")
    run_us = sorted(e["dur"] for e in runs)
    if run_us:
        print(f"model_run host us: min {run_us[0]}, median {run_us[len(run_us) // 2]}, max {run_us[-1]}")
