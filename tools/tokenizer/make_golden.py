#!/usr/bin/env python3
"""Golden token ids of a Hugging Face tokenizer.json for a corpus of strings.

    python3 tools/tokenizer/make_golden.py --tokenizer ../shared/data/20B_tokenizer.json \\
        --corpus tests/golden/tokenizer_corpus.json --out tests/golden/neox20b_golden.json --label neox20b

Reads the corpus written by make_corpus.py ({"strings": [{"name", "category", "text"}, ...]}) and
writes, per string, with HF `tokenizers` (the Rust library, the reference):

* `ids`: `Tokenizer.encode(text, add_special_tokens=False).ids`
* `tokens`: the matching token strings (byte-level alphabet, e.g. "\\u0120the" for " the")
* `ids_default`: only where it differs from `ids`: `encode(text)` with the default
  `add_special_tokens=True`, i.e. with the post-processor's template (for byte-level GPT-NeoX-style
  tokenizers the template adds nothing, and `default_template_adds_tokens` is false)
* `decoded`: `decode(ids, skip_special_tokens=False)`
* `roundtrip`: `decoded == text` (false for example for NFD input under an NFC normalizer, and for
  strings a lossy normalizer changes)

Added/special tokens such as `<|endoftext|>` inside the text are matched by `encode` whatever
`add_special_tokens` says (that flag only controls the template).

The header records the versions of tokenizers and (when importable) transformers, the tokenizer
file's SHA-256, vocabulary size and pipeline, and whether transformers' `PreTrainedTokenizerFast`
over the same file gives the same ids for every string.

The output is JSON with one line per string, so diffs stay readable.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys


def _pipeline_summary(tok_json: dict) -> dict:
    def typ(x):
        if x is None:
            return None
        if x.get("type") == "Sequence":
            inner = x.get("normalizers") or x.get("pretokenizers") or x.get("processors") or x.get("decoders") or []
            return "Sequence[" + ",".join(str(i.get("type")) for i in inner) + "]"
        return x.get("type")

    return {
        "model": tok_json.get("model", {}).get("type"),
        "normalizer": typ(tok_json.get("normalizer")),
        "pre_tokenizer": typ(tok_json.get("pre_tokenizer")),
        "post_processor": typ(tok_json.get("post_processor")),
        "decoder": typ(tok_json.get("decoder")),
        "added_tokens": len(tok_json.get("added_tokens") or []),
        "special_added_tokens": [t["content"] for t in (tok_json.get("added_tokens") or []) if t.get("special")],
    }


def make_golden(tokenizer_path: str, corpus_path: str, out_path: str, label: str, log=print) -> dict:
    import tokenizers
    from tokenizers import Tokenizer

    with open(tokenizer_path, "rb") as f:
        raw = f.read()
    tok_json = json.loads(raw)
    tok = Tokenizer.from_file(tokenizer_path)
    with open(corpus_path, encoding="utf-8") as f:
        corpus = json.load(f)["strings"]

    try:
        import transformers
        from transformers import PreTrainedTokenizerFast

        tf_version = transformers.__version__
        hf = PreTrainedTokenizerFast(tokenizer_file=tokenizer_path)
    except Exception as e:  # noqa: BLE001
        tf_version, hf = None, None
        log(f"[golden] transformers not usable: {type(e).__name__}: {e}")

    entries = []
    template_adds = False
    tf_mismatch = []
    n_roundtrip = 0
    for s in corpus:
        text = s["text"]
        enc = tok.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        enc_d = tok.encode(text)  # add_special_tokens=True (the default)
        decoded = tok.decode(ids, skip_special_tokens=False)
        e = {"name": s["name"], "category": s.get("category"), "text": text, "ids": ids,
             "tokens": list(enc.tokens)}
        if list(enc_d.ids) != ids:
            e["ids_default"] = list(enc_d.ids)
            template_adds = True
        e["decoded"] = decoded
        e["roundtrip"] = decoded == text
        n_roundtrip += e["roundtrip"]
        if hf is not None:
            tf_ids = hf.encode(text, add_special_tokens=False)
            if list(tf_ids) != ids:
                tf_mismatch.append(s["name"])
        entries.append(e)

    header = {
        "description": "Golden ids from HF tokenizers (tools/tokenizer/make_golden.py): ids = "
                       "encode(text, add_special_tokens=False).ids; ids_default only where encode(text) "
                       "differs; decoded = decode(ids, skip_special_tokens=False).",
        "label": label,
        "tokenizer_file": os.path.basename(tokenizer_path),
        "tokenizer_sha256": hashlib.sha256(raw).hexdigest(),
        "tokenizers_version": tokenizers.__version__,
        "transformers_version": tf_version,
        "python": sys.version.split()[0],
        "vocab_size_with_added": tok.get_vocab_size(with_added_tokens=True),
        "pipeline": _pipeline_summary(tok_json),
        "default_template_adds_tokens": template_adds,
        "transformers_fast_tokenizer_agrees": (None if hf is None else not tf_mismatch),
        "transformers_mismatches": tf_mismatch,
        "corpus": os.path.basename(corpus_path),
        "count": len(entries),
        "roundtrip_count": n_roundtrip,
    }
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w", encoding="ascii") as f:
        f.write("{\n")
        for k, v in header.items():
            f.write(f" {json.dumps(k)}: {json.dumps(v, ensure_ascii=True)},\n")
        f.write(' "strings": [\n')
        for i, e in enumerate(entries):
            f.write("  " + json.dumps(e, ensure_ascii=True, separators=(",", ":")))
            f.write(",\n" if i + 1 < len(entries) else "\n")
        f.write(" ]\n}\n")
    with open(out_path, encoding="ascii") as f:
        json.load(f)  # well-formed
    log(f"[golden] {label}: {len(entries)} strings, {sum(len(e['ids']) for e in entries)} ids, "
        f"roundtrip {n_roundtrip}/{len(entries)}, template adds tokens: {template_adds}, "
        f"transformers agrees: {header['transformers_fast_tokenizer_agrees']} -> {out_path}")
    return header


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json")
    ap.add_argument("--corpus", required=True, help="tokenizer_corpus.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--label", default=None)
    args = ap.parse_args(argv)
    make_golden(args.tokenizer, args.corpus, args.out, args.label or os.path.basename(args.tokenizer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
