#!/usr/bin/env python3
"""Add transformers' hidden states to an existing reference file, leaving everything else as it was.

Usage:
    python tools/reference/add_hidden_states.py --checkpoint DIR --reference FILE --out FILE [--cases NAME ...]

For each chosen forward case (default: every forward case) the case's stored input_ids go through one forward call
with a fresh float32 cache (make_reference.forward_hidden), which records the embedding output, each block's output
and the normed output. The recomputed logits and final states must equal the stored ones (they come from the same
deterministic computation; any difference is reported and fails the run). transformers' own
`output_hidden_states=True` tuple decides the order (make_reference.add_hidden_states), and NAME.hidden_states.K are
added. Every stored tensor and header field is copied unchanged; the header gains `hidden_states`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference as mr  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--reference", required=True, help="existing reference.safetensors")
    ap.add_argument("--out", required=True, help="file to write (may equal --reference)")
    ap.add_argument("--cases", nargs="*", default=None, help="forward cases to add hidden states to (default: all)")
    args = ap.parse_args(argv)

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    mr.check_environment()
    mr.setup_torch()
    model = mr.load_model(args.checkpoint)
    with safe_open(args.reference, framework="pt") as f:
        header = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "hidden_states" in header:
        raise SystemExit(f"{args.reference} already holds hidden states")
    cases = json.loads(header["cases"])
    forward = [c["name"] for c in cases if c["kind"] == "forward"]
    chosen = forward if args.cases is None else [c for c in forward if c in set(args.cases)]
    missing = sorted(set(args.cases or []) - set(forward))
    if missing:
        print(f"[cases] not forward cases of this file, skipped: {missing}")
    if not chosen:
        raise SystemExit(f"no forward case of {args.reference} chosen")
    print(f"[cases] hidden states for {chosen}")
    checks = mr.Checks()
    ids_by_case, parts_by_case = {}, {}
    for name in chosen:
        ids = tensors[f"{name}.input_ids"]
        logits, states, parts = mr.forward_hidden(model, ids)
        checks.close(f"{name} recomputed logits == stored logits (bit for bit)", logits, tensors[f"{name}.logits"], rel=0.0)
        for li, st in enumerate(states):
            for nm, x in zip("Cnm", st):
                checks.close(f"{name} recomputed state.{li}.{nm} == stored (bit for bit)", x, tensors[f"{name}.state.{li}.{nm}"], rel=0.0)
        ids_by_case[name] = ids
        parts_by_case[name] = parts
    before = set(tensors)
    hidden_meta = mr.add_hidden_states(model, tensors, ids_by_case, parts_by_case, checks)
    added = sorted(set(tensors) - before)
    header["hidden_states"] = json.dumps(hidden_meta)
    save_file({k: v.contiguous() for k, v in tensors.items()}, args.out, metadata=header)
    print(f"[out] {args.out}: {os.path.getsize(args.out)} bytes, {len(added)} tensors added "
          f"({sum(tensors[k].numel() * 4 for k in added)} bytes of float32)")
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
