"""How close do the CPU backend's decode GEMVs (T=1) get to the memory bandwidth?

For each native qtype and weight shape, times `linear` at T=1 with 1 and 2 threads,
cycling over enough distinct copies of the weight (>= 4x the L3 size) that every call
streams its weight from DRAM, as decode does. Reports GB/s of weight bytes (GGUF bytes,
i.e. what the model file says a token costs) and the fraction of a measured streaming-read
bandwidth (a Numba parallel sum over 256 MiB with the same thread count). Every figure is
from a loop of >= 0.2 s (some clocks tick in 4-12 ms steps: single calls are never timed).

    python bench/kernels_cpu.py [--shapes 2048x2048,576x1536] [--qtypes Q8_0,Q4_K] [--min-time 0.2]
                                [--threads 1,2] [--clock wall|thread]
Writes bench/results/kernels_cpu.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu import CpuBackend
from edgeformer.backends.cpu.common import FAST
from edgeformer.backends.cpu.repack import NATIVE, PackedWeight
from edgeformer.quant.qtypes import QTensor, QType

COLD_BYTES = 160 << 20   # > 4x a 32 MiB L3: each call's weight comes from DRAM


@njit(parallel=True, fastmath=FAST, cache=True)
def _stream_sum(a2):
    """Sum of a (rows, cols) float32 array, rows split over threads like the GEMV's rows.
    (A flat chunked loop under fastmath=True measured 10x slower: not a bandwidth test.)"""
    out = np.empty(a2.shape[0], np.float32)
    for r in prange(a2.shape[0]):
        row = a2[r]
        s = np.float32(0.0)
        for i in range(row.shape[0]):
            s += row[i]
        out[r] = s
    return out.sum()


CLOCK = time.perf_counter


def timed(fn, min_time: float) -> float:
    """Seconds per call of fn(i) (i = call counter), over a loop of >= min_time seconds."""
    fn(0)
    n, t0 = 0, CLOCK()
    while True:
        fn(n)
        n += 1
        dt = CLOCK() - t0
        if dt >= min_time and n >= 3:
            return dt / n


def report(out: str, res: dict, header: str, lines: list[str]) -> None:
    """Write `res` with this machine's facts (ISA path, architecture, CPU count, load) as
    JSON to `out`, then print the markdown table `header` + `lines` (the in-cache benches'
    tail: row_dots.py, batch_step.py)."""
    from edgeformer.backends.cpu import isa
    res = res | {"isa": isa.compiled_isa(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                 "load_avg": os.getloadavg()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2))
    print("\n".join([header] + lines))
    print(f"wrote {out}")


def stream_bandwidth(threads: int, min_time: float) -> float:
    numba.set_num_threads(threads)
    a = np.ones((1 << 14, 1 << 12), np.float32)   # 256 MiB
    return a.nbytes / timed(lambda i: _stream_sum(a), min_time) / 1e9


def random_weight(q: QType, n: int, k: int, rng: np.random.Generator) -> QTensor:
    """Random bytes in qtype q with sane f16 scales (speed does not depend on values)."""
    if q in (QType.F32, QType.F16):
        dt = np.float32 if q == QType.F32 else np.float16
        return QTensor.from_array(rng.standard_normal((n, k)).astype(dt))
    if q == QType.BF16:   # from real floats: random bits would include denormals (slow paths)
        bits = (rng.standard_normal((n, k)).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        return QTensor(bits.reshape(-1).view(np.uint8), q, (n, k))
    raw = rng.integers(0, 256, (n, k // q.block_size, q.type_size), dtype=np.uint8)
    scale_at = {QType.Q6_K: (208,), QType.Q4_K: (0, 2), QType.Q5_K: (0, 2), QType.Q4_1: (0, 2)}.get(q, (0,))
    for off in scale_at:
        raw[:, :, off:off + 2] = np.array([0.01], np.float16).view(np.uint8).reshape(1, 1, 2)
    return QTensor(raw.reshape(-1), q, (n, k))


def copies(w: PackedWeight, total: int) -> list[PackedWeight]:
    count = max(2, -(-total // w.nbytes))
    return [PackedWeight(w.kind, w.n, w.k, tuple(a.copy() for a in w.arrays), w.kernel) for _ in range(count)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="2048x2048,576x1536", help="NxK list (N outputs, K inputs)")
    ap.add_argument("--qtypes", default=",".join(q.name for q in NATIVE))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall",
                    help="thread: CPU time of the calling thread (1 thread only): on a shared, "
                         "oversubscribed machine it excludes time the thread was not running")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "kernels_cpu.json"))
    args = ap.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    qtypes = [QType.from_name(s) for s in args.qtypes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    if args.clock == "thread":
        if threads != [1]:
            ap.error("--clock thread measures one thread: use --threads 1")
        global CLOCK
        CLOCK = time.thread_time
    be, rng = CpuBackend(), np.random.default_rng(0)
    linear = be.kernels["linear"]

    bw = {t: stream_bandwidth(t, max(args.min_time, 0.5)) for t in threads}
    print("streaming read (numba parallel sum, 256 MiB): "
          + ", ".join(f"{t} thr {bw[t]:.1f} GB/s" for t in threads))
    tiny = be.prepare_weight(random_weight(QType.Q8_0, 32, 32, rng)).handle
    xt = np.ones((1, 32), np.float32)
    overhead = {}
    for t in threads:
        numba.set_num_threads(t)
        overhead[t] = timed(lambda i: linear(xt, tiny), args.min_time) * 1e6
    print("per-call overhead (Q8_0 32x32, T=1): " + ", ".join(f"{t} thr {overhead[t]:.1f} us" for t in threads))

    rows = []
    print(f"{'qtype':6} {'N x K':>11} {'thr':>3} {'us/call':>9} {'GB/s':>7} {'of bw':>6}")
    for q in qtypes:
        for n, k in shapes:
            qt = random_weight(q, n, k, rng)
            ws = copies(be.prepare_weight(qt).handle, COLD_BYTES)
            x = rng.standard_normal((1, k)).astype(np.float32)
            for t in threads:
                numba.set_num_threads(t)
                sec = timed(lambda i: linear(x, ws[i % len(ws)]), args.min_time)
                gbs = qt.nbytes / sec / 1e9
                rows.append(dict(qtype=q.name, n=n, k=k, threads=t, us_per_call=sec * 1e6,
                                 weight_bytes=qt.nbytes, packed_bytes=ws[0].nbytes, gb_per_s=gbs,
                                 fraction_of_stream_bw=gbs / bw[t]))
                print(f"{q.name:6} {f'{n}x{k}':>11} {t:>3} {sec * 1e6:9.1f} {gbs:7.1f} {gbs / bw[t]:6.0%}")
            ws = None               # free the copies before the next shape
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(
        machine=dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(),
                     numba=numba.__version__, threading_layer=numba.threading_layer(),
                     omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(default)"), clock=args.clock,
                     load_average=os.getloadavg()),
        stream_gb_per_s=bw, call_overhead_us=overhead, rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
