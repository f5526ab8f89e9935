"""A short deterministic fuzz pass of each target (bench/fuzz.py, mutate engine, seed 0):
a few hundred mutated inputs in the bounded worker. Any crash fails."""
from __future__ import annotations

import pytest

from ._harness import load_harness

RUNS = {"gguf": 400, "hf": 300, "ct2": 400, "onnx": 200, "audio": 400, "image": 400, "tokenizer": 200,
        "chat_template": 200}


@pytest.mark.parametrize("target", sorted(RUNS))
def test_short_pass(target):
    fz = load_harness()
    tgt = fz.fuzz_targets.TARGETS[target]
    if not fz.fuzz_targets.seed_corpus(tgt, fz._cache()):
        pytest.skip(f"{target}: the shipped models its seeds come from are not installed")
    rep = fz.fuzz(target, RUNS[target], seed=0, out=None, log_every=0, minimize_crashes=False)
    assert rep.runs == RUNS[target]
    assert rep.outcomes.get("ok", 0) + sum(v for k, v in rep.outcomes.items() if k.startswith("error:")) > 0
    crashes = [(exc, site, c["msg"][:120]) for (exc, site), c in rep.crashes.items()]
    assert not crashes, crashes
