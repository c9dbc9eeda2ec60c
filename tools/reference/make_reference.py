#!/usr/bin/env python3
"""Write a reference file (safetensors) for any Hugging Face xLSTM checkpoint.

The reference is computed with the transformers xLSTM implementation on its HF-native path
(the pip package `xlstm` must NOT be importable), in float32, with an explicit float32
`xLSTMCache`.  See tools/reference/README.md for the file format.

With `--dtype bfloat16` transformers runs the same checkpoint as a bfloat16 model instead (what
`from_pretrained(..., dtype=torch.bfloat16)` gives), with its default cache: see DTYPES below. That is
transformers' own bf16, for measuring a bf16 export against (tools/gpu/bf16_fidelity_7b.sh); the logits
and states in the file are converted to float32.

Usage:
    python tools/reference/make_reference.py --checkpoint DIR --out FILE [--cases SPEC ...]
        [--dtype float32|bfloat16] [--cache-dtype model|float32] [--prompts-from REFERENCE]

Case SPEC syntax (NAME: letters, digits, '_' only):
    NAME=T            one row of T random token ids
    NAME=TxB          B rows (independent random ids per row)
    NAME=T@S          ... plus a split run: S tokens in one call, then one token per call
    NAME=TxB@S        both
    NAME=greedy:P+N   greedy decoding: random prompt of P tokens, N new tokens (batch 1)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import json
import math
import os
import re
import sys
import zlib

FORMAT_VERSION = "xlstm-reference-v1"

# DTYPES: what --dtype bfloat16 runs, read from transformers' modeling_xlstm.py (HF-native path; read in a 2025
# revision of the source, not in 5.17 itself; docs/numerics.md, "State precision", says the same of 5.17's cache):
# * every parameter is bfloat16 (no module is kept in float32; load_model logs any that is), so every Linear, the
#   embedding and the residual adds run in bfloat16; RMSNorm and the per-head LayerNorm take their statistics in
#   float32 (norm_reduction_force_float32) and cast back before the weight; the gate pre-activations and their
#   soft cap are bfloat16 (the Linear's output);
# * the cell: the chunkwise kernel computes in the dtype of q/k/v and gates (bfloat16) and writes its per-chunk
#   states, the final one included, into buffers of that dtype; the sequence and step kernels cast the state to
#   config.inference_state_dtype (float32) for the update and return h in bfloat16; `autocast_kernel_dtype` is
#   passed but unused by the native kernels;
# * the state between calls lives in the cache, and a model that gets no cache (model(ids, use_cache=True), and
#   generate()) makes one in the model dtype: xLSTMCache(..., dtype=inputs_embeds.dtype). So transformers' own
#   bf16 rounds C, n and m to bfloat16 after every call (every generated token). --cache-dtype model (the
#   default) passes exactly that cache; --cache-dtype float32 keeps the float32 cache of the float32 reference
#   (not what transformers does by itself, but what our exports do: docs/numerics.md, "State precision");
# * the lm_head product is bfloat16; transformers converts it to float32 and applies the logit soft cap in float32,
#   so the logits lie on bfloat16's grid before the cap, and top-1/top-2 ties are possible (argmax takes the first).
DTYPES = {"float32": "float32", "bfloat16": "bfloat16"}


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------


def check_environment(log=print):
    """Assert the HF-native path and print versions/paths. Returns a dict of facts."""
    if importlib.util.find_spec("xlstm") is not None:
        raise SystemExit(
            "the pip package `xlstm` is importable: transformers would use the external (Triton) "
            "path. Run in an environment without `xlstm`."
        )
    import torch
    import transformers
    from transformers.models.xlstm import modeling_xlstm

    facts = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "modeling_file": modeling_xlstm.__file__,
    }
    ext = getattr(modeling_xlstm, "external_xlstm", None)
    if ext:
        raise SystemExit("transformers' modeling_xlstm reports external_xlstm=True")
    facts["external_xlstm"] = ext
    try:
        from transformers.utils import is_xlstm_available

        facts["is_xlstm_available"] = bool(is_xlstm_available())
        if facts["is_xlstm_available"]:
            raise SystemExit("transformers.utils.is_xlstm_available() is True")
    except ImportError:
        facts["is_xlstm_available"] = "n/a"
    for k, v in facts.items():
        log(f"[env] {k}: {v}")
    return facts


def setup_torch(threads: int | None = None):
    import torch

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except Exception:  # pragma: no cover
        pass
    if threads:
        torch.set_num_threads(threads)


def disable_hf_init():
    """HF's xLSTM `_init_weights` crashes for weight_mode='fused'. Make it a no-op.

    Safe because every parameter is either set by us or loaded from the checkpoint
    (load_model() fails on missing keys)."""
    from transformers.models.xlstm import modeling_xlstm

    def _no_init(self, module):  # noqa: ARG001
        return None

    modeling_xlstm.xLSTMPreTrainedModel._init_weights = _no_init


# --------------------------------------------------------------------------------------------
# model / cache helpers
# --------------------------------------------------------------------------------------------


def load_model(checkpoint: str, device: str = "cpu", log=print, dtype: str = "float32"):
    """Load an HF xLSTM checkpoint in float32 (whatever its storage dtype), eval mode. dtype="bfloat16": as a
    bfloat16 model instead (transformers' own from_pretrained(dtype=torch.bfloat16); see DTYPES)."""
    import torch
    from transformers import xLSTMForCausalLM

    if dtype not in DTYPES:
        raise SystemExit(f"dtype {dtype!r}: expected one of {sorted(DTYPES)}")
    want = getattr(torch, DTYPES[dtype])
    disable_hf_init()
    model, info = xLSTMForCausalLM.from_pretrained(
        checkpoint, dtype=want, output_loading_info=True
    )
    missing = [k for k in info.get("missing_keys", []) if k]
    unexpected = [k for k in info.get("unexpected_keys", []) if k]
    mismatched = info.get("mismatched_keys", [])
    log(f"[load] missing={missing} unexpected={unexpected} mismatched={mismatched}")
    tied = model.lm_head.weight.data_ptr() == model.backbone.embeddings.weight.data_ptr()
    tie_flag = bool(getattr(model.config, "tie_word_embeddings", False))
    if "lm_head.weight" in missing and tie_flag and not tied:
        # transformers 5.17's xLSTMForCausalLM has _tied_weights_keys=None: it never ties, so a
        # tied checkpoint without lm_head.weight would leave lm_head uninitialised. Tie by hand,
        # as tie_word_embeddings says.
        model.lm_head.weight = torch.nn.Parameter(model.backbone.embeddings.weight.detach().clone())
        tied = True
        log("[load] lm_head.weight absent and tie_word_embeddings=True: lm_head := embeddings (tied by hand)")
    bad_missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if bad_missing or unexpected or mismatched:
        raise SystemExit(f"checkpoint does not match the model: missing={bad_missing} unexpected={unexpected}")
    other = [(n, p.dtype) for n, p in model.named_parameters() if p.dtype != want]
    if other and dtype == "float32":
        raise SystemExit(f"parameter {other[0][0]} loaded as {other[0][1]}, expected float32")
    if other:
        # transformers' own choice for a model loaded as bfloat16 (none in the source read for DTYPES): kept as it is
        log(f"[load] {len(other)} parameters are not {want} in transformers' {dtype} model: {other[:8]}")
    model.to(device)
    model.eval()
    set_cache_dtype(model, want)
    return model


def set_cache_dtype(model, dtype):
    """The dtype of every cache make_cache gives this model (load_model sets the model dtype: float32 for the
    float32 reference; transformers' own choice for a bfloat16 model, see DTYPES)."""
    model.xlstm_reference_cache_dtype = dtype


def make_cache(model, batch: int):
    """A fresh xLSTMCache in the dtype set_cache_dtype chose, float32 unless told otherwise (HF would otherwise use
    the model dtype, or bf16 on the long-input path)."""
    import torch
    from transformers.models.xlstm.modeling_xlstm import xLSTMCache

    dtype = getattr(model, "xlstm_reference_cache_dtype", torch.float32)
    dev = model.backbone.embeddings.weight.device
    cache = xLSTMCache(config=model.config, max_batch_size=batch, dtype=dtype, device=dev)
    for layer, st in cache.rnn_state.items():
        for t in st:
            assert t.dtype == dtype, (layer, t.dtype, dtype)
    return cache


def cache_states(cache):
    """[(C, n, m)] per layer, cloned, float32, CPU."""
    out = []
    for layer in sorted(cache.rnn_state.keys()):
        out.append(tuple(t.detach().float().cpu().clone() for t in cache.rnn_state[layer]))
    return out


def run(model, ids, cache):
    import torch

    with torch.no_grad():
        out = model(input_ids=ids, cache_params=cache, use_cache=True)
    if out.cache_params is not cache:
        # transformers writes the states in place into the cache we gave it; be explicit
        raise RuntimeError("model returned a different cache object than the one passed in")
    return out.logits.detach().float()


def forward_full(model, ids):
    """One forward call over the whole input with a fresh fp32 cache."""
    cache = make_cache(model, ids.shape[0])
    logits = run(model, ids, cache)
    return logits.cpu(), cache_states(cache)


def forward_split(model, ids, split: int):
    """First `split` tokens in one call, then one token per call."""
    import torch

    B, T = ids.shape
    assert 1 <= split < T
    cache = make_cache(model, B)
    prefill = run(model, ids[:, :split], cache).cpu()
    steps = []
    for t in range(split, T):
        lg = run(model, ids[:, t : t + 1], cache)
        steps.append(lg[:, -1].cpu())
    return prefill, torch.stack(steps, dim=1), cache_states(cache)


HIDDEN_ORDERS = {
    # transformers 5.x records hidden states with `capture_outputs` on xLSTMBlock: the first block's input (the
    # embedding output), every block's output, and then the last entry replaced by the normed output. So the last
    # block's raw output is not in the tuple, and the embedding output is.
    "capture": lambda n: ["embeddings"] + [f"blocks.{i}" for i in range(n - 1)] + ["out_norm"],
    # the manual loop of older versions: each block's output, then the normed output
    "blocks": lambda n: [f"blocks.{i}" for i in range(n)] + ["out_norm"],
    "all": lambda n: ["embeddings"] + [f"blocks.{i}" for i in range(n)] + ["out_norm"],
}


def forward_hidden(model, ids):
    """forward_full, recording through forward hooks (in the same call, so the logits and states are those of
    forward_full) the embedding output, each block's output and the normed output (out_norm), float32 [B,T,H].
    On the segmented path (T > max_inference_chunksize) a block runs once per segment: its outputs are
    concatenated in call order. Returns (logits, states, parts: dict name -> tensor)."""
    import torch

    bb = model.backbone
    rec = {"embeddings": [], "out_norm": []}
    for i in range(len(bb.blocks)):
        rec[f"blocks.{i}"] = []

    def hook(name):
        def fn(mod, inp, out):  # noqa: ARG001
            x = out[0] if isinstance(out, (tuple, list)) else out
            rec[name].append(x.detach().float().cpu().clone())

        return fn

    handles = [bb.embeddings.register_forward_hook(hook("embeddings")),
               bb.out_norm.register_forward_hook(hook("out_norm"))]
    for i, blk in enumerate(bb.blocks):
        handles.append(blk.register_forward_hook(hook(f"blocks.{i}")))
    try:
        logits, states = forward_full(model, ids)
    finally:
        for h in handles:
            h.remove()
    for k in ("embeddings", "out_norm"):
        if len(rec[k]) != 1:
            raise RuntimeError(f"{k} ran {len(rec[k])} times in one forward call; expected once")
    parts = {k: torch.cat(v, dim=1) for k, v in rec.items()}
    B, T = ids.shape
    for k, v in parts.items():
        if tuple(v.shape[:2]) != (B, T):
            raise RuntimeError(f"hidden part {k} has shape {tuple(v.shape)}; expected [{B},{T},H]")
    return logits, states, parts


def hf_hidden_tuple(model, ids):
    """transformers' own `output_hidden_states=True` (fresh fp32 cache): (logits, [tensors] or None)."""
    import torch

    cache = make_cache(model, ids.shape[0])
    with torch.no_grad():
        out = model(input_ids=ids, cache_params=cache, use_cache=True, output_hidden_states=True)
    hs = getattr(out, "hidden_states", None)
    return out.logits.detach().float().cpu(), (None if hs is None else [h.detach().float().cpu() for h in hs])


def match_hidden_order(parts, hf, num_blocks: int):
    """The name of the HIDDEN_ORDERS entry whose tensors equal transformers' tuple (bit for bit, or within
    1e-6 relative), or None; and a description of the tuple."""
    desc = "None" if hf is None else f"{len(hf)} tensors {[tuple(h.shape) for h in hf]}"
    if hf is None:
        return None, desc
    for name, order in HIDDEN_ORDERS.items():
        names = order(num_blocks)
        if len(names) != len(hf):
            continue
        ok = True
        for n, h in zip(names, hf):
            p = parts[n]
            if tuple(p.shape) != tuple(h.shape):
                ok = False
                break
            d = float((p.double() - h.double()).abs().max()) if p.numel() else 0.0
            if d > 1e-6 * max(1.0, float(h.abs().max())):
                ok = False
                break
        if ok:
            return name, desc
    return None, desc


def add_hidden_states(model, tensors: dict, cases_ids: dict, parts_by_case: dict, checks, log=print):
    """Decides transformers' order from its own output_hidden_states tuple on every case where that tuple is
    well formed, writes NAME.hidden_states.K for every case of parts_by_case in that order, and returns the
    header metadata (JSON-able) describing it."""
    import torch

    n = len(model.backbone.blocks)
    found = {}
    for name, ids in cases_ids.items():
        hf_logits, hf = hf_hidden_tuple(model, ids)
        order, desc = match_hidden_order(parts_by_case[name], hf, n)
        same = bool(torch.equal(hf_logits, tensors[f"{name}.logits"]))
        found[name] = {"matches": order, "hf_tuple": desc, "logits_bit_equal_with_output_hidden_states": same}
        log(f"[hidden] {name}: transformers' tuple {desc} matches order {order!r}; logits bit-equal: {same}")
    orders = {v["matches"] for v in found.values() if v["matches"] is not None}
    checks.note("transformers' output_hidden_states matches one order on every well-formed case", len(orders) == 1,
                f"{sorted(o for o in orders)}")
    if len(orders) != 1:
        return {"error": "no single order matched", "cases": found}
    order = orders.pop()
    names = HIDDEN_ORDERS[order](n)
    for name, parts in parts_by_case.items():
        for k, part in enumerate(names):
            tensors[f"{name}.hidden_states.{k}"] = parts[part].contiguous()
    return {"order": names, "rule": order, "cases": sorted(parts_by_case), "transformers_tuple": found}


def greedy_manual(model, prompt, new_tokens: int):
    """Prefill the prompt in one call, then argmax + one token per call.
    Returns ids [1, P+N] and the per-step top1-top2 margins."""
    import torch

    cache = make_cache(model, prompt.shape[0])
    logits = run(model, prompt, cache)[:, -1]
    ids = prompt
    margins = []
    for i in range(new_tokens):
        top2 = torch.topk(logits, 2, dim=-1).values
        margins.append(float((top2[:, 0] - top2[:, 1]).min()))
        nxt = torch.argmax(logits, dim=-1, keepdim=True)
        ids = torch.cat([ids, nxt.to(ids.device)], dim=1)
        if i + 1 < new_tokens:
            logits = run(model, nxt.to(ids.device), cache)[:, -1]
    return ids.cpu(), margins


def greedy_hf(model, prompt, new_tokens: int, log=print):
    """HF generate(do_sample=False) with EOS stopping disabled (eos_token_id=None in the
    generation config used, model.generation_config too, in memory only)."""
    import copy

    import torch
    from transformers import GenerationConfig

    cfg = model.config
    gc = GenerationConfig(
        do_sample=False,
        num_beams=1,
        max_new_tokens=new_tokens,
        min_new_tokens=None,
        eos_token_id=None,
        pad_token_id=cfg.pad_token_id,
        bos_token_id=cfg.bos_token_id,
        use_cache=True,
    )
    saved = copy.deepcopy(model.generation_config)
    model.generation_config.eos_token_id = None
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                generation_config=gc,
            )
    finally:
        model.generation_config = saved
    if not torch.is_tensor(out):
        out = out.sequences
    return out.cpu()


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    name: str
    length: int = 0
    batch: int = 1
    split: int | None = None
    greedy: bool = False
    prompt_len: int = 0
    new_tokens: int = 0

    def spec(self) -> str:
        if self.greedy:
            return f"{self.name}=greedy:{self.prompt_len}+{self.new_tokens}"
        s = f"{self.name}={self.length}"
        if self.batch != 1:
            s += f"x{self.batch}"
        if self.split is not None:
            s += f"@{self.split}"
        return s


_CASE_RE = re.compile(r"^([A-Za-z0-9_]+)=(?:(\d+)(?:x(\d+))?(?:@(\d+))?|greedy:(\d+)\+(\d+))$")


def parse_case(spec: str) -> Case:
    m = _CASE_RE.match(spec.strip())
    if not m:
        raise ValueError(f"bad case spec {spec!r} (see --help)")
    name = m.group(1)
    if m.group(5) is not None:
        c = Case(name, greedy=True, prompt_len=int(m.group(5)), new_tokens=int(m.group(6)))
        if c.prompt_len < 1 or c.new_tokens < 1:
            raise ValueError(spec)
        return c
    c = Case(name, length=int(m.group(2)), batch=int(m.group(3) or 1))
    if m.group(4) is not None:
        c.split = int(m.group(4))
        if not (1 <= c.split < c.length):
            raise ValueError(f"{spec}: split must satisfy 1 <= split < T")
    if c.length < 1 or c.batch < 1:
        raise ValueError(spec)
    return c


def default_cases(config) -> list[Case]:
    """Lengths 1, < one chunk, one chunk, two chunks, several chunks + remainder, a batch-2
    case, split cases inside / at chunk boundaries, a greedy case.  When
    max_inference_chunksize is small, lengths are stretched beyond it."""
    L = int(config.chunk_size)
    mic = int(config.max_inference_chunksize)
    cases = [
        Case("len1", 1),
        Case("short", max(2, min(L - 1, 7))),
        Case("onechunk", L),
        Case("twochunks", 2 * L),
        Case("multichunk", (3 if L <= 16 else 2) * L + 5),
        # long chunks: keep the batch-2 cases shorter (file size)
        Case("batch2", (2 if L <= 16 else 1) * L + 5, batch=2),
        Case("split_mid", 2 * L + 6, split=L + 3),  # split inside chunk 2, steps cross 2L
        Case("split_edge", (2 if L <= 16 else 1) * L + 5, batch=2,
             split=(2 if L <= 16 else 1) * L),  # prefill = pure chunkwise
        Case("greedy", greedy=True, prompt_len=min(20, max(5, L + 3)), new_tokens=16),
    ]
    if mic < 4 * L + 8:
        # model-level segmentation: prompts longer than max_inference_chunksize
        cases = [
            Case("len1", 1),
            Case("short", max(2, min(L - 1, 5))),
            Case("onechunk", L),
            Case("seg_exact", 2 * mic),  # exactly two segments
            Case("seg_plus1", mic + 1),  # last segment has S=1 (step kernel)
            Case("seg_multi", 3 * mic + 1),
            Case("batch2", 2 * mic + L + 3, batch=2),
            Case("split_mid", 2 * mic + 4, split=mic + 3),  # segmented prefill, steps cross a segment edge
            Case("split_edge", mic + L + 2, batch=2, split=mic),
            Case("greedy", greedy=True, prompt_len=mic + L + 2, new_tokens=16),
        ]
    return cases


def case_seed(base_seed: int, name: str, attempt: int = 0) -> int:
    return (base_seed * 1000003 + zlib.crc32(name.encode()) + 7919 * attempt) % (2**31 - 1)


def random_ids(vocab: int, shape, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g, dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# statistics hooks (fraction of pre-cap values beyond the soft caps)
# --------------------------------------------------------------------------------------------


class CapStats:
    def __init__(self, model):
        self.model = model
        cfg = model.config
        self.nh = int(cfg.num_heads)
        self.gate_cap = cfg.gate_soft_cap
        self.out_cap = cfg.output_logit_soft_cap
        self.counts = {k: [0, 0] for k in ("igate", "fgate", "logits")}
        self.maxabs = {k: 0.0 for k in self.counts}
        self.enabled = False
        self.handles = []
        for name, mod in model.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("igate_preact", "fgate_preact", "ifgate_preact", "lm_head"):
                self.handles.append(mod.register_forward_hook(self._hook(leaf)))

    def _add(self, key, x, cap):
        x = x.detach().float()
        self.maxabs[key] = max(self.maxabs[key], float(x.abs().max()))
        if cap is None:
            return
        self.counts[key][0] += int((x.abs() > cap).sum())
        self.counts[key][1] += x.numel()

    def _hook(self, leaf):
        def fn(mod, inp, out):
            if not self.enabled:
                return
            if leaf == "lm_head":
                self._add("logits", out, self.out_cap)
            elif leaf == "igate_preact":
                self._add("igate", out, self.gate_cap)
            elif leaf == "fgate_preact":
                self._add("fgate", out, self.gate_cap)
            else:
                self._add("igate", out[..., : self.nh], self.gate_cap)
                self._add("fgate", out[..., self.nh :], self.gate_cap)

        return fn

    def fractions(self):
        res = {}
        for k, (a, n) in self.counts.items():
            res[k] = {"frac_beyond_cap": (a / n if n else None), "count": a, "total": n, "max_abs_precap": self.maxabs[k]}
        return res

    def close(self):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------------------------
# comparisons
# --------------------------------------------------------------------------------------------


class Checks:
    def __init__(self, log=print):
        self.items = []
        self.log = log

    def close(self, what, a, b, rel=1e-4):
        a = a.double()
        b = b.double()
        if a.shape != b.shape:
            self.items.append({"check": what, "ok": False, "detail": f"shape {tuple(a.shape)} vs {tuple(b.shape)}"})
            self.log(f"[check] FAIL {what}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
            return
        diff = float((a - b).abs().max()) if a.numel() else 0.0
        scale = max(1.0, float(a.abs().max()) if a.numel() else 0.0)
        ok = diff <= rel * scale
        self.items.append({"check": what, "ok": ok, "max_abs_diff": diff, "scale": scale})
        self.log(f"[check] {'ok  ' if ok else 'FAIL'} {what}: max|diff|={diff:.3e} (scale {scale:.3g})")

    def equal(self, what, a, b):
        ok = a.shape == b.shape and bool((a == b).all())
        self.items.append({"check": what, "ok": ok})
        self.log(f"[check] {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.log(f"        a={a.tolist()}\n        b={b.tolist()}")

    def note(self, what, ok, detail=""):
        self.items.append({"check": what, "ok": bool(ok), "detail": detail})
        self.log(f"[check] {'ok  ' if ok else 'FAIL'} {what} {detail}")

    def info(self, what, value):
        self.items.append({"check": what, "ok": True, "info": value})
        self.log(f"[info] {what}: {value}")

    @property
    def failed(self):
        return [c for c in self.items if not c["ok"]]

    def exit_code(self, allow_failed=False):
        """Prints the failed checks (or that all passed); 1 when some failed and that is not allowed, else 0."""
        if not self.failed:
            print("[ALL CHECKS PASSED]")
            return 0
        print(f"[FAILED] {len(self.failed)} checks failed")
        for c in self.failed:
            print("   ", c)
        return 0 if allow_failed else 1


def _states_close(checks, tag, s1, s2):
    for li, (a, b) in enumerate(zip(s1, s2)):
        for nm, x, y in zip("Cnm", a, b):
            checks.close(f"{tag} state.{li}.{nm}", x, y)


# --------------------------------------------------------------------------------------------
# reference construction
# --------------------------------------------------------------------------------------------


def build_reference(model, cases, seed: int = 1234, log=print, greedy_min_margin: float = 1e-2,
                    fp64_check: bool = True, hidden_cases=None, prompts=None):
    """Returns (tensors: dict[str, torch.Tensor], meta: dict, checks: Checks, stats: dict).
    hidden_cases: names of forward cases that also get NAME.hidden_states.K (None: every forward case).
    prompts: {greedy case name: prompt ids [1, P]} used as they are (no redraw), e.g. another reference's."""
    import torch

    cfg = model.config
    V = int(cfg.vocab_size)
    dev = model.backbone.embeddings.weight.device
    model_dtype = model.backbone.embeddings.weight.dtype
    cache_dtype = getattr(model, "xlstm_reference_cache_dtype", torch.float32)
    # a float32 model's schedules agree to float rounding; a bfloat16 one's differ by bfloat16 rounding, which is
    # what a bf16 reference measures: there the comparisons of schedules are reported, not checked
    exact = model_dtype == torch.float32
    tag = {torch.float32: "fp32", torch.bfloat16: "bf16"}.get(model_dtype, str(model_dtype))
    checks = Checks(log)
    stats = CapStats(model)
    tensors = {}
    case_meta = []
    names = set()
    hidden_ids, hidden_parts = {}, {}
    for c in cases:
        if "." in c.name or c.name in names:
            raise ValueError(f"bad or duplicate case name {c.name}")
        names.add(c.name)
        if c.greedy:
            best = None
            given = None if prompts is None else prompts.get(c.name)
            if prompts is not None and given is None:
                raise SystemExit(f"greedy case {c.name}: the file given for prompts has no {c.name}.prompt_ids")
            if given is not None and tuple(given.shape) != (1, c.prompt_len):
                raise SystemExit(f"greedy case {c.spec()}: the given {c.name}.prompt_ids has shape "
                                 f"{tuple(given.shape)}; the case asks for (1, {c.prompt_len})")
            for attempt in range(1 if given is not None else 64):
                prompt = given.clone() if given is not None else random_ids(V, (1, c.prompt_len),
                                                                            case_seed(seed, c.name, attempt))
                ids, margins = greedy_manual(model, prompt.to(dev), c.new_tokens)
                if best is None or min(margins) > min(best[2]):
                    best = (prompt, ids, margins, attempt)
                if min(margins) >= greedy_min_margin:
                    break
            prompt, ids, margins, attempt = best
            log(f"[case] {c.spec()}: prompt {'given' if given is not None else f'attempt {attempt}'}, "
                f"min top1-top2 margin {min(margins):.4f}")
            if min(margins) < greedy_min_margin:
                log(f"[warn] greedy case {c.name}: small argmax margin {min(margins)}")
            # HF generate
            hf_ok = None
            try:
                hf = greedy_hf(model, prompt.to(dev), c.new_tokens, log=log)
                checks.note(f"{c.name} generate length == P+N", hf.shape == ids.shape, f"{tuple(hf.shape)}")
                if hf.shape == ids.shape and cache_dtype == model_dtype:
                    checks.equal(f"{c.name} HF generate == manual argmax loop", hf, ids)
                    hf_ok = bool((hf == ids).all())
                elif hf.shape == ids.shape:
                    # generate makes its own cache, in the model dtype: another state precision than the loop's
                    hf_ok = bool((hf == ids).all())
                    checks.info(f"{c.name} HF generate (its own {tag} cache) == manual argmax loop "
                                f"({str(cache_dtype).replace('torch.', '')} cache)", _agreement(hf, ids, c.prompt_len))
            except Exception as e:  # noqa: BLE001
                checks.note(f"{c.name} HF generate ran", False, f"{type(e).__name__}: {e}")
                hf_ok = False
            # one-call forward over the generated sequence predicts the same tokens
            full, _ = forward_full(model, ids[:, :-1].to(dev))
            pred = torch.argmax(full[:, c.prompt_len - 1 :], dim=-1)
            if exact:
                checks.equal(f"{c.name} one-call argmax == generated tokens", pred, ids[:, c.prompt_len :])
            else:
                checks.info(f"{c.name} one-call argmax == generated tokens ({tag}: reported, not checked)",
                            _agreement(torch.cat([prompt, pred], dim=1), ids, c.prompt_len))
            tensors[f"{c.name}.prompt_ids"] = prompt.contiguous()
            tensors[f"{c.name}.greedy_ids"] = ids.contiguous()
            gm = {"name": c.name, "kind": "greedy", "prompt_len": c.prompt_len,
                  "new_tokens": c.new_tokens, "min_margin": min(margins),
                  "hf_generate_matches": hf_ok}
            if given is not None:
                gm["prompt_given"] = True
            case_meta.append(gm)
            continue

        rows = [random_ids(V, (1, c.length), case_seed(seed, f"{c.name}#row{r}")) for r in range(c.batch)]
        ids = torch.cat(rows, dim=0)
        stats.enabled = True
        if hidden_cases is None or c.name in hidden_cases:
            logits, states, parts = forward_hidden(model, ids.to(dev))
            hidden_ids[c.name] = ids.to(dev)
            hidden_parts[c.name] = parts
        else:
            logits, states = forward_full(model, ids.to(dev))
        stats.enabled = False
        tensors[f"{c.name}.input_ids"] = ids.contiguous()
        tensors[f"{c.name}.logits"] = logits.contiguous()
        for li, (C, n, m) in enumerate(states):
            tensors[f"{c.name}.state.{li}.C"] = C.contiguous()
            tensors[f"{c.name}.state.{li}.n"] = n.contiguous()
            tensors[f"{c.name}.state.{li}.m"] = m.contiguous()
        meta = {"name": c.name, "kind": "forward", "batch": c.batch, "length": c.length}
        if c.batch > 1:
            for r in range(c.batch):
                lr, sr = forward_full(model, ids[r : r + 1].to(dev))
                checks.close(f"{c.name} row{r} alone == batched logits", logits[r : r + 1], lr)
                _states_close(checks, f"{c.name} row{r} alone", [tuple(t[r : r + 1] for t in s) for s in states], sr)
        if c.split is not None:
            prefill, steps, st2 = forward_split(model, ids.to(dev), c.split)
            tensors[f"{c.name}.split"] = torch.tensor([c.split], dtype=torch.int64)
            tensors[f"{c.name}.step_logits"] = steps.contiguous()
            checks.close(f"{c.name} prefill logits == one-call logits[:, :split]", logits[:, : c.split], prefill)
            checks.close(f"{c.name} step_logits == one-call logits[:, split:]", logits[:, c.split :], steps)
            _states_close(checks, f"{c.name} stepped vs one-call", states, st2)
            meta["split"] = c.split
        if fp64_check:
            try:
                lg64 = _forward_fp64(model, ids.to(dev))
                d = float((lg64 - logits.double()).abs().max())
                checks.info(f"{c.name} max|logits_{tag} - logits_fp64weights|", f"{d:.3e}")
                meta["max_abs_diff_vs_fp64"] = d
            except Exception as e:  # noqa: BLE001
                checks.info(f"{c.name} fp64 comparison skipped", f"{type(e).__name__}: {e}")
        case_meta.append(meta)
        log(f"[case] {c.spec()}: logits {tuple(logits.shape)}")
    cap = stats.fractions()
    stats.close()
    hidden_meta = add_hidden_states(model, tensors, hidden_ids, hidden_parts, checks, log=log) if hidden_parts else None
    meta = {
        "format": FORMAT_VERSION,
        "cases": case_meta,
        "seed": seed,
        "cap_stats": cap,
        "checks_failed": len(checks.failed),
    }
    if hidden_meta is not None:
        meta["hidden_states"] = hidden_meta
    return tensors, meta, checks, cap


def _agreement(got, expected, prompt_len: int) -> str:
    """'K of N new tokens equal, first difference at position P' for two [1, P+N] id rows."""
    a, b = got[0, prompt_len:].tolist(), expected[0, prompt_len:].tolist()
    same = sum(x == y for x, y in zip(a, b))
    first = next((prompt_len + i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return f"{same} of {len(b)} new tokens equal" + ("" if first is None else f", first difference at position {first}")


def _forward_fp64(model, ids):
    """Informational: the same model in float64 (weights up-cast; HF's sequence/step kernels
    still keep their state in inference_state_dtype=float32).  Measures the sensitivity of
    the fixture to rounding."""
    import copy

    import torch

    m64 = copy.deepcopy(model).double()
    from transformers.models.xlstm.modeling_xlstm import xLSTMCache

    cache = xLSTMCache(config=m64.config, max_batch_size=ids.shape[0], dtype=torch.float64,
                       device=ids.device)
    with torch.no_grad():
        out = m64(input_ids=ids, cache_params=cache, use_cache=True)
    return out.logits.double().cpu()


def save_reference(path: str, tensors: dict, meta: dict, extra_meta: dict | None = None):
    from safetensors.torch import save_file

    md = {"format": FORMAT_VERSION, "cases": json.dumps(meta["cases"]),
          "cap_stats": json.dumps(meta["cap_stats"]), "seed": str(meta["seed"])}
    if "hidden_states" in meta:
        md["hidden_states"] = json.dumps(meta["hidden_states"])
    for k, v in (extra_meta or {}).items():
        md[k] = v if isinstance(v, str) else json.dumps(v)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=md)


def describe_hf(log=print):
    """Print the bits of the transformers xLSTM API the C# side cares about."""
    from transformers import xLSTMForCausalLM
    from transformers.models.xlstm import modeling_xlstm

    log(f"[hf] xLSTMCache.__init__{inspect.signature(modeling_xlstm.xLSTMCache.__init__)}")
    log(f"[hf] xLSTMForCausalLM.forward{inspect.signature(xLSTMForCausalLM.forward)}")
    log(f"[hf] xLSTMForCausalLM overrides prepare_inputs_for_generation: "
        f"{'prepare_inputs_for_generation' in xLSTMForCausalLM.__dict__}")
    log(f"[hf] _tied_weights_keys: {getattr(xLSTMForCausalLM, '_tied_weights_keys', None)!r}")
    log(f"[hf] _is_stateful: {getattr(xLSTMForCausalLM, '_is_stateful', None)!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="HF xLSTM checkpoint folder")
    ap.add_argument("--out", required=True, help="reference .safetensors to write")
    ap.add_argument("--cases", nargs="*", default=None, help="case specs (default: derived from chunk_size)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-fp64", action="store_true", help="skip the informational float64 comparison")
    ap.add_argument("--hidden-states", nargs="*", default=None, metavar="NAME",
                    help="forward cases that get NAME.hidden_states.K (default: all; give no name for none)")
    ap.add_argument("--allow-failed-checks", action="store_true")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                    help="the model's dtype in transformers (default float32; bfloat16: transformers' own bf16, "
                         "see DTYPES in the source; logits and states are written as float32 either way)")
    ap.add_argument("--cache-dtype", choices=["model", "float32"], default="model",
                    help="dtype of the xLSTMCache given to every call: model (default) = the model's dtype, which is "
                         "what transformers makes by itself; float32 = a float32 state under a bfloat16 model")
    ap.add_argument("--prompts-from", default=None, metavar="REFERENCE",
                    help="take the greedy cases' prompt_ids from this reference file (no redraw), and check that "
                         "the forward cases' input_ids equal its own: the same inputs as another dtype's reference")
    args = ap.parse_args(argv)

    facts = check_environment()
    setup_torch(args.threads)
    describe_hf()
    model = load_model(args.checkpoint, device=args.device, dtype=args.dtype)
    import torch

    if args.cache_dtype == "float32":
        set_cache_dtype(model, torch.float32)
    cache_dtype = str(model.xlstm_reference_cache_dtype).replace("torch.", "")
    print(f"[dtype] model {args.dtype}, cache {cache_dtype}, device {args.device}")
    cases = [parse_case(s) for s in args.cases] if args.cases else default_cases(model.config)
    if args.dtype != "float32":
        # bfloat16 references are made for forward cases of one row and greedy cases: the batch and split
        # self-checks compare schedules to float32 rounding (1e-4), which bfloat16 rounding does not meet
        unsupported = [c.spec() for c in cases if not c.greedy and (c.batch != 1 or c.split is not None)]
        if unsupported and args.cases:
            raise SystemExit(f"--dtype {args.dtype} makes forward cases of one row without a split and greedy "
                             f"cases; given: {' '.join(unsupported)}")
        if unsupported:
            print(f"[cases] --dtype {args.dtype}: leaving out the default cases {' '.join(unsupported)}")
            cases = [c for c in cases if c.greedy or (c.batch == 1 and c.split is None)]
    print("[cases] " + " ".join(c.spec() for c in cases))
    hidden = None if args.hidden_states is None else set(args.hidden_states)
    other = None
    if args.prompts_from:
        from safetensors.torch import load_file

        other = load_file(args.prompts_from)
    prompts = None if other is None else {c.name: other.get(f"{c.name}.prompt_ids") for c in cases if c.greedy}
    tensors, meta, checks, cap = build_reference(model, cases, seed=args.seed, fp64_check=not args.no_fp64,
                                                 hidden_cases=hidden, prompts=prompts)
    if other is not None:
        for c in cases:
            if c.greedy:
                continue
            mine, theirs = tensors[f"{c.name}.input_ids"], other.get(f"{c.name}.input_ids")
            if theirs is None:
                checks.note(f"{c.name} input_ids == {args.prompts_from}'s", False, "it has no such tensor")
            else:
                checks.equal(f"{c.name} input_ids == {args.prompts_from}'s", mine, theirs)
    print(f"[stats] {json.dumps(cap)}")
    extra = {"transformers_version": facts["transformers"],
             "torch_version": facts["torch"],
             "checkpoint": os.path.basename(os.path.abspath(args.checkpoint)),
             "dtype": args.dtype,
             "cache_dtype": cache_dtype,
             "device": args.device}
    if args.device.startswith("cuda"):
        extra["cuda_device"] = torch.cuda.get_device_name(torch.device(args.device))
        # transformers' bf16 on the GPU runs with torch's defaults, which allow reduced-precision reductions
        extra["allow_bf16_reduced_precision_reduction"] = str(
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)
    if args.prompts_from:
        extra["prompts_from"] = os.path.basename(os.path.abspath(args.prompts_from))
    save_reference(args.out, tensors, meta, extra)
    print(f"[out] {args.out}: {os.path.getsize(args.out)} bytes, {len(tensors)} tensors")
    return checks.exit_code(allow_failed=args.allow_failed_checks)


if __name__ == "__main__":
    sys.exit(main())
