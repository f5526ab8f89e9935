"""Speculative decoding inside the continuous-batching `BatchEngine` (the server's engine):
many requests decoded together, each verifying its own drafts in the batched step, must
give exactly the tokens of non-speculative batching (greedy), for prompt lookup, a
perfect draft (the target itself) and a noisy draft (accepts and rejects mid-run); on
the cpu backend, whose kernels are row-invariant (attention included), the logprobs are
bit-identical too. Stops, stop ids and budgets inside accepted runs cut exactly; the
paged cache holds exactly the committed tokens; a failing drafter fails only its
request; cancels free every block."""
from __future__ import annotations


import numpy as np
import pytest

from support.families import BY_NAME, VOCAB, checkpoint_from_hf_dir, hf_model, save_hf  # noqa: E402

from edgeformer.backends import get_backend  # noqa: E402
from edgeformer.errors import InputError  # noqa: E402
from edgeformer.models import Decoder  # noqa: E402
from edgeformer.runtime.drafters import Draft  # noqa: E402
from edgeformer.runtime.sampler import SamplingParams  # noqa: E402
from edgeformer.runtime.scheduler import BatchEngine, Scheduler  # noqa: E402
from edgeformer.runtime.speculative import SpeculativeConfig  # noqa: E402

from support.fakes import ByteTokenizer  # noqa: E402

pytest.importorskip("torch")
N_CTX = 96


def _has_numba() -> bool:
    try:
        import numba  # noqa: F401
        return True
    except ImportError:
        return False


BACKENDS = ["numpy"] + (["cpu"] if _has_numba() else [])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{(family, backend): Decoder} and {(family, backend): noisy copy}; gemma2 has sliding
    windows of 11 tokens (drafts are rolled back across its freed blocks)."""
    import torch
    out, noisy = {}, {}
    for fam in ("qwen2", "gemma2"):
        hf = hf_model(BY_NAME[fam], seed=3)
        d = save_hf(hf, tmp_path_factory.mktemp(fam))
        torch.manual_seed(4)
        with torch.no_grad():
            for prm in hf.parameters():
                prm.add_(0.5 * prm.std() * torch.randn_like(prm))
        dn = save_hf(hf, tmp_path_factory.mktemp(fam + "_noisy"))
        for be in BACKENDS if fam == "qwen2" else ["numpy"]:
            out[fam, be] = Decoder(checkpoint_from_hf_dir(d), get_backend(be))
            noisy[fam, be] = Decoder(checkpoint_from_hf_dir(dn), get_backend(be))
    return out, noisy


def _engine(dec, spec=None, **kw) -> BatchEngine:
    c = dec.config
    page = 4 * c.n_kv_heads * c.head_dim * 2 * 4          # f32, block_size 4
    kw = {"kv_dtype": "f32", "block_size": 4, "prefill_chunk": 8, "max_batch": 8, **kw}
    return BatchEngine(dec, ByteTokenizer(), kv_budget_bytes=3000 * page, n_ctx=N_CTX, speculative=spec, **kw)


def _prompts(n: int = 12) -> list[list[int]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i % 2:   # repetitive: prompt lookup finds matches
            seg = rng.integers(0, VOCAB, int(rng.integers(3, 9))).tolist()
            out.append((seg * 4)[:int(rng.integers(8, 30))])
        else:
            out.append(rng.integers(0, VOCAB, int(rng.integers(1, 30))).tolist())
    return out


def _run(eng: BatchEngine, prompts, params) -> list[list[tuple]]:
    """Every request submitted at once (they join one batch, 8 at a time); each one's
    events as (token, text, index, finish_reason, is_stop, logprob, top)."""
    hs = [eng.submit(p, params) for p in prompts]
    eng.run_until_idle()
    return [[(e.token_id, e.text, e.index, e.finish_reason, e.is_stop_token,
              None if e.logprob is None else (e.logprob.logprob, e.logprob.top)) for e in h.events()] for h in hs]


def _tokens(events) -> list[list[int]]:
    return [[e[0] for e in evs if not e[4]] for evs in events]


def _check_idle(eng: BatchEngine) -> None:
    m = eng.metrics()
    assert m["running"] == 0 and m["queued"] == 0 and m["kv_blocks_used"] == 0, m


def _config(which: str, models, fam: str, be: str, k: int = 4) -> SpeculativeConfig:
    out, noisy = models
    if which == "lookup":
        return SpeculativeConfig.prompt_lookup(k)
    return SpeculativeConfig.draft_model(out[fam, be] if which == "same" else noisy[fam, be], k)


@pytest.mark.parametrize("fam, be", [("qwen2", b) for b in BACKENDS] + [("gemma2", "numpy")])
@pytest.mark.parametrize("which", ["lookup", "same", "noisy"])
def test_batched_greedy_equals_plain_batching(models, fam, be, which):
    dec = models[0][fam, be]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=True, top_logprobs=2)
    prompts = _prompts()
    plain = _run(_engine(dec), prompts, params)
    cfg = _config(which, models, fam, be)
    eng = _engine(dec, cfg)
    spec = _run(eng, prompts, params)
    assert _tokens(spec) == _tokens(plain)
    if be == "cpu":     # row-invariant kernels: a verify row has a decode row's bits
        assert spec == plain
    else:               # numpy attention is a BLAS matmul: rounding may differ across row counts
        for a, b in zip(spec, plain):
            assert [e[:5] for e in a] == [e[:5] for e in b]
            np.testing.assert_allclose([e[5][0] for e in a], [e[5][0] for e in b], rtol=1e-4, atol=1e-5)
    m = eng.metrics()
    assert m["spec_rounds"] > 0 and m["spec_draft_tokens"] >= m["spec_accepted_tokens"] > 0
    rate = m["spec_accepted_tokens"] / m["spec_draft_tokens"]
    if which == "same":
        assert rate > 0.95
    elif which == "noisy":
        assert rate < 1.0      # rejections mid-run happened
    _check_idle(eng)
    # the drafters forked per sequence were kept for reuse, at most one per batch slot
    assert len(eng._free_drafters) <= eng.scheduler.max_batch
    # prefix blocks committed by verify rounds are right: a follow-up that reuses them
    # gives plain batching's answer
    follow = prompts[1] + _tokens(plain)[1] + [5, 6]
    p2 = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    assert _tokens(_run(eng, [follow], p2)) == _tokens(_run(_engine(dec), [follow], p2))
    assert eng.metrics()["cached_prompt_tokens"] > 0


@pytest.mark.parametrize("which", ["lookup", "same"])
def test_stops_stop_ids_and_budgets_cut_inside_accepted_runs(models, which):
    dec = models[0]["qwen2", "numpy"]
    prompts = _prompts(4)
    eng = _engine(dec, _config(which, models, "qwen2", "numpy", k=6))
    base = _engine(dec)
    full = _run(base, prompts, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))
    cases = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (1, 2, 3, 5, 8, 13)]
    # a stop id and a stop string taken from the middle of a plain output
    toks = _tokens(full)[1]
    cases.append(SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop_token_ids=(toks[9],)))
    text = "".join(e[1] for e in full[1])
    cases.append(SamplingParams(temperature=0, max_tokens=30, ignore_eos=True, stop=(text[10:13],)))
    for p in cases:
        assert _run(eng, prompts, p) == _run(base, prompts, p), p
        _check_idle(eng)


def test_cache_holds_exactly_the_committed_tokens(models):
    """After every step, each running sequence's paged view holds exactly its computed
    tokens (no draft K/V left behind), and the computed tokens are the sequence's."""
    dec = models[0]["gemma2", "numpy"]
    eng = _engine(dec, _config("noisy", models, "gemma2", "numpy", k=3))
    hs = [eng.submit(p, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)) for p in _prompts(6)]
    while eng.step():
        for st in eng.scheduler.running.values():
            assert st.view.offset == st.computed == len(st.view.tokens)
            assert st.view.tokens == st.tokens[:st.computed]
            assert len(st.tokens) <= st.max_len
    assert all(h.finish_reason == "length" for h in hs)
    _check_idle(eng)


def test_sampled_is_seeded_and_reproducible(models):
    dec = models[0]["qwen2", "numpy"]
    p = SamplingParams(temperature=0.8, top_k=0, top_p=1.0, min_p=0.0, max_tokens=20, ignore_eos=True, seed=5)
    for which in ("lookup", "noisy"):
        a = _run(_engine(dec, _config(which, models, "qwen2", "numpy")), _prompts(4), p)
        b = _run(_engine(dec, _config(which, models, "qwen2", "numpy")), _prompts(4), p)
        assert a == b and all(len(t) == 20 for t in _tokens(a))


class _FailingDrafter:
    """Raises for sequences holding token 7 after their prompt; drafts nothing otherwise."""

    def bind(self, vocab_size, n_ctx):
        pass

    def propose(self, seq, k, picker):
        if 7 in seq.tolist():
            raise RuntimeError("drafter exploded")
        return Draft([])


def test_failing_drafter_fails_only_its_request(models):
    dec = models[0]["qwen2", "numpy"]
    eng = _engine(dec, SpeculativeConfig(_FailingDrafter(), 3))
    base = _engine(dec)
    p = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    good = [[1, 2, 3], [4, 5, 6, 8]]
    hs = [eng.submit(x, p) for x in good + [[7, 1, 2]]]
    eng.run_until_idle()
    assert [h.result().token_ids for h in hs[:2]] == _tokens(_run(base, good, p))
    with pytest.raises(RuntimeError, match="exploded"):
        hs[2].result()
    _check_idle(eng)
    assert _tokens(_run(eng, good, p)) == _tokens(_run(base, good, p))   # still serving


def test_cancel_mid_run_frees_blocks(models):
    dec = models[0]["qwen2", "numpy"]
    eng = _engine(dec, _config("same", models, "qwen2", "numpy"))
    h = eng.submit([1, 2, 3], SamplingParams(temperature=0, max_tokens=60, ignore_eos=True))
    other = eng.submit([4, 5], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    for _ in range(4):
        eng.step()
    h.cancel()
    eng.run_until_idle()
    evs = list(h.events())
    assert evs[-1].finish_reason == "cancelled" and 0 < len(evs) < 60
    assert len(other.result().token_ids) == 10
    _check_idle(eng)


def test_mismatched_draft_and_step_budget(models):
    from support.fakes import FakeModel
    dec = models[0]["qwen2", "numpy"]
    with pytest.raises(InputError, match="vocabulary"):
        _engine(dec, SpeculativeConfig.draft_model(FakeModel(), 2))
    eng = _engine(dec, SpeculativeConfig.prompt_lookup(5), max_batch=4, prefill_chunk=8)
    # each decode may add 5 drafts: room for a full batch of verifies beside one chunk
    assert eng.scheduler.max_step_tokens == 8 + 4 * 6
    with pytest.raises(InputError):
        Scheduler(eng.cache, lookahead=-1)
