"""Which grammar engine for constrained decoding: per-token mask cost on the real vocabularies.

For llguidance and xgrammar, on the shipped SmolLM2 (49,152 tokens) and Gemma 3 (262,144)
vocabularies: the one-off tokenizer setup, the compile time of a JSON schema (what the
first token waits for), and the time of one token-mask computation along a valid output
(the mask for each position of a JSON document the schema accepts, tokenized by the
model's own tokenizer), median and p95 over the document's tokens, `-r` passes.

    python bench/grammar_engines.py [-r 5]

Writes bench/results/grammar_engines.json and a markdown table.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["admin", "user", "guest"]}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city"]},
        "score": {"type": "number"},
    },
    "required": ["name", "age", "tags", "address"],
}
DOC = ('{"name": "Alice", "age": 34, "email": "alice@example.com", "tags": ["admin", "user"], '
       '"address": {"city": "Paris", "zip": "75001"}, "score": 0.875}')


def vocab(name: str) -> tuple[list[bytes], int, Any]:
    """(token bytes by id, control tokens marked with a 0xff prefix as llguidance expects;
    eos id; our tokenizer) of a shipped model."""
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
    from edgeformer.models.shipped import resolve_model
    tok = tokenizer_from_checkpoint(load_checkpoint(resolve_model(name)))
    toks = [(b"\xff" + tok.token_text(i).encode()) if tok.is_control(i) else tok.piece(i)
            for i in range(tok.vocab_size)]
    return toks, int(tok.eos_id), tok


def bench_llguidance(toks: list[bytes], eos: int, ids: list[int], reps: int) -> dict[str, Any]:
    import llguidance
    import llguidance.numpy as lnp

    class Wrap:
        eos_token_id, bos_token_id, tokens, special_token_ids = eos, None, toks, []

        def __call__(self, s: bytes) -> list[int]:
            return ids_of(s)
    t0 = time.perf_counter()
    lt = llguidance.LLTokenizer(llguidance.TokenizerWrapper(Wrap()))
    setup = time.perf_counter() - t0
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    mask = lnp.allocate_token_bitmask(1, len(toks))
    compiles, per_tok = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        m = llguidance.LLMatcher(lt, grammar)
        lnp.fill_next_token_bitmask(m, mask)
        compiles.append(time.perf_counter() - t0)
        for i, t in enumerate(ids):
            if i:
                t0 = time.perf_counter()
                lnp.fill_next_token_bitmask(m, mask)
                per_tok.append(time.perf_counter() - t0)
            assert (mask[0, t // 32] >> (t % 32)) & 1, f"llguidance masked a valid token at {i}"
            assert m.consume_token(t), m.get_error()
    return _summary(setup, compiles, per_tok)


def bench_xgrammar(toks: list[bytes], eos: int, ids: list[int], reps: int) -> dict[str, Any]:
    import xgrammar as xgr
    t0 = time.perf_counter()
    info = xgr.TokenizerInfo([t if not t.startswith(b"\xff") else b"" for t in toks], vocab_type=xgr.VocabType.RAW,
                             vocab_size=len(toks), stop_token_ids=[eos])
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    setup = time.perf_counter() - t0
    mask = xgr.allocate_token_bitmask(1, len(toks))
    compiles, per_tok = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        m = xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(SCHEMA)))
        m.fill_next_token_bitmask(mask)
        compiles.append(time.perf_counter() - t0)
        for i, t in enumerate(ids):
            if i:
                t0 = time.perf_counter()
                m.fill_next_token_bitmask(mask)
                per_tok.append(time.perf_counter() - t0)
            assert (int(mask[0, t // 32]) >> (t % 32)) & 1, f"xgrammar masked a valid token at {i}"
            assert m.accept_token(t)
    return _summary(setup, compiles, per_tok)


def _summary(setup: float, compiles: list[float], per_tok: list[float]) -> dict[str, Any]:
    return {"setup_s": setup, "compile_ms": 1e3 * statistics.median(compiles),
            "mask_us_median": 1e6 * statistics.median(per_tok),
            "mask_us_p95": 1e6 * float(np.percentile(per_tok, 95)), "tokens": len(per_tok)}


ids_of: Any = None


def main(argv: list[str] | None = None) -> int:
    global ids_of
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    args = ap.parse_args(argv)
    rows = []
    for model in ("smollm2-135m-instruct", "gemma3-270m"):
        toks, eos, tok = vocab(model)
        ids_of = lambda s, tok=tok: tok.encode(s.decode() if isinstance(s, bytes) else s, add_special=False)  # noqa: E731
        ids = ids_of(DOC)
        for engine, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
            try:
                r = fn(toks, eos, ids, args.repetitions)
            except ImportError as e:
                print(f"{engine}: not installed ({e})", file=sys.stderr)
                continue
            rows.append({"model": model, "vocab": len(toks), "engine": engine, **r})
            print(rows[-1], file=sys.stderr)
    out = Path(__file__).parent / "results" / "grammar_engines.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print("| model | vocab | engine | tokenizer setup s | schema compile ms | mask us median | mask us p95 |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['vocab']} | {r['engine']} | {r['setup_s']:.2f} | {r['compile_ms']:.1f} | "
              f"{r['mask_us_median']:.0f} | {r['mask_us_p95']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
