"""Host microbenchmarks: streaming-read bandwidth and peak FP32 matmul throughput, turned
into a `DeviceSpec` for "this machine" and cached per CPU model; `device_or_host` looks a
device up in the catalog, or measures this machine for "host".

Each measurement is a `clock.time_per_call` loop of at least `min_time` seconds (0.2 s by
default): some machines' clocks tick in 4-12 ms steps and a single 256 MiB pass can take
less than one tick.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import edgeformer.backends.cpu  # noqa: F401 - applies EDGEFORMER_CPU_ISA before numba is imported
import numba
import numpy as np

from edgeformer.perf.clock import DEFAULT_MIN_TIME, time_per_call
from edgeformer.perf.device_spec import DeviceSpec, Figure, get_device, normalize_name

DEFAULT_READ_BYTES = 256 * 2**20   # well past any last-level cache a host here has


_PSUM = None


def _parallel_sum() -> Callable[[np.ndarray], float]:
    """A Numba parallel float32 sum (compiled once per process)."""
    global _PSUM
    if _PSUM is None:
        @numba.njit(parallel=True, fastmath=True)
        def psum(a):  # fastmath lets the reduction vectorize
            s = np.float32(0.0)
            for i in numba.prange(a.size):
                s += a[i]
            return s

        _PSUM = psum
    return _PSUM


@dataclass(frozen=True)
class BandwidthResult:
    """Streaming-read bandwidth in bytes/s: per Numba thread count, and numpy's
    single-threaded `sum` for comparison. `best` is the highest of them all."""

    n_bytes: int
    by_threads: dict[int, float]
    numpy_1t: float

    @property
    def best(self) -> float:
        return max([self.numpy_1t, *self.by_threads.values()])


def stream_read_bandwidth(n_bytes: int = DEFAULT_READ_BYTES, threads: tuple[int, ...] = (1, 2),
                          min_time: float = DEFAULT_MIN_TIME, repeats: int = 3) -> BandwidthResult:
    """Measure read bandwidth by summing a float32 array of `n_bytes` bytes, with numpy
    (1 thread) and a Numba parallel loop at each thread count in `threads` (counts above
    the available threads are skipped). Returns bytes/s figures."""
    a = np.ones(max(n_bytes // 4, 1), dtype=np.float32)   # touched: pages are resident
    nb = a.nbytes
    numpy_1t = nb / time_per_call(a.sum, min_time, repeats)
    psum = _parallel_sum()
    by_threads: dict[int, float] = {}
    old = numba.get_num_threads()
    try:
        for t in threads:
            if t > numba.config.NUMBA_NUM_THREADS:
                continue
            numba.set_num_threads(t)
            by_threads[t] = nb / time_per_call(lambda: psum(a), min_time, repeats)
    finally:
        numba.set_num_threads(old)
    return BandwidthResult(nb, by_threads, numpy_1t)


def peak_fp32_flops(n: int = 1024, min_time: float = DEFAULT_MIN_TIME, repeats: int = 3) -> float:
    """FP32 FLOP/s of numpy's (BLAS) n x n matmul, all BLAS threads: a practical peak."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return 2.0 * n**3 / time_per_call(lambda: a @ b, min_time, repeats)


def cpu_model() -> str:
    """The CPU's model name (lscpu "Model name", else /proc/cpuinfo, else platform)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _host_caches() -> dict[str, int]:
    """Data/unified cache sizes of cpu0 from sysfs: {"l1d": bytes, "l2": ..., "l3": ...}."""
    out: dict[str, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for d in sorted(root.glob("index*")) if root.is_dir() else []:
        try:
            kind = (d / "type").read_text().strip()
            level = (d / "level").read_text().strip()
            size = (d / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        m = re.fullmatch(r"(\d+)([KMG]?)", size)
        if m:
            mult = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)]
            out[f"l{level}{'d' if kind == 'Data' else ''}"] = int(m.group(1)) * mult
    return out


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgeformer" / "host"


def host_slug(model: str) -> str:
    return "host_" + (re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_") or "cpu")


def _spec_from_measurement(m: dict) -> DeviceSpec:
    how = (f"measured on this machine by edgeformer.perf.bandwidth "
           f"({m['when']}, {m['n_bytes'] // 2**20} MiB reads, loops >= {m['min_time']} s)")
    per_t = ", ".join(f"{t} thread(s) {bw / 1e9:.1f} GB/s" for t, bw in m["by_threads"].items())
    mem_bw = Figure(m["mem_bw"] / 1e9, "GB/s", source=how,
                    note=f"best of numpy 1 thread {m['numpy_1t'] / 1e9:.1f} GB/s; {per_t}")
    fp32 = Figure(m["fp32"] / 1e9, "GFLOPS", source=how + f"; numpy matmul n={m['n']}", dense=True)
    mem_bytes = Figure(float(m["mem_bytes"]), "B", source="os.sysconf(SC_PHYS_PAGES) x page size")
    caches = {k: Figure(float(v), "B", source="/sys/devices/system/cpu/cpu0/cache")
              for k, v in m["caches"].items()}
    return DeviceSpec(name=host_slug(m["model"]), kind="cpu", peak_flops={("cpu", "fp32"): fp32},
                      mem_bw=mem_bw, mem_bytes=mem_bytes, caches=caches,
                      display_name=m["model"], default_unit="cpu", origin="measured",
                      notes="power unknown: energy estimates are unavailable for the host")


def device_spec_from_ceilings(c: dict) -> DeviceSpec:
    """A DeviceSpec (unit "gpu") from a backend's measured ceilings
    (`Backend.measure_ceilings`: device, mem_bw, fp32, bf16, mem_bytes, how)."""
    how = c["how"]
    peaks = {("gpu", "fp32"): Figure(c["fp32"] / 1e9, "GFLOPS", source=how, dense=True)}
    if c.get("bf16"):
        peaks[("gpu", "bf16")] = Figure(c["bf16"] / 1e9, "GFLOPS", source=how, dense=True)
    return DeviceSpec(name=host_slug(c["device"]), kind="gpu", peak_flops=peaks,
                      mem_bw=Figure(c["mem_bw"] / 1e9, "GB/s", source=how, note="device-to-device copy"),
                      mem_bytes=Figure(float(c["mem_bytes"]), "B", source=how), display_name=c["device"],
                      default_unit="gpu", origin="measured",
                      notes="power unknown: energy estimates are unavailable for a measured device")


def host_ceilings(bandwidth: float | None = None, peak_flops: float | None = None,
                  refresh: bool = False) -> tuple[float, float]:
    """(read bandwidth in B/s, FP32 peak in FLOP/s) of this host from `host_spec`; a figure
    passed in is kept. `refresh=True` re-measures."""
    if bandwidth is None or peak_flops is None:
        spec = host_spec(refresh=refresh)
        bandwidth = bandwidth or spec.mem_bw.value * 1e9
        peak_flops = peak_flops or spec.peak_flops[("cpu", "fp32")].value * 1e9
    return bandwidth, peak_flops


def host_spec(refresh: bool = False, cache_dir: str | Path | None = None,
              n_bytes: int = DEFAULT_READ_BYTES, min_time: float = DEFAULT_MIN_TIME,
              matmul_n: int = 1024) -> DeviceSpec:
    """A DeviceSpec for this machine from microbenchmarks (read bandwidth at 1 and 2
    threads, numpy FP32 matmul), cached as JSON per CPU model in
    `$XDG_CACHE_HOME/edgeformer/host/` (or `cache_dir`). `refresh=True` re-measures.
    Takes a few seconds when it measures."""
    model = cpu_model()
    path = Path(cache_dir or _cache_dir()) / f"{host_slug(model)}.json"
    if not refresh and path.is_file():
        try:
            m = json.loads(path.read_text())
            m["by_threads"] = {int(k): v for k, v in m["by_threads"].items()}
            return _spec_from_measurement(m)
        except (OSError, ValueError, KeyError):
            pass   # unreadable or stale cache: measure again
    bw = stream_read_bandwidth(n_bytes, (1, 2), min_time)
    m = {"model": model, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "n_bytes": bw.n_bytes,
         "min_time": min_time, "mem_bw": bw.best, "numpy_1t": bw.numpy_1t,
         "by_threads": bw.by_threads, "fp32": peak_fp32_flops(matmul_n, min_time), "n": matmul_n,
         "mem_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
         "caches": _host_caches()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(m, indent=1))
    except OSError:
        pass   # a read-only home still gets a spec, just not a cached one
    return _spec_from_measurement(m)


def device_or_host(name: str) -> DeviceSpec:
    """A catalog device by name (`device_spec.get_device`), or for "host" this machine's
    measured spec (`host_spec`, cached per CPU model)."""
    return host_spec() if normalize_name(name) == "host" else get_device(name)
