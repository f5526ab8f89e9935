"""Encode time per MB of prompt for the shipped vocabularies (issue 16: a multi-MB prompt
must tokenize in linear time): SmolLM2-135M (GGUF byte-level BPE) and Gemma 3 270M (GGUF
SentencePiece), edgeformer's Python tokenizers, on prose and on one long word, at 1, 2
and 4 MB (Gemma prose: 0.5, 1, 2 MB; it is the slow one).

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


def main() -> None:
    rows = []
    for name, sizes in (("smollm2-135m-instruct", (1, 2, 4)), ("gemma3-270m", (0.5, 1, 2))):
        tok = _tokenizer(name)
        tok.encode("warm up")
        for kind in ("prose", "one word"):
            for mb in sizes:
                text = _prose(int(mb * MB)) if kind == "prose" else "a" * int(mb * MB)
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
