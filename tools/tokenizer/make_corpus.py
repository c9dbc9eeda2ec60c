#!/usr/bin/env python3
"""Write the tokenizer golden corpus, tests/golden/tokenizer_corpus.json.

The strings are spelled here with Python escapes so that invisible differences (NFC vs NFD,
zero-width joiners, \\r\\n, tabs, runs of spaces) stay visible in review.  The JSON is written
with ensure_ascii=True for the same reason.  Each entry: {"name", "category", "text"}.

    python3 tools/tokenizer/make_corpus.py [--out tests/golden/tokenizer_corpus.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata

CORPUS: list[tuple[str, str, str]] = [
    # --- empty / trivial ---
    ("empty", "trivial", ""),
    ("single_space", "spaces", " "),
    ("single_letter", "trivial", "a"),
    ("hello_world", "trivial", "Hello, world!"),
    # --- spaces ---
    ("leading_space", "spaces", " leading space"),
    ("trailing_space", "spaces", "trailing space "),
    ("two_spaces_between", "spaces", "two  spaces"),
    ("spaces_2_to_10", "spaces", "a  b   c    d     e      f       g        h         i          j"),
    ("leading_spaces_4", "spaces", "    four leading"),
    ("trailing_spaces_7", "spaces", "seven trailing       "),
    ("only_spaces_3", "spaces", "   "),
    ("only_spaces_16", "spaces", " " * 16),
    ("only_spaces_30", "spaces", " " * 30),
    ("spaces_24_then_word", "spaces", " " * 24 + "x"),
    ("tab", "spaces", "a\tb"),
    ("tabs_run", "spaces", "\t\t\tindented with tabs"),
    ("tab_space_mix", "spaces", " \t \t  mixed\t \n"),
    ("nbsp_and_unicode_spaces", "spaces", "non\u00a0breaking\u2009thin\u3000ideographic"),
    # --- newlines ---
    ("newline", "newlines", "line one\nline two"),
    ("crlf", "newlines", "line one\r\nline two\r\n"),
    ("cr_only", "newlines", "old mac\rline"),
    ("blank_lines", "newlines", "para one\n\n\npara two\n"),
    ("only_newlines", "newlines", "\n\n\n\n"),
    ("space_newline_space", "newlines", "end \n start"),
    ("newline_indent", "newlines", "def f():\n    return 1\n"),
    # --- code ---
    ("python_code", "code",
     "import os\n\n\nclass Foo(object):\n    \"\"\"Doc.\"\"\"\n\n    def __init__(self, x: int = 0) -> None:\n"
     "        self.x = x  # comment\n\n    def bar(self):\n        if self.x >= 10 and not None:\n"
     "            return [i ** 2 for i in range(self.x)]\n        return {'a': 1, \"b\": (2, 3)}\n"),
    ("csharp_code", "code",
     "namespace Demo;\r\n\r\npublic sealed class Greeter\r\n{\r\n    private readonly string _name;\r\n\r\n"
     "    public Greeter(string name) => _name = name ?? throw new ArgumentNullException(nameof(name));\r\n\r\n"
     "    public async Task<int> RunAsync(CancellationToken ct = default)\r\n    {\r\n"
     "        await Task.Delay(10, ct).ConfigureAwait(false);\r\n        Console.WriteLine($\"Hello, {_name}!\");\r\n"
     "        return _name.Length;\r\n    }\r\n}\r\n"),
    ("json_doc", "code",
     "{\n  \"name\": \"xlstm\",\n  \"version\": \"1.0.0\",\n  \"dims\": [4096, 8, 256],\n  \"nested\": {\n"
     "    \"ok\": true,\n    \"value\": null,\n    \"pi\": 3.14159\n  }\n}\n"),
    ("json_minified", "code", "{\"a\":[1,2,3],\"b\":{\"c\":\"d\"},\"e\":-1.5e-10}"),
    ("shell_line", "code", "for f in *.txt; do wc -l \"$f\" | awk '{print $1}'; done && echo ok || exit 1"),
    ("html", "code", "<div class=\"x\"><a href=\"#top\">Top</a>&nbsp;&amp;&lt;/div&gt;</div>"),
    ("c_braces", "code", "int main(void){for(int i=0;i<10;++i){printf(\"%d\\n\",i);}return 0;}"),
    # --- emoji ---
    ("emoji_simple", "emoji", "I \u2764\ufe0f pizza \U0001f355 and \U0001f600\U0001f600\U0001f600"),
    ("emoji_zwj_family", "emoji", "family: \U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 done"),
    ("emoji_skin_tones", "emoji", "\U0001f44d\U0001f3fb \U0001f44d\U0001f3fc \U0001f44d\U0001f3fd \U0001f44d\U0001f3fe \U0001f44d\U0001f3ff"),
    ("emoji_zwj_profession", "emoji", "\U0001f469\U0001f3fd\u200d\U0001f4bb codes, \U0001f9d1\u200d\U0001f680 flies"),
    ("emoji_flags", "emoji", "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5\U0001f1e9\U0001f1ea\U0001f3f3\ufe0f\u200d\U0001f308"),
    ("emoji_keycap", "emoji", "press 1\ufe0f\u20e3 or #\ufe0f\u20e3"),
    # --- scripts ---
    ("cjk_chinese", "cjk", "\u4eca\u5929\u5929\u6c14\u5f88\u597d\uff0c\u6211\u4eec\u53bb\u516c\u56ed\u6563\u6b65\u5427\u3002"),
    ("cjk_japanese", "cjk", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca\u3001\u3072\u3089\u304c\u306a\u3002"),
    ("cjk_korean", "cjk", "\ud55c\uad6d\uc5b4 \ubb38\uc7a5\uc785\ub2c8\ub2e4."),
    ("cjk_mixed_latin", "cjk", "Model\u6a21\u578b v2\u7248\u672c: 7B\u53c2\u6570"),
    ("arabic", "rtl", "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645! \u0647\u0630\u0627 \u0646\u0635 \u0639\u0631\u0628\u064a."),
    ("hebrew", "rtl", "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd"),
    ("cyrillic", "cyrillic", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u042d\u0442\u043e \u0442\u0435\u0441\u0442 \u0442\u043e\u043a\u0435\u043d\u0438\u0437\u0430\u0442\u043e\u0440\u0430."),
    ("greek", "greek", "\u0395\u03bd \u03b1\u03c1\u03c7\u03ae \u03ae\u03bd \u03bf \u03bb\u03cc\u03b3\u03bf\u03c2"),
    ("devanagari", "indic", "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e"),
    ("thai", "other", "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e04\u0e23\u0e31\u0e1a"),
    # --- accents: NFC and NFD ---
    ("accents_nfc", "accents", unicodedata.normalize("NFC", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m \u00f1and\u00fa")),
    ("accents_nfd", "accents", unicodedata.normalize("NFD", "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00c5ngstr\u00f6m \u00f1and\u00fa")),
    ("vietnamese_nfc", "accents", unicodedata.normalize("NFC", "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u")),
    ("vietnamese_nfd", "accents", unicodedata.normalize("NFD", "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u")),
    ("combining_only", "accents", "e\u0301\u0301\u0301 a\u0308"),
    ("ligature_and_width", "accents", "\ufb01le \uff21\uff22\uff23 \u2163"),
    # --- numbers ---
    ("long_number", "numbers", "12345678901234567890123456789012345678901234567890"),
    ("numbers_mixed", "numbers", "3.14159265358979 -42 1e-10 0x7FFFFFFF 1,000,000.00 007"),
    ("dates_times", "numbers", "2026-11-28T22:08:00Z and 12/31/1999 at 23:59:59.999"),
    ("digits_with_spaces", "numbers", "1 22 333 4444 55555 666666"),
    # --- punctuation ---
    ("punct_run", "punctuation", "!!!???...,,,;;;:::---___===+++***&&&|||"),
    ("punct_mixed", "punctuation", "Wait... what?! (Really?) [yes] {no} <maybe> \"quoted\" 'single' `tick`"),
    ("ellipsis_dashes", "punctuation", "He said\u2014quietly\u2026 \u201csmart quotes\u201d and \u2018these\u2019 \u2013 en dash"),
    ("contractions", "punctuation", "I'm, you're, he's, we'll, they'd, can't, won't, it's, O'Brien's"),
    # --- special tokens in text ---
    ("special_eot_middle", "special", "first document<|endoftext|>second document"),
    ("special_eot_spaces", "special", "end. <|endoftext|> Start"),
    ("special_eot_only", "special", "<|endoftext|>"),
    ("special_eot_twice", "special", "<|endoftext|><|endoftext|>x"),
    ("special_padding", "special", "a<|padding|>b"),
    ("special_lookalike", "special", "<|endoftext| > <|endoftext <endoftext|> <|ENDOFTEXT|>"),
    ("special_newlines", "special", "line\n<|endoftext|>\nline"),
    # --- long word, URLs, mixed ---
    ("very_long_word", "long", "Pneumonoultramicroscopicsilicovolcanoconiosis" * 8),
    ("long_repeated_char", "long", "a" * 300),
    ("url", "url", "https://example.com/path/to/page?query=1&lang=en#section-2"),
    ("url_in_text", "url", "See http://www.example.org/~user/index.html, or mailto:someone@example.net."),
    ("file_paths", "url", "C:\\Users\\me\\file.txt and /usr/lib/bible.data ../shared/data/20B_tokenizer.json"),
    ("mixed_everything", "mixed",
     "Mixed: caf\u00e9 \u4e2d\u6587 \u0645\u0631\u062d\u0628\u0627 \U0001f44b\U0001f3fd 123\u00a0456 <|endoftext|>\tx  =  y\r\n\u00bfQu\u00e9?"),
    ("kjv_verse", "english", "And God said, Let there be light: and there was light."),
    ("kjv_chapter_start", "english", "Genesis 1\nIn the beginning God created the heaven and the earth.\n"),
    ("english_sentence", "english", "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!"),
    ("markdown", "mixed", "# Title\n\n- item *one*\n- item **two**\n\n```python\nprint('hi')\n```\n"),
    ("control_chars", "mixed", "bell\x07 escape\x1b[0m null-free \x0b vtab \x0c ff"),
]


def build():
    names = set()
    out = []
    for name, cat, text in CORPUS:
        assert name not in names, name
        names.add(name)
        out.append({"name": name, "category": cat, "text": text})
    assert len(out) >= 60, len(out)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "..", "tests", "golden", "tokenizer_corpus.json"))
    args = ap.parse_args(argv)
    corpus = build()
    doc = {
        "description": "Tokenizer golden corpus (tools/tokenizer/make_corpus.py). Ids per tokenizer are in "
                       "tests/golden/*_golden.json, made by tools/tokenizer/make_golden.py with HF tokenizers.",
        "count": len(corpus),
        "strings": corpus,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="ascii") as f:
        json.dump(doc, f, indent=1, ensure_ascii=True)
        f.write("\n")
    print(f"{len(corpus)} strings -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
