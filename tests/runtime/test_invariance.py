"""Batch invariance end to end, on the real shipped SmolLM2-135M-Instruct (cpu backend): a
token's arithmetic is the same whatever batch, cache or chunking it arrives in, so

1. 16 concurrent server requests (different prompts, some identical) give exactly the
   bytes and logprobs each gets alone;
2. a request after a cached prefix (same system prompt, paged KV cache prefix sharing)
   equals the cold one, token for token and logprob for logprob;
3. a prompt prefilled in chunks of 1, 7, 63, 64 or 512 tokens ends on exactly the logits
   of one pass, and greedy decoding goes on identically;
4. a seeded sampled request repeats exactly (server and Engine).

The kernel-level property behind them (attention of a query does not depend on the call
it is in) is tested on random data in tests/backends/cpu/test_cpu_attention.py."""
from __future__ import annotations

import asyncio
import socket
import threading
import time

import numpy as np
import pytest

from edgeformer.runtime.engine import Engine
from edgeformer.runtime.sampler import SamplingParams

MODEL = "smollm2-135m-instruct"
N_NEW = 8
WORDS = ("fox dog edge model memory budget hello world numbers tabs code blocks weights values quick lazy "
         "river stone cloud paper").split()
TEXT = ("The lighthouse keeper climbed the forty steps every evening to light the lamp. Ships far out at sea "
        "watched for its beam and steered clear of the rocks below. In winter the storms came from the north, "
        "and the keeper wrote in his log how high the waves rose and how long the lamp burned. ")


@pytest.fixture(scope="module")
def engine():
    from edgeformer.api import load
    from edgeformer.errors import InputError
    try:
        return load(MODEL, backend="cpu", n_ctx=2048)
    except InputError as e:
        pytest.skip(f"shipped SmolLM2 unavailable: {e}")


@pytest.fixture(scope="module")
def server(engine):
    """The OpenAI-compatible server over `engine` on a loopback port (uvicorn in a thread)."""
    pytest.importorskip("openai")
    uvicorn = pytest.importorskip("uvicorn")
    from edgeformer.serve.app import create_app
    app = create_app(engine, model_name=MODEL, max_batch=16)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and th.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield app, f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    srv.should_exit = True
    th.join(timeout=20)


def _chat(client, messages, **kw):
    """(text, [(token, logprob)], finish_reason) of one chat completion (a coroutine)."""
    async def run():
        r = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=kw.pop("max_tokens", N_NEW),
                                                 logprobs=True, **kw)
        c = r.choices[0]
        return c.message.content, [(t.token, t.logprob) for t in c.logprobs.content], c.finish_reason
    return run()


def _client(url):
    import openai
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=300)


def test_concurrent_requests_match_each_alone(server):
    app, url = server
    batch = app.state.server.batch
    msgs = [[{"role": "user", "content": " ".join(WORDS[i:i + 3 + i % 5])}] for i in range(12)]
    msgs += [msgs[0], msgs[5], msgs[5], msgs[11]]                    # identical requests side by side
    seeded = {"temperature": 0.9, "seed": 1234}

    async def main():
        client = _client(url)
        alone = [await _chat(client, m, temperature=0) for m in msgs]
        alone.append(await _chat(client, msgs[3], **seeded))
        steps = batch.metrics()["steps"]
        together = await asyncio.gather(*[_chat(client, m, temperature=0) for m in msgs],
                                        _chat(client, msgs[3], **seeded))
        steps = batch.metrics()["steps"] - steps
        await client.close()
        return alone, together, steps
    alone, together, steps = asyncio.run(main())
    for i, (a, b) in enumerate(zip(alone, together)):
        assert a == b, f"request {i} differs when batched"
    assert all(a[1] for a in alone)
    # they ran together: far fewer forward passes than 17 requests one after another need
    assert steps < 17 * N_NEW // 2


def test_request_after_a_cached_prefix_equals_the_cold_one(server, engine):
    from edgeformer.runtime.scheduler import BatchEngine
    app, url = server
    system = {"role": "system", "content": "You are a terse assistant for a lighthouse museum. " * 6}
    first = [system, {"role": "user", "content": "When was the lamp lit?"}]
    second = [system, {"role": "user", "content": "Who climbed the steps?"}]

    def cold(messages):          # a fresh paged cache, as the server's (f16, 16-token blocks)
        be = BatchEngine(engine.model, engine.tokenizer, kv_budget_bytes=64 << 20, kv_dtype="f16", block_size=16,
                         max_batch=16, prefill_chunk=256, n_ctx=engine.n_ctx)
        h = be.submit(engine.encode_chat(messages), SamplingParams(max_tokens=N_NEW, temperature=0, logprobs=True))
        be.run_until_idle()
        r = h.result()
        assert r.stats.cached_tokens == 0
        return r.token_ids, [lp.logprob for lp in r.logprobs]

    async def warm():
        client = _client(url)
        batch = app.state.server.batch
        c0 = batch.metrics()["cached_prompt_tokens"]
        out = [await _chat(client, first, temperature=0)]
        c1 = batch.metrics()["cached_prompt_tokens"]
        out.append(await _chat(client, second, temperature=0))      # the system prompt's blocks are cached
        out.append(await _chat(client, first, temperature=0))       # the whole prompt's full blocks are
        c2 = batch.metrics()["cached_prompt_tokens"]
        await client.close()
        return out, c1 - c0, c2 - c1
    (w_first, w_second, w_again), hit0, hits = asyncio.run(warm())
    a, b = engine.encode_chat(first), engine.encode_chat(second)
    common = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert hit0 == 0 and hits >= 2 * (common // 16 * 16) > 0
    assert w_again == w_first
    for msgs, got in ((first, w_first), (second, w_second)):
        ids, lps = cold(msgs)
        assert engine.tokenizer.decode(ids) == got[0]
        assert lps == [lp for _, lp in got[1]]


@pytest.fixture(scope="module")
def long_prompt(engine):
    ids = engine.encode(TEXT * 12)
    assert len(ids) > 512
    return ids[:530]


def _prefill(engine, ids, chunk):
    """Logits (vocab,) after `ids` run in chunks of `chunk` (the Engine's prefill_chunk), and the
    next greedy tokens with their logprobs (decode steps after that cache)."""
    eng = Engine(engine.model, engine.tokenizer, n_ctx=1024, prefill_chunk=chunk)
    logits, _ = eng.session.prefill(list(ids))
    toks = []
    for _ in range(4):
        t = int(np.argmax(logits))
        toks.append((t, float(logits[t])))
        logits = eng.session.forward([t])
    return logits, toks


@pytest.fixture(scope="module")
def one_pass(engine, long_prompt):
    """{prompt length: _prefill in one pass} for the long prompt and the short one."""
    return {n: _prefill(engine, long_prompt[:n], n) for n in (160, len(long_prompt))}


@pytest.mark.parametrize("chunk", [1, 7, 63, 64, 512])
def test_chunked_prefill_equals_one_pass(engine, long_prompt, one_pass, chunk):
    # chunks of 1 (every token a decode step) run a shorter prompt, to stay fast
    ids = long_prompt[:160] if chunk == 1 else long_prompt
    ref_logits, ref_toks = one_pass[len(ids)]
    logits, toks = _prefill(engine, ids, chunk)
    assert toks == ref_toks
    np.testing.assert_array_equal(logits, ref_logits)


def test_seeded_sampling_repeats_exactly(engine):
    p = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=7, logprobs=True)
    msgs = [{"role": "user", "content": "Write a line about the sea."}]
    a = engine.chat(msgs, p)
    engine.reset()                                 # cold cache, then the prompt reused from the cache
    b = engine.chat(msgs, p)
    c = engine.chat(msgs, p)
    for r in (b, c):
        assert r.token_ids == a.token_ids and r.text == a.text
        assert [lp.logprob for lp in r.logprobs] == [lp.logprob for lp in a.logprobs]
    assert c.stats.cached_tokens > 0
