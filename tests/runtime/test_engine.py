"""Engine mechanics on a stand-in model (tests/runtime/fakes.py): every result is checked
against a from-scratch reference loop (logits recomputed over the whole sequence each
step), so prefill chunking, cache reuse, budgets and stops are tested, not assumed."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.errors import EdgeformerError, InputError
from edgeformer.runtime.engine import Engine
from edgeformer.quant.metrics import log_softmax
from edgeformer.runtime.sampler import SamplingParams, make_rng, make_sampler

from support.fakes import BOS, EOS, EOT, ByteTokenizer, FakeModel, ScriptedModel


def _engine(model=None, **kw) -> Engine:
    return Engine(model or FakeModel(), ByteTokenizer(), None, "numpy", **kw)


def _reference(model: FakeModel, ids: list[int], params: SamplingParams, stop_ids=(EOS, EOT)):
    """Tokens the spec says we get: recompute logits from scratch, sample, stop on EOS."""
    sample, rng = make_sampler(params), make_rng(params.seed)
    seq, out, lps = list(ids), [], []
    for _ in range(params.max_tokens):
        logits = model.reference_logits(seq)
        t = sample(logits, rng)
        if t in stop_ids:
            return out, "stop", lps
        out.append(t)
        lps.append(float(log_softmax(logits)[t]))
        seq.append(t)
    return out, "length", lps


@pytest.mark.parametrize("chunk", [1, 3, 512])
@pytest.mark.parametrize("params", [SamplingParams(temperature=0, max_tokens=40),
                                    SamplingParams(temperature=0.8, top_k=20, seed=5, max_tokens=40)])
def test_generate_matches_reference(chunk, params):
    model = FakeModel(seed=1)
    eng = _engine(model, prefill_chunk=chunk)
    res = eng.generate("hello there", params)
    calls = list(model.calls)
    prompt = ByteTokenizer().encode("hello there")
    ref, reason, _ = _reference(model, prompt, params)
    assert res.token_ids == ref and res.finish_reason == reason
    assert res.prompt_token_ids == prompt
    assert res.text == ByteTokenizer().decode(ref)
    assert max(calls) <= chunk and calls[0] == min(chunk, len(prompt))


def test_seed_reproducible_and_sensitive():
    eng = _engine(FakeModel(seed=2))
    a = eng.generate("abc", SamplingParams(temperature=1.0, seed=11, max_tokens=30, ignore_eos=True)).token_ids
    b = eng.generate("abc", SamplingParams(temperature=1.0, seed=11, max_tokens=30, ignore_eos=True)).token_ids
    c = eng.generate("abc", SamplingParams(temperature=1.0, seed=12, max_tokens=30, ignore_eos=True)).token_ids
    assert a == b and a != c


def test_cache_reuse_matches_fresh_engine():
    model = FakeModel(seed=3)
    eng = _engine(model)
    p = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    first = eng.generate("the quick brown fox", p)
    # extend the conversation: prompt = old prompt + its answer + more
    follow = first.prompt_token_ids + first.token_ids + list(b" jumps")
    model.calls.clear()
    again = eng.generate(follow, p)
    # the cache held the prompt and all but the last generated token
    assert again.stats.cached_tokens == len(first.prompt_token_ids) + len(first.token_ids) - 1
    assert sum(model.calls[:1]) == len(follow) - again.stats.cached_tokens
    fresh = _engine(FakeModel(seed=3)).generate(follow, p)
    assert again.token_ids == fresh.token_ids
    # a prompt that is a strict prefix of the cache, and the same prompt twice
    short = eng.generate(follow[:5], p)
    assert short.token_ids == _engine(FakeModel(seed=3)).generate(follow[:5], p).token_ids
    assert eng.generate(follow[:5], p).token_ids == short.token_ids


def test_stream_events_match_generate():
    eng = _engine(FakeModel(seed=4))
    p = SamplingParams(temperature=1.0, seed=3, max_tokens=25, logprobs=True, top_logprobs=3)
    events = list(eng.stream("stream me", p))
    res = eng.generate("stream me", p)
    assert "".join(e.text for e in events) == res.text
    assert [e.token_id for e in events if not e.is_stop_token] == res.token_ids
    assert all(e.finish_reason is None for e in events[:-1]) and events[-1].finish_reason == res.finish_reason
    st = events[-1].stats
    assert st.prompt_tokens == len(res.prompt_token_ids) and st.ttft_s > 0 and st.total_s >= st.ttft_s
    assert st.decode_tokens == len(events) - 1
    for e in events:
        assert len(e.logprob.top) == 3 and e.logprob.top[0][1] >= e.logprob.top[-1][1]


def test_logprobs_are_raw_model_logprobs():
    model = FakeModel(seed=6)
    p = SamplingParams(temperature=0.5, top_p=0.5, repetition_penalty=1.5, seed=1, max_tokens=12,
                       logprobs=True, ignore_eos=True)
    res = _engine(model).generate("x", p)
    seq = ByteTokenizer().encode("x")
    for t, lp in zip(res.token_ids, res.logprobs):
        ref = log_softmax(model.reference_logits(seq))
        assert lp.token_id == t and lp.logprob == pytest.approx(ref[t], abs=1e-6)
        seq.append(t)


def test_stop_strings_cut_exactly():
    model = FakeModel(seed=7)
    eng = _engine(model)
    base = SamplingParams(temperature=0, max_tokens=60, ignore_eos=True)
    full = eng.generate("Once", base).text
    assert len(full) > 20
    for a, b in [(5, 9), (10, 11), (0, 3), (17, 25)]:
        stop = full[a:b]
        res = eng.generate("Once", SamplingParams(temperature=0, max_tokens=60, ignore_eos=True, stop=(stop,)))
        assert res.text == full[:full.find(stop)] and res.finish_reason == "stop"


def test_utf8_split_across_tokens_and_stop():
    ids = ByteTokenizer().encode("q")
    word = list("caf\u00e9!".encode())        # é is two bytes, two tokens
    eng = _engine(ScriptedModel(len(ids), word + [EOS]))
    events = list(eng.stream(ids, SamplingParams(temperature=0, max_tokens=20)))
    assert [e.text for e in events] == ["c", "a", "f", "", "\u00e9", "!", ""]
    assert events[-1].is_stop_token and events[-1].finish_reason == "stop"
    res = eng.generate(ids, SamplingParams(temperature=0, max_tokens=20, stop=("\u00e9!",)))
    assert res.text == "caf" and res.finish_reason == "stop"


def test_eos_and_length():
    ids = ByteTokenizer().encode("q")
    eng = _engine(ScriptedModel(len(ids), [EOT]))
    res = eng.generate(ids, SamplingParams(temperature=0, max_tokens=5))
    assert res.token_ids == [] and res.text == "" and res.finish_reason == "stop"
    res = eng.generate(ids, SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert res.finish_reason == "length" and len(res.token_ids) == 5 and res.token_ids[0] == EOT
    res = eng.generate(ids, SamplingParams(temperature=0, max_tokens=5, stop_token_ids=(ord(" "),), ignore_eos=True))
    assert res.token_ids == [EOT] and res.finish_reason == "stop"


def test_context_budget():
    model = FakeModel(seed=8, max_seq_len=64)
    eng = _engine(model, n_ctx=32)
    prompt = [BOS] + list(b"0123456789" * 2)          # 21 tokens, 11 left
    res = eng.generate(prompt, SamplingParams(temperature=0, max_tokens=100, ignore_eos=True))
    assert res.finish_reason == "length" and len(res.token_ids) == 32 - 21
    with pytest.raises(InputError, match="prompt is 40 tokens"):
        eng.generate([BOS] + list(b"x" * 39), SamplingParams(max_tokens=1))
    res = eng.generate([BOS] + list(b"y" * 30) + list(b"abcdefghi"),
                       SamplingParams(temperature=0, max_tokens=4, truncate=True, ignore_eos=True))
    assert res.prompt_token_ids[0] == BOS and res.prompt_token_ids[-9:] == list(b"abcdefghi")
    assert len(res.prompt_token_ids) == 32 - 4 and len(res.token_ids) == 4
    with pytest.raises(InputError):
        _engine(model, n_ctx=65)


def test_bad_input():
    eng = _engine()
    with pytest.raises(InputError):
        eng.generate("")
    with pytest.raises(InputError):
        eng.generate([])
    with pytest.raises(InputError):
        eng.generate([1, 2, 999])
    with pytest.raises(InputError):
        eng.generate("x", SamplingParams(logit_bias={999: 1.0}))
    with pytest.raises(InputError):
        eng.chat([{"role": "user", "content": "hi"}])     # no chat template
    with pytest.raises(InputError):
        SamplingParams(max_tokens=0)


def test_one_generation_at_a_time():
    eng = _engine()
    p = SamplingParams(max_tokens=10, ignore_eos=True, seed=0)
    s1 = eng.stream("abc", p)
    next(s1)
    with pytest.raises(InputError, match="another generation"):
        list(eng.stream("abc", p))
    s1.close()
    assert len(eng.generate("abc", p).token_ids) == 10
    s2 = eng.stream("abc", p)
    next(s2)
    del s2          # abandoned: the garbage collector closes it
    assert len(eng.generate("abc", p).token_ids) == 10


def test_nan_logits_are_an_error_and_reset_the_cache():
    class NaNModel(FakeModel):
        def forward(self, tokens, cache, last_only=False):
            out = super().forward(tokens, cache, last_only).copy()
            out[:] = np.nan
            return out
    eng = _engine(NaNModel())
    with pytest.raises(EdgeformerError, match="NaN"):
        eng.generate("abc")
    assert eng.session.ids == []
