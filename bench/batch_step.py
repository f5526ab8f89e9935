"""How long is one continuous-batching step with N sequences decoding?

Builds the server's `BatchEngine` over a model (default: the shipped SmolLM2) on the cpu
backend, loaded and warmed on a thread that ends and stepped on another (as `edgeformer
serve` does: `runtime/setup_thread.py`), submits N greedy requests, runs until every one
is decoding, then times --steps steps one by one and reports the median (each step is
tens of ms: far above the 4-12 ms clock ticks of some hosts). A step is one token for each
of the N sequences, so N / median is the engine's decode rate without the server.

    python bench/batch_step.py [--seqs 1,16] [--steps 30] [--model PATH]
Prints a table and writes bench/results/batch_step.json.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seqs", default="1,16")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch_step.json"))
    args = ap.parse_args(argv)
    from edgeformer.api import load
    from edgeformer.runtime.sampler import SamplingParams
    from edgeformer.runtime.setup_thread import run_in_setup_thread
    from edgeformer.serve.app import make_batch_engine
    sys.path.insert(0, str(Path(__file__).parent))
    from kernels_cpu import report

    engine = run_in_setup_thread(lambda: load(args.model, backend="cpu"))
    rows: list[dict] = []

    def measure() -> None:
        for n in (int(v) for v in args.seqs.split(",")):
            be = make_batch_engine(engine, kv_budget_bytes=256 << 20)
            for i in range(n):
                ids = engine.tokenizer.encode(f"Write a short story about topic number {i} and a dragon " * 2)
                be.submit(ids, SamplingParams(max_tokens=args.steps + 20, temperature=0.0))
            while be.scheduler.waiting or any(st.prefilling for st in be.scheduler.running.values()):
                be.step()
            for _ in range(3):
                be.step()
            ts = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                be.step()
                ts.append(time.perf_counter() - t0)
            med = float(np.median(ts))
            rows.append({"seqs": n, "step_ms": 1e3 * med, "tok_s": n / med})
            print(f"  {n:3d} sequences: step {1e3 * med:6.1f} ms  {n / med:7.1f} tok/s", flush=True)

    th = threading.Thread(target=measure)      # not the thread that warmed the kernels
    th.start()
    th.join()
    report(args.out, {"model": str(args.model or "smollm2 (shipped)"), "rows": rows},
           "| sequences | step ms | tok/s |\n|---:|---:|---:|",
           [f"| {r['seqs']} | {r['step_ms']:.1f} | {r['tok_s']:.1f} |" for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
