#!/usr/bin/env python3
"""Prepare the King James Bible (Debian package `bible-kjv-text`) as plain training text.

The text comes from Debian's `bible-kjv-text` package (compressed data in /usr/lib/bible.data),
read through the `bible` program of the `bible-kjv` package, which the text package recommends
and apt installs with it:

    apt-get install -y bible-kjv-text          # also brings bible-kjv (the reader)
    python3 tools/train/prepare_kjv.py --out .gpu/kjv

`bible -f Gen1:1-Rev22:21` prints one verse per line as `<Ref> <text>` (e.g.
`Ge1:1 In the beginning God created the heaven and the earth.`): 31,102 verses, 1,189 chapters,
66 books, pure ASCII.  Alternatively `--raw FILE` reads a file saved from that command.

What this script writes (deterministic: the same input gives byte-identical files):

* Verse markers are dropped; each verse becomes one line of plain text.  Runs of spaces inside a
  verse (the source has a few double spaces after a full stop) become one space.
* Each chapter is one "document": a heading line `<Book name> <chapter>` (e.g. `Genesis 1`,
  `1 Kings 3`, `Psalms 23`), then its verses, one per line.  Documents are separated by one
  empty line, so `text.split("\\n\\n")` gives the chapters back.  The training script puts an
  `<|endoftext|>` token between chapters.
* Held-out split: chapters are numbered 0..1188 in canonical order (Genesis 1 = 0,
  Revelation 22 = 1188); every chapter whose number is 24 mod 25 (the 25th, 50th, ...) goes to
  `val.txt` (47 chapters, about 4 % of the text), all others to `train.txt`.  Note that the KJV
  repeats itself (Kings/Chronicles, the synoptic gospels, refrains), so held-out chapters are not
  wholly unseen text.
* `meta.json`: counts, the list of validation chapters, and SHA-256 sums of the source dump and
  of both output files.

The text of the KJV is in the public domain in most of the world; in the United Kingdom it is
under a perpetual Crown patent (see the shipped model's README).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

# The `bible` program's book abbreviations (in canonical order) -> conventional English names.
BOOKS = [
    ("Ge", "Genesis"), ("Exo", "Exodus"), ("Lev", "Leviticus"), ("Num", "Numbers"),
    ("Deu", "Deuteronomy"), ("Josh", "Joshua"), ("Jdgs", "Judges"), ("Ruth", "Ruth"),
    ("1Sm", "1 Samuel"), ("2Sm", "2 Samuel"), ("1Ki", "1 Kings"), ("2Ki", "2 Kings"),
    ("1Chr", "1 Chronicles"), ("2Chr", "2 Chronicles"), ("Ezra", "Ezra"), ("Neh", "Nehemiah"),
    ("Est", "Esther"), ("Job", "Job"), ("Psa", "Psalms"), ("Prv", "Proverbs"),
    ("Eccl", "Ecclesiastes"), ("SSol", "Song of Solomon"), ("Isa", "Isaiah"), ("Jer", "Jeremiah"),
    ("Lam", "Lamentations"), ("Eze", "Ezekiel"), ("Dan", "Daniel"), ("Hos", "Hosea"),
    ("Joel", "Joel"), ("Amos", "Amos"), ("Obad", "Obadiah"), ("Jonah", "Jonah"),
    ("Mic", "Micah"), ("Nahum", "Nahum"), ("Hab", "Habakkuk"), ("Zep", "Zephaniah"),
    ("Hag", "Haggai"), ("Zec", "Zechariah"), ("Mal", "Malachi"),
    ("Mat", "Matthew"), ("Mark", "Mark"), ("Luke", "Luke"), ("John", "John"), ("Acts", "Acts"),
    ("Rom", "Romans"), ("1Cor", "1 Corinthians"), ("2Cor", "2 Corinthians"),
    ("Gal", "Galatians"), ("Eph", "Ephesians"), ("Phi", "Philippians"), ("Col", "Colossians"),
    ("1Th", "1 Thessalonians"), ("2Th", "2 Thessalonians"), ("1Tim", "1 Timothy"),
    ("2Tim", "2 Timothy"), ("Titus", "Titus"), ("Phmn", "Philemon"), ("Heb", "Hebrews"),
    ("Jas", "James"), ("1Pet", "1 Peter"), ("2Pet", "2 Peter"), ("1Jn", "1 John"),
    ("2Jn", "2 John"), ("3Jn", "3 John"), ("Jude", "Jude"), ("Rev", "Revelation"),
]
BOOK_NAMES = dict(BOOKS)
BIBLE_RANGE = "Gen1:1-Rev22:21"
VAL_EVERY = 25      # every 25th chapter ...
VAL_OFFSET = 24     # ... counted from 0: chapters 24, 49, 74, ...
REF_RE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")


def read_dump(raw: str | None) -> bytes:
    if raw:
        with open(raw, "rb") as f:
            return f.read()
    try:
        # -f: pretty-printing off -> one verse per line with its reference
        return subprocess.run(["bible", "-f", BIBLE_RANGE], check=True, capture_output=True).stdout
    except FileNotFoundError:
        raise SystemExit("the `bible` program is missing: apt-get install -y bible-kjv-text bible-kjv")


def parse(dump: bytes):
    """-> list of chapters: (book_abbrev, chapter_no, [verse texts])."""
    text = dump.decode("ascii")  # the source is pure ASCII; fail loudly otherwise
    chapters: list[tuple[str, int, list[str]]] = []
    expected_verse = 1
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = REF_RE.match(line)
        if not m:
            raise SystemExit(f"line {lineno}: unexpected format: {line[:80]!r}")
        book, chap, verse, body = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        if book not in BOOK_NAMES:
            raise SystemExit(f"line {lineno}: unknown book abbreviation {book!r}")
        body = re.sub(r"\s+", " ", body).strip()
        if not body:
            raise SystemExit(f"line {lineno}: empty verse")
        if not chapters or chapters[-1][0] != book or chapters[-1][1] != chap:
            chapters.append((book, chap, []))
            expected_verse = 1
        if verse != expected_verse:
            raise SystemExit(f"line {lineno}: verse {verse}, expected {expected_verse}")
        expected_verse += 1
        chapters[-1][2].append(body)
    books = []
    for b, _, _ in chapters:
        if not books or books[-1] != b:
            books.append(b)
    if books != [b for b, _ in BOOKS]:
        raise SystemExit(f"books out of order or missing: {books}")
    return chapters


def chapter_text(book: str, chap: int, verses: list[str]) -> str:
    return f"{BOOK_NAMES[book]} {chap}\n" + "\n".join(verses)


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder (keep it out of git, e.g. .gpu/kjv)")
    ap.add_argument("--raw", default=None, help=f"a saved `bible -f {BIBLE_RANGE}` dump instead of running bible")
    args = ap.parse_args(argv)

    dump = read_dump(args.raw)
    chapters = parse(dump)
    train, val, val_names = [], [], []
    for i, (book, chap, verses) in enumerate(chapters):
        doc = chapter_text(book, chap, verses)
        if i % VAL_EVERY == VAL_OFFSET:
            val.append(doc)
            val_names.append(f"{BOOK_NAMES[book]} {chap}")
        else:
            train.append(doc)
    os.makedirs(args.out, exist_ok=True)
    files = {}
    for name, docs in (("train.txt", train), ("val.txt", val)):
        data = ("\n\n".join(docs) + "\n").encode("ascii")
        with open(os.path.join(args.out, name), "wb") as f:
            f.write(data)
        files[name] = {"chapters": len(docs), "bytes": len(data), "sha256": sha256(data)}
    nverses = sum(len(v) for _, _, v in chapters)
    meta = {
        "source": "Debian package bible-kjv-text (/usr/lib/bible.data), read with "
                  f"`bible -f {BIBLE_RANGE}` (package bible-kjv)",
        "source_sha256": sha256(dump),
        "source_bytes": len(dump),
        "books": len(BOOKS),
        "chapters": len(chapters),
        "verses": nverses,
        "format": "chapter = heading line '<Book> <chapter>' + one verse per line (no verse numbers); "
                  "chapters separated by one empty line",
        "split": f"chapter index (0-based, canonical order) % {VAL_EVERY} == {VAL_OFFSET} -> val",
        "files": files,
        "val_chapters": val_names,
    }
    try:
        ver = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "bible-kjv-text"],
                             capture_output=True, text=True).stdout.strip()
        if ver:
            meta["package_version"] = ver
    except FileNotFoundError:
        pass
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{len(chapters)} chapters, {nverses} verses -> train {files['train.txt']['chapters']} chapters "
          f"({files['train.txt']['bytes']} bytes), val {files['val.txt']['chapters']} chapters "
          f"({files['val.txt']['bytes']} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
