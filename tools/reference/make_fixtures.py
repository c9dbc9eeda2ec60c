#!/usr/bin/env python3
"""Build the tiny random xLSTM fixtures (HF checkpoints + reference files).

Usage:
    python tools/reference/make_fixtures.py --out DIR [--only NAME ...]

Writes DIR/<model>/{config.json, generation_config.json, model.safetensors (or shards +
model.safetensors.index.json), reference.safetensors} and DIR/manifest.json.

Every parameter is set from a seeded generator (HF's own init zero-inits the gates and
crashes for weight_mode='fused').  The model is saved in its storage dtype and RELOADED
from disk in float32 for the reference computation, so the reference uses exactly the
stored weights.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference as mr  # noqa: E402

# Forward cases whose reference also holds hidden states (NAME.hidden_states.K): the step kernel (len1), the sequence
# kernel alone (short), chunkwise plus a tail (multichunk) or several segments (seg_multi), and a batch. The others
# would triple the files' size for no new path.
HIDDEN_CASES = {"len1", "short", "multichunk", "seg_multi", "batch2"}

# --------------------------------------------------------------------------------------------
# model definitions
# --------------------------------------------------------------------------------------------
# Constraint (docs/numerics.md, "Config pitfalls"): hidden_size*qk_dim_factor and hidden_size*v_dim_factor must be
# multiples of 64, because xLSTMCache rounds the per-head state sizes up to that.

MODELS = {
    # single weights, no bias, untied, f32, chunk 16, default dim factors (like the 7B: DQK != DV)
    "single_basic": dict(
        config=dict(
            vocab_size=100, hidden_size=128, num_hidden_layers=1, num_blocks=1, num_heads=4,
            use_bias=False, tie_word_embeddings=False, weight_mode="single",
            qk_dim_factor=0.5, v_dim_factor=1.0,  # qk 64 (DQK 16), v 128 (DV 32)
            ffn_proj_factor=0.5, ffn_round_up_to_multiple_of=64,  # up 64
            chunk_size=16,
        ),
        dtype="float32", shard=None, seed=101,
    ),
    # fused weights, biases everywhere, bf16 storage, sharded, chunk 8, non-default caps/eps
    "fused_bias": dict(
        config=dict(
            vocab_size=128, hidden_size=64, num_hidden_layers=2, num_blocks=2, num_heads=2,
            use_bias=True, tie_word_embeddings=False, weight_mode="fused",
            qk_dim_factor=1.0, v_dim_factor=1.0,  # qk 64 (DQK 32), v 64 (DV 32)
            ffn_proj_factor=0.5, ffn_round_up_to_multiple_of=64,  # 32 -> up 64
            chunk_size=8, gate_soft_cap=5.0, output_logit_soft_cap=10.0, eps=1e-4, norm_eps=1e-5,
        ),
        dtype="bfloat16", shard="60KB", seed=202,
    ),
    # single, tied embeddings (lm_head.weight NOT in the checkpoint), non-default dim factors and
    # FFN rounding, f16 storage, chunk 32
    "tied_dims": dict(
        config=dict(
            vocab_size=96, hidden_size=64, num_hidden_layers=2, num_blocks=2, num_heads=4,
            use_bias=False, tie_word_embeddings=True, weight_mode="single",
            qk_dim_factor=1.0, v_dim_factor=2.0,  # qk 64 (DQK 16), v 128 (DV 32)
            # 64*1.505 = 96.32 -> HF round_up(96.32, 32) = int(((96.32+31)//32)*32) = 96 (rounds DOWN)
            ffn_proj_factor=1.505, ffn_round_up_to_multiple_of=32,
            chunk_size=32,
        ),
        dtype="float16", shard=None, seed=303, strip_tied_lm_head=True,
    ),
    # single with bias, model-level segmentation (max_inference_chunksize 20 < prompts), chunk 8,
    # DQK > DV
    "segmented": dict(
        config=dict(
            vocab_size=100, hidden_size=64, num_hidden_layers=2, num_blocks=2, num_heads=4,
            use_bias=True, tie_word_embeddings=False, weight_mode="single",
            qk_dim_factor=2.0, v_dim_factor=1.0,  # qk 128 (DQK 32), v 64 (DV 16)
            ffn_proj_factor=2.667, ffn_round_up_to_multiple_of=64,  # 170.688 -> 192
            chunk_size=8, max_inference_chunksize=20,
        ),
        dtype="bfloat16", shard=None, seed=404,
    ),
}

# Scales (in units of the soft cap) of the pre-activation standard deviation.
IGATE_STD_IN_CAPS = 0.5   # i pre-activation std ~ 0.5*cap -> a few % beyond the cap
FGATE_STD_IN_CAPS = 0.45
LOGIT_STD_IN_CAPS = 0.6   # pre-cap logit std ~ 0.6*cap -> ~10% beyond the cap


def init_params(model, seed: int, log=print, logit_std_in_caps: float = LOGIT_STD_IN_CAPS):
    """Set every parameter from a seeded generator. Returns {name: fp32 tensor} as set."""
    import torch

    cfg = model.config
    H = int(cfg.hidden_size)
    NH = int(cfg.num_heads)
    gcap = float(cfg.gate_soft_cap) if cfg.gate_soft_cap is not None else 15.0
    ocap = float(cfg.output_logit_soft_cap) if cfg.output_logit_soft_cap is not None else 30.0
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=g, dtype=torch.float32) * std + mean

    def uniform(shape, lo, hi):
        return torch.rand(shape, generator=g, dtype=torch.float32) * (hi - lo) + lo

    ig_std = IGATE_STD_IN_CAPS * gcap / math.sqrt(H)
    fg_std = FGATE_STD_IN_CAPS * gcap / math.sqrt(H)
    lm_std = logit_std_in_caps * ocap / math.sqrt(H)
    tied = model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()

    values = {}
    for name, p in model.named_parameters():  # tied params appear once
        shape = tuple(p.shape)
        parts = name.split(".")
        leaf_mod, kind = parts[-2], parts[-1]
        if name == "backbone.embeddings.weight":
            # tied: the embedding IS the output head, so give it the head's scale
            v = normal(shape, lm_std if (tied or cfg.tie_word_embeddings) else 1.0)
        elif name == "lm_head.weight":
            v = normal(shape, lm_std)
        elif "norm" in leaf_mod:  # norm_mlstm, norm_ffn, out_norm, multihead_norm
            v = normal(shape, 0.2, 1.0) if kind == "weight" else normal(shape, 0.1)
        elif leaf_mod == "igate_preact":
            v = normal(shape, ig_std) if kind == "weight" else normal(shape, 2.0)
        elif leaf_mod == "fgate_preact":
            v = normal(shape, fg_std) if kind == "weight" else uniform(shape, -2.0, 5.0)
        elif leaf_mod == "ifgate_preact":
            if kind == "weight":
                v = torch.cat([normal((NH, H), ig_std), normal((NH, H), fg_std)], 0)
            else:
                v = torch.cat([normal((NH,), 2.0), uniform((NH,), -2.0, 5.0)], 0)
        elif leaf_mod in ("q", "k", "v", "ogate_preact", "qkv_opreact", "out_proj",
                          "proj_up_gate", "proj_up", "proj_up_gate_z", "proj_down"):
            v = normal(shape, 1.0 / math.sqrt(shape[1])) if kind == "weight" else normal(shape, 0.1)
        else:
            raise RuntimeError(f"no init rule for parameter {name} {shape}")
        assert tuple(v.shape) == shape, (name, v.shape, shape)
        with torch.no_grad():
            p.copy_(v)
        values[name] = v
    if not tied:
        assert "lm_head.weight" in values
    log(f"[init] set {len(values)} parameters (tied lm_head: {tied}); std igate {ig_std:.3f} "
        f"fgate {fg_std:.3f} lm_head {lm_std:.3f}")
    return values, tied


def build_model(name: str, spec: dict, out_dir: str, log=print):
    import torch
    from transformers import xLSTMConfig, xLSTMForCausalLM

    mr.disable_hf_init()
    cfg = xLSTMConfig(**spec["config"])
    # cache/layer size agreement (docs/numerics.md, "Config pitfalls"): products must be multiples of 64
    for f in ("qk_dim_factor", "v_dim_factor"):
        prod = cfg.hidden_size * getattr(cfg, f)
        assert prod == int(prod) and int(prod) % 64 == 0 and int(prod) % cfg.num_heads == 0, (name, f, prod)
    torch.manual_seed(spec["seed"])
    model = xLSTMForCausalLM(cfg)
    model.eval()
    values, tied = init_params(model, spec["seed"], log,
                               spec.get("logit_std_in_caps", LOGIT_STD_IN_CAPS))
    if cfg.tie_word_embeddings and not tied:
        # transformers did not tie lm_head to the embedding: keep the semantics by copying
        log("[warn] tie_word_embeddings=True but transformers did not tie lm_head to the embedding; "
            "copying the embedding into lm_head")
        with torch.no_grad():
            model.lm_head.weight.copy_(model.backbone.embeddings.weight)
        values["lm_head.weight"] = values["backbone.embeddings.weight"]
    dtype = getattr(torch, spec["dtype"])
    model.to(dtype)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    kw = {}
    import inspect

    sig = inspect.signature(model.save_pretrained).parameters
    if "safe_serialization" in sig:
        kw["safe_serialization"] = True
    if spec["shard"]:
        kw["max_shard_size"] = spec["shard"]
    model.save_pretrained(out_dir, **kw)
    files = sorted(os.listdir(out_dir))
    log(f"[save] {out_dir}: {files}")
    if spec["shard"]:
        shards = glob.glob(os.path.join(out_dir, "model-*.safetensors"))
        assert os.path.exists(os.path.join(out_dir, "model.safetensors.index.json")), files
        assert len(shards) >= 2, files
    else:
        assert os.path.exists(os.path.join(out_dir, "model.safetensors")), files
    if spec.get("strip_tied_lm_head") and cfg.tie_word_embeddings:
        strip_tensor(out_dir, "lm_head.weight", must_equal="backbone.embeddings.weight", log=log)
    return values, tied, dtype


def strip_tensor(out_dir, key, must_equal=None, log=print):
    """Remove `key` from a saved checkpoint (single file or sharded), checking first that it is
    bit-identical to `must_equal`. Used to make a conventional tied checkpoint (no lm_head.weight):
    transformers 5.17 never ties xLSTM (_tied_weights_keys=None), so it saves both."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    index = os.path.join(out_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            idx = json.load(f)
        files = sorted(set(idx["weight_map"].values()))
    else:
        idx, files = None, ["model.safetensors"]
    found = False
    all_t = {}
    for fn in files:
        path = os.path.join(out_dir, fn)
        with safe_open(path, "pt") as sf:
            md = sf.metadata() or {}
            tensors = {k: sf.get_tensor(k) for k in sf.keys()}
        all_t.update(tensors)
        if key in tensors:
            found = True
            if must_equal is not None:
                ref = all_t.get(must_equal)
                if ref is None:
                    # look for it in the other files
                    for fn2 in files:
                        with safe_open(os.path.join(out_dir, fn2), "pt") as sf2:
                            if must_equal in sf2.keys():
                                ref = sf2.get_tensor(must_equal)
                assert ref is not None and torch.equal(ref, tensors[key]), f"{key} != {must_equal}"
            del tensors[key]
            save_file(tensors, path, metadata=md)
            log(f"[save] removed {key} from {fn} (bit-identical to {must_equal})")
    assert found, key
    if idx is not None:
        del idx["weight_map"][key]
        with open(index, "w") as f:
            json.dump(idx, f, indent=2, sort_keys=True)
            f.write("\n")


def verify_stored(model, values, dtype, checks: mr.Checks):
    """The fp32-reloaded parameters equal what we set, rounded through the storage dtype."""
    import torch

    sd = dict(model.named_parameters())
    bad = []
    for n, v in values.items():
        want = v.to(dtype).to(torch.float32)
        got = sd.get(n)
        if got is None:
            if n == "lm_head.weight":
                got = model.lm_head.weight
            else:
                bad.append(f"{n}: missing")
                continue
        if not torch.equal(got.detach().cpu(), want):
            bad.append(f"{n}: max diff {float((got.detach().cpu() - want).abs().max())}")
    checks.note("reloaded fp32 parameters == stored values", not bad, "; ".join(bad[:5]))


def checkpoint_keys(out_dir):
    from safetensors import safe_open

    keys = {}
    for f in sorted(glob.glob(os.path.join(out_dir, "*.safetensors"))):
        if os.path.basename(f) == "reference.safetensors":
            continue
        with safe_open(f, "pt") as sf:
            for k in sf.keys():
                sl = sf.get_slice(k)
                keys[k] = {"file": os.path.basename(f), "dtype": str(sl.get_dtype()), "shape": list(sl.get_shape())}
    return keys


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--seed", type=int, default=1234, help="seed for the case inputs")
    args = ap.parse_args(argv)

    facts = mr.check_environment()
    mr.setup_torch()
    mr.describe_hf()
    os.makedirs(args.out, exist_ok=True)
    manifest = {"format": mr.FORMAT_VERSION, "generator": "tools/reference/make_fixtures.py",
                "environment": facts, "models": {}}
    failed = []
    for name, spec in MODELS.items():
        if args.only and name not in args.only:
            continue
        print(f"\n===== {name} =====")
        out_dir = os.path.join(args.out, name)
        values, tied, dtype = build_model(name, spec, out_dir)
        model = mr.load_model(out_dir)
        cfg = model.config
        print(f"[config] {json.dumps({k: getattr(cfg, k) for k in spec['config']})}")
        checks_pre = mr.Checks()
        verify_stored(model, values, dtype, checks_pre)
        cases = mr.default_cases(cfg)
        print("[cases] " + " ".join(c.spec() for c in cases))
        tensors, meta, checks, cap = mr.build_reference(model, cases, seed=args.seed, hidden_cases=HIDDEN_CASES)
        checks.items = checks_pre.items + checks.items
        print(f"[stats] {json.dumps(cap)}")
        for key in ("igate", "logits"):
            fr = cap[key]["frac_beyond_cap"]
            checks.note(f"fraction of {key} beyond the soft cap in (0, 0.5)", fr is not None and 0 < fr < 0.5, f"{fr}")
        ref_path = os.path.join(out_dir, "reference.safetensors")
        mr.save_reference(ref_path, tensors, meta, {"transformers_version": facts["transformers"],
                                                    "torch_version": facts["torch"], "model": name})
        keys = checkpoint_keys(out_dir)
        sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}
        print(f"[files] {sizes}")
        manifest["models"][name] = {
            "storage_dtype": spec["dtype"],
            "max_shard_size": spec["shard"],
            "param_seed": spec["seed"],
            "config_overrides": spec["config"],
            "derived": {
                "qk_dim": int(cfg.hidden_size * cfg.qk_dim_factor),
                "v_dim": int(cfg.hidden_size * cfg.v_dim_factor),
                "dqk": int(cfg.hidden_size * cfg.qk_dim_factor) // cfg.num_heads,
                "dv": int(cfg.hidden_size * cfg.v_dim_factor) // cfg.num_heads,
                "up_proj_dim": int(model.backbone.blocks[0].ffn.up_proj_dim),
                "hf_ties_lm_head_at_construction": tied,
                "lm_head_in_checkpoint": "lm_head.weight" in keys,
            },
            "cases": meta["cases"],
            "hidden_states": meta.get("hidden_states"),
            "cap_stats": cap,
            "checks_passed": len(checks.items) - len(checks.failed),
            "checks_failed": checks.failed,
            "max_abs_logit_diff_stepped_vs_one_call": max(
                [c.get("max_abs_diff", 0.0) for c in checks.items if "logits" in c["check"]
                 and ("step_logits" in c["check"] or "prefill" in c["check"])] or [0.0]),
            "max_abs_state_diff_stepped_vs_one_call": max(
                [c.get("max_abs_diff", 0.0) for c in checks.items if "stepped vs one-call" in c["check"]] or [0.0]),
            "files": sizes,
            "checkpoint_tensors": keys,
        }
        if checks.failed:
            failed.append((name, checks.failed))
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    total = 0
    for root, _, files in os.walk(args.out):
        total += sum(os.path.getsize(os.path.join(root, x)) for x in files)
    print(f"\n[total] {total} bytes under {args.out}")
    if failed:
        print("[FAILED]")
        for name, items in failed:
            for it in items:
                print(f"  {name}: {it}")
        return 1
    print("[ALL CHECKS PASSED]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
