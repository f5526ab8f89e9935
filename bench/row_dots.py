"""How fast are the CPU backend's quantized row dots when the weight is in cache?

Times `linear` on random weights of one qtype (default Q4_1, SmolLM2's) for each NxK shape
and token count T, with the weight resident in L2/L3: what a batched step's or a prefill's
compute costs, apart from streaming the weight (`kernels_cpu.py` measures that). Each
figure is the median of --repeats loops of >= --min-time s (some clocks tick in 4-12 ms
steps: single calls are never timed); GMAC/s = N*K*T / time. Every output row is checked
to be bit-identical to the row computed alone (T = 1), as batch invariance requires.

    python bench/row_dots.py [--shapes 1536x576,576x1536,576x576] [--tokens 1,8,16] [--qtype Q4_1]
                             [--threads 1] [--repeats 3]
Writes bench/results/row_dots.json and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edgeformer.backends.cpu import CpuBackend
from edgeformer.backends.cpu import isa
from edgeformer.backends.cpu.linear import linear
from edgeformer.quant.quantize import quantize

sys.path.insert(0, str(Path(__file__).parent))
from kernels_cpu import report, timed  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1536x576,576x1536,576x576", help="NxK list (N outputs, K inputs)")
    ap.add_argument("--tokens", default="1,8,16")
    ap.add_argument("--qtype", default="Q4_1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "row_dots.json"))
    args = ap.parse_args(argv)
    be = CpuBackend()
    import numba
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for shape in args.shapes.split(","):
        n, k = (int(v) for v in shape.split("x"))
        w = be.prepare_weight(quantize(rng.standard_normal((n, k)).astype(np.float32), args.qtype)).handle
        for t in (int(v) for v in args.tokens.split(",")):
            x = rng.standard_normal((t, k)).astype(np.float32)
            y = linear(x, w)
            assert all(np.array_equal(linear(x[i:i + 1], w)[0], y[i]) for i in range(t)), "rows not batch-invariant"
            s = float(np.median([timed(lambda _: linear(x, w), args.min_time) for _ in range(args.repeats)]))
            rows.append({"n": n, "k": k, "tokens": t, "us": 1e6 * s, "gmac_s": n * k * t / s / 1e9})
            print(f"  {n}x{k} T={t:<3d} {1e6 * s:8.1f} us  {rows[-1]['gmac_s']:6.1f} GMAC/s", flush=True)
    report(args.out, {"qtype": args.qtype, "threads": args.threads, "activations": be.activations, "rows": rows},
           f"| N x K | T | us | GMAC/s |   ({args.qtype}, {args.threads} thread(s), {isa.compiled_isa()})\n"
           "|---|---:|---:|---:|",
           [f"| {r['n']} x {r['k']} | {r['tokens']} | {r['us']:.1f} | {r['gmac_s']:.1f} |" for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
