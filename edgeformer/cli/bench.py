"""`edgeformer bench MODEL [-p 512] [-n 128] [-r 5] [-t THREADS]`: prefill and decode
throughput, like llama-bench.

pp<P>: one forward pass of P random tokens into an empty cache. tg<N>: N single-token
forward passes from an empty cache (llama-bench's tg). Each test runs `-r` times after a
warm-up; the table gives the median tok/s and the spread (min-max), and the fraction of
the ceiling: for decode, bytes per token (the tracer's prices of one decode step)
divided by the measured streaming-read bandwidth; for prefill, FLOPs per token divided by
the measured FP32 peak (`perf.bandwidth.host_spec`, measured once per CPU and cached).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from edgeformer.cli.backend_choice import add_backend_args, announce
from edgeformer.errors import InputError


def load_model(model: str | None, backend: str | None = None, threads: int | None = None,
               activations: str | None = None) -> tuple[Any, Any]:
    """(Decoder, Backend) for a GGUF file / HF directory / shipped name; sets Numba's
    thread count when `threads` is given (InputError if above what Numba started with)."""
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder
    from edgeformer.models.shipped import default_model, resolve_model
    # the backend first: it sets the OpenMP wait policy, read when the thread pool starts
    be = get_backend(backend, activations)
    announce(be)
    if threads is not None:
        import numba
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise InputError(f"--threads must be in [1, {numba.config.NUMBA_NUM_THREADS}], got {threads}")
        numba.set_num_threads(threads)
    path = default_model() if model is None else resolve_model(model)
    return Decoder(load_checkpoint(path), be), be


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs),
            "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def decode_cost(model: Any, position: int) -> Any:
    """The tracer's Cost of one decode step at cache position `position`."""
    from edgeformer.backends.trace import summarize, trace_forward
    rng = np.random.default_rng(1)
    cache = model.make_cache(position + 2)
    if position:
        model.forward(rng.integers(0, model.config.vocab_size, position), cache, last_only=True)
    recs = trace_forward(lambda: model.forward(np.array([1]), cache, last_only=True), model.ops)
    return summarize(recs).total.cost


def bench_model(model: Any, n_prompt: int = 512, n_gen: int = 128, reps: int = 5,
                bandwidth: float | None = None, peak_flops: float | None = None) -> dict[str, Any]:
    """Run pp`n_prompt` and tg`n_gen` `reps` times each (after a warm-up). Returns a dict:
    {"pp": {...tok/s stats, "fraction"}, "tg": {...}, "bytes_per_token", "flops_per_token",
    "bandwidth", "peak_flops"}; a test with 0 tokens is skipped."""
    from edgeformer.backends.trace import summarize, trace_forward
    from edgeformer.perf.bandwidth import host_ceilings
    bandwidth, peak_flops = host_ceilings(bandwidth, peak_flops)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(0)
    cache = model.make_cache(max(n_prompt, n_gen) + 1)
    model.forward(rng.integers(0, vocab, 8), cache, last_only=True)     # warm-up: JIT, page-in
    out: dict[str, Any] = {"bandwidth": bandwidth, "peak_flops": peak_flops}
    if n_prompt:
        prompt = rng.integers(0, vocab, n_prompt)
        cache.truncate(0)
        recs = trace_forward(lambda: model.forward(prompt, cache, last_only=True), model.ops)  # also a warm-up
        cost = summarize(recs).total.cost
        rates = []
        for _ in range(reps):
            cache.truncate(0)
            t0 = time.perf_counter()
            model.forward(prompt, cache, last_only=True)
            rates.append(n_prompt / (time.perf_counter() - t0))
        s = _spread(rates)
        out["flops_per_token"] = cost.flops / n_prompt
        s["fraction"] = s["median"] * out["flops_per_token"] / peak_flops
        out["pp"] = dict(n=n_prompt, **s)
    if n_gen:
        cost = decode_cost(model, n_gen // 2)                          # mid-run context
        out["bytes_per_token"] = cost.bytes
        rates = []
        for _ in range(reps):
            cache.truncate(0)
            tok = np.array([1])
            t0 = time.perf_counter()
            for _ in range(n_gen):
                logits = model.forward(tok, cache, last_only=True)
                tok = np.array([int(np.argmax(logits[0]))])
            rates.append(n_gen / (time.perf_counter() - t0))
        s = _spread(rates)
        s["fraction"] = s["median"] * cost.bytes / bandwidth
        out["tg"] = dict(n=n_gen, **s)
    return out


def format_bench(name: str, backend: str, threads: int, r: dict[str, Any]) -> str:
    """llama-bench-like table rows for `bench_model`'s result."""
    rows = [f"| {'model':<28} | {'backend':<7} | {'threads':>7} | {'test':>6} | {'t/s (median)':>14} | "
            f"{'spread (min-max)':>18} | {'of ceiling':>11} |", "|" + "|".join("-" * w for w in (30, 9, 9, 8, 16, 20, 13)) + "|"]
    for key, label, ceiling in (("pp", "pp", "FLOP/s"), ("tg", "tg", "GB/s")):
        if key in r:
            x = r[key]
            rows.append(f"| {name[:28]:<28} | {backend:<7} | {threads:>7} | {label + str(x['n']):>6} | "
                        f"{x['median']:>14.2f} | {x['min']:>8.2f} - {x['max']:<7.2f} | "
                        f"{100 * x['fraction']:>5.1f}% {ceiling:<4} |")
    notes = []
    if "tg" in r:
        notes.append(f"decode: {r['bytes_per_token'] / 1e6:.1f} MB/token at {r['bandwidth'] / 1e9:.1f} GB/s measured "
                     f"-> ceiling {r['bandwidth'] / r['bytes_per_token']:.1f} tok/s")
    if "pp" in r:
        notes.append(f"prefill: {r['flops_per_token'] / 1e9:.3f} GFLOP/token at {r['peak_flops'] / 1e9:.0f} GFLOP/s "
                     f"measured -> ceiling {r['peak_flops'] / r['flops_per_token']:.0f} tok/s")
    return "\n".join(rows + notes)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="prefill/decode tok/s like llama-bench, with the fraction of the ceiling",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None, help="GGUF file, HF directory or shipped model name")
    p.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens for pp (0 = skip; default 512)")
    p.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens for tg (0 = skip; default 128)")
    p.add_argument("-r", "--repetitions", type=int, default=5, help="runs per test (default: %(default)s)")
    p.add_argument("-t", "--threads", type=int, default=None, help="kernel threads (default: all Numba threads)")
    add_backend_args(p)
    p.add_argument("--measure-ceilings", action="store_true",
                   help="re-measure bandwidth and peak FLOP/s now (default: the cached host figures)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numba
    if args.n_prompt < 0 or args.n_gen < 0 or args.repetitions < 1:
        raise InputError("-p and -n must be >= 0 and -r >= 1")
    model, be = load_model(args.model, args.backend, args.threads, args.activations)
    if model.config.max_seq_len < max(args.n_prompt, args.n_gen) + 1:
        raise InputError(f"the model's context ({model.config.max_seq_len}) is shorter than the test")
    bw = peak = None
    if args.measure_ceilings:
        from edgeformer.perf.bandwidth import host_ceilings
        bw, peak = host_ceilings(refresh=True)
    r = bench_model(model, args.n_prompt, args.n_gen, args.repetitions, bandwidth=bw, peak_flops=peak)
    r["memory"] = memory_report(model, args.model, be.name, max(args.n_prompt, args.n_gen))
    threads = numba.get_num_threads()
    if args.json:
        print(json.dumps({"model": str(args.model), "backend": be.name, "threads": threads, **r}, indent=1))
    else:
        print(format_bench(str(args.model or "default"), be.name, threads, r))
        print(format_memory(r["memory"]))
    return 0


FOOTPRINT_SLACK = 0.15     # peak RSS may exceed floor + file + KV by this share of file + KV


def memory_report(model: Any, name: str | None, backend: str, positions: int) -> dict[str, float]:
    """This process's peak RSS next to its bound: the runtime floor (measured now in a
    fresh process: `perf.memory.runtime_floor_bytes`) + the model file + the KV cache the
    run allocated + FOOTPRINT_SLACK of file + KV (activations, allocator)."""
    from pathlib import Path

    from edgeformer.models.shipped import default_model, resolve_model
    from edgeformer.perf.memory import runtime_floor_bytes
    from edgeformer.perf.runner import peak_rss_bytes
    from edgeformer.perf.trace_model import kv_cache_bytes
    peak = peak_rss_bytes()
    path = Path(default_model() if name is None else resolve_model(name))
    file = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.glob("*.safetensors"))
    kv = kv_cache_bytes(model.config, positions, positions + 1)
    floor = runtime_floor_bytes(backend)
    bound = floor + (file + kv) * (1 + FOOTPRINT_SLACK)
    return {"peak_rss": peak, "runtime_floor": floor, "file": file, "kv_cache": kv, "bound": bound}


def format_memory(m: dict[str, float]) -> str:
    mib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    verdict = "within" if m["peak_rss"] <= m["bound"] else "OVER"
    return (f"memory: peak RSS {mib(m['peak_rss'])}; bound {mib(m['bound'])} = runtime floor {mib(m['runtime_floor'])} "
            f"(interpreter, numpy, numba, kernels) + (file {mib(m['file'])} + KV {mib(m['kv_cache'])}) "
            f"x {1 + FOOTPRINT_SLACK:.2f}: {verdict}")
