"""Speculative decoding mechanics on the stand-in models of tests/runtime/fakes.py: the
event stream of a speculative Engine (tokens, text, finish reason, logprobs, stats) must
be the plain Engine's, for every drafter, draft length, stop and budget; both KV caches
must hold exactly what their bookkeeping says after every call."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.errors import InputError
from edgeformer.runtime.drafters import ModelDrafter, PromptLookupDrafter, lookup_ngram
from edgeformer.runtime.engine import Engine
from edgeformer.runtime.sampler import SamplingParams
from edgeformer.runtime.speculative import SpeculativeConfig

from support.fakes import EOS, ByteTokenizer, FakeModel, ScriptedModel


def _plain(model, **kw) -> Engine:
    return Engine(model, ByteTokenizer(), None, "numpy", **kw)


def _spec(model, cfg: SpeculativeConfig, **kw) -> Engine:
    return Engine(model, ByteTokenizer(), None, "numpy", speculative=cfg, **kw)


def _events(eng: Engine, prompt, params):
    return [(e.token_id, e.text, e.index, e.finish_reason, e.is_stop_token,
             None if e.logprob is None else (e.logprob.token_id, e.logprob.logprob, e.logprob.top))
            for e in eng.stream(prompt, params)]


def _configs(seed: int):
    """(name, config factory): a perfect draft, a wrong draft, prompt lookup."""
    return [
        ("same", lambda k: SpeculativeConfig.draft_model(FakeModel(seed=seed), k)),
        ("other", lambda k: SpeculativeConfig.draft_model(FakeModel(seed=seed + 100), k)),
        ("lookup", lambda k: SpeculativeConfig.prompt_lookup(k, max_ngram=3)),
    ]


def _check_caches(eng: Engine) -> None:
    assert eng.session.cache.tokens == eng.session.ids
    d = eng.speculative.drafter
    if isinstance(d, ModelDrafter):
        assert d.session.cache.tokens == d.session.ids


PROMPTS = ["hello there hello there hello", "abcabcabcabc", "x", "the cat sat on the mat; the cat"]


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("which", ["same", "other", "lookup"])
def test_greedy_stream_equals_plain(which, k):
    params = [SamplingParams(temperature=0, max_tokens=37, ignore_eos=True, logprobs=True, top_logprobs=2),
              SamplingParams(temperature=0, max_tokens=23, repetition_penalty=1.3, penalty_last_n=8,
                             frequency_penalty=0.5, logit_bias={ord("a"): 2.0})]
    make = dict(_configs(seed=7))[which]
    cfg = make(k)
    spec = _spec(FakeModel(seed=7), cfg, prefill_chunk=5)
    plain = _plain(FakeModel(seed=7), prefill_chunk=5)
    for prompt in PROMPTS:
        for p in params:
            assert _events(spec, prompt, p) == _events(plain, prompt, p)
            _check_caches(spec)
    if which == "same":
        assert cfg.last_stats.acceptance_rate == 1.0


def test_perfect_draft_runs_few_target_passes():
    model = FakeModel(seed=3)
    cfg = SpeculativeConfig.draft_model(FakeModel(seed=3), 4)
    res = _spec(model, cfg).generate("abc", SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    # BOS + "abc": 3 tokens prefilled, the 4th runs in round one; 50 tokens in rounds of
    # 5 (4 drafts + 1 bonus) = 10 target passes
    assert cfg.last_stats.rounds == 10 and cfg.last_stats.emitted == 50
    assert model.calls == [3] + [5] * 10 and len(res.token_ids) == 50
    _spec(model, cfg).generate("abc", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert cfg.last_stats.emitted == 8 and cfg.last_stats.drafted == 4 + 2   # capped by the budget


@pytest.mark.parametrize("which", ["same", "other", "lookup"])
def test_stop_strings_eos_and_budget_cut_exactly(which):
    """A perfect draft accepts whole runs, so stops and budgets fall inside them."""
    make = dict(_configs(seed=11))[which]
    spec = _spec(FakeModel(seed=11), make(6))
    plain = _plain(FakeModel(seed=11))
    full = plain.generate("Once", SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)).text
    for a, b in [(3, 5), (10, 11), (20, 24), (41, 44)]:
        stop = full[a:b]
        p = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True, stop=(stop,))
        assert _events(spec, "Once", p) == _events(plain, "Once", p)
        _check_caches(spec)
    for n in range(1, 15):
        p = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        assert _events(spec, "Once", p) == _events(plain, "Once", p)
    # EOS (and a stop token id) in the middle of an accepted run
    ids = [1, 2, 3]
    script = [ord(c) for c in "hello world"] + [EOS] + [ord("z")] * 10
    for stop_ids in [(), (ord("w"),)]:
        p = SamplingParams(temperature=0, max_tokens=30, stop_token_ids=stop_ids)
        eng = Engine(ScriptedModel(len(ids), script), ByteTokenizer(), None, "numpy",
                     speculative=SpeculativeConfig.draft_model(ScriptedModel(len(ids), script), 6))
        ref = _plain(ScriptedModel(len(ids), script))
        assert _events(eng, ids, p) == _events(ref, ids, p)


def test_cache_reuse_across_calls():
    """Follow-up prompts reuse the target cache prefix; output equals a fresh plain engine."""
    cfg = SpeculativeConfig.draft_model(FakeModel(seed=5 + 100), 3)
    model = FakeModel(seed=5)
    spec = _spec(model, cfg)
    p = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    first = spec.generate("the quick brown fox", p)
    follow = first.prompt_token_ids + first.token_ids + list(b" jumps")
    again = spec.generate(follow, p)
    assert again.stats.cached_tokens >= len(first.prompt_token_ids)
    assert again.token_ids == _plain(FakeModel(seed=5)).generate(follow, p).token_ids
    _check_caches(spec)
    short = spec.generate(follow[:4], p)          # a prefix of what the caches hold
    assert short.token_ids == _plain(FakeModel(seed=5)).generate(follow[:4], p).token_ids
    spec.reset()
    assert spec.generate(follow[:4], p).token_ids == short.token_ids
    _check_caches(spec)


def test_context_limit_and_short_draft_context():
    """Rounds never overrun n_ctx; a draft whose context is shorter stops drafting."""
    p = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
    plain = _plain(FakeModel(seed=2), n_ctx=40).generate("abcdefghij", p)
    for draft_ctx in (512, 20):
        cfg = SpeculativeConfig.draft_model(FakeModel(seed=2, max_seq_len=draft_ctx), 7)
        res = _spec(FakeModel(seed=2), cfg, n_ctx=40).generate("abcdefghij", p)
        assert res.token_ids == plain.token_ids and res.finish_reason == plain.finish_reason == "length"


def test_sampled_is_reproducible_and_same_model_accepts_all():
    cfg = SpeculativeConfig.draft_model(FakeModel(seed=4), 4)
    eng = _spec(FakeModel(seed=4), cfg)
    p = SamplingParams(temperature=0.8, top_k=20, seed=3, max_tokens=40, ignore_eos=True)
    a = eng.generate("abc", p).token_ids
    assert eng.generate("abc", p).token_ids == a
    # q == p exactly, so min(1, p/q) = 1: every draft is accepted
    assert cfg.last_stats.acceptance_rate == 1.0 and cfg.last_stats.drafted > 0


def test_errors():
    with pytest.raises(InputError, match="vocabulary"):
        _spec(FakeModel(), SpeculativeConfig.draft_model(FakeModel(vocab=300), 2))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InputError, match="num_draft"):
            SpeculativeConfig(PromptLookupDrafter(), bad)
    with pytest.raises(InputError, match="ngram"):
        PromptLookupDrafter(max_ngram=1, min_ngram=2)


def test_forward_failure_rolls_back_both_caches():
    class Flaky(FakeModel):
        fail_at = None

        def forward(self, tokens, cache, last_only=False):
            if self.fail_at is not None and len(self.calls) == self.fail_at:
                cache.tokens.append(-1)      # a partial write, as a real model may leave
                self.calls.append(-1)
                raise KeyboardInterrupt
            return super().forward(tokens, cache, last_only)

    p = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    ref = _plain(FakeModel(seed=9)).generate("hello", p).token_ids
    for fail_target in (True, False):
        target, draft = Flaky(seed=9), Flaky(seed=9)
        eng = _spec(target, SpeculativeConfig(ModelDrafter(draft), 3))
        (target if fail_target else draft).fail_at = 3
        with pytest.raises(KeyboardInterrupt):
            eng.generate("hello", p)
        target.fail_at = draft.fail_at = None
        # the partial write (-1) is gone: each cache holds exactly its bookkeeping's tokens
        _check_caches(eng)
        assert eng.generate("hello", p).token_ids == ref


def _lookup_reference(seq: list[int], k: int, max_n: int, min_n: int) -> list[int]:
    for n in range(max_n, min_n - 1, -1):
        if n >= len(seq):
            continue
        pat = seq[-n:]
        for i in range(len(seq) - n - 1, -1, -1):       # most recent first, suffix excluded
            if seq[i:i + n] == pat:
                return seq[i + n:i + n + k]
    return []


def test_lookup_ngram_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(300):
        seq = rng.integers(0, 4, rng.integers(1, 30)).tolist()
        k, mx = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        mn = int(rng.integers(1, mx + 1))
        assert lookup_ngram(np.array(seq), k, mx, mn) == _lookup_reference(seq, k, mx, mn)
    assert lookup_ngram(np.array([1, 2, 3, 9, 1, 2]), 3) == [3, 9, 1]
    assert lookup_ngram(np.array([5]), 3) == [] and lookup_ngram(np.array([1, 2, 1]), 0) == []


def test_cli_run_flags(monkeypatch, capsys):
    """`edgeformer run --lookup N` / `--draft MODEL`: same text as plain greedy decoding."""
    import edgeformer.api
    from edgeformer.cli import run as run_cmd
    from edgeformer.cli.__main__ import main
    made = []

    def load_engine(args):
        made.append(Engine(FakeModel(seed=9), ByteTokenizer(), None, args.backend, n_ctx=args.n_ctx))
        return made[-1]
    monkeypatch.setattr(run_cmd, "load_engine", load_engine)
    monkeypatch.setattr(edgeformer.api, "load", lambda name, backend, n_ctx: load_engine(
        type("A", (), dict(backend=backend, n_ctx=n_ctx))))
    ref = _plain(FakeModel(seed=9)).generate("hello hello", SamplingParams(temperature=0, max_tokens=30)).text
    for flags in (["--lookup", "3"], ["--draft", "fake-draft", "--draft-n", "2"]):
        assert main(["run", "-p", "hello hello", "--temp", "0", "-n", "30", "--no-stats"] + flags) == 0
        assert capsys.readouterr().out == ref + "\n"
        cfg = made[0].speculative
        assert cfg is not None and cfg.num_draft == int(flags[-1]) and cfg.last_stats.rounds > 0
        made.clear()
    for flags, msg in ((["--lookup", "0"], "--lookup"), (["--draft", "x", "--draft-n", "0"], "--draft-n")):
        assert main(["run", "-p", "x"] + flags) == 1
        assert msg in capsys.readouterr().err and not made
