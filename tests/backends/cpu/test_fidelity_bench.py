"""bench/fidelity.py's core (`measure`: llama.cpp-style KLD chunks, each cpu activation
setting against the numpy reference) on a tiny random Q4_0 llama made here: the int16
default must sit closer to the float reference than llama.cpp's int8 scheme."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from support.random_gguf import random_gguf


BENCH = Path(__file__).resolve().parents[3] / "bench" / "fidelity.py"


def _fidelity():
    spec = importlib.util.spec_from_file_location("bench_fidelity", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_q4_0(tmp_path_factory) -> Path:
    cfg = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=211, max_position_embeddings=128, tie_word_embeddings=False,
               rms_norm_eps=1e-5)
    return random_gguf(tmp_path_factory.mktemp("fidelity"), "llama", cfg, "Q4_0")[1]


def test_chunks_follow_llamacpp() -> None:
    fid = _fidelity()
    cs = fid.chunks(list(range(10, 80)), 32, bos=1)
    assert len(cs) == 2 and all(len(c) == 32 and c[0] == 1 for c in cs)   # the 6-token tail is dropped
    assert cs[1][1] == 10 + 33
    s = fid.scored(32)
    assert (s.start, s.stop) == (16, 31)      # logits n_ctx/2 .. n_ctx-2


def test_int16_closer_to_reference_than_int8(tiny_q4_0: Path) -> None:
    fid = _fidelity()
    ids = np.random.default_rng(0).integers(0, 211, 64).tolist()
    r = fid.measure(tiny_q4_0, ids, engines=("int16", "int8"), n_ctx=32, bos=1)
    assert r["n_chunks"] == 2 and r["n_scored"] == 2 * 15
    e = r["engines"]
    for s in e.values():
        assert s["n"] == 30
        assert all(np.isfinite(s[k]) for k in ("mean_kld", "mean_kld_se", "p99_kld", "max_kld", "top1"))
        assert s["mean_kld"] >= 0 and 0 <= s["top1"] <= 1
    assert 0 < e["int16"]["mean_kld"] < e["int8"]["mean_kld"]
