"""Deployment planning: price one model on every catalog device and check budgets.

For each (device, weight qtype): TTFT of a `prompt_len` prefill, decode latency at
`context_len`, peak memory (`memory.estimate`, on-device runtime: weights held once),
energy per token (catalog power x time), and which resource binds:

- "memory" when the model does not fit the device or the memory budget;
- "power" when the device's rated power exceeds the power budget;
- otherwise what bounds decode on the roofline: "compute", "bandwidth" or "overhead".

Devices meeting every budget rank first, fastest decode first. `PlanResult.verdict`
explains an empty result, naming the resource that binds.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeformer.errors import InputError, UnsupportedError
from edgeformer.perf.bandwidth import device_or_host
from edgeformer.perf.device_spec import DeviceSpec, load_catalog, normalize_name
from edgeformer.perf.memory import MemoryEstimate, estimate
from edgeformer.perf.plots import curves_png, roofline_png
from edgeformer.perf.roofline import DEFAULT_CALIBRATION, Calibration, Prediction, energy_per_token, predict
from edgeformer.perf.trace_model import ModelTrace, shape_checkpoint, trace_decoder

CURVE_CONTEXTS = (128, 256, 512, 1024, 2048, 4096, 8192)


@dataclass(frozen=True)
class Budgets:
    """Per-token decode latency (ms), peak memory (GB, 1e9 bytes), device power (W);
    None = no budget. Non-positive values are rejected."""

    latency_ms: float | None = None
    memory_gb: float | None = None
    power_w: float | None = None

    def __post_init__(self) -> None:
        for k in ("latency_ms", "memory_gb", "power_w"):
            v = getattr(self, k)
            if v is not None and not v > 0:
                raise InputError(f"--{k.replace('_', '-')} must be positive, got {v}")


@dataclass(frozen=True)
class DevicePlan:
    device: DeviceSpec
    qtype: str
    ttft_s: float
    decode_s: float
    memory: MemoryEstimate
    energy_j: float | None          # per decoded token, rated power x step time
    decode_bound: str               # compute | bandwidth | overhead
    failures: dict[str, str]        # resource -> why it misses its budget
    decode_pred: Prediction = field(repr=False, compare=False, default=None)   # type: ignore[assignment]
    prefill_pred: Prediction = field(repr=False, compare=False, default=None)  # type: ignore[assignment]

    @property
    def meets(self) -> bool:
        return not self.failures

    @property
    def binding(self) -> str:
        """The resource that binds: the first failing one (memory, power, then the
        decode bound for latency), or the decode bound when every budget is met."""
        for k in ("memory", "power", "latency"):
            if k in self.failures:
                return self.decode_bound if k == "latency" else k
        return self.decode_bound

    @property
    def tok_s(self) -> float:
        return 1.0 / self.decode_s


@dataclass
class PlanResult:
    model: str
    prompt_len: int
    context_len: int
    budgets: Budgets
    plans: list[DevicePlan]
    traces: dict[str, ModelTrace]

    @property
    def feasible(self) -> list[DevicePlan]:
        return [p for p in self.plans if p.meets]

    def verdict(self) -> str:
        """One sentence: how many devices meet the budgets, or why none does and which
        resource binds."""
        if self.feasible:
            best = self.feasible[0]
            return (f"{len(self.feasible)} of {len(self.plans)} device/qtype pairs meet the budgets; "
                    f"fastest: {best.device.name} {best.qtype} at {best.tok_s:.1f} tok/s ({best.binding}-bound)")
        counts: dict[str, int] = {}
        for p in self.plans:
            counts[p.binding] = counts.get(p.binding, 0) + 1
        worst = max(counts, key=counts.__getitem__)
        min_mem = min(p.memory.total for p in self.plans)
        b = self.budgets
        if b.memory_gb is not None and min_mem > b.memory_gb * 1e9:
            return (f"impossible budgets: memory binds: the model needs at least {min_mem / 1e9:.3f} GB "
                    f"(weights + KV + activations) on any device; budget {b.memory_gb} GB")
        best = min(self.plans, key=lambda p: p.decode_s)
        why = "; ".join(f"{k}: {v}" for k, v in best.failures.items())
        return (f"impossible budgets: no device meets them ({worst} binds on {counts[worst]} of "
                f"{len(self.plans)}). Closest: {best.device.name} {best.qtype}: {why}")


def _devices(names: Iterable[str] | None, catalog: str | os.PathLike | None = None) -> list[DeviceSpec]:
    """Devices by name from the packaged catalog ("host": this machine, measured) or
    from `catalog`, a TOML file/directory, validated: a malformed one raises
    ConfigError. Unknown names: UnsupportedError."""
    if catalog is None:
        return list(load_catalog().values()) if names is None else [device_or_host(n) for n in names]
    cat = load_catalog(catalog)
    if names is None:
        return list(cat.values())
    out = []
    for n in names:
        key = normalize_name(n)
        if key not in cat:
            raise UnsupportedError(f"unknown device {n!r} in {catalog}; known: {', '.join(sorted(cat))}")
        out.append(cat[key])
    return out


def model_traces(model: Any, qtypes: Iterable[str] | None, prompt_len: int, context_len: int
                 ) -> dict[str, ModelTrace]:
    """qtype -> trace. Without `qtypes`, the model as stored (key: its majority qtype);
    with, the model's config re-priced with every matrix in each qtype."""
    ckpt = shape_checkpoint(model) if not hasattr(model, "vocab_size") else None
    config = ckpt.config if ckpt is not None else model
    if not qtypes:
        if ckpt is None:
            qtypes = ["Q4_0"]
        else:
            tr = trace_decoder(ckpt, prompt_len, context_len)
            counts: dict[str, int] = {}
            for t in ckpt.tensors.values():
                if len(t.shape) == 2:
                    counts[t.qtype.name] = counts.get(t.qtype.name, 0) + t.nbytes
            return {max(counts, key=counts.__getitem__) + "*": tr}   # * = as stored
    return {q.upper(): trace_decoder(config, prompt_len, context_len, qtype=q) for q in qtypes}


def plan(model: Any, budgets: Budgets = Budgets(), qtypes: Iterable[str] | None = None,
         devices: Iterable[str] | None = None, prompt_len: int = 128, context_len: int = 1024,
         calib: Calibration = DEFAULT_CALIBRATION, catalog: str | os.PathLike | None = None) -> PlanResult:
    """Price `model` (path, shipped name or DecoderConfig) on `devices` (default: the
    whole catalog, or the devices of the `catalog` file/directory) for each of `qtypes`,
    check `budgets`, rank. UnsupportedError on an unknown device, ConfigError on a
    malformed catalog, InputError on lengths beyond the model's context."""
    devs = _devices(devices, catalog)
    traces = model_traces(model, qtypes, prompt_len, context_len)
    plans = []
    for q, tr in traces.items():
        mem = estimate(tr)
        for d in devs:
            pre, dec = predict(tr.prefill, d, calib), predict(tr.decode, d, calib)
            e = energy_per_token(dec, d, 1).power_j
            fail: dict[str, str] = {}
            cap = d.mem_bytes.si
            if mem.total > cap:
                fail["memory"] = f"needs {mem.total / 1e9:.2f} GB, device has {cap / 1e9:.1f} GB"
            elif budgets.memory_gb is not None and mem.total > budgets.memory_gb * 1e9:
                fail["memory"] = f"needs {mem.total / 1e9:.3f} GB > budget {budgets.memory_gb} GB"
            if budgets.power_w is not None:
                if d.power_w is None:
                    fail["power"] = "device power unknown"
                elif d.power_w.si > budgets.power_w:
                    fail["power"] = f"rated {d.power_w.si:.0f} W > budget {budgets.power_w} W"
            if budgets.latency_ms is not None and dec.total_s * 1e3 > budgets.latency_ms:
                fail["latency"] = (f"{dec.total_s * 1e3:.2f} ms/token > budget {budgets.latency_ms} ms "
                                   f"({dec.bound}-bound)")
            plans.append(DevicePlan(d, q, pre.total_s, dec.total_s, mem, e, dec.bound, fail, dec, pre))
    plans.sort(key=lambda p: (not p.meets, p.decode_s))
    name = model if isinstance(model, (str, os.PathLike)) else getattr(model, "arch", "config")
    return PlanResult(str(name), prompt_len, context_len, budgets, plans, traces)


def context_curves(result: PlanResult, top: int = 4, contexts: Iterable[int] = CURVE_CONTEXTS,
                   calib: Calibration = DEFAULT_CALIBRATION) -> dict[str, list[tuple[int, float]]]:
    """Decode tok/s vs context for the `top` ranked (device, qtype) pairs."""
    out: dict[str, list[tuple[int, float]]] = {}
    chosen = result.plans[:top]
    by_q = {p.qtype for p in chosen}
    max_ctx = next(iter(result.traces.values())).config.max_seq_len
    ctxs = [c for c in contexts if c < max_ctx]
    for q in by_q:
        base = result.traces[q]
        for c in ctxs:
            tr = _retrace(result, q, base, c)
            for p in chosen:
                if p.qtype == q:
                    rate = 1.0 / predict(tr.decode, p.device, calib).total_s
                    out.setdefault(f"{p.device.name} {q}", []).append((c, rate))
    return out


def _retrace(result: PlanResult, q: str, base: ModelTrace, context: int) -> ModelTrace:
    if q.endswith("*"):
        src = shape_checkpoint(result.model)
        return trace_decoder(src, 1, context, max_seq_len=max(context + 1, 4096))
    return trace_decoder(base.config, 1, context, qtype=q, max_seq_len=max(context + 1, 4096))


def write_plots(result: PlanResult, out_dir: str | os.PathLike, top: int = 4,
                calib: Calibration = DEFAULT_CALIBRATION) -> list[Path]:
    """roofline.png (the top device, the model's prefill and decode ops placed on it) and
    context.png (decode tok/s vs context for the top devices) in `out_dir`."""
    out = Path(out_dir)
    best = result.plans[0]
    ops = {"prefill": best.prefill_pred.ops, "decode": best.decode_pred.ops}
    title = f"{result.model} {best.qtype} on {best.device.name}"
    paths = [roofline_png(out / "roofline.png", best.device, ops, calib, title)]
    paths.append(curves_png(out / "context.png", context_curves(result, top, calib=calib),
                            f"{result.model}: decode tok/s vs context"))
    return paths
