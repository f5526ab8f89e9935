"""Server metrics in the Prometheus text exposition format (version 0.0.4), written here
rather than with `prometheus_client` to keep the dependency list short.

Counters and histograms are updated by the request handlers (thread-safe); gauges about
the KV cache and the batch are read from the scheduler's `metrics()` dict at scrape time.
Metric names follow Prometheus conventions (`_total` counters, `_seconds` units) and
vLLM's choice of what to expose (TTFT, inter-token latency, KV blocks, batch size).
"""
from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Mapping, Sequence

# bucket bounds in seconds; close to vLLM's for TTFT / time-per-output-token
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    v = float(v)
    if v == float("inf"):
        return "+Inf"
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


class Counter:
    """A monotonically increasing value per label set."""

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        with self._lock:
            items = sorted(self._values.items()) or ([((), 0.0)] if not self.label_names else [])
        out += [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]
        return out


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: `le` upper bounds, +Inf, sum, count)."""

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help
        self.bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self.bounds) + 1)   # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, v: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.bounds, v)] += 1
            self._sum += v

    @property
    def count(self) -> int:
        return sum(self._counts)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        with self._lock:
            counts, total = list(self._counts), self._sum
        acc = 0
        for b, c in zip(self.bounds + (float("inf"),), counts):
            acc += c
            out.append(f'{self.name}_bucket{{le="{_num(b)}"}} {acc}')
        out += [f"{self.name}_sum {_num(total)}", f"{self.name}_count {acc}"]
        return out


# scheduler metrics() key -> (exposed gauge name, help)
GAUGES = {
    "kv_blocks_used": ("edgeformer_kv_blocks_used", "KV cache blocks held by running requests"),
    "kv_blocks_free": ("edgeformer_kv_blocks_free", "KV cache blocks free"),
    "kv_blocks_total": ("edgeformer_kv_blocks_total", "KV cache blocks in the budget"),
    "batch_size": ("edgeformer_batch_size", "Sequences in the current decode batch"),
    "running": ("edgeformer_requests_running", "Requests being generated"),
    "queued": ("edgeformer_requests_queued", "Requests waiting for KV blocks or a batch slot"),
    "kv_cached_prefix_blocks": ("edgeformer_kv_cached_prefix_blocks",
                                "Blocks kept for prefix sharing (reclaimable, counted as free)"),
}


# engine metrics() counters -> (exposed counter name, help)
ENGINE_COUNTERS = {
    "tokens_generated": ("edgeformer_engine_tokens_generated_total", "Tokens sampled by the engine"),
    "prefill_tokens": ("edgeformer_engine_prefill_tokens_total", "Prompt tokens run through the model"),
    "cached_prompt_tokens": ("edgeformer_engine_cached_prompt_tokens_total",
                             "Prompt tokens served from the prefix cache instead of prefilled"),
    "steps": ("edgeformer_engine_steps_total", "Batched forward passes"),
    "preemptions": ("edgeformer_engine_preemptions_total",
                    "Sequences whose KV blocks were taken back for others, to be recomputed"),
    "prefix_waits": ("edgeformer_engine_prefix_waits_total",
                     "Steps a queued request waited for a shared prompt prefix another request was prefilling"),
    # only with speculative decoding (--lookup / --draft)
    "spec_rounds": ("edgeformer_spec_decode_rounds_total", "Draft-and-verify rounds (one per sequence and step)"),
    "spec_draft_tokens": ("edgeformer_spec_decode_draft_tokens_total", "Draft tokens proposed"),
    "spec_accepted_tokens": ("edgeformer_spec_decode_accepted_tokens_total", "Draft tokens accepted"),
}


class ServerMetrics:
    """Everything `/metrics` shows. `gauges`: a callable returning the scheduler's
    metrics dict (read at scrape time; unknown keys are ignored, missing ones omitted)."""

    def __init__(self, gauges: Callable[[], Mapping[str, float]] | None = None) -> None:
        self.gauges = gauges
        self.requests = Counter("edgeformer_requests_total", "HTTP requests by endpoint and status code",
                                ("endpoint", "status"))
        self.prompt_tokens = Counter("edgeformer_prompt_tokens_total", "Prompt tokens of accepted requests")
        self.generation_tokens = Counter("edgeformer_generation_tokens_total", "Generated tokens")
        self.cancelled = Counter("edgeformer_requests_cancelled_total", "Requests cancelled by a client disconnect")
        self.stalled = Counter("edgeformer_requests_stalled_total",
                               "Streams dropped because their client read nothing for the stall timeout")
        self.ttft = Histogram("edgeformer_time_to_first_token_seconds",
                              "Request arrival to first generated token", TTFT_BUCKETS)
        self.itl = Histogram("edgeformer_inter_token_latency_seconds",
                             "Time between consecutive generated tokens of one request", ITL_BUCKETS)

    def render(self) -> str:
        """The exposition text (ends with a newline)."""
        lines: list[str] = []
        for m in (self.requests, self.prompt_tokens, self.generation_tokens, self.cancelled, self.stalled, self.ttft,
                  self.itl):
            lines += m.render()
        snap = dict(self.gauges()) if self.gauges else {}
        if "batch_size" not in snap and "running" in snap:   # the scheduler names it "running"
            snap["batch_size"] = snap["running"]
        for key, (name, help) in GAUGES.items():
            if key in snap and snap[key] is not None:
                lines += [f"# HELP {name} {help}", f"# TYPE {name} gauge", f"{name} {_num(float(snap[key]))}"]
        for key, (name, help) in ENGINE_COUNTERS.items():
            if key in snap and snap[key] is not None:
                lines += [f"# HELP {name} {help}", f"# TYPE {name} counter", f"{name} {_num(float(snap[key]))}"]
        return "\n".join(lines) + "\n"


def parse_text(text: str) -> dict[str, float]:
    """Sample lines of an exposition text as {"name{labels}": value} (for tests and the
    benchmark; comments skipped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out
