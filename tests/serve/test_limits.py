"""Server limits (issue 16): prompt bytes refused before tokenizing, requests per client
address (429), requests without max_tokens that do not reserve the context, errors
without file paths or tracebacks, model names that never reach the file system, and
clients that read nothing dropped with their KV blocks freed."""
from __future__ import annotations

import asyncio
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from edgeformer.errors import FormatError
from edgeformer.serve.limits import ClientLimit, max_token_bytes, prompt_byte_limit
from edgeformer.serve.metrics import parse_text
from edgeformer.serve.openai_schema import public
from tests.serve.conftest import TINY_CTX, serving

openai = pytest.importorskip("openai")

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _metrics(url: str) -> dict[str, float]:
    return parse_text(httpx.get(url + "/metrics").text)


def _wait(url: str, ok, timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(url)
        if ok(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.05)


def test_prompt_bytes_are_refused_before_tokenizing(tiny_server, tiny_engine, monkeypatch):
    calls = []
    for name in ("encode", "encode_chat"):
        real = getattr(tiny_engine, name)
        monkeypatch.setattr(tiny_engine, name, lambda *a, _real=real, **k: calls.append(1) or _real(*a, **k))
    tok = tiny_engine.tokenizer
    limit = prompt_byte_limit(TINY_CTX, max_token_bytes(tok, tiny_engine.vocab_size), tok.kind)
    url = tiny_server.base_url
    for path, body in (("/completions", {"model": "tiny", "prompt": "a" * (limit + 1)}),
                       ("/chat/completions", {"model": "tiny", "messages": [
                           {"role": "system", "content": "a" * (limit // 2)},
                           {"role": "user", "content": "b" * (limit // 2 + 1)}]})):
        r = httpx.post(url + path, json=body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert f"{limit} bytes" in r.json()["error"]["message"]
    assert calls == []                     # never reached the tokenizer
    r = httpx.post(url + "/completions", json={"model": "tiny", "prompt": "a" * 3000, "max_tokens": 1})
    assert r.status_code == 400 and "tokens" in r.json()["error"]["message"] and calls == [1]   # tokenized


def test_client_limit_answers_429_per_address():
    """3 requests from one address with a cap of 2: the third gets OpenAI's 429 with
    Retry-After; another address is served; a slot frees when a request ends."""
    release = asyncio.Event()

    async def app(scope, receive, send):
        if scope["path"] == "/v1/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = ClientLimit(app, limit=2)

    async def post(path: str, host: str = "10.0.0.1") -> httpx.Response:
        transport = httpx.ASGITransport(app=limited, client=(host, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post(path)

    async def main():
        slow = [asyncio.ensure_future(post("/v1/slow")) for _ in range(2)]
        await asyncio.sleep(0.05)
        third, other, health = await post("/v1/fast"), await post("/v1/fast", "10.0.0.2"), \
            await post("/health")
        release.set()
        done = await asyncio.gather(*slow)
        return third, other, health, done, await post("/v1/fast")
    third, other, health, done, after = asyncio.run(main())
    assert third.status_code == 429 and third.headers["retry-after"] == "1"
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert other.status_code == health.status_code == after.status_code == 200
    assert [r.status_code for r in done] == [200, 200] and limited.active == {}


def test_the_official_client_sees_a_rate_limit(tiny_engine):
    with serving(tiny_engine, max_client_requests=1) as live:
        bias = {str(t): -100 for t in tiny_engine.tokenizer.stop_ids()}
        with httpx.stream("POST", live.base_url + "/chat/completions", json={
                **CHAT, "max_tokens": 200, "n": 64, "stream": True, "logit_bias": bias}) as held:   # seconds of work
            assert held.status_code == 200
            client = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(**CHAT)
        # the slot frees once the server sees the disconnect: a client that honours Retry-After gets in
        patient = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=5)
        assert patient.chat.completions.create(**CHAT).choices[0].finish_reason is not None


def test_requests_without_max_tokens_all_run_at_once(tiny_engine, monkeypatch):
    """Issue 16: without max_tokens a request reserved its whole context, so under a
    budget of 4 contexts only 4 of 8 short requests ran and the rest queued. Now all 8
    run in one batch (the scheduler reserves KV as they grow)."""
    cfg = tiny_engine.model.config
    per_token = 2 * cfg.n_kv_heads * cfg.head_dim * 2 * cfg.n_layers      # f16 K and V, all layers
    bias = {str(t): -100 for t in tiny_engine.tokenizer.stop_ids()}
    with serving(tiny_engine, kv_budget_bytes=4 * TINY_CTX * per_token) as live:
        sched = live.state.batch.scheduler
        running, schedule = [], sched.schedule
        monkeypatch.setattr(sched, "schedule", lambda: (schedule(), running.append(len(sched.running)))[0])
        client = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0, timeout=120)
        with ThreadPoolExecutor(8) as ex:
            res = list(ex.map(lambda i: client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"hello {i}"}], temperature=0,
                logit_bias=bias), range(8)))
        assert all(r.choices[0].finish_reason == "length" for r in res)
        assert max(running) == 8
        m = _wait(live.url, lambda m: m["edgeformer_kv_blocks_used"] == 0)
        assert m["edgeformer_kv_blocks_used"] == 0 and m["edgeformer_requests_queued"] == 0


def test_errors_carry_no_paths_or_tracebacks(tiny_server, tiny_engine, tiny_dir, monkeypatch):
    where = str(tiny_dir / "tokenizer.json")

    def broken(*a, **k):
        raise FormatError(where, "chat template failed at line 3")
    monkeypatch.setattr(tiny_engine, "encode_chat", broken)
    r = httpx.post(tiny_server.base_url + "/chat/completions", json=CHAT)
    msg = r.json()["error"]["message"]
    assert r.status_code == 400 and "tokenizer.json: chat template failed" in msg and str(tiny_dir) not in msg

    def crash(*a, **k):
        raise RuntimeError(f"{where} exploded")
    monkeypatch.setattr(tiny_engine, "encode_chat", crash)
    r = httpx.post(tiny_server.base_url + "/chat/completions", json=CHAT)
    assert r.status_code == 500 and r.json()["error"]["message"] == "internal server error"
    assert "Traceback" not in r.text and str(tiny_dir) not in r.text
    assert public("x" * 5000).endswith("\u2026") and len(public("x" * 5000)) == 2000


def test_model_names_never_become_paths(tiny_server, tiny_dir):
    url = tiny_server.base_url
    for name in (str(tiny_dir), str(tiny_dir / "config.json"), "../../etc/passwd", "/etc/passwd", "tiny/../tiny"):
        r = httpx.post(url + "/chat/completions", json={**CHAT, "model": name})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", name
        r = httpx.get(url + "/models/" + name.replace("/", "%2F"))
        assert r.status_code == 404, name


def test_a_client_that_never_reads_is_dropped_and_frees_its_kv(tiny_engine):
    bias = {str(t): -100 for t in tiny_engine.tokenizer.stop_ids()}
    with serving(tiny_engine, stall_timeout=0.5) as live:
        # ~2 KB per event (20 top logprobs) x 128 x 200: far more than loopback's socket buffers (4 MB)
        body = json.dumps({**CHAT, "max_tokens": 200, "n": 128, "stream": True, "temperature": 0.5,
                           "logit_bias": bias, "logprobs": True, "top_logprobs": 20}).encode()
        port = int(live.url.rsplit(":", 1)[1])
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)     # a tiny window: the server must wait
        s.connect(("127.0.0.1", port))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        try:
            m = _wait(live.url, lambda m: m["edgeformer_requests_stalled_total"] >= 1
                      and m["edgeformer_kv_blocks_used"] == 0 and m["edgeformer_requests_running"] == 0)
        finally:
            s.close()
        assert m["edgeformer_requests_stalled_total"] == 1
        assert m["edgeformer_kv_blocks_used"] == 0 and m["edgeformer_requests_running"] == 0
        assert m["edgeformer_engine_tokens_generated_total"] < 128 * 200     # the drop cut it short
        assert httpx.post(live.base_url + "/chat/completions", json=CHAT).status_code == 200
