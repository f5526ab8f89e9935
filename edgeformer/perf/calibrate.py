"""Calibrate the roofline to this machine and backend from microbenchmarks.

Measured (each a loop of at least `min_time` = 0.2 s, because this host's clock ticks in
4-12 ms steps; best of `repeats` trials):

- streaming read bandwidth and a BLAS FP32 matmul peak (`perf.bandwidth.host_spec`);
- per-op dispatch overhead: a tiny `add` and a tiny `linear` through the `Ops` facade;
- GEMV (one token) per weight qtype through the real backend, cycling through enough
  distinct weight copies (>= 96 MiB) that they stream from DRAM, as decode does;
- GEMM per qtype over a (K, T) grid (`calib_tables.measure_gemm_grid`): prefill;
- attention at decode (1 query over 2048 cached keys, cycled over 16 KV buffers) and
  causal prefill attention at two lengths (`calib_tables.ATTN_LENGTHS`), and rms_norm
  over DRAM-sized activations;
- a one-token decode step of a synthetic model at two contexts, through the backend's
  fused path where it has one (`calib_tables.measure_fused_decode`).

From these, `fit()` builds a `HostModel`: the host DeviceSpec plus one roofline
`Calibration` per weight qtype (matmul efficiencies differ per kernel) and a default one
for every other op, the GEMM-rate and attention-rate tables prefill is priced from, and
the fused decode step's per-block overhead and attention rate. Cached as JSON per CPU model + backend in
`$XDG_CACHE_HOME/edgeformer/calib/`, one file per measuring setup (threads, clock; see
`perf.clock`: the clock is passed in, never read from a global). No model file is used:
calibration never sees the models `validate` measures.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.backends.base import Ops, backend_class, default_backend_name, get_backend
from edgeformer.config import DecoderConfig
from edgeformer.errors import ConfigError
from edgeformer.kernels import OPS
from edgeformer.perf import calib_tables as tables
from edgeformer.perf.bandwidth import cpu_model, device_spec_from_ceilings, host_slug, host_spec
from edgeformer.perf.busy import CpuMonitor, is_busy
from edgeformer.perf.calib_tables import calib_weight
from edgeformer.perf.clock import DEFAULT_MIN_TIME, threads, time_per_call
from edgeformer.perf.device_spec import DeviceSpec, Figure
from edgeformer.perf.host_model import HostModel
from edgeformer.perf.roofline import Calibration, op_class
from edgeformer.perf.trace_model import trace_decoder
from edgeformer.quant import QTensor

__all__ = ["HostModel", "calibrate", "fit", "measure", "Measurements", "describe"]

CALIB_QTYPES = ("Q8_0", "Q4_0", "Q4_1", "Q4_K", "F16")   # F16: K-quant fallback rows
GEMV_BYTES = 96 * 2**20        # 3x this host's 32 MiB L3: decode weights come from DRAM
VERSION = 12                    # bump when the benchmarks change: old caches are ignored


@dataclass
class Measurements:
    """Raw microbenchmark results (seconds per call unless stated)."""

    backend: str
    cpu: str
    dispatch_add_s: float = 0.0
    dispatch_linear_s: float = 0.0
    gemv: dict[str, dict[str, float]] = field(default_factory=dict)    # qtype -> {s, bytes, flops}: 2048^2
    gemv_small: dict[str, dict[str, float]] = field(default_factory=dict)   # 512^2
    gemv_tall: dict[str, dict[str, float]] = field(default_factory=dict)    # 4096 x 512: short rows
    gemm_grid: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # qtype -> [{k, t, s, flops}]
    attn_decode: dict[str, float] = field(default_factory=dict)        # {s, bytes, flops}
    attn_lengths: list[dict[str, float]] = field(default_factory=list)  # causal prefill [{len, s, flops}]
    norm: dict[str, float] = field(default_factory=dict)
    ops: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # op -> small/large
    fused_decode: list[dict[str, Any]] = field(default_factory=list)  # [{model, ctx, s}]: FUSED_MODELS
    prefill: dict[str, float] = field(default_factory=dict)            # {tokens, s}: prefill_config()
    seconds: float = 0.0
    others_cores: float | None = None   # other processes' mean CPU use meanwhile (`perf.busy`)
    # the backend's device ceilings (`Backend.measure_ceilings`); None: the host's (`host_spec`)
    ceilings: dict[str, Any] | None = None
    when: str = ""
    version: int = VERSION


def measure(backend: str | None = None, qtypes: Iterable[str] = CALIB_QTYPES,
            min_time: float = DEFAULT_MIN_TIME, repeats: int = 3,
            gemv_bytes: int = GEMV_BYTES, fused: bool = True, prefill: bool = True,
            gemm_grid: tuple[tuple[int, ...], tuple[int, ...]] = (tables.GEMM_KS, tables.GEMM_TS),
            attn_lengths: tuple[int, ...] = tables.ATTN_LENGTHS, clock: str = "wall") -> Measurements:
    """Run every microbenchmark through `backend` (default: `default_backend_name()`), each a
    loop of >= `min_time` s timed by `clock` ("wall" or "cpu"), best of `repeats`; GEMV
    cycles >= `gemv_bytes` of weights. `gemm_grid` (K values, T values) and
    `attn_lengths` size the rate tables; `fused`: also time the fused decode step (a
    ~100 MB synthetic model); `prefill`: also time a synthetic model's first prefill
    (`tables.measure_prefill`)."""
    def bench(fn: Callable[[], object], min_time: float, repeats: int) -> float:
        return time_per_call(fn, min_time, repeats, clock)
    t_start = time.perf_counter()
    monitor = CpuMonitor().start()
    qtypes = tuple(qtypes)
    name = backend or default_backend_name()
    be = get_backend(name)
    ops = Ops(be)
    ceilings = be.measure_ceilings()
    m = Measurements(name, ceilings["device"] if ceilings else cpu_model(), ceilings=ceilings,
                     when=time.strftime("%Y-%m-%d %H:%M:%S"))
    a, b = np.ones((1, 8), np.float32), np.ones((1, 8), np.float32)
    m.dispatch_add_s = bench(lambda: ops.add(a, b), min_time, repeats)
    tiny = be.prepare_weight(calib_weight("Q8_0", 32, 32), "tiny")
    xt = np.ones((1, 32), np.float32)
    m.dispatch_linear_s = bench(lambda: ops.linear(xt, tiny, None), min_time, repeats)
    for q in qtypes:
        for (n, size), key in (((512, 512), "gemv_small"), ((2048, 2048), "gemv"), ((4096, 512), "gemv_tall")):
            qt = calib_weight(q, n, size)
            x1 = np.random.default_rng(1).standard_normal((1, size)).astype(np.float32)
            copies = min(1024, max(1, -(-gemv_bytes // qt.nbytes)))
            ws = [be.prepare_weight(QTensor(qt.data.copy(), qt.qtype, qt.shape), f"w{i}") for i in range(copies)]
            c1 = OPS["linear"].cost(x1, ws[0], None)

            def gemv(ws=ws, x1=x1) -> None:
                for w in ws:
                    ops.linear(x1, w, None)
            t = bench(gemv, min_time, repeats) / copies
            getattr(m, key)[q] = {"s": t, "bytes": c1.bytes, "flops": c1.flops, "n": float(n)}
            del ws
    m.gemm_grid = tables.measure_gemm_grid(ops, be, qtypes, bench, min_time, *gemm_grid,
                                           stream_bytes=gemv_bytes)
    m.ops = _op_benches(ops, bench, min_time, repeats)
    m.attn_decode = _attention_bench(ops, bench, 1, 2048, 16, min_time, repeats)
    m.attn_lengths = tables.measure_attention_lengths(ops, bench, min_time, attn_lengths)
    if fused:
        m.fused_decode = tables.measure_fused_decode(be, bench, min_time)
    if prefill:
        m.prefill = tables.measure_prefill(be, clock=clock)
    xs = [np.random.default_rng(i).standard_normal((256, 2048)).astype(np.float32) for i in range(32)]
    wn = np.ones(2048, np.float32)
    c = OPS["rms_norm"].cost(xs[0], wn, 1e-5)

    def norms() -> None:
        for x in xs:
            ops.rms_norm(x, wn, 1e-5)
    m.norm = {"s": bench(norms, min_time, repeats) / len(xs), "bytes": c.bytes, "flops": c.flops}
    m.seconds = time.perf_counter() - t_start
    m.others_cores = monitor.stop().others_cores
    return m


Bench = Callable[[Callable[[], object], float, int], float]   # (fn, min_time, repeats) -> s/call


def _op_benches(ops: Ops, bench: Bench, min_time: float, repeats: int) -> dict[str, dict[str, dict[str, float]]]:
    """Each elementwise op the decoder uses at a decode size (one token, operands hot in
    cache) and a prefill size (256 tokens, cycled past the caches): two points for a
    per-op overhead + bandwidth fit."""
    rng = np.random.default_rng(4)

    def f(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    inv = (1.0 / 10000 ** (np.arange(0, 64, 2) / 64)).astype(np.float32)
    cases = {
        "rms_norm": lambda t: ((f(t, 2048), np.ones(2048, np.float32), 1e-5), {}),
        "add": lambda t: ((f(t, 2048), f(t, 2048)), {}),
        "glu": lambda t: ((f(t, 4096), f(t, 4096), "silu"), {}),
        "rope": lambda t: ((f(t, 32, 64), np.arange(t), inv), {"neox": False, "mscale": 1.0}),
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    for op, make in cases.items():
        out[op] = {}
        for key, t, n_buf in (("small", 1, 1), ("large", 256, 8)):
            calls = [make(t) for _ in range(n_buf)]
            c = OPS[op].cost(*calls[0][0], **calls[0][1])
            fn = getattr(ops, op)

            def run(calls=calls, fn=fn) -> None:
                for a, kw in calls:
                    fn(*a, **kw)
            out[op][key] = {"s": bench(run, min_time, repeats) / n_buf, "bytes": c.bytes, "flops": c.flops}
    small = _attention_bench(ops, bench, 1, 256, 1, min_time, repeats)
    out["attention"] = {"small": small, "large": _attention_bench(ops, bench, 1, 2048, 16, min_time, repeats)}
    return out


def _two_point(small: dict[str, float], large: dict[str, float], bw: float, d_max: float) -> tuple[float, float]:
    """(per-call overhead, eta_mem) from t = d + bytes / (eta bw) through two points;
    the overhead is kept in [0, min(d_max, 0.9 t_small)]."""
    db = large["bytes"] - small["bytes"]
    slope = (large["s"] - small["s"]) / db if db > 0 else 0.0
    d = small["s"] - slope * small["bytes"] if slope > 0 else small["s"]
    d = min(max(d, 0.0), 0.9 * small["s"], d_max)
    return d, _eta(large["bytes"] / (max(large["s"] - d, 1e-9) * bw))


def _attention_bench(ops: Ops, bench: Bench, t: int, s: int, n_buf: int, min_time: float,
                     repeats: int) -> dict[str, float]:
    """Attention with SmolLM2's heads (9 query, 3 kv, head_dim 64); `n_buf` distinct KV
    buffers cycled so decode reads them from DRAM."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((t, 9, 64)).astype(np.float32)
    kv = [(rng.standard_normal((s, 3, 64)).astype(np.float32),
           rng.standard_normal((s, 3, 64)).astype(np.float32)) for _ in range(n_buf)]
    qp, kp = np.arange(s - t, s), np.arange(s)
    kw = dict(scale=0.125, causal=True, window=None, softcap=None)
    c = OPS["attention"].cost(q, kv[0][0], kv[0][1], qp, kp, **kw)

    def run() -> None:
        for k, v in kv:
            ops.attention(q, k, v, qp, kp, **kw)
    return {"s": bench(run, min_time, repeats) / n_buf, "bytes": c.bytes, "flops": c.flops}


def _eta(value: float) -> float:
    """Efficiencies in (0, 1]; a measurement that beats the roof is capped at 1 (it means
    the roof, a BLAS or streaming-read figure, is itself below the true peak)."""
    return float(min(1.0, max(value, 1e-4)))


def fit(m: Measurements, device: DeviceSpec) -> HostModel:
    """Fit efficiencies: t_op = max(flops / (eta_c peak), bytes / (eta_m bw)) + dispatch.
    Dispatch comes from the tiny ops; GEMV fixes matmul eta_mem per qtype; the GEMM grid
    and attention lengths are kept as rate tables (`host_model`); the norm and per-op
    benchmarks fix the other classes; the fused decode step its two terms (`_fit_fused`)."""
    bw = device.mem_bw.si
    peak = device.peak("fp32") or 1.0
    # a tiny op's time is all overhead; never let it exceed half of a real op's time
    # (a preempted tiny-op loop would otherwise swallow the measurements it is taken from)
    d_lin = min(m.dispatch_linear_s, 0.5 * min(g["s"] for g in m.gemv.values()))
    d_el = min(m.dispatch_add_s, 0.5 * m.norm["s"])
    # gemm can beat BLAS's square-matmul figure: raise the host's fp32 roof to the best seen
    rates = [p["flops"] / p["s"] for pts in m.gemm_grid.values() for p in pts]
    rates += [p["flops"] / p["s"] for p in m.attn_lengths]
    best = max([peak] + rates)
    if best > peak:
        fig = device.peak_flops[(device.default_unit, "fp32")]
        note = f"raised from BLAS {peak / 1e9:.1f} GFLOPS to the best calibrated kernel"
        device = _replace_peak(device, Figure(best / 1e9, "GFLOPS", fig.source, dense=True, note=note))
        peak = best
    # likewise the streaming roof: a benchmark that reads faster than the measured
    # bandwidth (a contended or too-short STREAM run) raises it, so etas stay <= 1
    reads = [g["bytes"] / g["s"] for g in m.gemv.values()] + [m.norm["bytes"] / m.norm["s"]]
    reads += [p["large"]["bytes"] / p["large"]["s"] for p in m.ops.values()]
    if max(reads) > bw:
        note = f"raised from the STREAM-style {bw / 1e9:.1f} GB/s to the fastest calibrated kernel"
        device = replace(device, mem_bw=Figure(max(reads) / 1e9, "GB/s", device.mem_bw.source, note=note))
        bw = max(reads)
    dispatch = {"matmul": d_lin, "attention": d_el, "gather": d_el, "elementwise": d_el}
    ad = m.attn_decode
    ap = min(m.attn_lengths, key=lambda p: p["len"]) if m.attn_lengths else None
    base_c = {"matmul": 0.5, "attention": _eta(ap["flops"] / (max(ap["s"] - d_el, 1e-9) * peak)) if ap else 0.5,
              "gather": 0.5, "elementwise": 0.5}
    base_m = {"matmul": 0.5, "attention": _eta(ad["bytes"] / (max(ad["s"] - d_el, 1e-9) * bw)),
              "gather": _eta(m.norm["bytes"] / (max(m.norm["s"] - d_el, 1e-9) * bw)),
              "elementwise": _eta(m.norm["bytes"] / (max(m.norm["s"] - d_el, 1e-9) * bw))}
    by_q: dict[str, Calibration] = {}
    row_s: dict[str, float] = {}
    for q, g in m.gemv.items():
        # two GEMV sizes: t = d_q + bytes / (eta_m bw) gives the kernel's own per-call
        # overhead d_q (parallel-region start-up) and its streaming efficiency
        sm = m.gemv_small.get(q, g)
        db = g["bytes"] - sm["bytes"]
        slope = (g["s"] - sm["s"]) / db if db > 0 else 0.0
        d_q = min(max(sm["s"] - slope * sm["bytes"], 0.0), 0.9 * sm["s"]) if slope > 0 else d_lin
        em = _eta(g["bytes"] / (max(g["s"] - d_q, 1e-9) * bw))
        rows = _gemv_three_point(sm, g, m.gemv_tall.get(q))
        if rows is not None:   # t = d + n * row + bytes / (eta bw): short rows cost more per byte
            d_q, row_s[q], beta = rows
            em = _eta(1.0 / (beta * bw))
        # eta_compute for records without shapes (hand-built op lists): the grid's
        # geometric-mean rate; traced records use the grid itself
        grid = m.gemm_grid.get(q, [])
        ec = _eta(math.exp(float(np.mean([math.log(p["flops"] / p["s"]) for p in grid]))) / peak) if grid else 0.5
        # the GEMV itself ran at least this fast: the compute roof must not bind below it
        ec = max(ec, _eta(g["flops"] / (max(g["s"] - d_q, 1e-9) * peak)))
        by_q[q] = Calibration({**base_c, "matmul": ec}, {**base_m, "matmul": em}, {**dispatch, "matmul": d_q},
                              source=f"calibrated {m.backend} {q} on {m.cpu} ({m.when})")
    mean_c = float(np.mean([c.eta_compute["matmul"] for c in by_q.values()])) if by_q else 0.5
    mean_m = float(np.mean([c.eta_mem["matmul"] for c in by_q.values()])) if by_q else 0.5
    calib = Calibration({**base_c, "matmul": mean_c}, {**base_m, "matmul": mean_m}, dispatch,
                        source=f"calibrated {m.backend} on {m.cpu} ({m.when})")
    by_op: dict[str, Calibration] = {}
    for op, pts in m.ops.items():
        cls = op_class(op)
        d, em = _two_point(pts["small"], pts["large"], bw, math.inf)
        by_op[op] = Calibration(base_c, {**base_m, cls: em}, {**dispatch, cls: d},
                                source=f"calibrated {m.backend} {op} on {m.cpu} ({m.when})")
    host = HostModel(device, calib, by_q, m.backend, m, by_op, dict(m.gemm_grid), list(m.attn_lengths),
                     gemv_row_s=row_s)
    return replace(host, fused=_fit_fused(host, m), prefill_s_per_layer_token=_fit_prefill(host, m))


def _fit_prefill(host: HostModel, m: Measurements) -> float:
    """Seconds per layer and token a prefill costs beyond the sum of its ops (the model's
    Python glue and copies between ops, first-touch page faults of fresh activation
    buffers, operands cold from the previous op), from `m.prefill` against the trace of
    the same synthetic model; >= 0. Per layer-token rather than per byte: the measured
    gap barely changes with the model's width."""
    if not m.prefill:
        return 0.0
    cfg = DecoderConfig(**tables.prefill_config())
    n = int(m.prefill["tokens"])
    tr = trace_decoder(cfg, prompt_len=n, context_len=0, qtype=tables.FUSED_QTYPE, max_seq_len=n + 1,
                       backend=m.backend)
    ops_s = host.predict(tr.prefill).total_s
    return max(0.0, (m.prefill["s"] - ops_s) / (cfg.n_layers * n))


def _gemv_three_point(a: dict[str, float], b: dict[str, float], c: dict[str, float] | None
                      ) -> tuple[float, float, float] | None:
    """(per call d, per row r, per byte beta) solving t = d + n r + bytes beta exactly
    through three GEMV shapes; None when a shape is missing, the system is singular or
    a term comes out negative (the two-point fit is kept then)."""
    if c is None or "n" not in a:
        return None
    mat = np.array([[1.0, p["n"], p["bytes"]] for p in (a, b, c)])
    try:
        d, r, beta = np.linalg.solve(mat, np.array([p["s"] for p in (a, b, c)]))
    except np.linalg.LinAlgError:
        return None
    if min(d, r) < 0 or beta <= 0:
        return None
    return float(d), float(r), float(beta)


def _fit_fused(host: HostModel, m: Measurements) -> tables.FusedDecode | None:
    """The fused decode terms from `m.fused_decode`: each measured step against the trace
    of the same synthetic model priced as the fused path runs (`tables.fit_fused`)."""
    if len(m.fused_decode) < 3:
        return None

    def parts(key: str, ctx: int) -> tuple[float, float, float, int]:
        cfg = DecoderConfig(**tables.FUSED_MODELS[key])
        tr = trace_decoder(cfg, prompt_len=1, context_len=ctx, qtype=tables.FUSED_QTYPE,
                           max_seq_len=cfg.max_seq_len, backend=m.backend)
        other = gemv = attn = 0.0
        for r in tr.decode:
            inside = r.layer is not None
            if inside and r.op == "attention":
                attn += r.cost.bytes
            elif inside and r.op == "linear":
                gemv += host.op_time(r, True).t
            else:
                other += host.op_time(r, inside).t
        return other, gemv, attn, cfg.n_layers
    return tables.fit_fused(m.fused_decode, parts)


def _replace_peak(device: DeviceSpec, fig: Figure) -> DeviceSpec:
    return replace(device, peak_flops={**device.peak_flops, (device.default_unit, "fp32"): fig})


def backend_fingerprint(backend: str) -> str:
    """A short hash of the backend's source files: a changed kernel invalidates the cache."""
    h = hashlib.sha256()
    mod = inspect.getmodule(type(get_backend(backend)))
    source = Path(mod.__file__) if mod is not None and mod.__file__ else None
    if source is None:
        files = []
    else:   # a package backend (backends/cpu/) hashes all its modules
        files = sorted(source.parent.glob("*.py")) if source.parent.name == backend else [source]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def cache_path(backend: str, cache_dir: str | Path | None, clock: str) -> Path:
    """The calibration cache file of `backend` in the current thread count and `clock`
    (`cache_dir` default: `$XDG_CACHE_HOME/edgeformer/calib/`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(cache_dir) if cache_dir else Path(base) / "edgeformer" / "calib"
    # a device backend's figures belong to its device (describe() names it), not to this CPU
    where, cls = host_slug(cpu_model()), backend_class(backend)
    if cls is not None and cls.device_memory:
        where += f"__{host_slug(get_backend(backend).describe())}"
    return root / f"{where}__{backend}_t{threads()}_{clock}_{backend_fingerprint(backend)}.json"


def calibrate(backend: str | None = None, refresh: bool = False, cache_dir: str | Path | None = None,
              min_time: float = DEFAULT_MIN_TIME, verbose: bool = False, clock: str = "wall") -> HostModel:
    """The HostModel of this machine + `backend` (default the fastest available) timed by
    `clock` at the current thread count: from the JSON cache when present, else measured
    (under a minute) and cached."""
    name = backend or default_backend_name()
    path = cache_path(name, cache_dir, clock)
    if not refresh and path.is_file():
        try:
            raw = json.loads(path.read_text())
            if raw.get("version") == VERSION:
                m = Measurements(**raw)
                return fit(m, _ceilings_spec(m, refresh))
        except (OSError, ValueError, TypeError, ConfigError):
            pass   # stale or unreadable: measure again
    if verbose:
        print(f"calibrating backend {name!r} on {cpu_model()} (about a minute)...", flush=True)
    m = measure(name, min_time=min_time, clock=clock)
    if verbose and calibration_busy(m):
        print(f"warning: machine busy while calibrating (other processes used {m.others_cores:.2f} "
              f"cores on average): predictions will be off; rerun `edgeformer perf calibrate --refresh` "
              "when the machine is quiet", flush=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(m.__dict__, indent=1))
    except OSError:
        pass
    return fit(m, _ceilings_spec(m, refresh))


def _ceilings_spec(m: Measurements, refresh: bool) -> DeviceSpec:
    """The ceilings `m` is fitted against: its backend's device, or this host."""
    return device_spec_from_ceilings(m.ceilings) if m.ceilings else host_spec(refresh=refresh)


def calibration_busy(m: Measurements | None) -> bool:
    """Whether `m` was measured while other processes kept the machine busy (unknown for
    caches written before this was recorded: False)."""
    return m is not None and is_busy(getattr(m, "others_cores", None))


def describe(host: HostModel) -> list[tuple[str, str]]:
    """(what, value) rows for printing a HostModel."""
    d, m = host.device, host.measurements
    rows = [("device", f"{d.display_name} ({d.name})"), ("backend", host.backend),
            ("read bandwidth", f"{d.mem_bw.si / 1e9:.2f} GB/s"),
            ("fp32 peak", f"{(d.peak('fp32') or 0) / 1e9:.1f} GFLOP/s")]
    if m is not None:
        rows += [("dispatch add / linear", f"{m.dispatch_add_s * 1e6:.1f} / {m.dispatch_linear_s * 1e6:.1f} us"),
                 ("benchmark time", f"{m.seconds:.1f} s")]
        if getattr(m, "others_cores", None) is not None:
            rows.append(("other processes' CPU use meanwhile",
                         f"{m.others_cores:.2f} cores{' (BUSY: rerun with --refresh when quiet)' if calibration_busy(m) else ''}"))
    for q, c in host.by_qtype.items():
        rows.append((f"{q} matmul eta_mem / eta_compute / per-call / per-row (GEMV)",
                     f"{c.eta_mem['matmul']:.3f} / {c.eta_compute['matmul']:.3f} / "
                     f"{c.dispatch_s['matmul'] * 1e6:.1f} us / {host.gemv_row_s.get(q, 0.0) * 1e9:.1f} ns"))
    for op, c in host.by_op.items():
        cls = op_class(op)
        rows.append((f"{op} eta_mem / per-call", f"{c.eta_mem[cls]:.3f} / {c.dispatch_s[cls] * 1e6:.1f} us"))
    for q, pts in host.gemm_grid.items():
        mid = sorted({p["k"] for p in pts})[len({p["k"] for p in pts}) // 2]
        row = [p for p in pts if p["k"] == mid]
        rows.append((f"{q} GEMM GFLOP/s at K = {int(mid)}, T = " + " / ".join(str(int(p["t"])) for p in row),
                     " / ".join(f"{p['flops'] / p['s'] / 1e9:.1f}" for p in row)))
    for p in host.attn_lengths:
        rows.append((f"causal attention {int(p['len'])} tokens", f"{p['flops'] / p['s'] / 1e9:.2f} GFLOP/s"))
    rows.append(("prefill: between ops per layer-token", f"{host.prefill_s_per_layer_token * 1e6:.2f} us"))
    if host.fused is not None:
        rows.append(("fused decode: per block / GEMV time scale / attention K/V read",
                     f"{host.fused.block_s * 1e6:.1f} us / {host.fused.gemv_scale:.3f} / "
                     f"{host.fused.attn_bytes_s / 1e9:.2f} GB/s"))
    return rows
