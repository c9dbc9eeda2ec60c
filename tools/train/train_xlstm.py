#!/usr/bin/env python3
"""Train the small xLSTM shipped in models/ (tokenizer + model + reference), end to end.

Runs on the GPU machine (torch, transformers 5.17 without the `xlstm` package, tokenizers):

    python3 tools/train/prepare_kjv.py --out .gpu/kjv                 # here, deterministic
    python3 tools/train/train_xlstm.py --hparams tools/train/kjv_xlstm.json --data .gpu/kjv \\
        --out /tmp/run/kjv-xlstm --neox-tokenizer .gpu/20B_tokenizer.json \\
        --golden-dir /tmp/run/golden --deadline 560 --smoke

Stages (one process; every stage logs, and the later ones never lose the earlier ones' output):
 1. byte-level BPE tokenizer trained with HF `tokenizers` on train.txt only; saved as
    tokenizer.json (+ tokenizer_config.json / special_tokens_map.json as transformers writes them);
 2. tokenizer golden ids (tools/tokenizer/make_golden.py) for GPT-NeoX-20B's tokenizer and ours;
 3. --smoke: the whole model pipeline on a 3-step model (train, save, reload, reference) so that
    an API problem fails in seconds, not after the training;
 4. training of transformers' `xLSTMForCausalLM` (HF-native kernels, fp32 with TF32 matmuls) on
    random windows of the chapter stream (chapters separated by <|endoftext|>), AdamW, warmup +
    cosine; the number of steps is fixed after timing the first steps so that the schedule ends
    within --train-seconds (or given exactly by --max-steps); held-out validation loss every
    `eval_every` steps, the best weights kept;
 5. save (fp16 safetensors; the tied lm_head.weight removed, as tools/reference does for tied
    checkpoints), reload in float32 from disk, validation loss/perplexity of the stored weights;
 6. reference.safetensors with tools/reference/make_reference.py's functions (forward cases +
    a greedy case from a fixed English prompt), greedy and sampled text;
 7. training_log.csv (the loss curve) and training_summary.json next to the model.

transformers 5.17 notes: `tie_word_embeddings=True` ties nothing (we tie by hand while training and
strip lm_head.weight from the file); `_init_weights` is replaced by our own init (HF's breaks for
weight_mode fused and sets the input-gate bias to -10); the native kernels need fp32.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import tarfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "tokenizer"))
import make_reference as mr  # noqa: E402
import make_fixtures as mf  # noqa: E402
import make_golden as mg  # noqa: E402

T0 = time.time()


def log(msg=""):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def elapsed():
    return time.time() - T0


# --------------------------------------------------------------------------------------------
# data + tokenizer
# --------------------------------------------------------------------------------------------


def read_chapters(path):
    with open(path, encoding="ascii") as f:
        text = f.read()
    docs = [d.strip("\n") for d in text.split("\n\n")]
    return [d + "\n" for d in docs if d]


def train_tokenizer(train_docs, hp_tok, out_dir):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=hp_tok["vocab_size"],
        min_frequency=hp_tok["min_frequency"],
        special_tokens=hp_tok["special_tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(train_docs, trainer=trainer, length=len(train_docs))
    V = tok.get_vocab_size(with_added_tokens=True)
    assert V == hp_tok["vocab_size"], (V, hp_tok["vocab_size"])
    for i, s in enumerate(hp_tok["special_tokens"]):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path)
    canonical = open(path, "rb").read()

    # transformers' files (tokenizer_config.json, special_tokens_map.json if it writes one)
    try:
        from transformers import PreTrainedTokenizerFast

        eot, pad = hp_tok["special_tokens"][0], hp_tok["special_tokens"][1]
        hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=eot, eos_token=eot, unk_token=eot,
                                     pad_token=pad, clean_up_tokenization_spaces=False)
        hf.save_pretrained(out_dir)
        log(f"[tok] transformers wrote: {sorted(os.listdir(out_dir))}")
        # transformers may rewrite tokenizer.json: check that it behaves the same; else keep ours
        from tokenizers import Tokenizer as T2

        t2 = T2.from_file(path)
        probe = ["And God said, Let there be light.\n", "  x<|endoftext|>y\r\n\u00e9", ""]
        same = all(t2.encode(p).ids == tok.encode(p).ids and
                   t2.encode(p, add_special_tokens=False).ids == tok.encode(p, add_special_tokens=False).ids
                   for p in probe)
        same = same and all(hf.encode(p) == tok.encode(p, add_special_tokens=False).ids for p in probe)
        if open(path, "rb").read() != canonical:
            log(f"[tok] transformers rewrote tokenizer.json (behaves the same: {same}); keeping the tokenizers-written file")
            with open(path, "wb") as f:
                f.write(canonical)
        if not same:
            log("[tok] WARNING: transformers' tokenizer encodes differently from tokenizers'")
    except Exception as e:  # noqa: BLE001
        log(f"[tok] transformers tokenizer files failed: {type(e).__name__}: {e}; writing minimal ones")
        eot, pad = hp_tok["special_tokens"][0], hp_tok["special_tokens"][1]
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eot, "eos_token": eot,
                       "unk_token": eot, "pad_token": pad, "clean_up_tokenization_spaces": False}, f, indent=2)
        with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
            json.dump({"bos_token": eot, "eos_token": eot, "unk_token": eot, "pad_token": pad}, f, indent=2)
    return tok


def encode_stream(tok, docs, eos_id):
    encs = tok.encode_batch(docs, add_special_tokens=False)
    out = []
    for e in encs:
        out.extend(e.ids)
        out.append(eos_id)
    return out


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


def build_model(hp, seed):
    import torch
    from transformers import xLSTMConfig, xLSTMForCausalLM

    mr.disable_hf_init()
    cfg = xLSTMConfig(**hp["model"])
    for f in ("qk_dim_factor", "v_dim_factor"):
        prod = cfg.hidden_size * getattr(cfg, f)
        assert prod == int(prod) and int(prod) % 64 == 0 and int(prod) % cfg.num_heads == 0, (f, prod)
    torch.manual_seed(seed)
    model = xLSTMForCausalLM(cfg)
    init_weights(model, hp, seed)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight  # 5.17 does not tie: tie by hand
    return model, cfg


def init_weights(model, hp, seed):
    import torch

    cfg = model.config
    H, NH, NB = int(cfg.hidden_size), int(cfg.num_heads), int(cfg.num_blocks)
    small = math.sqrt(2.0 / (5.0 * H))
    g = torch.Generator().manual_seed(seed)

    def normal(p, std):
        p.copy_(torch.randn(p.shape, generator=g) * std)

    done = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.split(".")
            if name == "backbone.embeddings.weight" or name == "lm_head.weight":
                normal(p, small)
            elif name.endswith("igate_preact.bias"):
                normal(p, hp["init"]["igate_bias_std"])
            elif name.endswith("fgate_preact.bias"):
                lo, hi = hp["init"]["fgate_bias_range"]
                p.copy_(torch.linspace(lo, hi, p.numel()))
            elif name.endswith(("igate_preact.weight", "fgate_preact.weight", "ogate_preact.weight")):
                p.zero_()
            elif name.endswith("out_proj.weight"):
                normal(p, 2.0 / NB / math.sqrt(p.shape[1]))
            elif name.endswith("proj_down.weight"):
                normal(p, 2.0 / NB / math.sqrt(p.shape[1]))
            elif name.endswith((".q.weight", ".k.weight", ".v.weight", ".query.weight", ".key.weight", ".value.weight",
                                "proj_up_gate.weight", "proj_up.weight")):
                normal(p, small)
            elif "norm" in name and leaf[-1] == "weight":
                p.fill_(1.0)
            elif leaf[-1] == "bias":
                p.zero_()
            else:
                raise SystemExit(f"init: no rule for parameter {name} {tuple(p.shape)}")
            done.append(name)
    return done


def count_params(model):
    seen, n = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


def lr_at(step, hp_t, max_steps):
    peak, warm = hp_t["lr"], hp_t["warmup_steps"]
    if step < warm:
        return peak * (step + 1) / warm
    prog = min(1.0, (step - warm) / max(1, max_steps - warm))
    lo = peak * hp_t["min_lr_frac"]
    return lo + 0.5 * (peak - lo) * (1.0 + math.cos(math.pi * prog))


def evaluate(model, data, T, batch=64, max_windows=None):
    """Mean next-token loss over non-overlapping windows of T tokens, each from a fresh state."""
    import torch
    import torch.nn.functional as F

    N = data.numel()
    starts = list(range(0, N - 1, T))
    if max_windows:
        starts = starts[:max_windows]
    full = [s for s in starts if s + T + 1 <= N]
    rest = [s for s in starts if s + T + 1 > N]
    was_training = model.training
    model.eval()
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(full), batch):
            st = torch.tensor(full[i:i + batch], device=data.device)
            idx = st[:, None] + torch.arange(T + 1, device=data.device)[None, :]
            w = data[idx]
            lg = model(input_ids=w[:, :-1], use_cache=False).logits
            tot += float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), w[:, 1:].reshape(-1), reduction="sum"))
            cnt += w[:, 1:].numel()
        for s in rest:
            w = data[s:N][None, :]
            if w.shape[1] < 2:
                continue
            lg = model(input_ids=w[:, :-1], use_cache=False).logits
            tot += float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), w[:, 1:].reshape(-1), reduction="sum"))
            cnt += w[:, 1:].numel()
    if was_training:
        model.train()
    return tot / cnt, cnt


def evaluate_chapters(model, chapters_ids, eos_id, device):
    """Each held-out chapter in one forward call from a fresh state, after an <|endoftext|> token
    (as in the training stream): mean loss over every token of every chapter, incl. its final eos."""
    import torch
    import torch.nn.functional as F

    model.eval()
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for ids in chapters_ids:
            x = torch.tensor([[eos_id] + ids[:-1]], device=device)
            y = torch.tensor([ids], device=device)
            lg = model(input_ids=x, use_cache=False).logits
            tot += float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), y.reshape(-1), reduction="sum"))
            cnt += y.numel()
    return tot / cnt, cnt


def train(model, hp, train_data, val_data, train_seconds, max_steps=None, device="cuda", smoke=False,
          curve=None):
    """Returns a dict of results; loads the best weights (by val loss) into `model`."""
    import torch
    import torch.nn.functional as F

    ht = hp["train"]
    B, T = ht["batch_size"], ht["seq_len"]
    if smoke:
        B = 4
    model.to(device)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": ht["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=ht["lr"], betas=tuple(ht["betas"]), eps=ht["adam_eps"], fused=(device == "cuda"))
    params = decay + no_decay
    gen = torch.Generator(device=device).manual_seed(hp["seed"])
    N = train_data.numel()
    ar = torch.arange(T + 1, device=device)
    eval_windows = 2 if smoke else None

    def batch():
        st = torch.randint(0, N - T - 1, (B,), generator=gen, device=device)
        w = train_data[st[:, None] + ar[None, :]]
        return w[:, :-1], w[:, 1:]

    v0, nv = evaluate(model, val_data, T, max_windows=eval_windows)  # first call: CUDA warm-up
    t_eval0 = time.time()
    v0, nv = evaluate(model, val_data, T, max_windows=eval_windows)
    t_eval = time.time() - t_eval0
    log(f"[train] initial val loss {v0:.4f} over {nv} tokens ({t_eval:.2f}s); B={B} T={T}")
    if curve is not None:
        curve.append({"step": 0, "tokens": 0, "elapsed_s": 0.0, "lr": 0.0, "train_loss": "", "val_loss": v0})
    best = {"val": v0, "step": 0, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    lr_scale = 1.0
    t_start = time.time()
    step = 0
    calib = 5 if smoke else 40
    if max_steps is None and smoke:
        max_steps = 3
    planned = max_steps if max_steps is not None else 10 ** 9
    acc = torch.zeros((), device=device)
    acc_n = 0
    restarts = 0
    t_calib = None
    while step < planned:
        lr = lr_at(step, ht, planned if planned < 10 ** 9 else 10 ** 6) * lr_scale
        for gp in opt.param_groups:
            gp["lr"] = lr
        x, y = batch()
        logits = model(input_ids=x, use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, ht["grad_clip"])
        opt.step()
        acc += loss.detach()
        acc_n += 1
        step += 1
        if step == 10:
            torch.cuda.synchronize()
            t_calib = time.time()
        if max_steps is None and step == calib:
            torch.cuda.synchronize()
            dt = (time.time() - t_calib) / (calib - 10)
            per_step = dt + t_eval / ht["eval_every"]
            left = train_seconds - (time.time() - t_start)
            planned = step + max(1, int(left / per_step * 0.96))
            log(f"[train] {dt * 1000:.1f} ms/step (+{t_eval:.2f}s per eval): max_steps := {planned}")
        do_eval = step % ht["eval_every"] == 0 or step == planned
        if step % ht["log_every"] == 0 or do_eval:
            tl = float(acc) / max(1, acc_n)
            acc.zero_()
            acc_n = 0
            row = {"step": step, "tokens": step * B * T, "elapsed_s": round(time.time() - t_start, 2),
                   "lr": lr, "train_loss": tl, "val_loss": ""}
            if not math.isfinite(tl):
                restarts += 1
                log(f"[train] non-finite train loss at step {step}: back to step {best['step']}, lr x0.5")
                model.load_state_dict(best["state"])
                lr_scale *= 0.5
                opt.state.clear()
                if restarts > 3:
                    break
                continue
            if do_eval:
                v, _ = evaluate(model, val_data, T, max_windows=eval_windows)
                row["val_loss"] = v
                if v < best["val"]:
                    best = {"val": v, "step": step,
                            "state": {k: t.detach().clone() for k, t in model.state_dict().items()}}
                log(f"[train] step {step}/{planned} lr {lr:.2e} train {tl:.4f} val {v:.4f} "
                    f"(ppl {math.exp(v):.2f}) best {best['val']:.4f}@{best['step']} "
                    f"{time.time() - t_start:.0f}s")
            if curve is not None:
                curve.append(row)
        if max_steps is None and time.time() - t_start > train_seconds + 15:
            log(f"[train] wall-clock budget exceeded at step {step}: stopping")
            break
    torch.cuda.synchronize()
    train_time = time.time() - t_start
    model.load_state_dict(best["state"])
    return {"steps": step, "planned_steps": planned, "train_seconds": train_time, "batch_size": B, "seq_len": T,
            "tokens_seen": step * B * T, "best_step": best["step"], "best_val_loss_fp32_tf32": best["val"],
            "initial_val_loss": v0, "lr_restarts": restarts}


def save_checkpoint(model, cfg, out_dir, dtype_name):
    import torch

    model = copy.deepcopy(model).cpu()
    if cfg.tie_word_embeddings:
        # untie for save_pretrained (shared tensors), then strip lm_head.weight from the file
        model.lm_head.weight = torch.nn.Parameter(model.backbone.embeddings.weight.detach().clone())
    model.to(getattr(torch, dtype_name))
    os.makedirs(out_dir, exist_ok=True)
    for fn in ("model.safetensors", "model.safetensors.index.json"):
        if os.path.exists(os.path.join(out_dir, fn)):
            os.remove(os.path.join(out_dir, fn))
    model.save_pretrained(out_dir)
    if cfg.tie_word_embeddings:
        mf.strip_tensor(out_dir, "lm_head.weight", must_equal="backbone.embeddings.weight", log=log)
    log(f"[save] {out_dir}: " + ", ".join(f"{f} {os.path.getsize(os.path.join(out_dir, f))}"
                                          for f in sorted(os.listdir(out_dir))))


# --------------------------------------------------------------------------------------------
# reference + text
# --------------------------------------------------------------------------------------------


def reference_and_text(ckpt_dir, tok, hp, out_file, smoke=False):
    """Reload the stored checkpoint in float32 on the CPU; write reference.safetensors."""
    import torch

    rh = hp["reference"]
    model = mr.load_model(ckpt_dir, device="cpu", log=log)
    specs = ["len1=1", "short=5"] if smoke else rh["cases"]
    cases = [mr.parse_case(s) for s in specs]
    log("[ref] cases " + " ".join(c.spec() for c in cases))
    tensors, meta, checks, cap = mr.build_reference(model, cases, seed=rh["seed"], log=log, fp64_check=not smoke)
    # greedy case from a fixed English prompt
    N = 4 if smoke else rh["greedy_new_tokens"]
    chosen = None
    for text in rh["greedy_prompts"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        prompt = torch.tensor([ids], dtype=torch.int64)
        gids, margins = mr.greedy_manual(model, prompt, N)
        log(f"[ref] prompt {text!r} ({len(ids)} tokens): min top1-top2 margin {min(margins):.4f}")
        if chosen is None or min(margins) > min(chosen[3]):
            chosen = (text, prompt, gids, margins)
        if min(margins) >= rh["greedy_min_margin"]:
            break
    text, prompt, gids, margins = chosen
    hf_ok = None
    try:
        hf = mr.greedy_hf(model, prompt, N, log=log)
        checks.note("greedy generate length == P+N", hf.shape == gids.shape, f"{tuple(hf.shape)}")
        if hf.shape == gids.shape:
            checks.equal("greedy HF generate == manual argmax loop", hf, gids)
            hf_ok = bool((hf == gids).all())
    except Exception as e:  # noqa: BLE001
        checks.note("greedy HF generate ran", False, f"{type(e).__name__}: {e}")
        hf_ok = False
    P = prompt.shape[1]
    full, _ = mr.forward_full(model, gids[:, :-1])
    pred = torch.argmax(full[:, P - 1:], dim=-1)
    checks.equal("greedy one-call argmax == generated tokens", pred, gids[:, P:])
    tensors["greedy.prompt_ids"] = prompt.contiguous()
    tensors["greedy.greedy_ids"] = gids.contiguous()
    meta["cases"].append({"name": "greedy", "kind": "greedy", "prompt_len": P, "new_tokens": N,
                          "min_margin": min(margins), "hf_generate_matches": hf_ok})
    greedy_text = tok.decode(gids[0].tolist(), skip_special_tokens=False)
    import transformers

    mr.save_reference(out_file, tensors, meta, {
        "transformers_version": transformers.__version__, "torch_version": torch.__version__,
        "checkpoint": hp["name"], "greedy_prompt_text": text, "greedy_text": greedy_text})
    log(f"[ref] {out_file}: {os.path.getsize(out_file)} bytes, {len(tensors)} tensors, "
        f"{len(checks.failed)} failed checks")
    for c in checks.failed:
        log(f"[ref] FAILED {c}")
    log(f"[ref] greedy ({N} new tokens, EOS off) from {text!r}: {greedy_text!r}")
    return model, {"prompt": text, "prompt_ids": prompt[0].tolist(), "greedy_ids": gids[0].tolist(),
                   "greedy_text": greedy_text, "min_margin": min(margins), "hf_generate_matches": hf_ok,
                   "checks_failed": [c["check"] for c in checks.failed], "cap_stats": cap,
                   "reference_bytes": os.path.getsize(out_file)}


def samples(model, tok, eos_id, prompts, new_tokens, seed):
    """Longer greedy text (stops at <|endoftext|>) and a seeded sample (T=0.8, top-k 40)."""
    import torch

    out = []
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=False).ids
        for mode in ("greedy", "sample"):
            g = torch.Generator().manual_seed(seed)
            cache = mr.make_cache(model, 1)
            logits = mr.run(model, torch.tensor([ids]), cache)[:, -1]
            gen = []
            for _ in range(new_tokens):
                if mode == "greedy":
                    nxt = int(torch.argmax(logits, -1))
                else:
                    lg = logits[0] / 0.8
                    v, ix = torch.topk(lg, 40)
                    pr = torch.softmax(v, -1)
                    nxt = int(ix[torch.multinomial(pr, 1, generator=g)])
                if nxt == eos_id:
                    break
                gen.append(nxt)
                logits = mr.run(model, torch.tensor([[nxt]]), cache)[:, -1]
            txt = tok.decode(ids + gen, skip_special_tokens=False)
            out.append({"prompt": p, "mode": mode, "new_tokens": len(gen), "text": txt})
            log(f"[sample] {mode} {p!r}: {txt!r}")
    return out


# --------------------------------------------------------------------------------------------


def pack(src_dir, tar_path):
    if not tar_path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(tar_path)), exist_ok=True)
    tmp = tar_path + ".tmp"
    with tarfile.open(tmp, "w") as tf:
        tf.add(src_dir, arcname=os.path.basename(os.path.abspath(src_dir)))
    os.replace(tmp, tar_path)
    log(f"[pack] {src_dir} -> {tar_path} ({os.path.getsize(tar_path)} bytes)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hparams", default=os.path.join(HERE, "kjv_xlstm.json"))
    ap.add_argument("--data", required=True, help="folder with train.txt, val.txt, meta.json (prepare_kjv.py)")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--train-seconds", type=float, default=None, help="override hparams train.train_seconds")
    ap.add_argument("--max-steps", type=int, default=None, help="exact number of steps (reproduces a run's schedule)")
    ap.add_argument("--deadline", type=float, default=560.0, help="seconds for the whole script; training is cut to fit")
    ap.add_argument("--reserve", type=float, default=110.0, help="seconds kept for the stages after training")
    ap.add_argument("--smoke", action="store_true", help="first run the model pipeline on a 3-step model")
    ap.add_argument("--smoke-only", action="store_true")
    ap.add_argument("--neox-tokenizer", default=None, help="20B_tokenizer.json for the golden ids")
    ap.add_argument("--golden-corpus", default=os.path.join(HERE, "..", "..", "tests", "golden", "tokenizer_corpus.json"))
    ap.add_argument("--golden-dir", default=None)
    ap.add_argument("--early-tar", default=None, help="tar the model folder here right after saving")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)

    with open(args.hparams) as f:
        hp = json.load(f)
    facts = mr.check_environment(log=log)
    import tokenizers
    import torch

    facts["tokenizers"] = tokenizers.__version__
    facts["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    log(f"[env] {facts}")
    torch.manual_seed(hp["seed"])
    if hp["train"].get("tf32", True):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    summary = {"name": hp["name"], "hparams": hp, "env": facts}

    # ---- data + tokenizer
    with open(os.path.join(args.data, "meta.json")) as f:
        summary["data"] = {k: v for k, v in json.load(f).items()}
    train_docs = read_chapters(os.path.join(args.data, "train.txt"))
    val_docs = read_chapters(os.path.join(args.data, "val.txt"))
    log(f"[data] {len(train_docs)} train chapters, {len(val_docs)} val chapters")
    tok = train_tokenizer(train_docs, hp["tokenizer"], args.out)
    eos_id = tok.token_to_id(hp["tokenizer"]["special_tokens"][0])
    assert eos_id == hp["model"]["eos_token_id"] == hp["model"]["bos_token_id"]
    assert tok.token_to_id(hp["tokenizer"]["special_tokens"][1]) == hp["model"]["pad_token_id"]
    train_ids = encode_stream(tok, train_docs, eos_id)
    val_ids = encode_stream(tok, val_docs, eos_id)
    val_ch = [e.ids + [eos_id] for e in tok.encode_batch(val_docs, add_special_tokens=False)]
    tchars = sum(len(d) for d in train_docs)
    summary["tokens"] = {"train": len(train_ids), "val": len(val_ids), "train_chars_per_token": tchars / len(train_ids),
                         "tokenizer_sha256": hashlib.sha256(open(os.path.join(args.out, "tokenizer.json"), "rb").read()).hexdigest()}
    log(f"[data] tokens: train {len(train_ids)}, val {len(val_ids)} ({tchars / len(train_ids):.2f} chars/token)")
    log(f"[tok] 'And God said' -> {tok.encode('And God said', add_special_tokens=False).tokens}")

    # ---- golden ids
    if args.golden_dir:
        try:
            if args.neox_tokenizer:
                mg.make_golden(args.neox_tokenizer, args.golden_corpus,
                               os.path.join(args.golden_dir, "neox20b_golden.json"), "neox20b", log=log)
            mg.make_golden(os.path.join(args.out, "tokenizer.json"), args.golden_corpus,
                           os.path.join(args.golden_dir, f"{hp['name']}_golden.json"), hp["name"], log=log)
        except Exception:  # noqa: BLE001
            log("[golden] FAILED:\n" + traceback.format_exc())

    device = args.device
    train_t = torch.tensor(train_ids, dtype=torch.int64, device=device)
    val_t = torch.tensor(val_ids, dtype=torch.int64, device=device)

    # ---- smoke run of the whole model pipeline
    if args.smoke or args.smoke_only:
        try:
            sm_dir = args.out.rstrip("/") + "_smoke"
            model, cfg = build_model(hp, hp["seed"])
            log(f"[smoke] params {count_params(model)}; tied {model.lm_head.weight is model.backbone.embeddings.weight}")
            r = train(model, hp, train_t, val_t, 5, device=device, smoke=True)
            log(f"[smoke] train: {r}")
            save_checkpoint(model, cfg, sm_dir, hp["save_dtype"])
            m32 = mr.load_model(sm_dir, device=device, log=log)
            v, n = evaluate(m32, val_t, hp["train"]["seq_len"], max_windows=2)
            vc, nc = evaluate_chapters(m32, val_ch[:2], eos_id, device)
            log(f"[smoke] reloaded val {v:.4f} ({n} tokens), chapters {vc:.4f} ({nc} tokens)")
            reference_and_text(sm_dir, tok, hp, os.path.join(sm_dir, "reference.safetensors"), smoke=True)
            shutil.rmtree(sm_dir)
            del model, m32
            log("[smoke] OK")
        except Exception:  # noqa: BLE001
            log("[smoke] FAILED:\n" + traceback.format_exc())
            return 3
        if args.smoke_only:
            return 0

    # ---- training
    model, cfg = build_model(hp, hp["seed"])
    nparams = count_params(model)
    summary["params"] = nparams
    log(f"[model] {nparams} parameters (unique); config: {json.dumps(hp['model'])}")
    budget = args.train_seconds if args.train_seconds is not None else hp["train"]["train_seconds"]
    left = args.deadline - elapsed() - args.reserve
    if budget > left:
        log(f"[train] cutting train seconds {budget:.0f} -> {left:.0f} to meet the deadline")
        budget = max(20.0, left)
    curve = []
    res = train(model, hp, train_t, val_t, budget, max_steps=args.max_steps, device=device, curve=curve)
    summary["train"] = res
    log(f"[train] done: {res}")
    with open(os.path.join(args.out, "training_log.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "tokens", "elapsed_s", "lr", "train_loss", "val_loss"])
        w.writeheader()
        for row in curve:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    # ---- save, reload from disk in fp32 (TF32 off), held-out loss of the stored weights
    save_checkpoint(model, cfg, args.out, hp["save_dtype"])
    pack(args.out, args.early_tar)
    del model
    mr.setup_torch(None)  # TF32 off, deterministic algorithms (warn only), seed 0
    torch.set_num_threads(min(16, os.cpu_count() or 1))
    m32 = mr.load_model(args.out, device=device, log=log)
    T = hp["train"]["seq_len"]
    v, n = evaluate(m32, val_t, T)
    vc, nc = evaluate_chapters(m32, val_ch, eos_id, device)
    summary["validation"] = {
        "windows": {"loss": v, "ppl": math.exp(v), "tokens": n, "how": f"non-overlapping windows of {T} tokens, fresh state each"},
        "chapters": {"loss": vc, "ppl": math.exp(vc), "tokens": nc, "how": "each held-out chapter in one call after <|endoftext|>, fresh state"},
        "weights": f"stored {hp['save_dtype']} checkpoint reloaded in float32, fp32 matmuls (TF32 off), {device}",
    }
    log(f"[val] stored {hp['save_dtype']} -> fp32: windows loss {v:.4f} ppl {math.exp(v):.3f} ({n} tokens); "
        f"chapters loss {vc:.4f} ppl {math.exp(vc):.3f} ({nc} tokens)")
    del m32

    # ---- reference (CPU, fp32) + text
    try:
        mcpu, g = reference_and_text(args.out, tok, hp, os.path.join(args.out, "reference.safetensors"))
        summary["reference"] = g
        summary["samples"] = samples(mcpu, tok, eos_id, [hp["reference"]["greedy_prompts"][0], "Jesus said unto them"],
                                     100, hp["seed"])
    except Exception:  # noqa: BLE001
        log("[ref] FAILED:\n" + traceback.format_exc())
    summary["total_seconds"] = elapsed()
    with open(os.path.join(args.out, "training_summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
        f.write("\n")
    log(f"[done] {sorted(os.listdir(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
