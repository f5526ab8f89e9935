"""Speculative sampling leaves the output distribution unchanged.

On a stand-in model with a 6-token vocabulary whose logits we know exactly, thousands
of seeded speculative generations of 3 tokens are drawn; the empirical distribution of
the first token and of the first two tokens must match the target distribution computed
here from the logits (temperature, top-k and a repetition penalty written out directly,
not through the sampler module). Pearson chi-square at alpha = 1e-3 (cells expecting < 5
draws are pooled; the p-value comes from torch's regularized incomplete gamma). The
draws are seeded, so the outcome is deterministic. The same check must fail when the
accept rule is broken (always accept the draft)."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.runtime import speculative
from edgeformer.runtime.engine import Engine
from edgeformer.runtime.sampler import SamplingParams
from edgeformer.runtime.speculative import SpeculativeConfig

from support.fakes import ByteTokenizer, FakeModel

torch = pytest.importorskip("torch")

V = 6
ALPHA = 1e-3
N_DRAWS = 3000
PROMPT = [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]    # repetitive: prompt lookup has drafts
TEMP, TOP_K, REP = 0.9, 4, 1.3


def _target(seed: int) -> FakeModel:
    return FakeModel(seed=seed, vocab=V, scale=1.0)


def _dist(model: FakeModel, ctx: list[int], procs: bool) -> np.ndarray:
    """Next-token distribution after ctx: repetition penalty over the whole context,
    temperature, top-k, softmax — written out, independent of runtime/sampler.py."""
    x = model.reference_logits(ctx).astype(np.float64)
    if procs:
        seen = sorted(set(ctx))
        x[seen] = np.where(x[seen] > 0, x[seen] / REP, x[seen] * REP)
        x = x / TEMP
        kth = np.sort(x)[-TOP_K]
        x = np.where(x >= kth, x, -np.inf)
    e = np.exp(x - x.max())
    return e / e.sum()


def _params(procs: bool, seed: int) -> SamplingParams:
    if procs:
        return SamplingParams(temperature=TEMP, top_k=TOP_K, top_p=1.0, min_p=0.0, repetition_penalty=REP,
                              penalty_last_n=-1, max_tokens=3, seed=seed, ignore_eos=True)
    return SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=3, seed=seed, ignore_eos=True)


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square goodness of fit; cells expecting < 5 are pooled into one."""
    exp = probs * counts.sum()
    small = exp < 5
    obs_c = np.append(counts[~small], counts[small].sum())
    exp_c = np.append(exp[~small], exp[small].sum())
    keep = exp_c > 0
    obs_c, exp_c = obs_c[keep], exp_c[keep]
    stat = float(((obs_c - exp_c) ** 2 / exp_c).sum())
    df = obs_c.size - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(stat / 2, dtype=torch.float64)))


def _draw(cfg_factory, procs: bool, n: int = N_DRAWS) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Counts of the first token and of the first two over n seeded generations, and
    (drafted, accepted) summed over them."""
    cfg = cfg_factory()
    drafted = accepted = 0
    eng = Engine(_target(1), ByteTokenizer(), None, "numpy", n_ctx=64, speculative=cfg)
    first = np.zeros(V, dtype=np.int64)
    pairs = np.zeros((V, V), dtype=np.int64)
    for s in range(n):
        a, b = eng.generate(PROMPT, _params(procs, s)).token_ids[:2]
        first[a] += 1
        pairs[a, b] += 1
        drafted += cfg.last_stats.drafted
        accepted += cfg.last_stats.accepted
    return first, pairs, (drafted, accepted)


def _reference(procs: bool) -> tuple[np.ndarray, np.ndarray]:
    m = _target(1)
    p1 = _dist(m, PROMPT, procs)
    p2 = np.array([[p1[a] * _dist(m, PROMPT + [a], procs)[b] for b in range(V)] for a in range(V)])
    return p1, p2


CONFIGS = {
    # a different model as the draft: q != p, many rejections and resamples
    "draft_model": lambda: SpeculativeConfig.draft_model(FakeModel(seed=50, vocab=V, scale=1.0), 2),
    # deterministic drafts (q = one-hot) from the repeated prompt
    "prompt_lookup": lambda: SpeculativeConfig.prompt_lookup(2, max_ngram=2),
}


@pytest.mark.parametrize("procs", [False, True], ids=["plain", "temp+topk+penalty"])
@pytest.mark.parametrize("which", list(CONFIGS))
def test_sampled_distribution_matches_target(which, procs):
    first, pairs, (drafted, accepted) = _draw(CONFIGS[which], procs)
    p1, p2 = _reference(procs)
    # the draft was exercised: hundreds of drafts accepted, thousands rejected
    assert 0.05 * drafted < accepted < 0.9 * drafted
    # tokens the target never emits (top-k) never appear
    assert first[p1 == 0].sum() == 0 and pairs[p2 == 0].sum() == 0
    assert _chi2_pvalue(first, p1) > ALPHA
    assert _chi2_pvalue(pairs.ravel(), p2.ravel()) > ALPHA


@pytest.mark.parametrize("which", list(CONFIGS))
def test_broken_accept_rule_is_detected(which, monkeypatch):
    """Accepting every draft emits the draft's distribution instead: the test must see it."""
    monkeypatch.setattr(speculative, "accept_or_resample", lambda p, tok, q, rng: (True, tok))
    first, pairs, _ = _draw(CONFIGS[which], False, n=1000)
    p1, p2 = _reference(False)
    assert min(_chi2_pvalue(first, p1), _chi2_pvalue(pairs.ravel(), p2.ravel())) < ALPHA


def test_acceptance_rate_matches_theory():
    """With the draft model, P(accept d1) = sum_x min(p(x), q(x)) (Leviathan et al., eq. 1)."""
    q_model = FakeModel(seed=50, vocab=V, scale=1.0)
    p1 = _dist(_target(1), PROMPT, False)
    q1 = _dist(q_model, PROMPT, False)
    beta = float(np.minimum(p1, q1).sum())
    cfg = SpeculativeConfig.draft_model(q_model, 1)
    eng = Engine(_target(1), ByteTokenizer(), None, "numpy", n_ctx=64, speculative=cfg)
    n, acc = 2000, 0
    for s in range(n):
        eng.generate(PROMPT, SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=2, seed=s,
                                            ignore_eos=True))
        acc += cfg.last_stats.accepted    # max_tokens=2: one round with one draft, then done
    # binomial standard error at n=2000 is <= 0.0112; 4.5 sigma
    assert abs(acc / n - beta) < 0.05, (acc / n, beta)

