"""Calibration: the fitted roofline reproduces the microbenchmarks it was fitted to
(through the same pricing the predictions use), efficiencies stay in (0, 1], every
loop runs >= min_time, and the cache round-trips."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.backends.base import Ops, get_backend
from edgeformer.backends.trace import trace_forward
from edgeformer.kernels import OPS
from edgeformer.perf import calibrate as cal
from edgeformer.perf.bandwidth import host_spec
from edgeformer.perf.calib_tables import calib_weight
from edgeformer.perf.roofline import OpRecord

GRID = ((256, 1024), (8, 32))


@pytest.fixture(scope="module")
def measured():
    # numpy backend, one qtype, short loops, a small grid: the fitting logic, not this
    # host's numbers
    return cal.measure("numpy", qtypes=("Q8_0",), min_time=0.02, repeats=1, gemv_bytes=4 * 2**20,
                       fused=False, prefill=False, gemm_grid=GRID, attn_lengths=(64, 256))


def _traced_linear(n, k, t):
    ops = Ops(get_backend("numpy"))
    w = get_backend("numpy").prepare_weight(calib_weight("Q8_0", n, k), "w")
    return trace_forward(lambda: ops.linear(np.zeros((t, k), np.float32), w, None), ops)[0]


def _pred(host, size, tokens):
    w = calib_weight("Q8_0", size, size)
    x = np.zeros((tokens, size), np.float32)
    return host.predict([OpRecord("linear", OPS["linear"].cost(x, w, None), qtype="Q8_0")]).total_s


def test_fit_reproduces_its_benchmarks(measured):
    host = cal.fit(measured, host_spec())
    c = host.by_qtype["Q8_0"]
    capped = c.eta_mem["matmul"] >= 1.0
    # the three GEMV shapes fix per-call, per-row and per-byte terms exactly; when that
    # fit is rejected (a negative term) the large one fixes eta_mem given the per-call
    # overhead of the two-point fit (which may be clipped, so the small one can miss)
    three = "Q8_0" in host.gemv_row_s
    shapes = {"gemv_small": (512, 512), "gemv": (2048, 2048), "gemv_tall": (4096, 512)}
    for key, (n, k) in shapes.items():
        if key != "gemv" and not three:
            continue
        got = host.op_time(_traced_linear(n, k, 1)).t
        assert got == pytest.approx(getattr(measured, key)["Q8_0"]["s"], rel=1e-6) or capped, key
    assert _pred(host, 2048, 1) > 0      # hand-built records (no shapes) are still priced
    # traced GEMMs at the grid's points are priced at their measured time (whole calls),
    # unless the weight-streaming roof binds instead
    ops = Ops(get_backend("numpy"))
    for p in measured.gemm_grid["Q8_0"]:
        k, t = int(p["k"]), int(p["t"])
        ot = host.op_time(_traced_linear(cal.tables.GEMM_N, k, t))
        assert ot.t == pytest.approx(p["s"], rel=1e-6) or ot.t_memory > ot.t_compute, (k, t)
    for p in measured.attn_lengths:
        n = int(p["len"])
        q, kv = np.zeros((n, 9, 64), np.float32), np.zeros((n, 3, 64), np.float32)
        recs = trace_forward(lambda: ops.attention(q, kv, kv, np.arange(n), np.arange(n), scale=0.125,
                                                   causal=True, window=None, softcap=None), ops)
        ot = host.op_time(recs[0])
        assert ot.t == pytest.approx(p["s"], rel=1e-6) or ot.t_memory > ot.t_compute, n
    # per-op two-point fits reproduce both of their points unless the overhead was clipped
    # (attention also has a compute roof fitted on prefill, which may bind instead)
    for op, pts in measured.ops.items():
        if op == "attention":
            continue
        rec_cal = host.by_op[op]
        from edgeformer.perf.roofline import op_class
        d = rec_cal.dispatch_s[op_class(op)]
        if d == 0.0 or d == pytest.approx(0.9 * pts["small"]["s"]) or rec_cal.eta_mem[op_class(op)] >= 1:
            continue
        for key in ("small", "large"):
            p = pts[key]
            got = host.predict([OpRecord(op, _Cost(p["flops"], p["bytes"]))]).total_s
            assert got == pytest.approx(p["s"], rel=0.02), (op, key)
    for cls in ("matmul", "attention", "gather", "elementwise"):
        assert 0 < host.calib.eta_mem[cls] <= 1 and 0 < host.calib.eta_compute[cls] <= 1
        assert host.calib.dispatch_s[cls] >= 0
    assert host.fused is None    # numpy has no fused decode step
    assert {(p["k"], p["t"]) for p in measured.gemm_grid["Q8_0"]} == {(k, t) for k in GRID[0] for t in GRID[1]}


class _Cost:
    def __init__(self, flops, nbytes):
        self.flops, self.bytes_read, self.bytes_written = flops, nbytes, 0.0


def test_every_benchmark_loops_at_least_min_time(monkeypatch):
    seen = []
    real = cal.time_per_call

    def spy(fn, min_time, repeats, clock="wall"):
        seen.append(min_time)
        return real(fn, min_time, repeats, clock)
    monkeypatch.setattr(cal, "time_per_call", spy)
    cal.measure("numpy", qtypes=("Q8_0",), min_time=0.01, repeats=1, gemv_bytes=2**20, fused=False,
                prefill=False, gemm_grid=((256,), (8,)), attn_lengths=(32, 64))
    assert seen and all(m >= 0.01 for m in seen)
    assert cal.DEFAULT_MIN_TIME >= 0.2


def test_calibration_cache_round_trip(tmp_path, monkeypatch, measured):
    monkeypatch.setattr(cal, "measure", lambda *a, **k: measured)
    first = cal.calibrate("numpy", cache_dir=tmp_path)
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and "numpy" in files[0].name

    def boom(*a, **k):
        raise AssertionError("cached calibration must not re-measure")
    monkeypatch.setattr(cal, "measure", boom)
    again = cal.calibrate("numpy", cache_dir=tmp_path)
    assert again.by_qtype["Q8_0"] == first.by_qtype["Q8_0"]
    assert again.calib == first.calib
    assert again.gemm_grid == first.gemm_grid and again.attn_lengths == first.attn_lengths


def test_three_point_gemv_fit_recovers_terms():
    d, r, beta = 5e-6, 20e-9, 1 / 30e9
    pts = [{"n": float(n), "bytes": float(b), "s": d + n * r + b * beta}
           for n, b in ((512, 278528), (2048, 4456448), (4096, 2228224))]
    assert cal._gemv_three_point(*pts) == pytest.approx((d, r, beta))
    assert cal._gemv_three_point(pts[0], pts[1], None) is None
    bad = dict(pts[2], s=pts[2]["s"] * 0.5)          # would need a negative per-row term
    assert cal._gemv_three_point(pts[0], pts[1], bad) is None


def test_prefill_term_fits_whole_prefill(measured):
    """The between-ops prefill term makes the synthetic prefill's predicted time equal
    the measured one (one `layer_glue` entry per layer), and is 0 when the ops already
    account for the whole time."""
    from dataclasses import replace

    from edgeformer.config import DecoderConfig
    from edgeformer.perf.trace_model import trace_decoder
    host = cal.fit(measured, host_spec())
    cfg = DecoderConfig(**cal.tables.prefill_config())
    tr = trace_decoder(cfg, prompt_len=64, context_len=0, qtype=cal.tables.FUSED_QTYPE, max_seq_len=65,
                       backend="numpy")
    ops_s = host.predict(tr.prefill).total_s
    m = replace(measured, prefill={"tokens": 64.0, "s": ops_s + 5e-6 * cfg.n_layers * 64})
    k = cal._fit_prefill(host, m)
    assert k == pytest.approx(5e-6, rel=1e-6)
    pred = replace(host, prefill_s_per_layer_token=k).predict(tr.prefill)
    assert pred.total_s == pytest.approx(m.prefill["s"])
    assert [o.layer for o in pred.ops if o.op == "layer_glue"] == list(range(cfg.n_layers))
    # a one-token decode step has no T > 1 layer: nothing added
    dec = replace(host, prefill_s_per_layer_token=k).predict(tr.decode)
    assert not [o for o in dec.ops if o.op == "layer_glue"]
    assert cal._fit_prefill(host, replace(measured, prefill={"tokens": 64.0, "s": ops_s * 0.9})) == 0.0
