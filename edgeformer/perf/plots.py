"""PNG plots of the performance model (matplotlib, Agg backend: no display needed).

- `roofline_png`: a device's roofline (attainable FLOP/s vs arithmetic intensity) with a
  model's traced ops placed on it, prefill and decode in different markers.
- `curves_png`: decode tok/s vs context length, one line per device.
- `pareto_png`: co-design candidates (latency vs quality loss), Pareto front highlighted.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from edgeformer.extras import require
from edgeformer.perf.device_spec import DeviceSpec
from edgeformer.perf.roofline import Calibration, DEFAULT_CALIBRATION, OpTime


def _plt():
    matplotlib = require("matplotlib", "plots", "PNG plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def roofline_png(path: str | os.PathLike, device: DeviceSpec, ops: Mapping[str, Sequence[OpTime]],
                 calib: Calibration = DEFAULT_CALIBRATION, title: str = "") -> Path:
    """Roofline of `device` (one compute roof per dtype the ops use, scaled by the matmul
    efficiency; bandwidth roof scaled by eta_mem) with each op of `ops` (label -> OpTime
    list, e.g. {"prefill": ..., "decode": ...}) at (flops / bytes, flops / predicted time).
    Returns the path."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    pts = [o for lst in ops.values() for o in lst if o.flops > 0 and o.bytes > 0]
    lo = min([o.flops / o.bytes for o in pts] + [0.1]) / 2
    hi = max([o.flops / o.bytes for o in pts] + [100.0]) * 2
    bw = device.mem_bw.si * calib.eta_mem["matmul"]
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    for dtype in sorted({o.dtype for o in pts}) or ["fp32"]:
        peak = (device.peak(dtype) or 0) * calib.eta_compute["matmul"]
        if peak:
            ax.plot(xs, [min(peak, x * bw) for x in xs], label=f"roof {dtype} ({peak / 1e9:.0f} GFLOP/s)")
    for (label, lst), marker in zip(ops.items(), "o^sv"):
        sel = [o for o in lst if o.flops > 0 and o.bytes > 0]
        ax.scatter([o.flops / o.bytes for o in sel], [o.flops / o.t for o in sel], s=12, alpha=0.6,
                   marker=marker, label=f"{label} ops ({len(sel)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("attained FLOP/s (predicted)")
    ax.set_title(title or f"roofline: {device.display_name or device.name}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def curves_png(path: str | os.PathLike, curves: Mapping[str, Sequence[tuple[int, float]]],
               title: str = "decode tok/s vs context") -> Path:
    """One line per label (device): (context length, tok/s) points. Returns the path."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for label, pts in curves.items():
        ax.plot([c for c, _ in pts], [r for _, r in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode tok/s (predicted)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def pareto_png(path: str | os.PathLike, points: Sequence[tuple[float, float]],
               front: Sequence[tuple[float, float]], xlabel: str = "decode ms/token",
               ylabel: str = "predicted loss (nats)", title: str = "co-design candidates") -> Path:
    """Scatter of all (x, y) candidates with the Pareto front drawn as a step line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    if points:
        ax.scatter([p[0] for p in points], [p[1] for p in points], s=8, alpha=0.35, label="candidates")
    f = sorted(front)
    if f:
        ax.step([p[0] for p in f], [p[1] for p in f], where="post", color="C3")
        ax.scatter([p[0] for p in f], [p[1] for p in f], s=22, color="C3", label=f"Pareto front ({len(f)})")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
