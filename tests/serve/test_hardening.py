"""Server hardening (issue 16): an optional API key, and hostile bodies refused with 400."""
from __future__ import annotations

import httpx
import pytest

from tests.serve.conftest import serving

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def keyed(tiny_engine):
    with serving(tiny_engine, api_key="s3cret-key") as live:
        yield live


def test_api_key_is_required_on_every_endpoint_but_health(keyed) -> None:
    url = keyed.base_url
    for method, path, body in (("POST", "/chat/completions", CHAT), ("GET", "/models", None)):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"},
                        {"Authorization": "Bearer s3cret-ke"}):
            r = httpx.request(method, url + path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers, r.status_code)
            assert r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.request(method, url + path, json=body, headers={"Authorization": "Bearer s3cret-key"})
        assert r.status_code == 200, r.text
    assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200


def test_the_official_client_passes_its_key(keyed) -> None:
    openai = pytest.importorskip("openai")
    ok = openai.OpenAI(base_url=keyed.base_url, api_key="s3cret-key")
    assert ok.chat.completions.create(**CHAT).choices[0].message.content is not None
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.base_url, api_key="nope").chat.completions.create(**CHAT)


def test_deeply_nested_json_is_a_400_and_the_server_goes_on(tiny_server) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    r = httpx.post(tiny_server.base_url + "/chat/completions", content=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
    assert httpx.post(tiny_server.base_url + "/chat/completions", json=CHAT).status_code == 200


def test_n_times_prompts_is_bounded(tiny_server) -> None:
    """One ~300-byte request once fanned out to 8,192 sequences (n x a prompt list)."""
    body = {"model": "tiny", "prompt": ["a"] * 64, "n": 128, "max_tokens": 1}
    r = httpx.post(tiny_server.base_url + "/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["param"] == "n", r.text
    ok = httpx.post(tiny_server.base_url + "/completions", json={**body, "prompt": ["a"] * 2, "n": 3})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 6
