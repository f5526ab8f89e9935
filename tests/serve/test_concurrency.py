"""Many clients at once: 16 concurrent streams give exactly the greedy text each request
gets alone; clients that disconnect mid-stream are cancelled and free their KV blocks."""
from __future__ import annotations

import asyncio
import time

import pytest

from edgeformer.serve.metrics import parse_text

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

WORDS = ["fox", "dog", "edge", "model", "memory", "budget", "hello", "world", "numbers", "tabs", "code",
         "blocks", "weights", "values", "quick", "lazy"]


def _messages(i: int) -> list[dict[str, str]]:
    # different lengths, so the batch mixes prefill chunks with decodes
    return [{"role": "user", "content": " ".join(WORDS[i:] + WORDS[:i][: i % 5])}]


def _metrics(url: str) -> dict[str, float]:
    return parse_text(httpx.get(url + "/metrics").text)


def _wait_idle(url: str, timeout: float = 15.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(url)
        if m["edgeformer_kv_blocks_used"] == 0 and m["edgeformer_requests_running"] == 0 or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


async def _stream(client, i: int, max_tokens: int) -> tuple[str, str, float, float]:
    s = await client.chat.completions.create(model="tiny", messages=_messages(i), max_tokens=max_tokens,
                                             temperature=0, stream=True)
    text, finish, first, last = [], None, None, 0.0
    async for ch in s:
        for c in ch.choices:
            if c.delta.content:
                first = first or time.perf_counter()
                last = time.perf_counter()
                text.append(c.delta.content)
            finish = c.finish_reason or finish
    return "".join(text), finish, first or 0.0, last


def test_16_concurrent_streams_match_each_alone(tiny_server):
    async def main():
        client = openai.AsyncOpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0, timeout=120)
        alone = [await _stream(client, i, 24) for i in range(16)]
        together = await asyncio.gather(*[_stream(client, i, 24) for i in range(16)])
        await client.close()
        return alone, together
    alone, together = asyncio.run(main())
    for i in range(16):
        assert together[i][:2] == alone[i][:2], f"request {i} differs when batched"
    # they did run together: the streams' token spans overlap
    firsts, lasts = sorted(t[2] for t in together), sorted(t[3] for t in together)
    assert firsts[1] < lasts[-2], "the streams were served one after another"
    m = _wait_idle(tiny_server.url)
    assert m["edgeformer_kv_blocks_used"] == 0
    assert m["edgeformer_kv_blocks_free"] == m["edgeformer_kv_blocks_total"] > 0


def test_disconnects_free_kv_blocks(tiny_server, tiny_engine):
    url = tiny_server.url
    before = _metrics(url)
    max_tokens = 150   # prompt (<= ~70 tokens) + 150 fit the 256-token context
    bias = {str(t): -100 for t in tiny_engine.tokenizer.stop_ids()}   # no early EOS: only a disconnect ends it

    async def leave_early(i: int) -> int:
        # n=4 choices each: 32 sequences, seconds of work, so only a working cancel ends them early
        body = {"model": "tiny", "messages": _messages(i), "max_tokens": max_tokens, "stream": True, "n": 4,
                "temperature": 0.5, "logit_bias": bias}
        async with httpx.AsyncClient(timeout=60) as c:
            async with c.stream("POST", url + "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                n = 0
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        n += 1
                        if n == 4:
                            return n     # leaving the block closes the connection mid-stream

    async def main():
        return await asyncio.gather(*[leave_early(i) for i in range(8)])
    assert asyncio.run(main()) == [4] * 8
    m = _wait_idle(url)
    assert m["edgeformer_kv_blocks_used"] == 0 and m["edgeformer_requests_running"] == 0
    assert m["edgeformer_kv_blocks_free"] == m["edgeformer_kv_blocks_total"]
    assert m["edgeformer_requests_cancelled_total"] - before["edgeformer_requests_cancelled_total"] == 8
    generated = m["edgeformer_engine_tokens_generated_total"] - before["edgeformer_engine_tokens_generated_total"]
    assert generated < 8 * 4 * max_tokens / 2, "cancelled requests kept generating"
    # and the server still serves
    client = openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0)
    r = client.chat.completions.create(model="tiny", messages=_messages(0), max_tokens=5, temperature=0)
    assert r.choices[0].message.role == "assistant"


def test_non_streaming_client_that_gives_up_is_cancelled(tiny_server, tiny_engine):
    url = tiny_server.url
    before = _metrics(url)
    bias = {str(t): -100 for t in tiny_engine.tokenizer.stop_ids()}
    # 64 choices x 150 tokens: seconds of work for the tiny model, which decodes ~1000 tok/s
    n, max_tokens = 64, 150
    body = {"model": "tiny", "messages": _messages(3), "max_tokens": max_tokens, "n": n, "temperature": 0.5,
            "logit_bias": bias}
    with pytest.raises(httpx.ReadTimeout):     # the client hangs up while the reply is being generated
        httpx.post(url + "/v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.3))
    m = _wait_idle(url)
    assert m["edgeformer_kv_blocks_used"] == 0 and m["edgeformer_requests_running"] == 0
    assert m["edgeformer_requests_queued"] == 0
    generated = m["edgeformer_engine_tokens_generated_total"] - before["edgeformer_engine_tokens_generated_total"]
    assert generated < n * max_tokens / 2, "the abandoned request kept running"
