"""Host microbenchmarks, in tiny versions (the real run reads 256 MiB for seconds)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from edgeformer.perf import bandwidth, clock


def test_time_per_call_loops_past_min_time(monkeypatch):
    """With a clock that advances 2 ms per call (a coarse real clock would make call
    counts depend on machine load), each trial must loop until min_time has passed."""
    now = [0.0]
    calls = []
    monkeypatch.setattr(clock.time, "perf_counter", lambda: now[0])

    def fn():
        calls.append(1)
        now[0] += 0.002

    per_call = clock.time_per_call(fn, min_time=0.03, repeats=2)
    # warm-up + two trials of 15 calls each (0.03 s of 2 ms calls)
    assert len(calls) == 1 + 2 * 15
    assert per_call == pytest.approx(0.002)


def test_stream_read_bandwidth_tiny():
    r = bandwidth.stream_read_bandwidth(n_bytes=8 * 2**20, threads=(1, 2), min_time=0.02, repeats=1)
    assert r.n_bytes == 8 * 2**20
    assert 1 in r.by_threads
    for bw in [r.numpy_1t, *r.by_threads.values()]:
        assert math.isfinite(bw) and 1e8 < bw < 1e13     # 0.1 GB/s .. 10 TB/s
    assert r.best == max([r.numpy_1t, *r.by_threads.values()])


def test_parallel_sum_is_a_sum():
    a = np.arange(1, 100_001, dtype=np.float32) % 7
    assert bandwidth._parallel_sum()(a) == pytest.approx(float(a.astype(np.float64).sum()), rel=1e-5)


def test_peak_fp32_tiny():
    flops = bandwidth.peak_fp32_flops(n=64, min_time=0.02, repeats=1)
    assert 1e8 < flops < 1e14


def test_host_spec_is_measured_then_cached(tmp_path, monkeypatch):
    kw = dict(cache_dir=tmp_path, n_bytes=4 * 2**20, min_time=0.01, matmul_n=64)
    spec = bandwidth.host_spec(**kw)
    files = list(tmp_path.glob("host_*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["model"] == bandwidth.cpu_model()
    assert spec.name == bandwidth.host_slug(saved["model"]) and spec.kind == "cpu"
    assert spec.mem_bw.si == pytest.approx(saved["mem_bw"])
    assert spec.peak("fp32") == pytest.approx(saved["fp32"])
    assert spec.mem_bytes.si > 2**28
    assert "measured" in spec.mem_bw.source

    def boom(*a, **k):
        raise AssertionError("should have used the cache")

    monkeypatch.setattr(bandwidth, "stream_read_bandwidth", boom)
    again = bandwidth.host_spec(**kw)
    assert again.mem_bw.si == spec.mem_bw.si
    with pytest.raises(AssertionError, match="cache"):
        bandwidth.host_spec(refresh=True, **kw)


def test_device_or_host_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    bandwidth.host_spec(n_bytes=4 * 2**20, min_time=0.01, matmul_n=64)
    monkeypatch.setattr(bandwidth, "stream_read_bandwidth", lambda *a, **k: 1 / 0)
    assert bandwidth.device_or_host("host").origin == "measured"
    assert bandwidth.device_or_host("H100-SXM").name == "h100_sxm"       # catalog names pass through
