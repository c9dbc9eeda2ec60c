"""Kernel time by category from a CUPTI trace of tools/profile/kernel_trace.cc (TSV: count, total_ns, name; one row per
kernel name). Shared by tools/bench/summarize_model_bench.py and tools/bench/summarize_roofline.py."""
from collections import defaultdict


def category(name):
    """The part of the model a kernel belongs to, by its (mangled) name."""
    if "LinearDecodeMma" in name or "LinearSplit" in name or "LinearRowDot" in name:
        return "projections (ours, ai.xlstm::Linear)"
    if "matmul_4bits" in name or "MatMulNBits" in name or "dequantize" in name.lower():
        return "projections (ORT MatMulNBits, int4)"
    if any(s in name for s in ("nvjet", "splitK", "cutlass", "dot_kernel", "reduce_1Block", "transpose_readWrite", "xmma_gemm", "gemv", "gemmk1")):
        return "projections (cuBLAS)"
    if "MLstmStep" in name:
        return "mLSTM step (ours)"
    if "MLstmChunkwise" in name:
        return "mLSTM chunkwise (ours)"
    if "fused_fw" in name:
        return "gates / SwiGLU / head norm (ours, fused)"
    if "LayerNorm" in name or "RMSNorm" in name:
        return "residual + RMSNorm (ORT)"
    if "Split" in name:
        return "Split of q/k/v/o (ORT)"
    return "other element-wise (ORT)"


def read(path):
    """[(count, ns, name)] of a trace file."""
    rows = []
    with open(path) as f:
        next(f)
        for line in f:
            count, ns, name = line.rstrip("\n").split("\t", 2)
            rows.append((int(count), int(ns), name))
    return rows


def by_category(rows, calls=1.0):
    """{category: (kernels, µs)} per call (rows divided by `calls`), largest first."""
    cats = defaultdict(lambda: [0.0, 0.0])
    for count, ns, name in rows:
        c = cats[category(name)]
        c[0] += count / calls
        c[1] += ns / calls / 1e3
    return dict(sorted(((k, (v[0], v[1])) for k, v in cats.items()), key=lambda kv: -kv[1][1]))
