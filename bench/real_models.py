"""How fast are the real shipped models, cold and warm, on our backends vs llama.cpp?

For SmolLM2-135M-Instruct (Q4_1) and Gemma 3 270M (Q4_K_M), each backend (numpy, cpu):
- cold start: a fresh `python -m edgeformer.cli run MODEL --raw -n 4 --temp 0` process, from
  launch to the first byte it streams on stdout (interpreter start, imports, load,
  Numba compile or cache load, prefill, first token); also the "load time" and "ttft"
  lines it prints itself;
- prefill tok/s: a PREFILL_TOKENS-token prompt on an empty cache (Engine stats);
- decode tok/s: greedy tokens after the first (Engine stats; each one forward pass).
Each warm figure is the median of >= `--runs` timed repetitions, each repetition
repeated until it covers >= `--min-time` seconds. llama.cpp (llama-cpp-python) runs on the
same file in the same process with `--threads` threads: prefill = one `eval` of the
prompt on an empty cache, decode = single-token `eval`s. Ratios are ours / llama.cpp.

    python bench/real_models.py [--models smollm2-135m-instruct,gemma3-270m]
                                [--backends numpy,cpu] [--runs 3] [--min-time 1.0] [--threads 2]
Writes bench/results/real_models.json and prints a Markdown table. The machine's load
average is recorded: on a shared machine every figure is a lower bound.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PREFILL_TOKENS = 128
DECODE_TOKENS = 32
COLD_PROMPT = "The quick brown fox"
# plain English, repeated to PREFILL_TOKENS tokens
FILLER = ("The river ran slowly past the village, and the old mill stood silent on the far bank. "
          "Children swam in the pool below the bridge while their parents worked in the fields. ")


def prompt_ids(tokenizer, n: int = PREFILL_TOKENS) -> list[int]:
    """Exactly `n` prompt token ids of plain English (BOS if the model uses one)."""
    ids = list(tokenizer.encode(FILLER * 20, add_bos=True))
    if len(ids) < n:
        raise RuntimeError(f"filler text is only {len(ids)} tokens")
    return ids[:n]


def timed_median(fn, runs: int, min_time: float) -> tuple[float, list[float]]:
    """Median over `runs` repetitions of a rate: `fn()` returns (items, seconds); each
    repetition calls it until >= min_time seconds are covered and divides the totals."""
    rates = []
    for _ in range(runs):
        items, secs = 0, 0.0
        while secs < min_time:
            n, s = fn()
            items, secs = items + n, secs + s
        rates.append(items / secs)
    return statistics.median(rates), rates


def cold_start(model: str, backend: str, timeout: float = 600.0) -> dict:
    """Launch `python -m edgeformer run` and time launch -> first stdout byte; also parse
    the process's own "load time" / "ttft" lines (ms) from stderr."""
    cmd = [sys.executable, "-m", "edgeformer.cli", "run", model, "--backend", backend, "--raw",
           "-p", COLD_PROMPT, "-n", "4", "--temp", "0"]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.read(1)
    t_first = time.perf_counter() - t0
    out, err = p.communicate(timeout=timeout)
    total = time.perf_counter() - t0
    if p.returncode != 0 or not first:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {err.decode()[-2000:]}")
    text = err.decode()
    grab = lambda key: float(m.group(1)) / 1e3 if (m := re.search(rf"{key}\s*=\s*([\d.]+) ms", text)) else None  # noqa: E731
    return dict(first_byte_s=t_first, process_s=total, load_s=grab("load time"), ttft_s=grab("ttft"))


def bench_ours(model: str, backend: str, runs: int, min_time: float) -> dict:
    """Prefill and decode tok/s of the Engine (medians), after one warm-up generation."""
    from edgeformer.api import load
    from edgeformer.runtime.sampler import SamplingParams
    t0 = time.perf_counter()
    eng = load(model, backend=backend, n_ctx=PREFILL_TOKENS + DECODE_TOKENS + 8)
    load_s = time.perf_counter() - t0
    ids = prompt_ids(eng.tokenizer)
    greedy = SamplingParams(temperature=0, max_tokens=DECODE_TOKENS, ignore_eos=True)
    eng.reset()
    eng.generate(ids, greedy)                       # warm-up (Numba compile / caches)

    def prefill():
        eng.reset()
        s = eng.generate(ids, SamplingParams(temperature=0, max_tokens=1)).stats
        return s.prefill_tokens, s.prefill_s

    def decode():
        eng.reset()
        s = eng.generate(ids[:8], greedy).stats
        return s.decode_tokens, s.decode_s

    pf, pf_all = timed_median(prefill, runs, min_time)
    dc, dc_all = timed_median(decode, runs, min_time)
    return dict(load_s=load_s, prefill_tok_s=pf, prefill_runs=pf_all, decode_tok_s=dc, decode_runs=dc_all)


def bench_llama(path: Path, ids: list[int], threads: int, runs: int, min_time: float) -> dict:
    """llama.cpp prefill / decode tok/s on the same file and prompt ids (medians)."""
    import llama_cpp
    llama = llama_cpp.Llama(str(path), n_ctx=PREFILL_TOKENS + DECODE_TOKENS + 8, n_batch=PREFILL_TOKENS,
                            n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        llama.reset()
        llama.eval(ids[:8])                        # warm-up

        def prefill():
            llama.reset()
            t = time.perf_counter()
            llama.eval(ids)
            return len(ids), time.perf_counter() - t

        def decode():
            llama.reset()
            llama.eval(ids[:8])
            tok, n, t = int(np.argmax(llama.scores[llama.n_tokens - 1])), 0, time.perf_counter()
            for _ in range(DECODE_TOKENS - 1):
                llama.eval([tok])
                tok = int(np.argmax(llama.scores[llama.n_tokens - 1]))
                n += 1
            return n, time.perf_counter() - t

        pf, pf_all = timed_median(prefill, runs, min_time)
        dc, dc_all = timed_median(decode, runs, min_time)
    finally:
        llama.close()
    return dict(prefill_tok_s=pf, prefill_runs=pf_all, decode_tok_s=dc, decode_runs=dc_all,
                threads=threads, version=llama_cpp.__version__)


def table(rows: list[dict]) -> str:
    out = ["| model | backend | cold start to 1st byte (s) | load (s) | prefill tok/s | decode tok/s | "
           "llama.cpp prefill / decode tok/s | prefill ratio | decode ratio |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lc = r["llama_cpp"]
        out.append(f"| {r['model']} | {r['backend']} | {r['cold']['first_byte_s']:.2f} | {r['cold']['load_s'] or 0:.2f} | "
                   f"{r['ours']['prefill_tok_s']:.1f} | {r['ours']['decode_tok_s']:.2f} | "
                   f"{lc['prefill_tok_s']:.0f} / {lc['decode_tok_s']:.1f} | "
                   f"{r['ours']['prefill_tok_s'] / lc['prefill_tok_s']:.3f} | "
                   f"{r['ours']['decode_tok_s'] / lc['decode_tok_s']:.3f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m-instruct,gemma3-270m")
    ap.add_argument("--backends", default="numpy,cpu")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default: %(default)s)")
    ap.add_argument("--no-cold", action="store_true", help="skip the fresh-process cold start")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "real_models.json"))
    a = ap.parse_args()
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.shipped import resolve_model
    rows, load_before = [], os.getloadavg()
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:   # after every row: a long run interrupted keeps what it measured
        out.write_text(json.dumps(dict(rows=rows, prefill_tokens=PREFILL_TOKENS, decode_tokens=DECODE_TOKENS,
                                       runs=a.runs, min_time_s=a.min_time, cpu_count=os.cpu_count(),
                                       machine=platform.machine(), processor=platform.processor(),
                                       numba_threads=os.environ.get("NUMBA_NUM_THREADS"),
                                       loadavg_before=load_before, loadavg_after=os.getloadavg()), indent=2))
    for model in a.models.split(","):
        path = resolve_model(model)
        ids = prompt_ids(tokenizer_from_checkpoint(load_checkpoint(path)))
        lc = bench_llama(path, ids, a.threads, a.runs, a.min_time)
        for backend in a.backends.split(","):
            cold = (cold_start(model, backend) if not a.no_cold
                    else dict(first_byte_s=float("nan"), process_s=None, load_s=None, ttft_s=None))
            ours = bench_ours(model, backend, a.runs, a.min_time)
            rows.append(dict(model=model, backend=backend, file=str(path), cold=cold, ours=ours, llama_cpp=lc))
            save()
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
