"""Prefix-aware routing without Ray (serve/prefix_routing.py): the ingress's block keys
are the replica cache's, the bounded map, the merged /metrics text, and the CLI's --ray
flags and hint. The Ray deployment itself: tests/serve/test_ray.py."""
from __future__ import annotations

import json
import sys

import pytest

from edgeformer.errors import ConfigError, InputError, UnsupportedError
from edgeformer.serve.metrics import ServerMetrics, parse_text
from edgeformer.serve.prefix_routing import PrefixTable, PromptKeys, merge_metrics
from edgeformer.serve.ray_config import RayServeConfig


def test_ingress_keys_are_the_blocks_a_replica_caches(tiny_engine):
    """Run a chat prompt through a replica's batching engine; the keys the ingress computes
    for the same request name exactly the full blocks that engine registered for sharing."""
    from edgeformer.runtime.sampler import SamplingParams
    from edgeformer.serve.app import make_batch_engine
    msgs = [{"role": "system", "content": "You are a careful assistant for edge devices. " * 3},
            {"role": "user", "content": "The quick brown fox?"}]
    keys = PromptKeys(tiny_engine.tokenizer, tiny_engine.chat_template, 16).keys(
        "/v1/chat/completions", json.dumps({"model": "tiny", "messages": msgs}).encode())
    ids = tiny_engine.encode_chat(msgs)
    assert len(keys) == (len(ids) - 1) // 16 >= 2
    batch = make_batch_engine(tiny_engine, kv_budget_bytes=8 << 20, kv_dtype="f32")
    batch.start()
    try:
        list(batch.submit(ids, SamplingParams(max_tokens=1, temperature=0)).events())
        cached = set(batch.cache.pool.cached)
    finally:
        batch.stop()
    assert {k + bytes([0]) for k in keys} <= cached     # the pool names a block by key + layer group
    # a completion prompt is encoded as Engine.encode does (BOS included)
    body = json.dumps({"model": "tiny", "prompt": "Edge devices run small language models " * 4}).encode()
    pk = PromptKeys(tiny_engine.tokenizer, tiny_engine.chat_template, 16)
    assert pk.token_ids("/v1/completions", body) == tiny_engine.encode("Edge devices run small language models " * 4)
    # what the replica will refuse gives no keys (it answers the error itself)
    assert pk.keys("/v1/chat/completions", b"{not json") == []
    assert pk.keys("/v1/chat/completions", b'{"messages": 3}') == []


def test_prefix_table_longest_match_live_replicas_and_bound():
    t = PrefixTable(max_entries=4)
    t.record([b"a", b"ab"], "r1")
    t.record([b"a", b"ab", b"abc"], "r2")          # r2 now holds the longer prompt (and the shared block)
    assert t.lookup([b"a", b"ab", b"abc", b"abcd"], {"r1", "r2"}) == ("r2", 3)
    assert t.lookup([b"a", b"ab", b"abc"], {"r1"}) == (None, 0)      # r2 gone: its keys dropped
    assert len(t) == 0
    t.record([b"k1", b"k2", b"k3", b"k4", b"k5"], "r1")
    assert len(t) == 4 and t.lookup([b"k1"], {"r1"}) == (None, 0)   # least recently used went first
    t.forget("r1")
    assert len(t) == 0


def test_merged_metrics_group_each_family_once():
    a, b = ServerMetrics(lambda: {"running": 1, "cached_prompt_tokens": 32}), ServerMetrics(lambda: {"running": 0})
    a.requests.inc(2, "/v1/chat/completions", "200")
    b.requests.inc(1, "/v1/completions", "400")
    a.ttft.observe(0.02)
    text = "\n".join(merge_metrics({"r1": a.render(), "r2": b.render()}))
    m = parse_text(text)
    assert m['edgeformer_requests_total{replica="r1",endpoint="/v1/chat/completions",status="200"}'] == 2
    assert m['edgeformer_requests_total{replica="r2",endpoint="/v1/completions",status="400"}'] == 1
    assert m['edgeformer_engine_cached_prompt_tokens_total{replica="r1"}'] == 32
    assert m['edgeformer_time_to_first_token_seconds_count{replica="r1"}'] == 1
    types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    # a family's samples are contiguous (Prometheus wants them together)
    fam = [i for i, line in enumerate(text.splitlines()) if line.startswith("edgeformer_requests_total")]
    assert fam == list(range(fam[0], fam[0] + len(fam)))


def test_config_checks():
    with pytest.raises(ConfigError, match="max_replicas"):
        RayServeConfig(replicas=3, max_replicas=2)
    with pytest.raises(ConfigError, match="routing"):
        RayServeConfig(routing="random")
    with pytest.raises(ConfigError, match="replicas"):
        RayServeConfig(replicas=0)
    with pytest.raises(ConfigError, match="unknown key.*replica_count"):
        RayServeConfig.from_args({"replica_count": 2})
    auto = RayServeConfig(replicas=1, max_replicas=4, max_batch=16).deployment_options()
    assert auto["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8.0}
    assert "num_replicas" not in auto
    assert RayServeConfig(replicas=2).deployment_options()["num_replicas"] == 2


def test_cli_ray_flags_need_ray_and_missing_extra_is_one_line_hint(monkeypatch):
    from edgeformer.cli.__main__ import build_parser
    from edgeformer.cli.serve import run
    args = build_parser().parse_args(["serve", "--replicas", "2"])
    with pytest.raises(InputError, match="--replicas only apply with --ray"):
        run(args)
    monkeypatch.setitem(sys.modules, "ray", None)      # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    args = build_parser().parse_args(["serve", "--ray", "--replicas", "2"])
    with pytest.raises(UnsupportedError, match=r"pip install 'edgeformer\[ray\]'") as e:
        run(args)
    assert "\n" not in str(e.value)


def test_single_process_server_imports_no_ray():
    import subprocess
    code = ("import sys, edgeformer.serve.app, edgeformer.cli.serve, edgeformer.serve.prefix_routing; "
            "print(any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
