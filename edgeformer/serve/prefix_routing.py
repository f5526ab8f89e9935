"""Prefix-aware routing state for a multi-replica deployment (`serve.ray_deploy`), kept
free of Ray so it can be read and tested on its own.

A replica's paged KV cache names each full block of a prompt by a chained hash of its
tokens (`runtime.kv_cache.prefix_keys`); a new prompt that starts with cached blocks skips
their prefill. The ingress computes the same keys for each request (`PromptKeys`: the
chat template and tokenizer the replicas use) and `PrefixTable` remembers, in a bounded
LRU map, which replica last received each key. The request goes to the replica holding
its longest known prefix, unless that replica is busy (then least-loaded: a fallback);
a prompt with no known prefix goes to the least-loaded replica (a miss). The decisions
are counted in `RouterMetrics` and shown at the ingress's /metrics.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeformer.runtime.kv_cache import prefix_keys
from edgeformer.serve.metrics import Counter

DEFAULT_TABLE_ENTRIES = 65536    # block keys remembered: ~1M prompt tokens at 16 tokens a block, ~10 MB
ROUTING_MODES = ("prefix", "round-robin")


@dataclass
class RouteHint:
    """What the ingress tells the router about one request (passed as the `route` keyword
    of the replica call). `keys`: the prompt's block keys, shortest prefix first; `pin`: a
    replica id the request must go to (the ingress reading each replica's /metrics).
    The router writes `outcome` / `preferred` back (same process)."""

    keys: list[bytes] = field(default_factory=list)
    pin: str | None = None
    outcome: str | None = None       # "hit" | "miss" | "fallback" | "round_robin" | "none"
    preferred: str | None = None     # the replica holding the longest known prefix


class PrefixTable:
    """Bounded map block key -> replica id (LRU: the least recently routed keys go first).
    Not thread-safe: one router drives it."""

    def __init__(self, max_entries: int = DEFAULT_TABLE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self._map: OrderedDict[bytes, str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._map)

    def lookup(self, keys: Sequence[bytes], live: set[str] | frozenset[str]) -> tuple[str | None, int]:
        """(replica, blocks matched) of the longest prefix of `keys` last routed to a replica
        in `live`; (None, 0) when none is known. Keys of replicas gone are dropped."""
        for n in range(len(keys), 0, -1):
            rep = self._map.get(keys[n - 1])
            if rep is None:
                continue
            if rep in live:
                return rep, n
            del self._map[keys[n - 1]]
        return None, 0

    def record(self, keys: Sequence[bytes], replica: str) -> None:
        """`replica` now holds the blocks named by `keys` (most recently used)."""
        for k in keys:
            self._map[k] = replica
            self._map.move_to_end(k)
        while len(self._map) > self.max_entries:
            self._map.popitem(last=False)

    def forget(self, replica: str) -> None:
        """Drop every key of a replica that is gone."""
        for k in [k for k, r in self._map.items() if r == replica]:
            del self._map[k]


class RouterMetrics:
    """The router's counters, in the server's Prometheus text (`serve.metrics`)."""

    def __init__(self) -> None:
        self.routed = Counter("edgeformer_router_requests_total",
                              "Requests routed, by replica and outcome (hit: to the replica holding the longest "
                              "cached prefix; miss: no known prefix; fallback: that replica was busy)",
                              ("replica", "outcome"))
        self.matched_blocks = Counter("edgeformer_router_prefix_blocks_matched_total",
                                      "KV blocks of the prompt the chosen replica already holds (hits)")
        self.retries = Counter("edgeformer_router_retries_total",
                               "Requests resent to another replica after theirs was lost before any output")
        self.failures = Counter("edgeformer_router_replica_failures_total",
                                "Requests whose replica was lost or timed out, by what the client got",
                                ("result",))
        self.table_size = 0      # set by the router

    def count(self, hint: RouteHint, replica: str) -> None:
        """Count a routed request whose router decision is in `hint`."""
        outcome = hint.outcome or "none"
        if outcome == "hit" and replica != hint.preferred:   # that replica refused: it was full
            outcome = "fallback"
        self.routed.inc(1, replica, outcome)

    def render(self) -> list[str]:
        lines = self.routed.render() + self.matched_blocks.render() + self.retries.render() + self.failures.render()
        return lines + ["# HELP edgeformer_router_prefix_table_entries Block keys in the ingress's prefix map",
                        "# TYPE edgeformer_router_prefix_table_entries gauge",
                        f"edgeformer_router_prefix_table_entries {self.table_size}"]


# deployment name -> its router / routing counters in this process (the ingress's: Ray Serve
# runs a deployment's router where its handle is), for the ingress's /metrics
ROUTERS: dict[str, Any] = {}
_METRICS: dict[str, RouterMetrics] = {}


def register_router(deployment: str, router: Any) -> None:
    ROUTERS[deployment] = router


def router_metrics(deployment: str) -> RouterMetrics:
    """The routing counters of `deployment` in this process (shared by router and ingress)."""
    return _METRICS.setdefault(deployment, RouterMetrics())


class PromptKeys:
    """Block keys of a request's prompt, as a replica's KV cache names its blocks: the chat
    messages rendered by the model's template and tokenized (tools are not rendered; a
    tool request still matches on the prompt before them), or the first completion prompt.
    Best effort: a body the replica will refuse gives no keys (the replica reports it)."""

    def __init__(self, tokenizer: Any, template: Any, block_size: int) -> None:
        self.tokenizer, self.template, self.block_size = tokenizer, template, block_size

    @classmethod
    def load(cls, model: str | None, block_size: int, chat_template: str | None = None) -> PromptKeys:
        """From a GGUF file / HF directory / shipped name (None: the default shipped model):
        its tokenizer and template only (the weights are not read)."""
        from edgeformer.formats import load_checkpoint
        from edgeformer.formats.chat_template import ChatTemplate
        from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
        from edgeformer.models.shipped import default_model, resolve_model
        path = default_model() if model is None else resolve_model(model)
        ckpt = load_checkpoint(path)
        tok = tokenizer_from_checkpoint(ckpt)
        return cls(tok, ChatTemplate.for_tokenizer(ckpt.chat_template, tok, origin=str(path), override=chat_template),
                   block_size)

    def token_ids(self, path: str, body: bytes) -> list[int]:
        from edgeformer.formats.chat_template import encode_chat
        try:
            req = json.loads(body)
            if path.endswith("/chat/completions") and self.template is not None:
                return encode_chat(self.tokenizer, self.template, list(req["messages"]))
            if path.endswith("/completions"):
                p = req["prompt"]
                p = p[0] if isinstance(p, list) and p and not isinstance(p[0], int) else p
                # as Engine.encode: BOS when the tokenizer wants it, special-token text parsed
                return list(p) if isinstance(p, list) else list(self.tokenizer.encode(p, add_bos=True,
                                                                                       parse_special=True))
        except Exception:   # noqa: BLE001 - routing is a hint; the replica validates the request
            return []
        return []

    def keys(self, path: str, body: bytes) -> list[bytes]:
        """Keys of the full blocks the replica's cache can share: those before the prompt's
        last token (`PagedKVCache.new_sequence`), shortest prefix first."""
        ids = self.token_ids(path, body)
        return prefix_keys(ids, self.block_size, max(len(ids) - 1, 0) // self.block_size)


def merge_metrics(texts: dict[str, str]) -> list[str]:
    """Replicas' /metrics texts (replica id -> text) as one exposition: each metric family
    once (HELP, TYPE, then every replica's samples, labelled `replica="<id>"`)."""
    families: dict[str, list[str]] = {}
    heads: dict[str, list[str]] = {}
    for replica, text in texts.items():
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                family = line.split(" ", 3)[2]
                if line not in heads.setdefault(family, []):
                    heads[family].append(line)
                families.setdefault(family, [])
                continue
            if not line or line.startswith("#"):
                continue
            name, brace, rest = line.partition("{")
            if not brace:
                name, _, rest = line.partition(" ")
                rest = "} " + rest
            families.setdefault(family, []).append(f'{name}{{replica="{replica}"' + ("," if brace else "") + rest)
    return [line for f in families for line in heads.get(f, []) + families[f]]
