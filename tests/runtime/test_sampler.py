"""Sampler: validation, seeded reproducibility, truncation sets and distributions checked
against Hugging Face transformers' logits warpers, penalties against HF and a hand
computation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgeformer.errors import InputError
from edgeformer.quant.metrics import log_softmax
from edgeformer.runtime.sampler import (SamplingParams, apply_processors, candidates, make_logits_processors,
                                        make_rng, make_sampler, top_logprobs)

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")


@pytest.mark.parametrize("kw", [
    dict(max_tokens=0), dict(max_tokens=-3), dict(max_tokens=2.5), dict(max_tokens=True),
    dict(temperature=-0.1), dict(temperature=float("nan")), dict(temperature=float("inf")),
    dict(top_k=-1), dict(top_k=1.5), dict(top_p=0.0), dict(top_p=1.01), dict(min_p=1.0), dict(min_p=-0.1),
    dict(repetition_penalty=0.0), dict(frequency_penalty=2.5), dict(presence_penalty=-2.1),
    dict(penalty_last_n=-2), dict(seed=-1), dict(seed=1.0), dict(top_logprobs=21), dict(top_logprobs=-1),
    dict(logit_bias={"x": 1.0}), dict(logit_bias={-1: 1.0}), dict(logit_bias={3: float("nan")}),
    dict(stop=("",)), dict(stop=(3,)), dict(stop_token_ids=(-1,)),
])
def test_params_rejects_bad_values(kw):
    with pytest.raises(InputError):
        SamplingParams(**kw)


def test_params_normalizes():
    p = SamplingParams(logit_bias={"5": -100, 2: 1.5}, stop="END", stop_token_ids=[7])
    assert p.logit_bias == ((2, 1.5), (5, -100.0))
    assert p.stop == ("END",) and p.stop_token_ids == (7,)
    hash(p)  # frozen and hashable
    with pytest.raises(InputError):
        p.check_vocab(5)   # bias on id 5 with a vocabulary of 5


def _hf_filtered(logits: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float) -> np.ndarray:
    """HF transformers' warpers in HF's order: temperature, top-k, top-p, min-p -> probs."""
    s = torch.tensor(logits, dtype=torch.float64)[None]
    ids = torch.zeros((1, 1), dtype=torch.long)
    s = lp.TemperatureLogitsWarper(temperature)(ids, s)
    if top_k:
        s = lp.TopKLogitsWarper(top_k)(ids, s)
    if top_p < 1:
        s = lp.TopPLogitsWarper(top_p)(ids, s)
    if min_p:
        s = lp.MinPLogitsWarper(min_p)(ids, s)
    return torch.softmax(s, -1)[0].numpy()


def _chi2_critical(df: int, z: float = 3.719) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile; z=3.719 is the standard
    normal 1 - 1e-4 quantile, so a correct sampler fails with probability ~1e-4."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


CASES = [
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=0.7, top_k=5, top_p=1.0, min_p=0.0),
    dict(temperature=1.3, top_k=0, top_p=0.8, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1),
    dict(temperature=0.9, top_k=12, top_p=0.9, min_p=0.05),
]


@pytest.mark.parametrize("case", CASES)
def test_truncation_matches_hf_and_distribution(case):
    rng = np.random.default_rng(123)
    logits = (rng.standard_normal(40) * 2).astype(np.float32)
    ref = _hf_filtered(logits, **case)
    allowed = set(np.flatnonzero(ref > 0).tolist())

    ids, p = candidates(logits, **case)
    assert set(ids.tolist()) == allowed
    np.testing.assert_allclose(p, ref[ids], rtol=1e-6, atol=1e-9)

    params = SamplingParams(seed=7, **case)
    sample = make_sampler(params)
    g = make_rng(params.seed)
    n = 20000
    draws = np.array([sample(logits, g) for _ in range(n)])
    assert set(np.unique(draws).tolist()) <= allowed            # never outside the kept set
    counts = np.bincount(draws, minlength=logits.size)[sorted(allowed)]
    expected = ref[sorted(allowed)] * n
    if len(allowed) > 1:
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < _chi2_critical(len(allowed) - 1), (chi2, counts, expected)
    # and a plain total-variation bound: expected TV here is < 0.01 (sqrt(K/N) scale)
    assert 0.5 * np.abs(counts / n - ref[sorted(allowed)]).sum() < 0.03


def test_greedy_is_argmax_after_processors():
    logits = np.array([1.0, 3.0, 2.9, -1.0], dtype=np.float32)
    s = make_sampler(SamplingParams(temperature=0))
    assert s(logits, make_rng(0)) == 1
    params = SamplingParams(temperature=0, repetition_penalty=1.2)   # 3.0/1.2 < 2.9
    procs = make_logits_processors(params)
    out = apply_processors(procs, np.array([1, 1, 0]), logits)
    assert make_sampler(params)(out, make_rng(0)) == 2


def test_seeded_reproducibility():
    logits = np.random.default_rng(1).standard_normal(1000).astype(np.float32)
    params = SamplingParams(seed=42, temperature=1.0, top_p=0.95, top_k=0, min_p=0.0)
    a = [make_sampler(params)(logits, g) for g in [make_rng(42)] for _ in range(300)]
    b = [make_sampler(params)(logits, g) for g in [make_rng(42)] for _ in range(300)]
    c = [make_sampler(params)(logits, g) for g in [make_rng(43)] for _ in range(300)]
    assert a == b
    assert a != c


def test_repetition_penalty_matches_hf():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal(50).astype(np.float32)
    context = np.array([1, 5, 5, 7, 9, 3, 12, 40, 7])
    params = SamplingParams(repetition_penalty=1.3, penalty_last_n=-1)
    ours = apply_processors(make_logits_processors(params), context, logits)
    hf = lp.RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(context)[None], torch.tensor(logits)[None])[0]
    np.testing.assert_allclose(ours, hf.numpy(), rtol=1e-6)
    # the window: only the last 3 tokens (12, 40, 7) are penalized
    params = SamplingParams(repetition_penalty=1.3, penalty_last_n=3)
    ours = apply_processors(make_logits_processors(params), context, logits)
    hf = lp.RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor(context[-3:])[None], torch.tensor(logits)[None])[0]
    np.testing.assert_allclose(ours, hf.numpy(), rtol=1e-6)


def test_frequency_presence_penalty_by_hand():
    logits = np.array([1.0, 2.0, -0.5, 0.25, 3.0], dtype=np.float32)
    context = np.array([1, 1, 1, 2, 4])
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25, penalty_last_n=-1)
    out = apply_processors(make_logits_processors(params), context, logits)
    # token 1 seen 3x: 2 - 3*0.5 - 0.25; token 2 once: -0.5 - 0.5 - 0.25; token 4 once: 3 - 0.75
    np.testing.assert_allclose(out, [1.0, 0.25, -1.25, 0.25, 2.25], rtol=1e-6)
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25, penalty_last_n=2)   # window [2, 4]
    out = apply_processors(make_logits_processors(params), context, logits)
    np.testing.assert_allclose(out, [1.0, 2.0, -1.25, 0.25, 2.25], rtol=1e-6)
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25, penalty_last_n=0)   # off
    assert make_logits_processors(params) == []


def test_logit_bias_bans_and_forces():
    logits = np.zeros(6, dtype=np.float32)
    params = SamplingParams(logit_bias={0: -100, 1: -100, 2: -100, 3: -100, 4: -100}, seed=0, temperature=1.0)
    out = apply_processors(make_logits_processors(params), np.array([], dtype=np.int64), logits)
    g = make_rng(0)
    assert {make_sampler(params)(out, g) for _ in range(200)} == {5}


def test_all_banned_is_an_error():
    logits = np.full(4, -np.inf, dtype=np.float32)
    with pytest.raises(InputError):
        candidates(logits, 1.0)


def test_logprobs_helpers():
    logits = np.array([0.0, 1.0, 2.0, 2.0], dtype=np.float32)
    ls = log_softmax(logits)
    ref = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), -1).numpy()
    np.testing.assert_allclose(ls, ref, rtol=1e-12)
    assert [t for t, _ in top_logprobs(ls, 3)] == [2, 3, 1]
    assert top_logprobs(ls, 0) == []


@pytest.mark.parametrize("case", [dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
                                  dict(temperature=0.6, top_k=0, top_p=0.5, min_p=0.0),
                                  dict(temperature=3.0, top_k=0, top_p=0.999, min_p=0.0),   # mass beyond 1024
                                  dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.02),
                                  dict(temperature=0.8, top_k=0, top_p=0.95, min_p=0.05),
                                  dict(temperature=1.0, top_k=300, top_p=0.9, min_p=0.0)])
def test_truncation_big_vocab_matches_hf(case):
    """A 50k vocabulary exercises the pre-selection paths (no full sort)."""
    rng = np.random.default_rng(5)
    logits = (rng.standard_normal(50_000) * 3).astype(np.float32)
    logits[rng.integers(0, 50_000, 100)] = -np.inf          # banned tokens stay banned
    ref = _hf_filtered(logits, **case)
    ids, p = candidates(logits, **case)
    assert set(ids.tolist()) == set(np.flatnonzero(ref > 0).tolist())
    np.testing.assert_allclose(p, ref[ids], rtol=1e-6, atol=1e-12)
    assert np.all(np.diff(p) <= 0)
