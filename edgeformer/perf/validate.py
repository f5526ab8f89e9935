"""Predicted vs measured: the calibrated roofline against real runs on this machine.

For each (model, context) of a grid, a fresh process loads the GGUF with the backend,
warms it, times a prefill of `context` tokens (TTFT and prefill tok/s), then decode
steps from there (decode tok/s), and reports its peak RSS. The prediction prices the
same model's null-backend trace (`trace_model`) with the host calibration
(`calibrate.calibrate`) and estimates peak memory (`memory.estimate`). Calibration uses
synthetic microbenchmarks and its own calibration model only: every model here is held
out of it.

Grid models: the real SmolLM2-135M-Instruct Q4_1 file, and random-weight GGUFs at
SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B dimensions in Q8_0 / Q4_0 / Q4_K (written
once into the cache by `codesign.build.write_random_gguf`). A prefill whose predicted
time exceeds the budget is not run: its cache is filled directly and only decode and
memory are compared (the row says so). Batch 8 needs batched decode, which the
single-sequence Decoder does not have yet: batch is 1.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeformer.config import DecoderConfig, RopeScaling

# Dimensions from each model's HF config.json (hidden_size, num_hidden_layers, ...).
DIMS: dict[str, DecoderConfig] = {
    # HuggingFaceTB/SmolLM2-135M config.json
    "smollm2-135m": DecoderConfig(arch="llama", vocab_size=49152, dim=576, n_layers=30, n_heads=9,
                                  n_kv_heads=3, head_dim=64, ffn_dim=1536, max_seq_len=8192,
                                  rope_theta=100000.0, tie_embeddings=True, rope_neox=False),
    # Qwen/Qwen2.5-0.5B config.json
    "qwen2.5-0.5b": DecoderConfig(arch="qwen2", vocab_size=151936, dim=896, n_layers=24, n_heads=14,
                                  n_kv_heads=2, head_dim=64, ffn_dim=4864, max_seq_len=32768,
                                  norm_eps=1e-6, rope_theta=1e6, tie_embeddings=True, attn_bias=True),
    # meta-llama/Llama-3.2-1B config.json
    "llama3.2-1b": DecoderConfig(arch="llama", vocab_size=128256, dim=2048, n_layers=16, n_heads=32,
                                 n_kv_heads=8, head_dim=64, ffn_dim=8192, max_seq_len=131072,
                                 rope_theta=500000.0, tie_embeddings=True, rope_neox=False,
                                 rope_scaling=RopeScaling("llama3", 32.0, 8192, 1.0, 4.0)),
}
REAL = "smollm2-135m-instruct"
QTYPES = ("Q8_0", "Q4_0", "Q4_K")
N_DECODE_MAX = 16


@dataclass
class Row:
    """One grid point: what ran, what was predicted, what was measured (None = not run)."""

    model: str
    qtype: str
    context: int
    batch: int
    pred_ttft_s: float
    pred_prefill_tok_s: float
    pred_decode_tok_s: float
    pred_peak_bytes: float
    ttft_s: float | None
    prefill_tok_s: float | None
    decode_tok_s: float
    peak_bytes: float
    decode_steps: int
    bound: str

    def ape(self, what: str) -> float | None:
        """Absolute percentage error of `what` (ttft, prefill, decode, memory)."""
        pairs = {"ttft": (self.pred_ttft_s, self.ttft_s), "prefill": (self.pred_prefill_tok_s, self.prefill_tok_s),
                 "decode": (self.pred_decode_tok_s, self.decode_tok_s),
                 "memory": (self.pred_peak_bytes, self.peak_bytes)}
        p, m = pairs[what]
        return None if m is None or not m else 100.0 * abs(p - m) / m


def cache_root() -> Path:
    """Where the random-weight validation GGUFs are written (under the shipped-model cache)."""
    from edgeformer.models.shipped import cache_dir
    return cache_dir() / "validate"


def model_path(name: str, qtype: str) -> Path:
    """The GGUF of a grid model: the shipped file for REAL, else a random-weight file at
    `DIMS[name]` in `qtype`, written on first use."""
    if name == REAL:
        from edgeformer.models.shipped import resolve_model
        return resolve_model(REAL)
    path = cache_root() / f"{name}_{qtype}.gguf"
    if not path.is_file():
        from edgeformer.codesign.build import write_random_gguf
        write_random_gguf(DIMS[name], path, qtype, with_vocab=False)
    return path


# ------------------------------------------------------------------ measuring (worker)

def measure_worker(path: str, backend: str, context: int, max_seq_len: int, run_prefill: bool,
                   min_time: float = 0.2) -> dict[str, Any]:
    """In a fresh process: load, warm up, prefill `context` tokens (or fill the cache
    with random K/V when not `run_prefill`), then decode until >= `min_time` s and >= 5
    steps (at most N_DECODE_MAX). Returns TTFT, the median decode step, steps and peak
    RSS. Times use the clock named by $EDGEFORMER_PERF_CLOCK (`calibrate.set_clock`)."""
    import numpy as np

    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder
    from edgeformer.perf.calibrate import CLOCKS
    from edgeformer.perf.memory import current_rss_bytes, peak_rss_bytes
    clock = CLOCKS[os.environ.get("EDGEFORMER_PERF_CLOCK", "wall")]
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
    del warm
    rng = np.random.default_rng(0)
    cache = model.make_cache(max_seq_len)
    out: dict[str, Any] = {"ttft_s": None}
    if run_prefill:
        prompt = rng.integers(0, c.vocab_size, context)
        t0 = clock()
        logits = model.forward(prompt, cache, last_only=True)
        int(np.argmax(logits[-1]))
        out["ttft_s"] = clock() - t0
    else:
        for i in range(c.n_layers):
            k = rng.standard_normal((context, c.n_kv_heads, c.head_dim)).astype(np.float32) * 0.1
            cache.update_and_fetch(i, k, k.copy())
    steps, t0, per_step = 0, time.perf_counter(), []
    tok = np.array([1])
    while steps < N_DECODE_MAX:
        t1 = clock()
        logits = model.forward(tok, cache, last_only=True)
        tok = np.array([int(np.argmax(logits[-1]))])
        per_step.append(clock() - t1)
        steps += 1
        if steps >= 5 and time.perf_counter() - t0 >= min_time:
            break
    # median step: robust to a step preempted by other processes on a shared host
    out["decode_s"] = float(np.median(per_step))
    out["steps"] = steps
    out["peak_rss"] = peak_rss_bytes()
    out["rss_backend"], out["rss_loaded"] = rss_backend, rss_loaded
    return out


def _run_worker(path: Path, backend: str, context: int, max_seq_len: int, run_prefill: bool,
                timeout: float) -> dict[str, Any]:
    code = ("import json,sys; from edgeformer.perf.validate import measure_worker as m; "
            "a=sys.argv; print('RESULT', json.dumps(m(a[1], a[2], int(a[3]), int(a[4]), a[5] == '1')))")
    r = subprocess.run([sys.executable, "-c", code, str(path), backend, str(context), str(max_seq_len),
                        "1" if run_prefill else "0"], capture_output=True, text=True, timeout=timeout,
                       env=_env())
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode or not line:
        raise RuntimeError(f"measurement of {path.name} at {context} failed: {r.stderr[-1500:]}")
    return json.loads(line[-1][7:])


# ------------------------------------------------------------------ predicting + grid

def predict_row(path: Path, context: int, max_seq_len: int, host: Any, mem: Any, backend: str,
                steps: int, run_prefill: bool) -> dict[str, Any]:
    """Predicted TTFT, prefill and decode tok/s (decode priced at the mean context of
    the measured steps) and peak memory of one grid point."""
    from edgeformer.perf.memory import estimate
    from edgeformer.perf.trace_model import trace_decoder
    tr = trace_decoder(path, prompt_len=context, context_len=context + steps // 2, max_seq_len=max_seq_len,
                       backend=backend)
    # the measured run ends with context + steps positions cached
    from edgeformer.perf.trace_model import kv_cache_bytes
    pre, dec = host.predict(tr.prefill), host.predict(tr.decode)
    # memory at the end of the measured run: its KV allocation; without a prefill, only
    # decode activations were ever live
    from dataclasses import replace
    at_end = replace(tr, kv_bytes=kv_cache_bytes(tr.config, [context] + [1] * steps, max_seq_len))
    if not run_prefill:
        at_end = replace(at_end, prefill=[])
    peak = estimate(at_end, backend, mem).total
    return {"ttft": pre.total_s, "prefill": context / pre.total_s, "decode": 1.0 / dec.total_s,
            "peak": peak, "bound": dec.bound}


def grid(quick: bool) -> list[tuple[str, str, int]]:
    """(model, qtype, context) points: quick = 4 points on the smallest models."""
    if quick:
        return [(REAL, "Q4_1", 128), ("smollm2-135m", "Q8_0", 128), ("smollm2-135m", "Q4_K", 128),
                (REAL, "Q4_1", 2048)]
    pts = [(REAL, "Q4_1", c) for c in (128, 2048)]
    for name in DIMS:
        for q in QTYPES:
            pts += [(name, q, c) for c in (128, 2048)]
    return pts


def run_grid(quick: bool = False, backend: str | None = None, prefill_budget_s: float = 90.0,
             points: list[tuple[str, str, int]] | None = None, out_json: Path | None = None,
             echo: Any = print) -> list[Row]:
    """Calibrate (cached), then measure and predict every grid point, echoing each row."""
    from edgeformer.perf.calibrate import calibrate, fastest_backend
    from edgeformer.perf.memory import calibrate_memory
    backend = backend or fastest_backend()
    host = calibrate(backend, verbose=True)
    mem = calibrate_memory(backend)
    rows: list[Row] = []
    for name, q, ctx in points or grid(quick):
        path = model_path(name, q)
        max_seq = ctx + 64
        probe = predict_row(path, ctx, max_seq, host, mem, backend, 3, True)
        run_prefill = probe["ttft"] <= prefill_budget_s
        budget = 60 + 3 * (probe["ttft"] if run_prefill else 0) + 20 * N_DECODE_MAX / probe["decode"]
        m = _run_worker(path, backend, ctx, max_seq, run_prefill, timeout=max(300.0, budget))
        p = predict_row(path, ctx, max_seq, host, mem, backend, m["steps"], run_prefill)
        row = Row(name, q, ctx, 1, p["ttft"], p["prefill"], p["decode"], p["peak"], m["ttft_s"],
                  ctx / m["ttft_s"] if m["ttft_s"] else None, 1.0 / m["decode_s"], m["peak_rss"],
                  m["steps"], p["bound"])
        rows.append(row)
        echo(format_row(row))
        if out_json:
            out_json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return rows


def repredict(rows_json: Path, backend: str | None = None, echo: Any = print) -> list[Row]:
    """Predictions for measurements saved by `run_grid(out_json=...)`, recomputed with
    the current code and calibrations (the measured columns are kept as they were)."""
    from edgeformer.perf.calibrate import calibrate, fastest_backend
    from edgeformer.perf.memory import calibrate_memory
    backend = backend or fastest_backend()
    host, mem = calibrate(backend, verbose=True), calibrate_memory(backend)
    out = []
    for raw in json.loads(Path(rows_json).read_text()):
        r = Row(**raw)
        p = predict_row(model_path(r.model, r.qtype), r.context, r.context + 64, host, mem, backend,
                        r.decode_steps, r.ttft_s is not None)
        r = Row(**{**raw, "pred_ttft_s": p["ttft"], "pred_prefill_tok_s": p["prefill"],
                   "pred_decode_tok_s": p["decode"], "pred_peak_bytes": p["peak"], "bound": p["bound"]})
        echo(format_row(r))
        out.append(r)
    return out


def format_row(r: Row) -> str:
    """One row as a line: predicted/measured TTFT, prefill, decode, peak memory, bound."""
    f = lambda v, fmt: "-" if v is None else format(v, fmt)   # noqa: E731
    return (f"{r.model:22s} {r.qtype:5s} ctx {r.context:5d}  TTFT {r.pred_ttft_s:8.3f}/{f(r.ttft_s, '8.3f')} s  "
            f"prefill {r.pred_prefill_tok_s:7.1f}/{f(r.prefill_tok_s, '7.1f')} tok/s  "
            f"decode {r.pred_decode_tok_s:6.2f}/{r.decode_tok_s:6.2f} tok/s  "
            f"peak {r.pred_peak_bytes / 2**20:7.0f}/{r.peak_bytes / 2**20:7.0f} MiB  ({r.bound})")


def error_summary(rows: list[Row]) -> dict[str, tuple[float, float, int]]:
    """what -> (median APE %, p90 APE %, n) over rows where it was measured."""
    out = {}
    for what in ("ttft", "prefill", "decode", "memory"):
        errs = sorted(e for e in (r.ape(what) for r in rows) if e is not None)
        if errs:
            p90 = errs[min(len(errs) - 1, int(round(0.9 * (len(errs) - 1))))]
            out[what] = (statistics.median(errs), p90, len(errs))
    return out


TARGETS = {"decode": 10.0, "prefill": 15.0, "ttft": 15.0, "memory": 5.0}


def markdown(rows: list[Row]) -> str:
    """The rows and the error summary as Markdown tables (for BENCHMARKS.md)."""
    f = lambda v, fmt: "—" if v is None else format(v, fmt)   # noqa: E731
    lines = ["| model | qtype | ctx | TTFT s pred / meas | prefill tok/s pred / meas | decode tok/s pred / meas"
             " | peak MiB pred / meas | decode bound |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.qtype} | {r.context} | {r.pred_ttft_s:.3f} / {f(r.ttft_s, '.3f')} | "
                     f"{r.pred_prefill_tok_s:.1f} / {f(r.prefill_tok_s, '.1f')} | "
                     f"{r.pred_decode_tok_s:.2f} / {r.decode_tok_s:.2f} | "
                     f"{r.pred_peak_bytes / 2**20:.0f} / {r.peak_bytes / 2**20:.0f} | {r.bound} |")
    lines += ["", "| metric | median APE % | p90 APE % | n | target (median) |", "|---|---|---|---|---|"]
    for what, (med, p90, n) in error_summary(rows).items():
        lines.append(f"| {what} | {med:.1f} | {p90:.1f} | {n} | ≤ {TARGETS[what]:.0f} % |")
    return "\n".join(lines)


def _env() -> dict[str, str]:
    from edgeformer.perf.calibrate import worker_env
    return worker_env()
