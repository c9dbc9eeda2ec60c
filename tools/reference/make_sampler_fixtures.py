#!/usr/bin/env python3
"""Sampler fixtures: transformers' sampling distribution after its logits processors, for several settings.

Usage:
    python tools/reference/make_sampler_fixtures.py --out FILE

For each case (a GenerationConfig: temperature, top_k, top_p, min_p, repetition_penalty) and each of its rows
(a logits vector over V ids and the ids seen so far), the file holds what `generate(do_sample=True)` draws from:
`softmax(processors(seen_ids, logits))`, where `processors` is the list `generate` builds for that config
(GenerationMixin._get_logits_processor, in its order: repetition penalty, temperature, top-k, top-p, min-p), and
the draw is `torch.multinomial` of that vector. The processor list is also rebuilt by hand from the classes
(RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper)
and must give the same scores.

Rows are redrawn until no id lies within a hair of a cut (top-k gap, top-p cumulative sum, min-p ratio), so a
correct float32 implementation keeps exactly the same ids. A float64 mirror of the steps checks the fixture and
measures how far three plausible bugs move the probabilities (ignoring the temperature, applying it after top-p,
dividing negative logits in the repetition penalty); each must move some case by far more than rounding.

Format (safetensors; CASE has no dots):
    CASE.logits    float32 [R, V]   the logits (negative values included)
    CASE.seen_ids  int64   [R, S]   the ids seen so far (prompt and output; repeats included)
    CASE.probs     float32 [R, V]   transformers' probabilities before the draw (0 where a processor removed the id)
Header: format = xlstm-sampler-reference-v1, vocab, cases (JSON: name, params, row kinds, processors, margins,
plant distances), seed, transformers_version, torch_version.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference as mr  # noqa: E402

FORMAT = "xlstm-sampler-reference-v1"
VOCAB = 500
SEEN = 16

# name -> (params, row kinds). Absent params are off: temperature 1, top_k 0 (transformers' GenerationConfig
# would otherwise default to 50), top_p 1, min_p None, repetition_penalty 1.
CASES = {
    "plain": (dict(), ["typical", "negative"]),
    "temp_low": (dict(temperature=0.7), ["typical", "flat"]),
    "temp_high": (dict(temperature=1.5), ["peaked", "typical"]),
    "penalty": (dict(repetition_penalty=1.3), ["negative", "typical"]),
    "penalty_temp": (dict(repetition_penalty=1.3, temperature=0.8), ["negative", "peaked"]),
    "top_k": (dict(top_k=10), ["typical", "flat"]),
    "top_k_temp": (dict(top_k=40, temperature=1.2), ["flat", "typical"]),
    "top_p": (dict(top_p=0.9), ["typical", "peaked"]),
    "top_p_temp_low": (dict(top_p=0.8, temperature=0.7), ["typical", "flat"]),
    "top_p_temp_high": (dict(top_p=0.95, temperature=1.5), ["typical", "negative"]),
    "top_p_tiny": (dict(top_p=0.01), ["flat", "typical"]),
    "min_p": (dict(min_p=0.1), ["typical", "flat"]),
    "min_p_temp": (dict(min_p=0.05, temperature=1.3), ["flat", "typical"]),
    "top_k_top_p": (dict(top_k=30, top_p=0.7, temperature=0.8), ["flat", "typical"]),
    "all_a": (dict(repetition_penalty=1.2, temperature=0.9, top_k=50, top_p=0.9, min_p=0.05), ["negative", "typical"]),
    "all_b": (dict(repetition_penalty=1.1, temperature=1.3, top_k=20, top_p=0.95, min_p=0.02), ["flat", "negative"]),
}

# a correct float32 implementation and transformers differ by rounding only (~1e-6 on cumulative sums and ratios);
# an id this close to a cut could fall on either side
TOPK_GAP = 1e-3      # between the k-th and (k+1)-th tempered logit
TOPP_GAP = 2e-5      # between a cumulative probability (of the ids above) and top_p
MINP_GAP = 1e-4      # relative, between p/p_max and min_p


def full_params(p: dict) -> dict:
    return {"temperature": float(p.get("temperature", 1.0)), "top_k": int(p.get("top_k", 0)),
            "top_p": float(p.get("top_p", 1.0)), "min_p": p.get("min_p"),
            "repetition_penalty": float(p.get("repetition_penalty", 1.0))}


def make_row(kind: str, seed: int):
    """A logits row over VOCAB ids shaped like a language model's: most ids well below zero, a tail of likely ones."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(VOCAB, generator=g, dtype=torch.float64) * 2.5 - 2.0
    head = torch.randperm(VOCAB, generator=g)[:30]
    x[head] += torch.empty(30, dtype=torch.float64).exponential_(1.0, generator=g) * 4.0
    if kind == "peaked":
        x[int(torch.argmax(x))] += 6.0
    elif kind == "flat":
        x = torch.randn(VOCAB, generator=g, dtype=torch.float64) * 0.8 + 0.5
    elif kind == "negative":
        # every logit below zero: the penalty multiplies the likely ids too
        x = x - (float(x.max()) + 0.3 + 1.7 * float(torch.rand(1, generator=g, dtype=torch.float64)))
    elif kind != "typical":
        raise ValueError(kind)
    x = x.float()
    # seen ids: six of the twelve most likely (the penalty must matter), six others, four repeats
    top = torch.argsort(x, descending=True)[:12]
    pick = top[torch.randperm(12, generator=g)[:6]]
    others = torch.randint(0, VOCAB, (6,), generator=g)
    seen = torch.cat([pick, others])
    seen = torch.cat([seen, seen[torch.randperm(12, generator=g)[:4]]])
    seen = seen[torch.randperm(SEEN, generator=g)]
    return x, seen.to(torch.int64)


def generation_config(p: dict):
    from transformers import GenerationConfig

    fp = full_params(p)
    return GenerationConfig(do_sample=True, num_beams=1, temperature=fp["temperature"], top_k=fp["top_k"],
                            top_p=fp["top_p"], min_p=fp["min_p"], repetition_penalty=fp["repetition_penalty"],
                            eos_token_id=None, pad_token_id=1, bos_token_id=0, max_new_tokens=1)


def tiny_model():
    """A one-block xLSTM, only for GenerationMixin's processor list (never run)."""
    from transformers import xLSTMConfig, xLSTMForCausalLM

    mr.disable_hf_init()
    cfg = xLSTMConfig(vocab_size=VOCAB, hidden_size=64, embedding_dim=64, num_heads=2, num_blocks=1,
                      num_hidden_layers=1, qk_dim_factor=1.0, v_dim_factor=1.0, chunk_size=16)
    return xLSTMForCausalLM(cfg).eval()


def generate_processors(model, gc, ids, log):
    """The list generate() builds: (list, description) or (None, reason)."""
    import torch
    from transformers import LogitsProcessorList

    try:
        cfg = gc
        try:
            prep = model._prepare_generation_config(gc)
            cfg = prep[0] if isinstance(prep, tuple) else prep
        except Exception as e:  # noqa: BLE001
            log(f"[warn] _prepare_generation_config: {type(e).__name__}: {e}")
        try:
            sig = inspect.signature(model._prepare_special_tokens)
            kw = {}
            if "kwargs_has_attention_mask" in sig.parameters:
                kw["kwargs_has_attention_mask"] = True
            if "device" in sig.parameters:
                kw["device"] = torch.device("cpu")
            model._prepare_special_tokens(cfg, **kw)
        except Exception as e:  # noqa: BLE001
            log(f"[warn] _prepare_special_tokens: {type(e).__name__}: {e}")
        sig = inspect.signature(model._get_logits_processor)
        offer = {"generation_config": cfg, "input_ids_seq_length": ids.shape[1], "encoder_input_ids": ids,
                 "prefix_allowed_tokens_fn": None, "logits_processor": LogitsProcessorList(),
                 "device": torch.device("cpu"), "model_kwargs": {}, "negative_prompt_ids": None,
                 "negative_prompt_attention_mask": None}
        kw = {k: v for k, v in offer.items() if k in sig.parameters}
        procs = model._get_logits_processor(**kw)
        return procs, f"_get_logits_processor{sig}"
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def manual_processors(p: dict):
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import (MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    fp = full_params(p)
    procs = LogitsProcessorList()
    if fp["repetition_penalty"] != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=fp["repetition_penalty"]))
    if fp["temperature"] != 1.0:
        procs.append(TemperatureLogitsWarper(fp["temperature"]))
    if fp["top_k"] != 0:
        procs.append(TopKLogitsWarper(top_k=fp["top_k"], min_tokens_to_keep=1))
    if fp["top_p"] < 1.0:
        procs.append(TopPLogitsWarper(top_p=fp["top_p"], min_tokens_to_keep=1))
    if fp["min_p"] is not None:
        procs.append(MinPLogitsWarper(min_p=fp["min_p"], min_tokens_to_keep=1))
    return procs


def mirror(x, seen, p: dict, variant: str = "correct"):
    """The steps in float64, one row: returns (probs, margins). variant: correct, no_temperature,
    temperature_after_top_p, penalty_divides_negatives (the planted bugs the tests must catch)."""
    import torch

    fp = full_params(p)
    s = x.double().clone()
    r = fp["repetition_penalty"]
    if r != 1.0:
        idx = torch.unique(seen)
        v = s[idx]
        if variant == "penalty_divides_negatives":
            v = v / r
        else:
            v = torch.where(v < 0, v * r, v / r)
        s[idx] = v
    t = 1.0 if variant == "no_temperature" else fp["temperature"]
    late = variant == "temperature_after_top_p"
    if not late:
        s = s / t
    margins = {}
    keep = torch.ones_like(s, dtype=torch.bool)
    order = torch.argsort(s, descending=True, stable=True)
    if fp["top_k"]:
        k = min(fp["top_k"], s.numel())
        keep[order[k:]] = False
        if k < s.numel():
            margins["top_k_gap"] = float(s[order[k - 1]] - s[order[k]])
    if fp["top_p"] < 1.0:
        e = torch.where(keep, torch.exp(s - s.max()), torch.zeros_like(s))
        pr = e / e.sum()
        sp = pr[order]
        before = torch.cumsum(sp, 0) - sp
        kept_p = before < fp["top_p"]
        kept_p[0] = True
        drop = order[~kept_p]
        keep[drop] = False
        cand = before[sp > 0]
        margins["top_p_gap"] = float((cand - fp["top_p"]).abs().min())
    if late:
        s = s / fp["temperature"]
    if fp["min_p"] is not None:
        e = torch.where(keep, torch.exp(s - s[keep].max()), torch.zeros_like(s))
        ratio = e / e.max()
        keep &= ratio >= fp["min_p"]
        live = ratio[ratio > 0]
        margins["min_p_gap"] = float(((live - fp["min_p"]).abs() / fp["min_p"]).min())
    e = torch.where(keep, torch.exp(s - s[keep].max()), torch.zeros_like(s))
    return e / e.sum(), margins


def margins_ok(m: dict) -> bool:
    return (m.get("top_k_gap", 1.0) >= TOPK_GAP and m.get("top_p_gap", 1.0) >= TOPP_GAP
            and m.get("min_p_gap", 1.0) >= MINP_GAP)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=4242)
    args = ap.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    facts = mr.check_environment()
    mr.setup_torch()
    try:
        model = tiny_model()
    except Exception as e:  # noqa: BLE001
        print(f"[warn] no model for generate's processor list: {type(e).__name__}: {e}")
        model = None
    checks = mr.Checks()
    tensors, meta = {}, []
    plants = ("no_temperature", "temperature_after_top_p", "penalty_divides_negatives")
    for name, (params, kinds) in CASES.items():
        gc = generation_config(params)
        xs, seens, margins, attempts = [], [], [], []
        for r, kind in enumerate(kinds):
            for attempt in range(64):
                x, seen = make_row(kind, mr.case_seed(args.seed, f"{name}#{r}", attempt))
                _, m = mirror(x, seen, params)
                if margins_ok(m):
                    break
            else:
                checks.note(f"{name} row {r}: no draw clears the cut margins", False, f"{m}")
            xs.append(x)
            seens.append(seen)
            margins.append(m)
            attempts.append(attempt)
        logits = torch.stack(xs)
        seen = torch.stack(seens)
        procs, how = generate_processors(model, gc, seen, print) if model is not None else (None, "no model")
        manual = manual_processors(params)
        with torch.no_grad():
            manual_scores = manual(seen, logits.clone())
            if procs is not None:
                scores = procs(seen, logits.clone())
                same = bool(torch.equal(scores, manual_scores))
                checks.note(f"{name}: generate's processors == the classes in order", same,
                            f"{[type(q).__name__ for q in procs]} vs {[type(q).__name__ for q in manual]}")
                source = "generate"
            else:
                print(f"[warn] {name}: generate's processor list unavailable ({how}); using the classes in order")
                scores = manual_scores
                procs = manual
                source = "classes"
            probs = torch.softmax(scores, dim=-1)
        worst = 0.0
        dist = {v: 0.0 for v in plants}
        for r in range(len(kinds)):
            ref, _ = mirror(logits[r], seen[r], params)
            # float32 softmax against a float64 mirror: relative 1e-5 of the largest probability
            worst = max(worst, float((ref - probs[r].double()).abs().max()))
            for v in plants:
                pv, _ = mirror(logits[r], seen[r], params, v)
                dist[v] = max(dist[v], float((pv - probs[r].double()).abs().max()))
        checks.note(f"{name}: float64 mirror == transformers", worst < 1e-5, f"max |dp| {worst:.2e}")
        tensors[f"{name}.logits"] = logits.contiguous()
        tensors[f"{name}.seen_ids"] = seen.contiguous()
        tensors[f"{name}.probs"] = probs.float().contiguous()
        kept = [int((probs[r] > 0).sum()) for r in range(len(kinds))]
        meta.append({"name": name, "params": full_params(params), "rows": kinds, "attempts": attempts,
                     "processors": [type(q).__name__ for q in procs], "processors_from": source,
                     "kept_ids": kept, "margins": margins, "mirror_max_abs_diff": worst,
                     "plant_max_abs_diff": dist, "negative_logits": int((logits < 0).sum())})
        print(f"[case] {name}: {[type(q).__name__ for q in procs]} from {source}; kept {kept}; margins {margins}; "
              f"plants {({k: round(v, 4) for k, v in dist.items()})}")
    for v in plants:
        best = max(c["plant_max_abs_diff"][v] for c in meta)
        checks.note(f"plant {v} moves some case's probabilities by > 0.01", best > 0.01, f"{best:.3f}")
    md = {"format": FORMAT, "vocab": str(VOCAB), "cases": json.dumps(meta), "seed": str(args.seed),
          "transformers_version": facts["transformers"], "torch_version": facts["torch"],
          "generator": "tools/reference/make_sampler_fixtures.py"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_file(tensors, args.out, metadata=md)
    print(f"[out] {args.out}: {os.path.getsize(args.out)} bytes, {len(tensors)} tensors")
    return checks.exit_code()


if __name__ == "__main__":
    sys.exit(main())
