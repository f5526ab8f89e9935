"""`edgeformer check-backend NAME [--op OP] [--quick] [--min-time S]`: run the conformance
suite on one backend and print, per op and per case, whether the backend's own kernel ran
("native") or the numpy reference stood in ("fallback"), the error against the
reference with its bound, the status and the time per call (the kernel, host transfers
included; the reference for a fallback); then its op coverage. Exit 1 if any case fails."""
from __future__ import annotations

import argparse
import sys

from edgeformer.errors import UnsupportedError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-backend", help="run the op conformance suite on a backend",
                       description=__doc__)
    p.add_argument("backend", metavar="NAME", help="backend short name (numpy, cpu, cuda, ...)")
    p.add_argument("--op", default=None, help="only this op (default: every op)")
    p.add_argument("--quick", action="store_true", help="a few cases per op")
    p.add_argument("--failures-only", action="store_true", help="list only failing cases")
    p.add_argument("--min-time", type=float, default=0.02, metavar="S",
                   help="time each case's call for at least S seconds (0: do not time)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Delegates to the conformance suite; returns 0 if every case passed or fell back."""
    from rich.console import Console
    from rich.table import Table

    from edgeformer.backends import get_backend
    from edgeformer.backends.conformance import run_suite

    backend = get_backend(args.backend)
    why_not = backend.available()
    if why_not:
        raise UnsupportedError(f"backend {args.backend!r} is not available here: {why_not}")
    report = run_suite(backend, op=args.op, quick=args.quick, min_time=args.min_time)

    console = Console(file=sys.stdout)
    title = f"conformance: {backend.name}" + (" (quick)" if args.quick else "")
    if backend.name == "cpu":               # which SIMD path was checked (EDGEFORMER_CPU_ISA forces one)
        from edgeformer.backends.cpu import isa
        title += f", SIMD path {isa.describe()}"
    table = Table(title=title)
    for col in ("op", "case", "kernel", "nmse", "bound", "time", "ok"):
        table.add_column(col, justify="right" if col in ("nmse", "bound", "time") else "left")
    for r in report.results:
        if args.failures_only and r.ok:
            continue
        mark = {"ok": "[green]ok", "fallback": "[yellow]fallback", "fail": "[red]FAIL",
                "error": "[red]ERROR"}[r.status]
        if r.message and r.status != "ok":
            mark += f" [dim]{r.message}"
        table.add_row(r.op, r.case, "fallback" if r.status == "fallback" else "native",
                      "-" if r.nmse is None else f"{r.nmse:.2e}", f"{r.bound:.0e}", _duration(r.seconds), mark)
    console.print(table)

    cov = Table(title="coverage")
    cov.add_column("op")
    cov.add_column("kernel")
    for op, state in report.coverage().items():
        cov.add_row(op, {"native": "[green]native", "partial": "[yellow]partial (some cases fall back)",
                         "fallback": "[yellow]fallback (numpy reference)"}[state])
    console.print(cov)

    n_bad = sum(not r.ok for r in report.results)
    n_fb = sum(r.status == "fallback" for r in report.results)
    console.print(f"{len(report.results)} cases: {len(report.results) - n_bad - n_fb} ok, "
                  f"{n_fb} fallback, {n_bad} failed")
    return 1 if n_bad else 0


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s * 1e6:.0f} us" if s < 1e-3 else f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"
