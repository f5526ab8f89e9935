"""Per-op profile of a decoder step, from the op list the tracer prices.

One decode (or prefill) step is run with an `Ops` observer that records every op call
with its arguments and its `OpSpec.cost`. Each recorded call is then REPLAYED on the
backend's kernel in a loop of >= `min_time` seconds (clocks here may tick in 4-12 ms
steps: a single call is never timed); calls sharing (op, name) are replayed together,
cycling through all their layers, so one loop times e.g. every layer's `attn_q`.
The sum of the per-op times is compared with the step time measured the same way
(a loop of whole steps at the same cache position); the difference is what runs between
ops (Python glue in the model, the facade, cache bookkeeping).

    prof = profile_decoder(model, n_ctx=64)
    print(format_profile(prof))
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import edgeformer.backends.cpu  # noqa: F401 - applies EDGEFORMER_CPU_ISA before numba is imported
import numba
import numpy as np

from edgeformer.backends.base import Weight
from edgeformer.kernels import OPS, Cost
from edgeformer.perf.bandwidth import host_ceilings
from edgeformer.perf.clock import time_per_call


@dataclass
class OpTime:
    """One (op, name) group: `calls` per step, seconds per step (all calls), cost per step."""

    op: str
    name: str
    calls: int
    seconds: float
    cost: Cost
    qtype: str | None = None

    def gbps(self) -> float:
        return self.cost.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def gflops(self) -> float:
        return self.cost.flops / self.seconds / 1e9 if self.seconds > 0 else 0.0

    def roofline_s(self, bw: float, flops: float) -> float:
        """Lower bound on the group's time: max(bytes / bandwidth, flops / peak)."""
        return max(self.cost.bytes / bw, self.cost.flops / flops)


@dataclass
class Profile:
    """A profiled step: `tokens` rows at cache position `position`; `step_s` measured per
    step on the op-by-op path (the one the ops list describes); `fused_s` the same step as
    a user runs it (a backend may fuse ops, e.g. the cpu backend's decode step); `ops` per
    (op, name), in first-call order; ceilings used for the fractions."""

    tokens: int
    position: int
    step_s: float
    ops: list[OpTime] = field(default_factory=list)
    bandwidth: float = 0.0       # bytes/s
    peak_flops: float = 0.0      # FLOP/s
    threads: int = 1
    fused_s: float = 0.0         # the step as run without observers (backend fusions on)

    @property
    def ops_s(self) -> float:
        return sum(o.seconds for o in self.ops)

    @property
    def cost(self) -> Cost:
        c = Cost()
        for o in self.ops:
            c = c + o.cost
        return c


class _Recorder:
    """Ops observer keeping each call's arguments (for replay) and its cost."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple, dict, Cost, str | None]] = []

    def __call__(self, op: str, args: tuple, attrs: dict, name: str | None, layer: int | None) -> None:
        cost = OPS[op].cost(*args, **attrs)
        qtype = next((a.qtype.name for a in args if isinstance(a, Weight)), None)
        # inputs are kept by reference: kernels return fresh outputs and never write inputs
        self.calls.append((op, name or "?", args, dict(attrs), cost, qtype))


def _replay_group(backend: Any, calls: list[tuple], min_time: float) -> float:
    """Seconds for one pass over `calls` (each an (op, args, attrs)), from a >= min_time loop."""
    bound = []
    for op, args, attrs in calls:
        k = backend.kernel(op)
        bound.append((k, tuple(a.handle if isinstance(a, Weight) else a for a in args), attrs))

    def once() -> None:
        for k, a, kw in bound:
            k(*a, **kw)
    return time_per_call(once, min_time, repeats=3)


def time_step(step: Callable[[], Any], min_time: float = 0.2) -> float:
    """Seconds per call of `step` (best of 3 loops of >= min_time, after a warm-up)."""
    return time_per_call(step, min_time, repeats=3)


def profile_decoder(model: Any, n_ctx: int = 64, tokens: int = 1, min_time: float = 0.2,
                    bandwidth: float | None = None, peak_flops: float | None = None,
                    threads: int | None = None) -> Profile:
    """Profile one step of `tokens` new tokens (1 = decode) after `n_ctx` cached positions
    of a `models.decoder.Decoder`-like model (`forward`, `make_cache`, `ops`, `backend`).
    Ceilings default to `perf.bandwidth.host_spec()` (measured, cached per CPU)."""
    if threads is not None:
        numba.set_num_threads(threads)
    bandwidth, peak_flops = host_ceilings(bandwidth, peak_flops)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    cache = model.make_cache(n_ctx + tokens + 1)
    if n_ctx:
        model.forward(rng.integers(0, vocab, n_ctx), cache, last_only=True)
    step_toks = rng.integers(0, vocab, tokens)

    def step() -> None:
        cache.truncate(n_ctx)
        model.forward(step_toks, cache, last_only=True)

    fused_s = time_step(step, min_time)                  # as a user runs it (fused where the backend fuses)
    watch = lambda *a: None  # noqa: E731  (any observer makes the model take the op-by-op path)
    model.ops.observers.append(watch)
    try:
        step_s = time_step(step, min_time)
    finally:
        model.ops.observers.remove(watch)
    rec = _Recorder()
    model.ops.observers.append(rec)
    try:
        step()
    finally:
        model.ops.observers.remove(rec)
    groups: dict[tuple[str, str], list] = {}
    for op, name, args, attrs, cost, qtype in rec.calls:
        groups.setdefault((op, name), []).append((op, args, attrs, cost, qtype))
    prof = Profile(tokens, n_ctx, step_s, bandwidth=bandwidth, peak_flops=peak_flops,
                   threads=numba.get_num_threads(), fused_s=fused_s)
    for (op, name), calls in groups.items():
        secs = _replay_group(model.backend, [(o, a, kw) for o, a, kw, _, _ in calls], min_time)
        cost = Cost()
        for *_, c, _q in calls:
            cost = cost + c
        prof.ops.append(OpTime(op, name, len(calls), secs, cost, calls[0][4]))
    return prof


def format_profile(p: Profile) -> str:
    """A text table: per (op, name) ms per step, share, GB/s, GFLOP/s, roofline fraction;
    then the per-op sum against the measured step time."""
    per = "token" if p.tokens == 1 else f"step of {p.tokens} tokens"
    lines = [f"per-op time per {per} (cache position {p.position}, {p.threads} thread(s); ceilings "
             f"{p.bandwidth / 1e9:.1f} GB/s, {p.peak_flops / 1e9:.0f} GFLOP/s)",
             f"{'op':<10} {'name':<14} {'qtype':<6} {'calls':>5} {'ms':>8} {'share':>6} "
             f"{'GB/s':>7} {'GFLOP/s':>8} {'roofline':>8}"]
    tot = p.ops_s or 1.0
    for o in sorted(p.ops, key=lambda o: -o.seconds):
        frac = o.roofline_s(p.bandwidth, p.peak_flops) / o.seconds if o.seconds > 0 else 0.0
        lines.append(f"{o.op:<10} {o.name:<14} {(o.qtype or '-'):<6} {o.calls:>5} {o.seconds * 1e3:>8.3f} "
                     f"{100 * o.seconds / tot:>5.1f}% {o.gbps():>7.2f} {o.gflops():>8.2f} {100 * frac:>7.1f}%")
    c = p.cost
    roof = max(c.bytes / p.bandwidth, c.flops / p.peak_flops)
    calls = sum(o.calls for o in p.ops)
    glue = p.step_s - p.ops_s
    lines += [f"sum of ops      {p.ops_s * 1e3:9.3f} ms  ({calls} kernel calls)",
              f"measured step   {p.step_s * 1e3:9.3f} ms  ({p.tokens / p.step_s:.1f} tok/s)",
              f"between ops     {glue * 1e3:9.3f} ms  ({100 * glue / p.step_s:+.1f}% of the step: Python glue, "
              f"facade, cache; negative = replay slower than in-model)",
              f"fused step      {p.fused_s * 1e3:9.3f} ms  ({p.tokens / p.fused_s:.1f} tok/s as run; same ops, "
              f"fused by the backend where it can)",
              f"ceiling         {roof * 1e3:9.3f} ms  ({c.bytes / 1e6:.1f} MB, {c.flops / 1e9:.3f} GFLOP): "
              f"op-by-op step at {100 * roof / p.step_s:.1f}%, fused step at {100 * roof / p.fused_s:.1f}% "
              f"of the roofline"]
    return "\n".join(lines)


def profile_dict(p: Profile) -> dict:
    """JSON-ready form of a Profile."""
    return {"tokens": p.tokens, "position": p.position, "threads": p.threads, "step_s": p.step_s,
            "fused_s": p.fused_s,
            "ops_s": p.ops_s, "bandwidth": p.bandwidth, "peak_flops": p.peak_flops,
            "ops": [{"op": o.op, "name": o.name, "qtype": o.qtype, "calls": o.calls, "seconds": o.seconds,
                     "flops": o.cost.flops, "bytes": o.cost.bytes,
                     "roofline_fraction": o.roofline_s(p.bandwidth, p.peak_flops) / o.seconds if o.seconds else 0}
                    for o in p.ops]}

