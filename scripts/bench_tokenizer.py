#!/usr/bin/env python3
"""Helper for scripts/bench-tokenizer.sh: the mixed benchmark text, and Hugging Face `tokenizers` timings.

  bench_tokenizer.py make-text OUT [--mb 1.5]
      Writes >= 1 MB of deterministic mixed text: Python standard-library source (English comments and
      docstrings + code), paragraphs of tokens sampled from the tokenizer's own vocabulary (Chinese, Japanese,
      Korean, Arabic, Hindi, Cyrillic, Latin with accents, ...), emoji/ZWJ sequences, digit runs and the golden
      tokenizer corpus, shuffled by paragraph with a fixed seed.
  bench_tokenizer.py hf TOKENIZER_JSON TEXT --runs N --ours-ids FILE --ours-bench JSON
      Times tokenizers' Tokenizer.encode on the whole text on one thread (cold: a freshly loaded tokenizer per
      run, so an empty BPE cache; warm: one tokenizer reused), checks that earshot's ids (FILE, a JSON array)
      are identical, and prints the comparison as Markdown table rows plus one JSON line.
"""
import argparse
import json
import os
import random
import statistics
import sys
import sysconfig
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_text(out, mb):
    rng = random.Random(20240601)
    paras = []
    # English + code: standard-library modules (present with every Python).
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in ["json/decoder.py", "json/encoder.py", "email/message.py", "http/client.py", "argparse.py",
                 "textwrap.py", "difflib.py", "statistics.py", "fractions.py", "calendar.py"]:
        path = os.path.join(stdlib, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                paras += [p for p in f.read().split("\n\n") if p.strip()]
    # Other scripts: paragraphs of tokens sampled from the vocabulary, grouped by script.
    with open(os.path.join(ROOT, "tests/data/qwen2-audio-tokenizer/tokenizer.json"), encoding="utf-8") as f:
        vocab = json.load(f)["model"]["vocab"]
    byte_decoder = _byte_decoder()
    groups = {}
    for tok in vocab:
        try:
            s = bytes(byte_decoder[c] for c in tok).decode("utf-8")
        except (KeyError, UnicodeDecodeError):
            continue
        core = s.strip()
        if not core or core.isascii():
            continue
        groups.setdefault(_script(core[0]), []).append(s)
    for script in sorted(groups):
        toks = groups[script]
        if len(toks) < 50:
            continue
        for _ in range(200):
            n = rng.randint(8, 40)
            paras.append("".join(rng.choice(toks) for _ in range(n)) + rng.choice(["。", ".", "!", "?", "،", "।"]))
    emoji = ["😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "🇯🇵", "❤️", "🔥"]
    for _ in range(300):
        paras.append(" ".join(rng.choice(emoji) + rng.choice(["ok", "yes", "no", "wow"]) for _ in range(8)))
        paras.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 12))) for _ in range(10)))
    with open(os.path.join(ROOT, "tests/golden/fixtures/tokenizer/corpus.json"), encoding="utf-8") as f:
        paras += [e["text"] for e in json.load(f) if e["text"]]
    text, target = [], int(mb * 1e6)
    size = 0
    while size < target:
        rng.shuffle(paras)
        for p in paras:
            text.append(p)
            size += len(p.encode("utf-8")) + 2
            if size >= target:
                break
    with open(out, "w", encoding="utf-8", newline="") as f:
        f.write("\n\n".join(text))
    print(f"{out}: {size / 1e6:.2f} MB, {len(text)} paragraphs")


def _byte_decoder():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _script(ch):
    cp = ord(ch)
    for lo, hi, name in [(0x0400, 0x04FF, "cyrillic"), (0x0600, 0x06FF, "arabic"), (0x0900, 0x097F, "devanagari"),
                         (0x0E00, 0x0E7F, "thai"), (0x3040, 0x30FF, "kana"), (0x4E00, 0x9FFF, "han"),
                         (0xAC00, 0xD7A3, "hangul"), (0x00C0, 0x024F, "latin")]:
        if lo <= cp <= hi:
            return name
    return "other"


def hf(args):
    from tokenizers import Tokenizer, __version__

    with open(args.text, encoding="utf-8", newline="") as f:
        text = f.read()
    nbytes = len(text.encode("utf-8"))
    cold, warm = [], []
    for _ in range(args.runs):
        tok = Tokenizer.from_file(args.tokenizer)
        t0 = time.perf_counter()
        tok.encode(text, add_special_tokens=False)
        cold.append(time.perf_counter() - t0)
    tok = Tokenizer.from_file(args.tokenizer)
    for _ in range(args.runs):
        t0 = time.perf_counter()
        ids = tok.encode(text, add_special_tokens=False).ids
        warm.append(time.perf_counter() - t0)
    with open(args.ours_ids) as f:
        ours_ids = json.load(f)
    same = ours_ids == ids
    if not same:
        first = next((i for i, (a, b) in enumerate(zip(ours_ids, ids)) if a != b), min(len(ours_ids), len(ids)))
        print(f"MISMATCH: earshot and tokenizers differ at id {first} ({len(ours_ids)} vs {len(ids)} ids)",
              file=sys.stderr)
    ours = json.loads(args.ours_bench)
    hc, hw = statistics.median(cold), statistics.median(warm)
    rows = [
        ("cold (fresh BPE cache per run)", ours["cold_s"], hc),
        ("warm (tokenizer reused)", ours["warm_s"], hw),
    ]
    print(f"text: {nbytes / 1e6:.2f} MB, {len(ids)} ids, identical ids: {same}; tokenizers {__version__}, "
          f"median of {args.runs} runs, one thread")
    print("| encode | earshot MB/s | tokenizers MB/s | earshot / tokenizers |")
    print("|---|---|---|---|")
    for name, o, h in rows:
        print(f"| {name} | {nbytes / o / 1e6:.1f} | {nbytes / h / 1e6:.1f} | {h / o:.2f}x |")
    print(json.dumps({"bytes": nbytes, "ids": len(ids), "identical": same, "earshot_cold_s": ours["cold_s"],
                      "earshot_warm_s": ours["warm_s"], "tokenizers_cold_s": hc, "tokenizers_warm_s": hw}))
    return 0 if same else 1


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-text")
    m.add_argument("out")
    m.add_argument("--mb", type=float, default=1.5)
    h = sub.add_parser("hf")
    h.add_argument("tokenizer")
    h.add_argument("text")
    h.add_argument("--runs", type=int, default=10)
    h.add_argument("--ours-ids", required=True)
    h.add_argument("--ours-bench", required=True)
    args = ap.parse_args()
    if args.cmd == "make-text":
        make_text(args.out, args.mb)
        return 0
    return hf(args)


if __name__ == "__main__":
    sys.exit(main())
