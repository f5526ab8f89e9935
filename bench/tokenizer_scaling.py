"""Encode time per MB of prompt for the shipped vocabularies (issue 16: a multi-MB prompt
must tokenize in linear time): SmolLM2-135M (GGUF byte-level BPE) and Gemma 3 270M (GGUF
SentencePiece), edgeformer's Python tokenizers, at 1, 2 and 4 MB of prose (README words:
the word / piece caches hit), of random 3-10 letter words (they miss) and at 0.5, 1 and
2 MB of one long word (a single run of merges, the worst case).

    python bench/tokenizer_scaling.py
Writes bench/results/tokenizer_scaling.json and prints a markdown table.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1_000_000


def _tokenizer(name: str):
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
    from edgeformer.models.shipped import resolve_model
    return tokenizer_from_checkpoint(load_checkpoint(resolve_model(name), validate=False))


def _prose(n_bytes: int) -> str:
    rng = random.Random(0)
    words = (ROOT / "README.md").read_text(encoding="utf-8").split()
    out, size = [], 0
    while size < n_bytes:
        w = rng.choice(words)
        out.append(w)
        size += len(w.encode()) + 1
    return " ".join(out).encode()[:n_bytes].decode("utf-8", "ignore")


def _random_words(n_bytes: int) -> str:
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out, size = [], 0
    while size < n_bytes:
        w = "".join(rng.choices(letters, k=rng.randint(3, 10)))
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n_bytes]


TEXTS = {"prose": ((1, 2, 4), _prose), "random words": ((1, 2, 4), _random_words),
         "one word": ((0.5, 1, 2), lambda n: "a" * n)}


def main() -> None:
    rows = []
    for name in ("smollm2-135m-instruct", "gemma3-270m"):
        tok = _tokenizer(name)
        tok.encode("warm up " * 1000)   # builds what is built on first use
        for kind, (sizes, make) in TEXTS.items():
            for mb in sizes:
                text = make(int(mb * MB))
                if hasattr(tok._model, "_cache"):
                    tok._model._cache.clear()
                t0 = time.perf_counter()
                ids = tok.encode(text)
                s = time.perf_counter() - t0
                rows.append({"model": name, "kind": tok.kind, "text": kind, "mb": mb, "seconds": round(s, 2),
                             "s_per_mb": round(s / mb, 2), "tokens": len(ids)})
                print(rows[-1], flush=True)
    (ROOT / "bench" / "results" / "tokenizer_scaling.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("| model | vocab | text | MB | s | s/MB | tokens |\n| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['kind']} | {r['text']} | {r['mb']} | {r['seconds']} | {r['s_per_mb']} | {r['tokens']} |")


if __name__ == "__main__":
    main()
