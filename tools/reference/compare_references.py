#!/usr/bin/env python3
"""Compare two reference files (tools/reference/README.md) made from the same checkpoint and inputs, e.g.
transformers in bfloat16 (A) against transformers in float32 (B): B is the reference side.

Per forward case in both files (NAME.logits):
    forward NAME logits rel_l2=R max_abs=M top1_equal=K/N
        R = ||A - B||_2 / ||B||_2 over all the case's logits, M = max |A - B|, K of N positions with the same argmax
    forward NAME states rel_l2_max=R (worst over every NAME.state.L.{C,n,m})
Per greedy case in both files (NAME.greedy_ids, the same NAME.prompt_ids):
    greedy NAME equal=K/N first_diff=J
        K of the N new tokens equal position by position, J = the first differing new token (0-based), or none

No torch, no numpy: the safetensors files are read with the standard library (F32, F64 and I64 tensors).
Exit status 0 when the files were compared (whatever the differences), 1 on unusable inputs (the reason printed).

Usage: python3 tools/reference/compare_references.py A.safetensors B.safetensors [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from array import array

_CODES = {"F32": "f", "F64": "d", "I64": "q"}


class Reference:
    """A safetensors file: its header, read once, and tensors read on demand as flat arrays."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise SystemExit(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", head)
            try:
                self.header = json.loads(f.read(n))
            except ValueError as e:
                raise SystemExit(f"{path}: not a safetensors file (header: {e})") from None
        self.metadata = self.header.pop("__metadata__", {}) or {}
        self.base = 8 + n

    def has(self, name: str) -> bool:
        return name in self.header

    def shape(self, name: str) -> list[int]:
        return list(self.header[name]["shape"])

    def read(self, name: str) -> array:
        info = self.header.get(name)
        if info is None:
            raise SystemExit(f"{self.path}: no tensor {name}")
        code = _CODES.get(info["dtype"])
        if code is None:
            raise SystemExit(f"{self.path}: {name} is {info['dtype']}; this script reads {', '.join(_CODES)}")
        start, end = info["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self.base + start)
            raw = f.read(end - start)
        a = array(code)
        a.frombytes(raw)
        if sys.byteorder != "little":
            a.byteswap()
        if len(a) != math.prod(info["shape"]):
            raise SystemExit(f"{self.path}: {name} holds {len(a)} values; its shape {info['shape']} says {math.prod(info['shape'])}")
        return a

    def cases(self) -> list[str]:
        return sorted({k.split(".", 1)[0] for k in self.header})


def compare_values(a, b) -> dict:
    """rel_l2 = ||a - b|| / ||b|| (sums in double; NaN if a difference is NaN; 0 for equal zeros, inf against
    zeros), max_abs = max |a - b|."""
    if len(a) != len(b):
        raise ValueError(f"{len(a)} values against {len(b)}")
    d2 = r2 = 0.0
    worst = 0.0
    nan = False
    for x, y in zip(a, b):
        d = abs(x - y)
        d2 += d * d
        r2 += y * y
        if d != d:
            nan = True
        elif d > worst:
            worst = d
    if nan:
        worst = math.nan
    if d2 != d2:
        rel = math.nan
    elif r2 > 0:
        rel = math.sqrt(d2 / r2)
    else:
        rel = 0.0 if d2 == 0 else math.inf
    return {"rel_l2": rel, "max_abs": worst}


def argmax_rows(v, width: int) -> list[int]:
    """Index of the largest value of each row of `width` values (the first on ties, as torch.argmax)."""
    out = []
    for r in range(len(v) // width):
        row = v[r * width : (r + 1) * width]
        out.append(max(range(width), key=row.__getitem__))
    return out


def greedy_agreement(a: list[int], b: list[int], prompt_len: int) -> dict:
    na, nb = a[prompt_len:], b[prompt_len:]
    if len(na) != len(nb):
        raise ValueError(f"{len(na)} new tokens against {len(nb)}")
    equal = sum(x == y for x, y in zip(na, nb))
    first = next((i for i, (x, y) in enumerate(zip(na, nb)) if x != y), None)
    return {"equal": equal, "new_tokens": len(nb), "first_diff": first}


def fmt(x: float) -> str:
    return f"{x:.3e}"


def compare(a: Reference, b: Reference) -> list[dict]:
    results = []
    for case in a.cases():
        if a.has(f"{case}.logits"):
            key = f"{case}.logits"
            if not b.has(key):
                print(f"skip {case}: {b.path} has no {key}")
                continue
            if a.shape(key) != b.shape(key):
                raise SystemExit(f"{key}: shape {a.shape(key)} in {a.path}, {b.shape(key)} in {b.path}")
            ids = f"{case}.input_ids"
            if a.has(ids) and b.has(ids) and a.read(ids) != b.read(ids):
                raise SystemExit(f"{ids} differ between {a.path} and {b.path}: not the same inputs")
            va, vb = a.read(key), b.read(key)
            r = compare_values(va, vb)
            width = a.shape(key)[-1]
            ta, tb = argmax_rows(va, width), argmax_rows(vb, width)
            same = sum(x == y for x, y in zip(ta, tb))
            res = {"case": case, "kind": "forward", "shape": a.shape(key), **r, "top1_equal": same, "positions": len(ta)}
            print(f"forward {case} logits rel_l2={fmt(r['rel_l2'])} max_abs={fmt(r['max_abs'])} top1_equal={same}/{len(ta)}")
            states = [k for k in a.header if k.startswith(f"{case}.state.") and b.has(k)]
            if states:
                per = {k.split(".", 1)[1]: compare_values(a.read(k), b.read(k))["rel_l2"] for k in sorted(states)}
                worst = max(per, key=lambda k: (per[k] != per[k], per[k]))
                res["states_rel_l2"] = per
                print(f"forward {case} states rel_l2_max={fmt(per[worst])} ({worst})")
            results.append(res)
        if a.has(f"{case}.greedy_ids"):
            key = f"{case}.greedy_ids"
            if not b.has(key):
                print(f"skip {case}: {b.path} has no {key}")
                continue
            pa, pb = a.read(f"{case}.prompt_ids"), b.read(f"{case}.prompt_ids")
            if pa != pb:
                raise SystemExit(f"{case}.prompt_ids differ between {a.path} and {b.path}: the greedy runs are not "
                                 f"comparable (make one with make_reference.py --prompts-from the other)")
            g = greedy_agreement(list(a.read(key)), list(b.read(key)), len(pa))
            first = "none" if g["first_diff"] is None else str(g["first_diff"])
            print(f"greedy {case} equal={g['equal']}/{g['new_tokens']} first_diff={first}")
            results.append({"case": case, "kind": "greedy", "prompt_len": len(pa), **g})
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="reference file A (e.g. transformers bf16)")
    ap.add_argument("b", help="reference file B, the reference side (e.g. transformers fp32)")
    ap.add_argument("--json", default=None, help="also write the results as JSON")
    args = ap.parse_args(argv)
    a, b = Reference(args.a), Reference(args.b)
    for ref in (a, b):
        md = ref.metadata
        print(f"# {ref.path}: dtype {md.get('dtype', 'float32 (not recorded)')}, cache {md.get('cache_dtype', '-')}, "
              f"device {md.get('device', '-')}, checkpoint {md.get('checkpoint', '-')}, transformers {md.get('transformers_version', '-')}")
    results = compare(a, b)
    if not results:
        raise SystemExit(f"{a.path} and {b.path} have no case in common")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": args.a, "b": args.b, "a_metadata": a.metadata, "b_metadata": b.metadata, "results": results},
                      f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
