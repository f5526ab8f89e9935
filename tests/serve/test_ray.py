"""`edgeformer serve --ray` on a local Ray cluster (loopback only): 2 engine replicas of the
tiny random Llama behind the ingress, checked with the official openai client against
the single-process server; prefix routing read from /metrics; a replica killed mid-stream.
Ray is started once for the module (skipped when the ray extra is not installed)."""
from __future__ import annotations

import os
import socket
import time

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from tests.serve.conftest import TINY_CTX, serving  # noqa: E402

APP = "edgeformer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tiny_dir):
    from ray import serve

    from edgeformer.serve.ray_config import RayServeConfig
    from edgeformer.serve.ray_deploy import deploy
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="error")
    try:
        cfg = RayServeConfig(model=str(tiny_dir), model_name="tiny", backend="numpy", n_ctx=TINY_CTX, replicas=2,
                             threads_per_replica=1, replica_timeout_s=30)
        yield deploy(cfg, "127.0.0.1", free_port())
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def single(tiny_engine):
    with serving(tiny_engine, "tiny") as live:
        yield live


def client(url: str):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=60, max_retries=0)


def metrics(url: str, tries: int = 3) -> dict[str, float]:
    """The ingress's /metrics, read again (up to `tries` times) while a replica did not
    answer its part (a slow probe on this shared 2-core machine)."""
    from edgeformer.serve.metrics import parse_text
    for _ in range(tries):
        text = httpx.get(url + "/metrics", timeout=30).text
        if "no answer" not in text:
            break
    return parse_text(text)


def by_replica(m: dict[str, float], name: str) -> dict[str, float]:
    """{replica: value} of a per-replica sample `name{replica="..."}` (summed over other labels)."""
    out: dict[str, float] = {}
    for k, v in m.items():
        if k.startswith(name + "{") and 'replica="' in k:
            rid = k.split('replica="', 1)[1].split('"', 1)[0]
            out[rid] = out.get(rid, 0.0) + v
    return out


def eos_ban(tiny_engine) -> dict[str, float]:
    return {str(t): -100.0 for t in sorted(tiny_engine.tokenizer.stop_ids())}


def test_same_greedy_outputs_and_errors_as_single_process(cluster, single):
    ray_c, one_c = client(cluster), client(single.url)
    for content in ["Hello world!", "The quick brown fox", "Numbers 12345 and"]:
        msgs = [{"role": "user", "content": content}]
        a = ray_c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
        b = one_c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0)
        assert a.choices[0].message.content == b.choices[0].message.content
        assert a.usage.prompt_tokens == b.usage.prompt_tokens and a.choices[0].finish_reason == b.choices[0].finish_reason
        streamed = ray_c.chat.completions.create(model="tiny", messages=msgs, max_tokens=10, temperature=0, stream=True)
        text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
        assert text == b.choices[0].message.content
    a = ray_c.completions.create(model="tiny", prompt="Edge devices run", max_tokens=8, temperature=0)
    b = one_c.completions.create(model="tiny", prompt="Edge devices run", max_tokens=8, temperature=0)
    assert a.choices[0].text == b.choices[0].text
    assert [m.id for m in ray_c.models.list().data] == [m.id for m in one_c.models.list().data]
    # error bodies are the single-process server's, status and all
    for body in ({"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                 {"model": "tiny", "messages": []}):
        ra = httpx.post(cluster + "/v1/chat/completions", json=body, timeout=30)
        rb = httpx.post(single.url + "/v1/chat/completions", json=body, timeout=30)
        assert (ra.status_code, ra.json()) == (rb.status_code, rb.json())
    big = {"model": "tiny", "prompt": "x" * (5 << 20)}     # over the 4 MiB body limit: the replica's 413
    ra = httpx.post(cluster + "/v1/completions", json=big, timeout=30)
    rb = httpx.post(single.url + "/v1/completions", json=big, timeout=30)
    assert ra.status_code == rb.status_code == 413 and ra.json() == rb.json()


def test_eight_concurrent_streams_complete(cluster, tiny_engine):
    from concurrent.futures import ThreadPoolExecutor
    c, ban = client(cluster), eos_ban(tiny_engine)

    def one(i: int) -> tuple[int, str | None]:
        s = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"story {i}"}],
                                      max_tokens=12, temperature=0, stream=True, logit_bias=ban,
                                      stream_options={"include_usage": True})
        finish, n = None, 0
        for ch in s:
            if ch.usage is not None:
                n = ch.usage.completion_tokens
            for choice in ch.choices:
                finish = choice.finish_reason or finish
        return n, finish
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(8)))
    assert results == [(12, "length")] * 8


def test_conversation_turns_land_on_one_replica_and_reuse_its_prefix(cluster):
    c = client(cluster)
    before = metrics(cluster)
    msgs = [{"role": "system", "content": "You are a careful assistant for edge devices. Answer briefly."}]
    replicas = []
    for turn in range(3):
        msgs.append({"role": "user", "content": f"Question {turn}: the quick brown fox?"})
        raw = c.chat.completions.with_raw_response.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
        replicas.append(raw.headers["x-edgeformer-replica"])
        msgs.append({"role": "assistant", "content": raw.parse().choices[0].message.content})
    after = metrics(cluster)
    assert len(set(replicas)) == 1
    rid = replicas[0]
    routed = {k: after[k] - before.get(k, 0.0) for k in after if k.startswith("edgeformer_router_requests_total")}
    assert sum(v for k, v in routed.items() if f'replica="{rid}"' in k) == 3          # every turn there
    assert routed.get(f'edgeformer_router_requests_total{{replica="{rid}",outcome="hit"}}', 0) == 2   # turns 2, 3
    cached = by_replica(after, "edgeformer_engine_cached_prompt_tokens_total")
    cached_before = by_replica(before, "edgeformer_engine_cached_prompt_tokens_total")
    # later turns start from the first turn's KV blocks: at least a 16-token block each
    assert cached[rid] - cached_before.get(rid, 0.0) >= 2 * 16


def replica_actor(rid: str):
    return ray.get_actor(f"SERVE_REPLICA::{APP}#EngineReplica#{rid}", namespace="serve")


def test_replica_killed_mid_stream_fails_cleanly_and_is_replaced(cluster, tiny_engine):
    c = client(cluster)
    msgs = [{"role": "user", "content": "Tell a long story about the sea."}]
    raw = c.chat.completions.with_streaming_response.create(model="tiny", messages=msgs, max_tokens=200,
                                                            temperature=0, stream=True, logit_bias=eos_ban(tiny_engine))
    t0 = time.monotonic()
    with raw as resp:
        rid = resp.headers["x-edgeformer-replica"]
        chunks, error = 0, None
        try:
            for ch in resp.parse():
                chunks += 1
                if chunks == 3:
                    ray.kill(replica_actor(rid), no_restart=True)
        except openai.APIError as e:
            error = e
    assert time.monotonic() - t0 < 45        # never a hang
    if error is not None:   # the usual case: the stream ends with OpenAI's error event
        assert "replica" in str(error) and "retried" in str(error)
    m = metrics(cluster)
    assert error is None or m.get('edgeformer_router_replica_failures_total{result="stream_error"}', 0) >= 1
    # the next requests are served (a retry, if routed to the dead replica first) and the deployment recovers
    out = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=4, temperature=0)
    assert out.choices[0].finish_reason in ("length", "stop")
    deadline = time.monotonic() + 60
    while True:
        m = metrics(cluster)
        live = set(by_replica(m, "edgeformer_prompt_tokens_total"))
        if m.get("edgeformer_router_replicas") == 2 and len(live) == 2 and rid not in live:
            break
        assert time.monotonic() < deadline, ("deployment did not recover to 2 replicas", rid,
                                             httpx.get(cluster + "/metrics", timeout=30).text[-3000:])
        time.sleep(0.5)
