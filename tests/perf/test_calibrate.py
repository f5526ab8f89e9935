"""Calibration: the fitted roofline reproduces the microbenchmarks it was fitted to
(through the same `op_time` the predictions use), efficiencies stay in (0, 1], every
loop runs >= min_time, and the cache round-trips."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.kernels import OPS
from edgeformer.perf import calibrate as cal
from edgeformer.perf.bandwidth import host_spec
from edgeformer.perf.roofline import OpRecord


@pytest.fixture(scope="module")
def measured():
    # numpy backend, one qtype, short loops: the fitting logic, not this host's numbers
    return cal.measure("numpy", qtypes=("Q8_0",), min_time=0.02, repeats=1, gemv_bytes=4 * 2**20)


def _pred(host, size, tokens):
    w = cal._random_weight("Q8_0", size, size)
    x = np.zeros((tokens, size), np.float32)
    return host.predict([OpRecord("linear", OPS["linear"].cost(x, w, None), qtype="Q8_0")]).total_s


def test_fit_reproduces_its_benchmarks(measured):
    host = cal.fit(measured, host_spec())
    c = host.by_qtype["Q8_0"]
    capped = c.eta_mem["matmul"] >= 1.0 or c.eta_compute["matmul"] >= 1.0
    # the large GEMV fixes eta_mem exactly (given the fitted per-call overhead)
    assert _pred(host, 2048, 1) == pytest.approx(measured.gemv["Q8_0"]["s"], rel=0.02) or capped
    # eta_compute is the geometric mean over the two GEMM sizes: errors cancel in product
    r_big = _pred(host, 2048, cal.GEMM_TOKENS) / measured.gemm["Q8_0"]["s"]
    r_small = _pred(host, 512, cal.GEMM_TOKENS) / measured.gemm_small["Q8_0"]["s"]
    # ... unless the GEMV's own FLOP rate floored it (a GEMM loop slowed by a busy machine)
    g, d_q = measured.gemv["Q8_0"], c.dispatch_s["matmul"]
    floored = c.eta_compute["matmul"] == pytest.approx(
        g["flops"] / (max(g["s"] - d_q, 1e-9) * host.device.peak("fp32")), rel=1e-6)
    assert r_big * r_small == pytest.approx(1.0, rel=0.05) or capped or floored
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


class _Cost:
    def __init__(self, flops, nbytes):
        self.flops, self.bytes_read, self.bytes_written = flops, nbytes, 0.0


def test_every_benchmark_loops_at_least_min_time(monkeypatch):
    seen = []
    real = cal.time_per_call_clock

    def spy(fn, min_time, repeats):
        seen.append(min_time)
        return real(fn, min_time, repeats)
    monkeypatch.setattr(cal, "time_per_call_clock", spy)
    cal.measure("numpy", qtypes=("Q8_0",), min_time=0.01, repeats=1, gemv_bytes=2**20)
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
