"""Measure a model in a fresh process: `run_worker` starts `python -c` on `measure_worker`
with the measuring setup (kernel threads through NUMBA_NUM_THREADS, the clock as an
argument) and reads back its one `RESULT {json}` line.

A fresh process per measurement keeps one model's pages, compiled kernels and allocator
state out of the next one's times and peak RSS; `validate`, `memory.calibrate_memory`
and `codesign --verify` all measure through here.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.backends import get_backend
from edgeformer.formats import load_checkpoint
from edgeformer.models.decoder import Decoder
from edgeformer.perf.clock import CLOCKS, check_clock, threads

N_DECODE_MAX = 16


def _status_bytes(field: str) -> int | None:
    """A "<field>: <n> kB" line of /proc/self/status in bytes; None where unreadable."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def current_rss_bytes() -> int:
    """This process's resident set size now (VmRSS), in bytes; 0 where unreadable."""
    return _status_bytes("VmRSS") or 0


def peak_rss_bytes() -> int:
    """This process's peak resident set size in bytes: VmHWM of /proc/self/status.
    Not ru_maxrss: Linux carries that over from the parent across fork + exec, so a
    worker started by a big process reports the parent's peak."""
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def measure_worker(path: str, backend: str, context: int, max_seq_len: int, run_prefill: bool,
                   min_time: float = 0.2, batch: int = 1, clock: str = "wall") -> dict[str, Any]:
    """In a fresh process: load, warm up, prefill `context` tokens (or fill the cache
    with random K/V when not `run_prefill`), then decode until >= `min_time` s and >= 5
    steps (at most N_DECODE_MAX). Returns TTFT, the median decode step, steps and peak
    RSS, timed by `clock` ("wall" or "cpu"). `batch` > 1: `batch` caches of `context`
    random positions, each step one `forward_batch` over all of them, truncated back to
    `context` after it."""
    now = CLOCKS[check_clock(clock)]
    be = get_backend(backend)
    rss_backend = current_rss_bytes()
    ckpt = load_checkpoint(path)
    model = Decoder(ckpt, be)
    rss_loaded = current_rss_bytes()     # file pages still mapped + the backend's copy
    del ckpt
    c = model.config
    warm = model.make_cache(64)
    model.forward(np.arange(4) % c.vocab_size, warm, last_only=True)   # compile / page in
    model.forward(np.array([1]), warm, last_only=True)
    if run_prefill and context >= 48:
        # a longer prompt takes other kernels (the cpu backend's dequantized-panel GEMM
        # from 64 rows): load those too, so TTFT is not the first call's JIT-cache load
        model.forward(np.arange(min(context, 96)) % c.vocab_size, model.make_cache(128), last_only=True)
    del warm
    rng = np.random.default_rng(0)
    if batch > 1:
        return _measure_batch(model, rng, context, max_seq_len, batch, min_time, now,
                              {"rss_backend": rss_backend, "rss_loaded": rss_loaded})
    cache = model.make_cache(max_seq_len)
    out: dict[str, Any] = {"ttft_s": None}
    if run_prefill:
        prompt = rng.integers(0, c.vocab_size, context)
        t0 = now()
        logits = model.forward(prompt, cache, last_only=True)
        int(np.argmax(logits[-1]))
        out["ttft_s"] = now() - t0
    else:
        for i in range(c.n_layers):
            k = rng.standard_normal((context, c.n_kv_heads, c.head_dim)).astype(np.float32) * 0.1
            cache.update_and_fetch(i, k, k.copy())
    steps, t0, per_step = 0, time.perf_counter(), []
    tok = np.array([1])
    while steps < N_DECODE_MAX:
        t1 = now()
        logits = model.forward(tok, cache, last_only=True)
        tok = np.array([int(np.argmax(logits[-1]))])
        per_step.append(now() - t1)
        steps += 1
        if steps >= 5 and time.perf_counter() - t0 >= min_time:
            break
    # median step: robust to a step preempted by other processes on a shared host
    out["decode_s"] = float(np.median(per_step))
    out["steps"] = steps
    out["peak_rss"] = peak_rss_bytes()
    out["rss_backend"], out["rss_loaded"] = rss_backend, rss_loaded
    return out


def _measure_batch(model: Any, rng: Any, context: int, max_seq_len: int, batch: int, min_time: float,
                   now: Any, out: dict[str, Any]) -> dict[str, Any]:
    """`measure_worker`'s batched decode: median seconds of one `forward_batch` step."""
    c = model.config
    caches = [model.make_cache(max_seq_len) for _ in range(batch)]
    k = rng.standard_normal((context, c.n_kv_heads, c.head_dim)).astype(np.float32) * 0.1
    for cache in caches:
        for i in range(c.n_layers):
            cache.update_and_fetch(i, k, k)
    toks = [np.array([1 + j]) for j in range(batch)]
    per_step: list[float] = []
    t0 = time.perf_counter()
    while len(per_step) < N_DECODE_MAX:
        t1 = now()
        model.forward_batch([(t, cache) for t, cache in zip(toks, caches)], last_only=True)
        per_step.append(now() - t1)
        for cache in caches:
            cache.truncate(context)
        if len(per_step) >= 5 and time.perf_counter() - t0 >= min_time:
            break
    return {**out, "ttft_s": None, "decode_s": float(np.median(per_step)), "steps": len(per_step),
            "peak_rss": peak_rss_bytes()}


def worker_env() -> dict[str, str]:
    """Environment for a measuring subprocess: this process's, with its kernel thread
    count (setting NUMBA_NUM_THREADS in this process after Numba started is an error)."""
    return {**os.environ, "NUMBA_NUM_THREADS": str(threads())}


def run_worker(path: Path, backend: str, context: int, max_seq_len: int, run_prefill: bool,
               timeout: float, batch: int = 1, clock: str = "wall") -> dict[str, Any]:
    """`measure_worker(path, backend, context, max_seq_len, run_prefill, batch=batch,
    clock=clock)` in a fresh process with this process's thread count. RuntimeError
    (with the end of its stderr) when it fails; subprocess.TimeoutExpired after
    `timeout` seconds."""
    code = ("import json,sys; from edgeformer.perf.runner import measure_worker as m; "
            "a=sys.argv; print('RESULT', json.dumps(m(a[1], a[2], int(a[3]), int(a[4]), a[5] == '1', "
            "batch=int(a[6]), clock=a[7])))")
    r = subprocess.run([sys.executable, "-c", code, str(path), backend, str(context), str(max_seq_len),
                        "1" if run_prefill else "0", str(batch), check_clock(clock)],
                       capture_output=True, text=True, timeout=timeout, env=worker_env())
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not line:
        raise RuntimeError(f"measurement of {Path(path).name} at {context} failed: {r.stderr[-1500:]}")
    return json.loads(line[-1][7:])
