"""Bad requests get a 4xx with OpenAI's error body, and the server keeps serving; a
request over the KV budget is refused (503) or waits, never crashes the server."""
from __future__ import annotations

import pytest

from .conftest import TINY_CTX, serving

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello world"}], "max_tokens": 4}


def _error(r: httpx.Response, status: int, param: str | None = ..., code: str | None = ...) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) and err["message"]
    if param is not ...:
        assert err["param"] == param
    if code is not ...:
        assert err["code"] == code
    return err


def _still_serving(url: str) -> None:
    r = httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny"}, "messages"),                                                   # missing messages
    ({**CHAT, "messages": "hi"}, "messages"),
    ({**CHAT, "messages": []}, "messages"),
    ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({**CHAT, "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ({**CHAT, "temperature": "hot"}, "temperature"),
    ({**CHAT, "temperature": 3}, "temperature"),
    ({**CHAT, "max_tokens": -1}, "max_tokens"),
    ({**CHAT, "max_tokens": 2.5}, "max_tokens"),
    ({**CHAT, "max_tokens": True}, "max_tokens"),
    ({**CHAT, "n": 0}, "n"),
    ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({**CHAT, "top_logprobs": 3}, "top_logprobs"),                                     # without logprobs
    ({**CHAT, "logit_bias": {"x": 1}}, "logit_bias"),
    ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),           # without stream
    ({"messages": CHAT["messages"]}, "model"),
    ([1, 2, 3], None),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools"),
    ({**CHAT, "functions": [{"name": "f"}]}, "functions"),                              # unsupported (legacy)
    ({**CHAT, "response_format": {"type": "yaml"}}, "response_format"),
])
def test_invalid_chat_requests(tiny_server, body, param):
    r = httpx.post(tiny_server.base_url + "/chat/completions", json=body)
    err = _error(r, 400, param)
    assert err["type"] == "invalid_request_error"


def test_malformed_json_unknown_model_and_routes(tiny_server):
    url = tiny_server.base_url
    _error(httpx.post(url + "/chat/completions", content=b'{"model": "tiny", "messages": [',
                      headers={"content-type": "application/json"}), 400)
    _error(httpx.post(url + "/completions", content=b"\xff\xfe not utf-8"), 400)
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=CHAT["messages"])
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    _error(httpx.get(tiny_server.url + "/v1/nothing-here"), 404)
    _error(httpx.get(url + "/chat/completions"), 405)
    _still_serving(tiny_server.url)


def test_context_limits(tiny_server, tiny_engine):
    client = openai.OpenAI(base_url=tiny_server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:       # max_tokens alone over the context
        client.chat.completions.create(model="tiny", messages=CHAT["messages"], max_tokens=TINY_CTX + 1)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "max_tokens"
    long_ids = [100] * (TINY_CTX + 10)
    with pytest.raises(openai.BadRequestError) as e:       # prompt longer than the context
        client.completions.create(model="tiny", prompt=long_ids, max_tokens=1)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as e:       # prompt as text, over the context
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "fox " * TINY_CTX}])
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:       # token id outside the vocabulary
        client.completions.create(model="tiny", prompt=[1, 2, 10**6], max_tokens=1)
    assert "vocabulary" in e.value.body["message"]
    # exactly at the limit is allowed: prompt + max_tokens == context
    n = len(tiny_engine.encode("Hello"))
    r = client.completions.create(model="tiny", prompt="Hello", max_tokens=TINY_CTX - n, temperature=0,
                                  logit_bias={str(t): -100 for t in tiny_engine.tokenizer.stop_ids()})
    assert r.usage.total_tokens == TINY_CTX and r.choices[0].finish_reason == "length"


def test_oversized_bodies_rejected_before_parsing(tiny_server):
    big = b'{"model": "tiny", "prompt": "' + b"a" * (10 * 1024 * 1024) + b'"}'   # 10 MB
    _error(httpx.post(tiny_server.base_url + "/completions", content=big), 413, code="request_too_large")

    def chunks():   # no Content-Length: counted while streaming in
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]
    try:
        r = httpx.post(tiny_server.base_url + "/completions", content=chunks())
        _error(r, 413, code="request_too_large")
    except httpx.HTTPError:
        pass   # the server may answer and close before the client finished sending
    _still_serving(tiny_server.url)


def test_kv_budget_refuses_or_queues(tiny_engine):
    # a budget of 96 tokens of f16 K/V over all layers: 6 blocks of 16 tokens
    cfg = tiny_engine.model.config
    per_token = 2 * cfg.n_kv_heads * cfg.head_dim * 2 * cfg.n_layers
    with serving(tiny_engine, kv_budget_bytes=96 * per_token, block_size=16) as live:
        client = openai.OpenAI(base_url=live.base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:     # can never fit: a CapacityError -> 400, not an OOM
            client.completions.create(model="tiny", prompt="Hello", max_tokens=200)
        assert e.value.status_code == 400 and e.value.body["code"] == "kv_budget_exceeded"
        assert "KV budget" in e.value.body["message"]
        bias = {str(t): -100 for t in tiny_engine.tokenizer.stop_ids()}
        # without max_tokens: as far as the whole budget goes, then "length" (OpenAI's convention)
        r = client.completions.create(model="tiny", prompt="Hello", temperature=0, logit_bias=bias)
        assert r.choices[0].finish_reason == "length" and r.usage.total_tokens == 96
        # two requests that each take over half of the budget: both finish (one preempts or waits)
        import concurrent.futures as cf
        with cf.ThreadPoolExecutor(2) as ex:
            futs = [ex.submit(client.completions.create, model="tiny", prompt=p, max_tokens=60, temperature=0,
                              logit_bias=bias) for p in ("Hello world", "The quick brown")]
            res = [f.result(timeout=120) for f in futs]
        assert all(r.usage.completion_tokens == 60 for r in res)
        assert "\nedgeformer_kv_blocks_used 0\n" in httpx.get(live.url + "/metrics").text
        _still_serving(live.url)
