"""Predicted vs measured: the calibrated roofline against real runs on this machine.

For each (model, context) of a grid, a fresh process (`runner`) loads the GGUF with the backend,
warms it, times a prefill of `context` tokens (TTFT and prefill tok/s), then decode
steps from there (decode tok/s), and reports its peak RSS. The prediction prices the
same model's null-backend trace (`trace_model`) with the host calibration
(`calibrate.calibrate`) and estimates peak memory (`memory.estimate`). Calibration uses
synthetic microbenchmarks and its own calibration model only: every model here is held
out of it.

Grid models: the real SmolLM2-135M-Instruct Q4_1 file, and random-weight GGUFs at
SmolLM2-135M, Qwen2.5-0.5B and Llama-3.2-1B dimensions in Q8_0 / Q4_0 / Q4_K (written
once into the cache by `formats.synthetic.write_random_gguf`). A prefill whose predicted
time exceeds the budget is not run: its cache is filled directly and only decode and
memory are compared (the row says so). Batch-8 rows time `Decoder.forward_batch` over
8 sequences of `context` cached positions each (the continuous-batching engine's step;
decode and memory only) against the trace of that batched step.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from edgeformer.backends.base import default_backend_name
from edgeformer.config import DecoderConfig, RopeScaling
from edgeformer.formats.synthetic import write_random_gguf
from edgeformer.models.shipped import cache_dir, resolve_model
from edgeformer.perf.busy import BUSY_CORES, CpuMonitor, cpu_count, is_busy
from edgeformer.perf.calibrate import calibrate
from edgeformer.perf.clock import setup_name
from edgeformer.perf.memory import calibrate_memory, estimate
from edgeformer.perf.runner import N_DECODE_MAX, run_worker
from edgeformer.perf.trace_model import kv_cache_bytes, trace_decoder

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
    others_cores: float | None = None    # other processes' mean CPU use while measured (`perf.busy`)
    setup: str = ""                      # the measuring setup ("--threads 1 --clock cpu"; "" = unknown)

    def ape(self, what: str) -> float | None:
        """Absolute percentage error of `what` (ttft, prefill, decode, memory)."""
        pairs = {"ttft": (self.pred_ttft_s, self.ttft_s), "prefill": (self.pred_prefill_tok_s, self.prefill_tok_s),
                 "decode": (self.pred_decode_tok_s, self.decode_tok_s),
                 "memory": (self.pred_peak_bytes, self.peak_bytes)}
        p, m = pairs[what]
        return None if m is None or not m else 100.0 * abs(p - m) / m


def cache_root() -> Path:
    """Where the random-weight validation GGUFs are written (under the shipped-model cache)."""
    return cache_dir() / "validate"


def model_path(name: str, qtype: str) -> Path:
    """The GGUF of a grid model: the shipped file for REAL, else a random-weight file at
    `DIMS[name]` in `qtype`, written on first use."""
    if name == REAL:
        return resolve_model(REAL)
    path = cache_root() / f"{name}_{qtype}.gguf"
    if not path.is_file():
        write_random_gguf(DIMS[name], path, qtype, with_vocab=False)
    return path


# ------------------------------------------------------------------ predicting + grid

def predict_row(path: Path, context: int, max_seq_len: int, host: Any, mem: Any, backend: str,
                steps: int, run_prefill: bool, batch: int = 1) -> dict[str, Any]:
    """Predicted TTFT, prefill and decode tok/s (decode priced at the mean context of
    the measured steps; a batch step at `context`, as measured) and peak memory of one
    grid point."""
    ctx = context if batch > 1 else context + steps // 2
    tr = trace_decoder(path, prompt_len=context, context_len=ctx, max_seq_len=max_seq_len,
                       backend=backend, batch=batch)
    pre, dec = host.predict(tr.prefill), host.predict_decode(tr)
    # memory at the end of the measured run: its KV allocation (a batch run's caches are
    # the trace's); without a prefill, only decode activations were ever live
    at_end = tr if batch > 1 else replace(tr, kv_bytes=kv_cache_bytes(tr.config, [context] + [1] * steps,
                                                                      max_seq_len))
    if not run_prefill:
        at_end = replace(at_end, prefill=[])
    peak = estimate(at_end, backend, mem).total
    return {"ttft": pre.total_s, "prefill": context / pre.total_s, "decode": batch / dec.total_s,
            "peak": peak, "bound": dec.bound}


BATCH = 8


def grid(quick: bool) -> list[tuple[str, str, int, int]]:
    """(model, qtype, context, batch) points: quick = 5 points on the smallest models;
    full = every model x qtype x context at batch 1, and each model at batch 8 in its
    first qtype (Q4_1 for the real file, Q8_0 for the random ones) at both contexts."""
    if quick:
        return [(REAL, "Q4_1", 128, 1), ("smollm2-135m", "Q8_0", 128, 1), ("smollm2-135m", "Q4_K", 128, 1),
                (REAL, "Q4_1", 2048, 1), (REAL, "Q4_1", 128, BATCH)]
    pts = [(REAL, "Q4_1", c, 1) for c in (128, 2048)]
    for name in DIMS:
        for q in QTYPES:
            pts += [(name, q, c, 1) for c in (128, 2048)]
    pts += [(REAL, "Q4_1", c, BATCH) for c in (128, 2048)]
    pts += [(name, QTYPES[0], c, BATCH) for name in DIMS for c in (128, 2048)]
    return pts


def run_grid(quick: bool = False, backend: str | None = None, prefill_budget_s: float = 90.0,
             points: list[tuple[str, str, int, int]] | None = None, out_json: Path | None = None,
             echo: Any = print, clock: str = "wall") -> list[Row]:
    """Calibrate (cached), then measure and predict every grid point, timed by `clock`
    at the current thread count, echoing each row (each measurement's `others_cores`
    recorded for `judge`)."""
    backend = backend or default_backend_name()
    host = calibrate(backend, verbose=True, clock=clock)
    mem = calibrate_memory(backend, clock=clock)
    rows: list[Row] = []
    for name, q, ctx, batch in points or grid(quick):
        path = model_path(name, q)
        max_seq = ctx + 64
        probe = predict_row(path, ctx, max_seq, host, mem, backend, 3, True, batch)
        run_prefill = batch == 1 and probe["ttft"] <= prefill_budget_s
        budget = 60 + 3 * (probe["ttft"] if run_prefill else 0) + 20 * N_DECODE_MAX * batch / probe["decode"]
        with CpuMonitor() as load:
            m = run_worker(path, backend, ctx, max_seq, run_prefill, timeout=max(300.0, budget), batch=batch,
                           clock=clock)
        p = predict_row(path, ctx, max_seq, host, mem, backend, m["steps"], run_prefill, batch)
        row = Row(name, q, ctx, batch, p["ttft"], p["prefill"], p["decode"], p["peak"], m["ttft_s"],
                  ctx / m["ttft_s"] if m["ttft_s"] else None, batch / m["decode_s"], m["peak_rss"],
                  m["steps"], p["bound"], load.load.others_cores if load.load else None, setup_name(clock))
        rows.append(row)
        echo(format_row(row))
        if out_json:
            out_json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return rows


def repredict(rows_json: Path, backend: str | None = None, echo: Any = print, clock: str = "wall") -> list[Row]:
    """Predictions for measurements saved by `run_grid(out_json=...)`, recomputed with
    the current code and the calibrations of `clock` at the current thread count (the
    measured columns are kept as they were)."""
    backend = backend or default_backend_name()
    host, mem = calibrate(backend, verbose=True, clock=clock), calibrate_memory(backend, clock=clock)
    out = []
    for raw in json.loads(Path(rows_json).read_text()):
        r = Row(**raw)
        p = predict_row(model_path(r.model, r.qtype), r.context, r.context + 64, host, mem, backend,
                        r.decode_steps, r.ttft_s is not None, r.batch)
        r = Row(**{**raw, "pred_ttft_s": p["ttft"], "pred_prefill_tok_s": p["prefill"],
                   "pred_decode_tok_s": p["decode"], "pred_peak_bytes": p["peak"], "bound": p["bound"]})
        echo(format_row(r))
        out.append(r)
    return out


def format_row(r: Row) -> str:
    """One row as a line: predicted/measured TTFT, prefill, decode, peak memory, bound."""
    f = lambda v, fmt: "-" if v is None else format(v, fmt)   # noqa: E731
    return (f"{r.model:22s} {r.qtype:5s} ctx {r.context:5d} b{r.batch}  TTFT {r.pred_ttft_s:8.3f}/{f(r.ttft_s, '8.3f')} s  "
            f"prefill {r.pred_prefill_tok_s:7.1f}/{f(r.prefill_tok_s, '7.1f')} tok/s  "
            f"decode {r.pred_decode_tok_s:6.2f}/{r.decode_tok_s:6.2f} tok/s  "
            f"peak {r.pred_peak_bytes / 2**20:7.0f}/{r.peak_bytes / 2**20:7.0f} MiB  ({r.bound})")


def error_summary(rows: list[Row], by_batch: bool = False) -> dict[str, tuple[float, float, int]]:
    """what -> (median APE %, p90 APE %, n) over rows where it was measured; with
    `by_batch` also "decode b<N>" per batch size when rows have more than one."""
    out = {}
    for what in ("ttft", "prefill", "decode", "memory"):
        errs = sorted(e for e in (r.ape(what) for r in rows) if e is not None)
        if errs:
            out[what] = _med_p90(errs)
    batches = sorted({r.batch for r in rows})
    if by_batch and len(batches) > 1:
        for b in batches:
            out[f"decode b{b}"] = _med_p90(sorted(e for r in rows if r.batch == b
                                                  for e in [r.ape("decode")] if e is not None))
    return out


def _med_p90(errs: list[float]) -> tuple[float, float, int]:
    p90 = errs[min(len(errs) - 1, int(round(0.9 * (len(errs) - 1))))]
    return statistics.median(errs), p90, len(errs)


TARGETS = {"decode": 10.0, "prefill": 15.0, "ttft": 15.0, "memory": 5.0}
NOT_JUDGED = "not judged: machine busy"


def busy_reason(others: list[float | None], calib_others: float | None = None,
                cores: int | None = None) -> str | None:
    """Why results measured while other processes used `others` cores (one mean per
    measurement; None = unknown), against a calibration measured at `calib_others`,
    cannot be judged; None when the machine was quiet (or nothing is known)."""
    cores = cores or cpu_count()
    known = [o for o in others if o is not None]
    why = []
    if known and is_busy(statistics.fmean(known)):
        why.append(f"other processes used {statistics.fmean(known):.2f} of {cores} cores on average while "
                   f"measuring (max {max(known):.2f}; quiet is <= {BUSY_CORES})")
    if is_busy(calib_others):
        why.append(f"the calibration was measured while other processes used {calib_others:.2f} cores "
                   "(`edgeformer perf calibrate --refresh` on a quiet machine)")
    return "; ".join(why) or None


def judge(rows: list[Row], calib_others: float | None = None,
          cores: int | None = None) -> tuple[list[tuple[str, float, float, int, float, str]], str | None]:
    """([(metric, median APE, p90 APE, n, target, verdict)], busy reason or None). The
    verdict is "meets" when the median is within its target (TARGETS), else "MISSES" on
    a quiet machine and NOT_JUDGED on a busy one (`busy_reason`): a miss measured beside
    other processes' work says nothing about the model."""
    why = busy_reason([r.others_cores for r in rows], calib_others, cores)
    out = []
    for what, (med, p90, n) in error_summary(rows, by_batch=True).items():
        target = TARGETS[what.split()[0]]
        verdict = "meets" if med <= target else NOT_JUDGED if why else "MISSES"
        out.append((what, med, p90, n, target, verdict))
    return out, why


def verdict_lines(rows: list[Row], calib_others: float | None = None, cores: int | None = None) -> list[str]:
    """The error summary as printed by `edgeformer perf validate`: one line per metric,
    then, when the machine was busy and a metric was not judged, why."""
    verdicts, why = judge(rows, calib_others, cores)
    lines = [f"{what:10s} median APE {med:6.1f} %   p90 {p90:6.1f} %   (n={n}; target median <= "
             f"{target:.0f} %: {verdict})" for what, med, p90, n, target, verdict in verdicts]
    if why and any(v[-1] == NOT_JUDGED for v in verdicts):
        lines.append(f"machine busy: results not judged ({why}); rerun when the machine is quiet")
    elif why:
        lines.append(f"note: machine busy ({why}); every target was met anyway")
    return lines


def markdown(rows: list[Row]) -> str:
    """The rows and the error summary as Markdown tables (for BENCHMARKS.md)."""
    f = lambda v, fmt: "—" if v is None else format(v, fmt)   # noqa: E731
    lines = ["| model | qtype | ctx | batch | TTFT s pred / meas | prefill tok/s pred / meas"
             " | decode tok/s pred / meas | peak MiB pred / meas | decode bound |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.qtype} | {r.context} | {r.batch} | {r.pred_ttft_s:.3f} / {f(r.ttft_s, '.3f')} | "
                     f"{r.pred_prefill_tok_s:.1f} / {f(r.prefill_tok_s, '.1f')} | "
                     f"{r.pred_decode_tok_s:.2f} / {r.decode_tok_s:.2f} | "
                     f"{r.pred_peak_bytes / 2**20:.0f} / {r.peak_bytes / 2**20:.0f} | {r.bound} |")
    lines += ["", "| metric | median APE % | p90 APE % | n | target (median) |", "|---|---|---|---|---|"]
    for what, (med, p90, n) in error_summary(rows, by_batch=True).items():
        lines.append(f"| {what} | {med:.1f} | {p90:.1f} | {n} | ≤ {TARGETS[what.split()[0]]:.0f} % |")
    return "\n".join(lines)
