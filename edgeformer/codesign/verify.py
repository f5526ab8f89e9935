"""`codesign --verify`: build small candidates, measure their decode latency on this host
and compare with the calibrated host prediction, as `perf validate` does.

Both sides are `perf validate`'s: the measurement is `runner.measure_worker` in a fresh
process (warmed up, so Numba's compile or cache load is not timed; the cache filled to
`context` positions; the median of up to 16 one-token steps) with the current measuring
setup (`clock.use_setup`, default one thread timed by CPU time), and the prediction
is `validate.predict_row` of the same GGUF file with the `HostModel` calibrated in that
setup (`calibrate.calibrate`), for the same backend. Other processes' CPU use is
recorded per measurement (`perf.busy`): on a busy machine a miss is "not judged".

Kendall's tau over fewer than `MIN_TAU_CANDIDATES` candidates is refused: with n items,
a random order reaches tau >= 0.9 (at most one discordant pair) with probability n / n!,
50 % at n = 2, 4 % at 5, 0.02 % at 8.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edgeformer.codesign.build import build_candidate
from edgeformer.codesign.search import kendall_tau
from edgeformer.codesign.space import Candidate
from edgeformer.errors import InputError
from edgeformer.perf.busy import CpuMonitor
from edgeformer.perf.calibrate import calibrate, calibration_busy
from edgeformer.perf.clock import setup_name
from edgeformer.perf.runner import run_worker
from edgeformer.perf.validate import NOT_JUDGED, TARGETS, busy_reason, predict_row

MIN_TAU_CANDIDATES = 8
TAU_TARGET = 0.9


@dataclass(frozen=True)
class VerifyRow:
    """One measured candidate: predicted and measured seconds per decoded token, and
    other processes' mean CPU use (cores) while it was measured."""

    cand: Candidate
    predicted_s: float
    measured_s: float
    others_cores: float | None = None

    @property
    def ape(self) -> float:
        return 100.0 * abs(self.predicted_s - self.measured_s) / self.measured_s


@dataclass(frozen=True)
class VerifyResult:
    rows: list[VerifyRow]
    tau: float
    median_ape: float
    latency_verdict: str
    tau_verdict: str
    busy: str | None       # why the machine was busy (None: quiet)
    setup: str             # the measuring setup ("--threads 1 --clock cpu")


def check_n(n: int) -> None:
    """InputError unless `n` candidates are enough for a rank correlation."""
    if n < MIN_TAU_CANDIDATES:
        raise InputError(f"--verify-n {n}: a rank correlation of fewer than {MIN_TAU_CANDIDATES} candidates "
                         f"passes by chance (tau >= 0.9 for a random order: {n} / {n}! of the time); "
                         f"use --verify-n >= {MIN_TAU_CANDIDATES}")


def choose(res: Any, max_params: float, n: int) -> list[Candidate]:
    """Up to `n` distinct (shape, qtype) candidates of at most `max_params` parameters:
    the Pareto front first, then the smallest priced ones; KV f32 (the runtime's cache)."""
    pool = [s.cand for s in res.front] + sorted((s.cand for s in res.scored), key=lambda c: c.params)
    chosen: list[Candidate] = []
    seen: set[tuple] = set()
    for c in pool:
        c = replace(c, kv_dtype="f32")
        if c.params <= max_params and (c.shape_key, c.qtype) not in seen:
            seen.add((c.shape_key, c.qtype))
            chosen.append(c)
        if len(chosen) >= n:
            break
    return chosen


def verify(res: Any, max_params: float, n: int, context: int, out: Path,
           echo: Callable[[str], None] = print, host: Any = None, clock: str = "wall") -> VerifyResult:
    """Build and measure `choose(res, max_params, n)` (module docstring), timed by `clock`
    at the current thread count, echoing one line per candidate. InputError, before
    anything is built, when `n` or the candidates available are fewer than
    MIN_TAU_CANDIDATES. `host`: the HostModel to predict with (default: `calibrate` in
    the same setup)."""
    check_n(n)
    chosen = choose(res, max_params, n)
    if len(chosen) < MIN_TAU_CANDIDATES:
        raise InputError(f"--verify: only {len(chosen)} distinct candidates of <= {max_params / 1e6:.0f}M "
                         f"parameters were priced; a rank correlation needs >= {MIN_TAU_CANDIDATES} "
                         "(widen --params, add --dims / --layers values or raise --verify-max-params)")
    host = host or calibrate(clock=clock)
    backend = host.backend
    max_seq = context + 64
    rows = []
    for c in chosen:
        path = build_candidate(c, out, max_seq_len=max(2048, max_seq), backend=backend)
        with CpuMonitor() as mon:
            m = run_worker(path, backend, context, max_seq, False, timeout=600.0, clock=clock)
        p = 1.0 / predict_row(path, context, max_seq, host, None, backend, m["steps"], False)["decode"]
        row = VerifyRow(c, p, m["decode_s"], mon.load.others_cores if mon.load else None)
        rows.append(row)
        echo(f"  {c.label():60s} predicted {p * 1e3:8.2f} ms  measured {row.measured_s * 1e3:8.2f} ms  "
             f"({100 * (p - row.measured_s) / row.measured_s:+.0f} %)")
    tau = kendall_tau([r.predicted_s for r in rows], [r.measured_s for r in rows])
    med = statistics.median(r.ape for r in rows)
    calib_others = host.measurements.others_cores if calibration_busy(host.measurements) else None
    why = busy_reason([r.others_cores for r in rows], calib_others)

    def verdict(ok: bool) -> str:
        return "meets" if ok else NOT_JUDGED if why else "MISSES"
    return VerifyResult(rows, tau, med, verdict(med <= TARGETS["decode"]), verdict(tau >= TAU_TARGET), why,
                        setup_name(clock))


def summary_lines(r: VerifyResult) -> list[str]:
    """What `codesign --verify` prints after the candidate lines."""
    lines = [f"measured with {r.setup}, each candidate in a fresh process (as `perf validate`)",
             f"decode latency: median APE {r.median_ape:.1f} % (n={len(r.rows)}; target median <= "
             f"{TARGETS['decode']:.0f} %, as `perf validate`: {r.latency_verdict})",
             f"Kendall tau (predicted vs measured latency ranks, n={len(r.rows)}): {r.tau:.2f} "
             f"(target >= {TAU_TARGET}: {r.tau_verdict})"]
    if r.busy and NOT_JUDGED in (r.latency_verdict, r.tau_verdict):
        lines.append(f"machine busy: results not judged ({r.busy}); rerun when the machine is quiet")
    elif r.busy:
        lines.append(f"note: machine busy ({r.busy}); the targets were met anyway")
    return lines
