#!/usr/bin/env python3
"""mLSTM kernel benchmark on the GPU machine: our CUDA kernels (customops' xlstm_kernel_bench) against
transformers' native mLSTM kernels, timed in the same run, at xLSTM-7b shapes (NH 8, DQK 256, DV 512, chunk 64).

    python3 tools/bench/bench_kernels.py --ours BUILD/xlstm_kernel_bench --out kernels-h200.json [--command "..."]

transformers' native kernels run in float32: `mlstm_chunkwise_native_autograd` (chunkwise, S divisible by the chunk
size) and `mlstm_recurrent_step_native` (decode step, eager and as a captured CUDA graph), from
transformers.models.xlstm.modeling_xlstm without the `xlstm` package (its native path; it fails in bfloat16).
Ours: the tensor-core kernel in bfloat16 and float16, the SIMT kernel in float32, the step kernel in float32 and
bfloat16 (q, k, v); state and gate math always float32. Metrics: ms per call; TFLOP/s by
B·NH·S·(4·DQK·DV + L·(DQK+DV)); GB/s by the minimum traffic (q, k, v, h in the input type, gates, state in and out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys

NH, DQK, DV, L = 8, 256, 512, 64
CHUNKWISE = [(b, s) for b in (1, 8) for s in (1024, 4096, 16384)]
STEPS = (1, 8, 64)


def flops(b: int, s: int) -> float:
    return b * NH * s * (4.0 * DQK * DV + L * (DQK + DV))


def chunk_bytes(b: int, s: int, es: int) -> float:
    return b * NH * (s * (2 * DQK + 2 * DV) * es + s * 8 + 2 * (DQK * DV + DQK + 1) * 4)


def step_bytes(b: int, es: int) -> float:
    return b * NH * (2 * DQK * DV * 4 + 2 * DQK * 4 + 8 + (2 * DQK + 2 * DV) * es + 8)


def time_cuda(torch, fn, reps: int, warmup: int = 1) -> float:
    """Median GPU milliseconds of fn() over reps calls (each bracketed by CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def row(kernel, impl, dtype, b, s, ms, es, reps, timing):
    by = chunk_bytes(b, s, es) if kernel == "chunkwise" else step_bytes(b, es)
    return {"kernel": kernel, "impl": impl, "dtype": dtype, "B": b, "S": s, "ms": round(ms, 6),
            "tflops": round(flops(b, s) / (ms * 1e-3) / 1e12, 3), "gbps": round(by / (ms * 1e-3) / 1e9, 1),
            "reps": reps, "timing": timing}


def bench_hf(log) -> tuple[list[dict], dict]:
    import torch
    import transformers
    from transformers.models.xlstm import modeling_xlstm as mx

    env = {"torch": torch.__version__, "transformers": transformers.__version__,
           "external_xlstm": bool(getattr(mx, "external_xlstm", False))}
    chunk_fn = getattr(mx, "mlstm_chunkwise_native_autograd", None)
    step_fn = getattr(mx, "mlstm_recurrent_step_native", None)
    if chunk_fn is None or step_fn is None:
        raise RuntimeError("transformers' native mLSTM kernels not found (is the `xlstm` package installed?)")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []

    def gates(*shape):
        i = 15 * torch.tanh((-5 + 2 * torch.randn(*shape, device=dev, generator=gen)) / 15)
        f = 15 * torch.tanh((4 + 2 * torch.randn(*shape, device=dev, generator=gen)) / 15)
        return i, f

    with torch.no_grad():
        for b, s in CHUNKWISE:
            q = torch.randn(b, NH, s, DQK, device=dev, generator=gen)
            k = torch.randn(b, NH, s, DQK, device=dev, generator=gen)
            v = torch.randn(b, NH, s, DV, device=dev, generator=gen)
            i, f = gates(b, NH, s)
            c0 = torch.zeros(b, NH, DQK, DV, device=dev)
            n0 = torch.zeros(b, NH, DQK, device=dev)
            m0 = torch.zeros(b, NH, 1, device=dev)

            def call():
                return chunk_fn(q, k, v, i, f, c_initial=c0, n_initial=n0, m_initial=m0,
                                return_last_states=True, eps=1e-6, chunk_size=L)

            reps = 3 if b * s >= 65536 else 5
            ms = time_cuda(torch, call, reps)
            rows.append(row("chunkwise", "hf_native_chunkwise", "float32", b, s, ms, 4, reps, "eager, median"))
            log(f"hf chunkwise B{b} S{s}: {ms:.3f} ms")
            del q, k, v, i, f, c0, n0, m0
            torch.cuda.empty_cache()

        for b in STEPS:
            q = torch.randn(b, NH, DQK, device=dev, generator=gen)
            k = torch.randn(b, NH, DQK, device=dev, generator=gen)
            v = torch.randn(b, NH, DV, device=dev, generator=gen)
            i, f = gates(b, NH, 1)
            c = 0.5 * torch.randn(b, NH, DQK, DV, device=dev, generator=gen)
            n = 0.5 * torch.randn(b, NH, DQK, device=dev, generator=gen)
            m = torch.zeros(b, NH, 1, device=dev)

            def step():
                return step_fn(q, k, v, i, f, c, n, m, eps=1e-6, dtype_state=torch.float32)

            ms = time_cuda(torch, step, 50, warmup=3)
            rows.append(row("step", "hf_native_step", "float32", b, 1, ms, 4, 50, "eager, median"))
            log(f"hf step B{b} eager: {ms:.4f} ms")
            try:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        step()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    step()
                reps = 200
                ms_g = time_cuda(torch, lambda: [graph.replay() for _ in range(reps)], 3) / reps
                rows.append(row("step", "hf_native_step_cudagraph", "float32", b, 1, ms_g, 4, reps, "cuda graph replay, median of 3x200"))
                log(f"hf step B{b} graph: {ms_g:.4f} ms")
            except Exception as e:  # noqa: BLE001 - report and go on
                log(f"hf step B{b} graph capture failed: {e}")
            del q, k, v, i, f, c, n, m
            torch.cuda.empty_cache()
    env["device"] = torch.cuda.get_device_name(0)
    return rows, env


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", required=True, help="path of the xlstm_kernel_bench binary")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--command", default="", help="the exact command that produced this run (recorded in the JSON)")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    ours_run = subprocess.run([args.ours], capture_output=True, text=True)
    sys.stderr.write(ours_run.stderr)
    if ours_run.returncode != 0:
        log(f"xlstm_kernel_bench failed with {ours_run.returncode}")
        return 1
    ours = json.loads(ours_run.stdout)
    rows = list(ours["results"])
    env = {"device": ours["device"], "sm": ours["sm"], "cuda_driver": ours["cuda_driver"], "cuda_runtime": ours["cuda_runtime"]}
    if not args.skip_hf:
        try:
            hf_rows, hf_env = bench_hf(log)
            rows += hf_rows
            env.update({k: v for k, v in hf_env.items() if k != "device"})
        except Exception as e:  # noqa: BLE001 - keep our numbers even if the reference fails
            log(f"transformers' native kernels could not be timed: {e!r}")
            env["hf_error"] = repr(e)
    env["python"] = platform.python_version()

    doc = {
        "generated": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": args.command,
        "env": env,
        "shape": {"NH": NH, "DQK": DQK, "DV": DV, "L": L},
        "flop_count": "B*NH*S*(4*DQK*DV + L*(DQK+DV))",
        "byte_count": "q,k,v,h in the input type + gates (8 B/token/head) + state read and written once in float32",
        "results": rows,
    }
    with open(args.out, "w") as fh:
        json.dump(doc, fh, indent=1)

    print(f"{'kernel':10} {'impl':26} {'dtype':9} {'B':>3} {'S':>6} {'ms':>10} {'TFLOP/s':>8} {'GB/s':>8}")
    for r in sorted(rows, key=lambda r: (r["kernel"], r["B"], r["S"], r["impl"], r["dtype"])):
        print(f"{r['kernel']:10} {r['impl']:26} {r['dtype']:9} {r['B']:>3} {r['S']:>6} {r['ms']:>10.4f} {r['tflops']:>8.2f} {r['gbps']:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
