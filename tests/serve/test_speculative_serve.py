"""Speculative decoding in the server and in `load()`: servers over the tiny model with
prompt lookup (`--lookup`) and with a draft model (`--draft`, the same tiny model) must
answer greedy requests exactly as a server without it (completions, chat, streaming
chunk for chunk, n > 1, stops, concurrent clients), through the official `openai`
client; a failing drafter fails only its request and the server keeps serving;
`load(lookup=/draft=/speculative=)` generates plain decoding's tokens and checks its
options before loading anything; `edgeformer serve --lookup/--draft/--draft-n` builds
such a server and refuses bad values before the load."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from edgeformer.errors import InputError
from edgeformer.runtime.drafters import Draft, ModelDrafter, PromptLookupDrafter
from edgeformer.runtime.sampler import SamplingParams
from edgeformer.runtime.speculative import SpeculativeConfig
from edgeformer.serve.metrics import parse_text

from .conftest import TINY_CTX, serving, start_server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

PROMPTS = ["The quick brown fox jumps over the lazy dog. The quick brown fox",
           "Hello world! Hello world! Hello",
           "Quantization stores weights in blocks",
           "Edge devices run small language models with tight memory budgets. Edge devices run"]
KV = dict(kv_dtype="f32", max_body_bytes=1 << 20)


@pytest.fixture(scope="module")
def engines(tiny_dir, tiny_engine):
    from edgeformer.api import load
    return {"plain": tiny_engine,
            "lookup": load(tiny_dir, backend="numpy", n_ctx=TINY_CTX, lookup=3),
            "draft": load(tiny_dir, backend="numpy", n_ctx=TINY_CTX, draft=tiny_dir, draft_n=3)}


@pytest.fixture(scope="module")
def clients(engines):
    with serving(engines["plain"], **KV) as p, serving(engines["lookup"], **KV) as lk, \
            serving(engines["draft"], **KV) as dr:
        yield {name: (openai.OpenAI(base_url=s.base_url, api_key="unused", max_retries=0, timeout=120), s)
               for name, s in (("plain", p), ("lookup", lk), ("draft", dr))}


def _completion(c, **kw):
    r = c.completions.create(model="tiny", temperature=0, **kw)
    lps = [None if ch.logprobs is None else ch.logprobs.token_logprobs for ch in r.choices]
    return [(ch.index, ch.text, ch.finish_reason) for ch in r.choices], r.usage.model_dump(), lps


def _same_logprobs(a, b):
    for x, y in zip(a, b):
        assert (x is None) == (y is None)
        if x is not None:   # numpy attention may round a verify row differently from a decode row
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["lookup", "draft"])
def test_completions_equal_plain(clients, which):
    plain, spec = clients["plain"][0], clients[which][0]
    for kw in [dict(prompt=p, max_tokens=40, logprobs=2) for p in PROMPTS] + [
            dict(prompt=PROMPTS[:3], max_tokens=30, n=3),                       # 3 prompts x 3 choices
            dict(prompt=PROMPTS[0], max_tokens=30, echo=True),
            dict(prompt=PROMPTS[1], max_tokens=60, stop=["wor"])]:
        a, b = _completion(spec, **kw), _completion(plain, **kw)
        assert a[:2] == b[:2], kw
        _same_logprobs(a[2], b[2])
    # drafts were proposed and accepted: the rounds really ran
    m = parse_text(httpx.get(clients[which][1].url + "/metrics").text)
    assert m["edgeformer_spec_decode_accepted_tokens_total"] > 0
    assert m["edgeformer_spec_decode_draft_tokens_total"] >= m["edgeformer_spec_decode_accepted_tokens_total"]
    assert "edgeformer_spec_decode_rounds_total" not in parse_text(
        httpx.get(clients["plain"][1].url + "/metrics").text)


def _chat_stream(c, **kw) -> dict[int, list[tuple[str | None, str | None]]]:
    """Each choice's chunks in order (how the choices interleave differs: a round emits
    several tokens of one choice at once)."""
    out: dict[int, list] = {}
    for x in c.chat.completions.create(model="tiny", temperature=0, stream=True, **kw):
        for ch in x.choices:
            out.setdefault(ch.index, []).append((ch.delta.content, ch.finish_reason))
    return out


@pytest.mark.parametrize("which", ["lookup", "draft"])
def test_chat_and_streaming_equal_plain_chunk_for_chunk(clients, which):
    plain, spec = clients["plain"][0], clients[which][0]
    for p in PROMPTS:
        msgs = [{"role": "user", "content": p}]
        a = spec.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0, n=2)
        b = plain.chat.completions.create(model="tiny", messages=msgs, max_tokens=40, temperature=0, n=2)
        assert [(c.message.content, c.finish_reason) for c in a.choices] == \
            [(c.message.content, c.finish_reason) for c in b.choices]
        assert a.usage == b.usage
        assert _chat_stream(spec, messages=msgs, max_tokens=40, n=2) == _chat_stream(plain, messages=msgs,
                                                                                     max_tokens=40, n=2)


def test_concurrent_clients_equal_plain(clients):
    async def run(url):
        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=120)

        async def one(i):
            s = await client.completions.create(model="tiny", prompt=PROMPTS[i % 4] * (1 + i % 3), max_tokens=32,
                                                temperature=0, stream=True)
            return "".join([c.text async for x in s for c in x.choices])
        out = await asyncio.gather(*[one(i) for i in range(8)])
        await client.close()
        return out
    ref = asyncio.run(run(clients["plain"][1].base_url))
    for which in ("lookup", "draft"):
        assert asyncio.run(run(clients[which][1].base_url)) == ref, which


def test_seeded_sampling_is_reproducible(clients):
    spec = clients["draft"][0]
    kw = dict(model="tiny", prompt=PROMPTS[0], max_tokens=30, temperature=0.9, seed=11, n=2)
    a, b = spec.completions.create(**kw), spec.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices] and a.usage == b.usage


class _Exploding:
    """A drafter that raises for prompts holding the word "boom" (byte-level BPE: any
    token sequence we can recognise by decoding)."""

    def __init__(self, tokenizer):
        self.tok = tokenizer

    def bind(self, vocab_size, n_ctx):
        pass

    def propose(self, seq, k, picker):
        if "boom" in self.tok.decode(seq.tolist()):
            raise RuntimeError("drafter exploded")
        return Draft([int(seq[-1])] * k)     # wrong guesses: every round rejects


def test_server_keeps_serving_after_errors(tiny_dir, clients):
    from edgeformer.api import load
    eng = load(tiny_dir, backend="numpy", n_ctx=TINY_CTX)
    eng.speculative = SpeculativeConfig(_Exploding(eng.tokenizer), 2)
    plain = clients["plain"][0]
    with serving(eng, **KV) as live:
        c = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, timeout=120)
        with pytest.raises(openai.InternalServerError, match="exploded"):
            c.completions.create(model="tiny", prompt="boom boom", max_tokens=8, temperature=0)
        with pytest.raises(openai.BadRequestError):
            c.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=TINY_CTX, temperature=0)
        with pytest.raises(openai.NotFoundError):
            c.completions.create(model="nope", prompt=PROMPTS[0], max_tokens=8)
        # a stream that fails ends with an error event; the next requests are served
        s = c.completions.create(model="tiny", prompt="boom", max_tokens=8, temperature=0, stream=True)
        with pytest.raises(openai.APIError):
            list(s)
        for p in PROMPTS:
            assert _completion(c, prompt=p, max_tokens=20)[:2] == _completion(plain, prompt=p, max_tokens=20)[:2]
        m = live.state.batch.metrics()
        assert m["kv_blocks_used"] == 0 and m["running"] == 0


# ---- load() ---------------------------------------------------------------------------------

def test_load_speculative_equals_plain(tiny_dir, engines):
    from edgeformer.api import load
    plain = engines["plain"]
    made = {"lookup": engines["lookup"], "draft": engines["draft"],
            "draft_engine": load(tiny_dir, backend="numpy", n_ctx=TINY_CTX, draft=plain),
            "config": load(tiny_dir, backend="numpy", n_ctx=TINY_CTX,
                           speculative=SpeculativeConfig.prompt_lookup(5, max_ngram=2))}
    assert isinstance(made["lookup"].speculative.drafter, PromptLookupDrafter)
    assert made["lookup"].speculative.num_draft == 3
    assert isinstance(made["draft"].speculative.drafter, ModelDrafter) and made["draft"].speculative.num_draft == 3
    assert made["draft_engine"].speculative.num_draft == 4 and plain.speculative is None
    p = SamplingParams(temperature=0, max_tokens=40, logprobs=True)
    for prompt in PROMPTS:
        ref = plain.generate(prompt, p)
        chat_ref = plain.chat([{"role": "user", "content": prompt}], p)
        for name, eng in made.items():
            got = eng.generate(prompt, p)
            assert (got.token_ids, got.text, got.finish_reason) == (ref.token_ids, ref.text, ref.finish_reason), name
            got = eng.chat([{"role": "user", "content": prompt}], p)
            assert got.token_ids == chat_ref.token_ids, name
    assert made["draft"].speculative.last_stats.acceptance_rate > 0.9     # it drafts for itself


def test_load_checks_speculative_options_before_loading(tiny_dir, monkeypatch):
    import edgeformer.formats
    from edgeformer.api import load

    def no_load(*a, **k):
        raise AssertionError("loaded before the options were checked")
    with monkeypatch.context() as m:
        m.setattr(edgeformer.formats, "load_checkpoint", no_load)
        for kw, msg in [(dict(lookup=0), "lookup must be"), (dict(lookup=2.5), "lookup must be"),
                        (dict(lookup=True), "lookup must be"), (dict(lookup=2, draft=tiny_dir), "at most one"),
                        (dict(draft_n=2), "draft_n= needs draft="), (dict(draft=tiny_dir, draft_n=0), "draft_n"),
                        (dict(draft="/no/such/draft.gguf"), "neither an existing"),
                        (dict(draft=object()), "draft= must be"), (dict(speculative=3), "SpeculativeConfig")]:
            with pytest.raises(InputError, match=msg):
                load(tiny_dir, backend="numpy", **kw)
    other = load(tiny_dir, backend="numpy", n_ctx=TINY_CTX).model
    other.config = type("C", (), {"vocab_size": other.config.vocab_size + 1, "max_seq_len": TINY_CTX})()
    with pytest.raises(InputError, match="vocabulary"):
        load(tiny_dir, backend="numpy", n_ctx=TINY_CTX, draft=other)


# ---- the CLI --------------------------------------------------------------------------------

def test_cli_serve_speculative_flags(tiny_dir, clients, monkeypatch, capsys):
    import edgeformer.api
    import edgeformer.serve.limits
    from edgeformer.cli.__main__ import main
    apps = []
    monkeypatch.setattr(edgeformer.serve.limits, "serve", lambda app, **kw: apps.append(app))
    base = ["serve", str(tiny_dir), "--backend", "numpy", "-c", str(TINY_CTX), "--kv-dtype", "f32",
            "--model-name", "tiny"]
    assert main(base + ["--lookup", "3"]) == 0
    assert main(base + ["--draft", str(tiny_dir), "--draft-n", "2"]) == 0
    assert main(base) == 0
    err = capsys.readouterr().err
    assert "speculative decoding (prompt lookup, 3 tokens per step)" in err and f"draft {tiny_dir}, 2" in err
    lk, dr, plain = (a.state.server.batch.speculative for a in apps)
    assert isinstance(lk.drafter, PromptLookupDrafter) and lk.num_draft == 3
    assert isinstance(dr.drafter, ModelDrafter) and dr.num_draft == 2 and plain is None
    live = start_server(apps[1])        # the --draft server answers like a plain one
    try:
        c = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, timeout=120)
        for p in PROMPTS[:2]:
            assert _completion(c, prompt=p, max_tokens=24)[:2] == _completion(clients["plain"][0], prompt=p,
                                                                               max_tokens=24)[:2]
    finally:
        live.stop()

    # bad values: a clear error, before the (slow) load
    def no_load(*a, **k):
        raise AssertionError("loaded before the flags were checked")
    monkeypatch.setattr(edgeformer.api, "load", no_load)
    for flags, msg in [(["--lookup", "0"], "--lookup must be >= 1"), (["--draft-n", "0"], "--draft-n must be >= 1"),
                       (["--draft", "x", "--draft-n", "-1"], "--draft-n must be >= 1"),
                       (["--draft", "/no/such/draft.gguf"], "neither an existing")]:
        assert main(base + flags) == 1
        assert msg in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(base + ["--lookup", "2", "--draft", str(tiny_dir)])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
