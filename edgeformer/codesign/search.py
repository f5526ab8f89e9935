"""Search decoder shapes x qtype x KV precision under a device's budgets.

Each candidate is priced with the same machinery as `edgeformer plan`: its null-backend
op lists (`perf.trace_model`, prefill of `prompt_len` and a decode step at
`context_len`) on the roofline of the device (a catalog entry, or "host" with the
calibrated `HostModel`), peak memory from `perf.memory`, energy from the catalog power.
Quality is `quality.predicted_loss`. Candidates within budgets form the feasible set;
its Pareto front minimises (loss, decode latency, memory).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from edgeformer.codesign.quality import DEFAULT_TRAIN_TOKENS, predicted_loss
from edgeformer.codesign.space import Candidate, SearchSpace
from edgeformer.errors import InputError
from edgeformer.perf.bandwidth import device_or_host
from edgeformer.perf.calibrate import calibrate
from edgeformer.perf.device_spec import get_device, normalize_name
from edgeformer.perf.memory import estimate
from edgeformer.perf.roofline import DEFAULT_CALIBRATION, energy_per_token, predict
from edgeformer.perf.trace_model import trace_decoder_repeated


@dataclass(frozen=True)
class Scored:
    """A priced candidate: decode latency (s/token), TTFT (s), peak memory (bytes),
    energy per decoded token (J, None without a power figure), loss (nats), bound."""

    cand: Candidate
    decode_s: float
    ttft_s: float
    memory: float
    energy_j: float | None
    loss: float
    bound: str
    feasible: bool = True


@dataclass
class SearchResult:
    device: str
    scored: list[Scored]
    front: list[Scored]
    n_evaluated: int

    @property
    def feasible(self) -> list[Scored]:
        return [s for s in self.scored if s.feasible]


class Pricer:
    """`price(records)` -> Prediction on a device; `price.decode(trace)` prices a trace's
    decode step as it runs there (on "host", the calibrated HostModel prices the cpu
    backend's fused decode step when the trace says it is fused; its calibration is the
    one timed by `clock` at the current thread count)."""

    def __init__(self, device: str, clock: str = "wall") -> None:
        self.host = None
        if normalize_name(device) == "host":
            self.host = calibrate(clock=clock)
        else:
            self.dev = get_device(device)

    def __call__(self, records: list) -> Any:
        return self.host.predict(records) if self.host else predict(records, self.dev, DEFAULT_CALIBRATION)

    def decode(self, trace: Any) -> Any:
        return self.host.predict_decode(trace) if self.host else self(trace.decode)


def pricer(device: str, clock: str = "wall") -> Pricer:
    """The Pricer of `device` (a catalog name, or "host" calibrated with `clock`)."""
    return Pricer(device, clock)


def score(c: Candidate, price: Pricer, device_spec: Any, prompt_len: int,
          context_len: int, train_tokens: float = DEFAULT_TRAIN_TOKENS) -> Scored:
    """Price one candidate (decode at `context_len`, prefill of `prompt_len`)."""
    tr = trace_decoder_repeated(c.config(max(8192, context_len + 1)), prompt_len, context_len,
                                qtype=c.qtype, kv_dtype=c.kv_dtype)
    pre, dec = price(tr.prefill), price.decode(tr)
    e = energy_per_token(dec, device_spec, 1).power_j if device_spec is not None else None
    return Scored(c, dec.total_s, pre.total_s, estimate(tr).total, e,
                  predicted_loss(c, train_tokens), dec.bound)


def pareto_front(items: list[Scored], keys: Callable[[Scored], tuple[float, ...]]) -> list[Scored]:
    """Items not dominated (<= on every key, < on one) by another; sorted by the first key."""
    pts = sorted(items, key=keys)
    front: list[Scored] = []
    for s in pts:
        k = keys(s)
        if not any(all(a <= b for a, b in zip(keys(f), k)) and keys(f) != k for f in front):
            front = [f for f in front if not (all(a <= b for a, b in zip(k, keys(f))) and keys(f) != k)]
            front.append(s)
    return sorted(front, key=keys)


def search(device: str, space: SearchSpace = SearchSpace(), latency_ms: float | None = None,
           memory_gb: float | None = None, prompt_len: int = 128, context_len: int = 1024,
           train_tokens: float = DEFAULT_TRAIN_TOKENS, max_candidates: int | None = None,
           progress: Callable[[int, int], None] | None = None, clock: str = "wall") -> SearchResult:
    """Price every candidate of `space` on `device`, mark those within the latency
    (decode ms/token) and memory (GB; also the device's memory) budgets, and return
    the Pareto front of the feasible ones over (loss, latency, memory).
    `max_candidates` keeps an evenly spaced subset of the grid; `clock` picks the
    "host" calibration. UnsupportedError for an unknown device; InputError for
    non-positive budgets or an empty space."""
    for name, v in (("latency-ms", latency_ms), ("memory-gb", memory_gb)):
        if v is not None and not v > 0:
            raise InputError(f"--{name} must be positive, got {v}")
    price = pricer(device, clock)
    spec = device_or_host(device)
    cands = list(space.candidates())
    if not cands:
        raise InputError(f"the search space has no shape within {space.params[0]:.3g}..{space.params[1]:.3g} parameters")
    if max_candidates and len(cands) > max_candidates:
        step = len(cands) / max_candidates
        cands = [cands[int(i * step)] for i in range(max_candidates)]
    cap = spec.mem_bytes.si if spec is not None else math.inf
    mem_budget = min(cap, memory_gb * 1e9 if memory_gb else math.inf)
    scored = []
    for i, c in enumerate(cands):
        s = score(c, price, spec, prompt_len, context_len, train_tokens)
        ok = s.memory <= mem_budget and (latency_ms is None or s.decode_s * 1e3 <= latency_ms)
        scored.append(replace(s, feasible=ok))
        if progress:
            progress(i + 1, len(cands))
    feas = [s for s in scored if s.feasible]
    front = pareto_front(feas, lambda s: (s.loss, s.decode_s, s.memory))
    return SearchResult(getattr(spec, "name", device), scored, front, len(cands))


def infeasible_reason(res: SearchResult, latency_ms: float | None, memory_gb: float | None) -> str:
    """Why nothing is feasible, naming the binding resource and the closest candidate."""
    fastest = min(res.scored, key=lambda s: s.decode_s)
    smallest = min(res.scored, key=lambda s: s.memory)
    parts = []
    if latency_ms is not None and fastest.decode_s * 1e3 > latency_ms:
        parts.append(f"latency binds: the fastest candidate ({fastest.cand.label()}) needs "
                     f"{fastest.decode_s * 1e3:.2f} ms/token ({fastest.bound}-bound) > {latency_ms} ms")
    if memory_gb is not None and smallest.memory > memory_gb * 1e9:
        parts.append(f"memory binds: the smallest candidate needs {smallest.memory / 1e9:.3f} GB > {memory_gb} GB")
    if not parts:
        parts.append("no single candidate meets both budgets at once")
    return "no feasible candidate: " + "; ".join(parts)


def kendall_tau(a: Iterable[float], b: Iterable[float]) -> float:
    """Kendall's tau-b rank correlation of two equal-length sequences (ties handled)."""
    x, y = list(a), list(b)
    if len(x) != len(y) or len(x) < 2:
        raise InputError("kendall_tau needs two sequences of equal length >= 2")
    conc = disc = tx = ty = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif dx * dy > 0:
                conc += 1
            else:
                disc += 1
    denom = math.sqrt((conc + disc + tx) * (conc + disc + ty))
    return (conc - disc) / denom if denom else 0.0
