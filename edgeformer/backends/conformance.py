"""The backend conformance suite, like ggml's `tests/test-backend-ops.cpp`.

Every op in `kernels.OPS` lists its cases (`OpSpec.cases`: awkward shapes and, for
`linear`/`embed`, every weight qtype). A case runs the backend's kernel (weights through
`backend.prepare_weight`, arrays through `to_device`/`to_host` where the backend has them)
and the op's numpy reference on the same inputs, and passes when

* guard bands hold: the output has exactly the reference's shape and dtype, is all
  finite when the inputs are, and host inputs are left unmodified (kernels do not take
  `out=` buffers, so there is no canary padding to check; this is what stands in for it);
* `nmse` (normalized MSE, ggml's `nmse()`) is at most `OpSpec.max_nmse` for the case's
  dtype (the weight qtype name for linear/embed, "F32" otherwise; "default" if absent);
* for "nonfinite" cases (a NaN or Inf planted in one input element), the output is
  non-finite exactly where the reference's is: the NaN neither vanishes nor spreads to
  rows the math keeps it out of (e.g. a masked attention key).

"rows" cases check batch/chunk invariance instead of accuracy alone: output row t of a
T-row call must equal, bit for bit, the same row computed alone and in chunks of 1, 7, 63
and 64 rows, for awkward T (1, 5, 70, 130), because `BatchEngine` relies on a request's
bits not depending on its batch mates. The case judges what the runtime runs:
`backends.row_invariant.row_invariant_linear` over the backend, which is the backend's own
`linear` in calls of up to its `row_invariant_rows` (so a backend declaring row invariance
has its kernels' claim tested directly) and, for a backend declaring none (numpy: BLAS
picks kernels by row count), fixed zero-padded 8-row blocks. Its nmse is the rows-alone
output's, against the reference.

An op the backend reports through `unsupported(op, **attrs)` (attrs: the call's keyword
attributes plus `qtype` of a weight operand) is not run: it is a "fallback" in the
coverage table, as the runtime would use the reference for it.
"""
from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edgeformer.backends.base import Backend, Ops
from edgeformer.backends.row_invariant import row_invariant_linear
from edgeformer.errors import UnsupportedError
from edgeformer.kernels import OPS
from edgeformer.kernels.base import ROWS_CHUNKS, ROWS_T, Case
from edgeformer.quant.qtypes import QTensor, QType


def all_cases() -> list[Case]:
    """Every case of every op (`OpSpec.cases`), in OPS order; each op has at least one."""
    return [case for spec in OPS.values() for case in spec.cases()]


def select_cases(op: str | None = None, quick: bool = False) -> list[Case]:
    """Cases of one op (all ops if None); `quick` keeps a few per op."""
    if op is not None and op not in OPS:
        raise UnsupportedError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return [c for c in all_cases() if (op is None or c.op == op) and (c.quick or not quick)]


@dataclass
class CaseResult:
    """Outcome of one case on one backend. status: "ok", "fail" (a check failed),
    "error" (the kernel raised), "fallback" (backend.unsupported gave reasons)."""

    backend: str
    op: str
    case: str
    status: str
    bound: float
    nmse: float | None = None
    message: str = ""
    seconds: float | None = None     # one kernel call (transfers included), when timed

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "fallback")


def nmse(out: np.ndarray, ref: np.ndarray) -> float:
    """sum((out - ref)^2) / sum(ref^2) in float64 (ggml's `nmse`); 0 if both are all
    zero, inf if only the reference is."""
    a = np.asarray(out, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    err = float(np.sum((a - b) ** 2))
    den = float(np.sum(b * b))
    if den == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / den


def bound_for(op: str, dtype: str) -> float:
    table = OPS[op].max_nmse
    return table.get(dtype, table["default"])


def _all_finite(args: tuple) -> bool:
    for a in args:
        if isinstance(a, QTensor):
            if a.qtype == QType.F32 and not np.isfinite(a.data.view(np.float32)).all():
                return False
        elif isinstance(a, np.ndarray) and a.dtype.kind == "f" and not np.isfinite(a).all():
            return False
    return True


def _call_attrs(args: tuple, attrs: dict) -> dict:
    """What `unsupported` is asked about: the keyword attributes plus a weight's qtype."""
    q = next((a.qtype for a in args if isinstance(a, QTensor)), None)
    return {**attrs, "qtype": q} if q is not None else dict(attrs)


def run_case(backend: Backend, case: Case, seed: int = 0, min_time: float = 0.0) -> CaseResult:
    """Run one case on `backend` against the reference; never raises for kernel errors.
    `min_time` > 0: afterwards the kernel call is repeated for at least that many seconds
    and `seconds` is the mean per call (a fallback runs the reference)."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()) + seed)
    args, attrs = case.build(rng)
    res = CaseResult(backend.name, case.op, case.name, "ok", bound_for(case.op, case.dtype))
    reasons = backend.unsupported(case.op, **_call_attrs(args, attrs))
    if reasons:
        res.status, res.message = "fallback", "; ".join(reasons)
        if min_time > 0:
            res.seconds = _time_call(lambda: OPS[case.op].reference(*args, **attrs), min_time)
        return res
    kernel = backend.kernels.get(case.op)
    if kernel is None:
        res.status, res.message = "fail", f"unsupported() is empty but there is no {case.op!r} kernel"
        return res
    ref = OPS[case.op].reference(*args, **attrs)
    if case.check == "rows":
        return _run_rows(backend, args, ref, res)
    try:
        dev = [backend.prepare_weight(a, f"{case.id}.w{i}").handle if isinstance(a, QTensor)
               else (backend.to_device(a) if isinstance(a, np.ndarray) else a)
               for i, a in enumerate(args)]
        before = [backend.to_host(d).copy() if isinstance(a, np.ndarray) else None for a, d in zip(args, dev)]
        out = backend.to_host(kernel(*dev, **attrs))
    except Exception as e:                            # noqa: BLE001 - reported, not raised
        res.status, res.message = "error", f"{type(e).__name__}: {e}"
        return res
    res = _judge(res, case, np.asarray(out), ref, _all_finite(args))
    # a kernel that writes into its inputs would corrupt e.g. the residual stream
    changed = [i for i, (a, b) in enumerate(zip(dev, before))
               if b is not None and not np.array_equal(backend.to_host(a), b, equal_nan=True)]
    if changed:
        res.status = "fail"
        res.message = "; ".join(filter(None, [res.message, f"kernel modified input(s) {changed}"]))
    if min_time > 0 and res.status == "ok":
        res.seconds = _time_call(lambda: backend.to_host(kernel(*dev, **attrs)), min_time)
    return res


def _time_call(call: Callable[[], object], min_time: float) -> float:
    """Mean seconds per `call()` over at least `min_time` seconds of calls (at least 2
    calls; the first, warm-up call is not timed)."""
    call()
    n, t0 = 0, time.perf_counter()
    while True:
        call()
        n += 1
        dt = time.perf_counter() - t0
        if n >= 2 and dt >= min_time:
            return dt / n


def _run_rows(backend: Backend, args: tuple, ref: np.ndarray, res: CaseResult) -> CaseResult:
    """A "rows" case of `linear`: every prefix x[:T] (T in ROWS_T) computed whole and in
    ROWS_CHUNKS-row chunks must give each row exactly the bits it gets alone; the rows-alone
    output is also held to the nmse bound (module docstring)."""
    x, qt = args[0], args[1]
    declared = backend.row_invariant_rows
    if not declared:
        res.message = "backend declares no row_invariant_rows: judged through row_invariant_linear's fixed row blocks"
    try:
        w = backend.prepare_weight(qt, f"{res.op}-{res.case}.w")
        lin = row_invariant_linear(Ops(backend))
        before = x.copy()

        def run(rows: np.ndarray, chunk: int) -> np.ndarray:
            return np.concatenate([np.asarray(lin(rows[i:i + chunk], w)) for i in range(0, rows.shape[0], chunk)])
        alone = run(x, 1)
        bad = []
        for t in ROWS_T:
            for chunk in sorted({t, *(c for c in ROWS_CHUNKS if 1 < c < t)}):
                got = run(x[:t], chunk)
                if got.shape != alone[:t].shape or not np.array_equal(got, alone[:t], equal_nan=True):
                    diff = np.argwhere(got != alone[:t]) if got.shape == alone[:t].shape else None
                    where = f" (rows {sorted({int(i) for i in diff[:, 0]})[:5]}...)" if diff is not None and diff.size else ""
                    bad.append(f"T={t} in {'one call' if chunk == t else f'{chunk}-row chunks'}{where}")
    except Exception as e:                            # noqa: BLE001 - reported, not raised
        res.status, res.message = "error", f"{type(e).__name__}: {e}"
        return res
    problems = [f"rows differ from the rows computed alone: {'; '.join(bad)}"] if bad else []
    if alone.shape != ref.shape or alone.dtype != ref.dtype:
        problems.append(f"output {alone.dtype}{alone.shape} != reference {ref.dtype}{ref.shape}")
    else:
        res.nmse = nmse(alone, ref)
        if not (res.nmse <= res.bound):
            problems.append(f"nmse {res.nmse:.3g} > {res.bound:.3g}")
    if not np.array_equal(x, before):
        problems.append("kernel modified its input")
    if problems:
        res.status, res.message = "fail", "; ".join(problems)
    return res


def _judge(res: CaseResult, case: Case, out: np.ndarray, ref: np.ndarray, inputs_finite: bool) -> CaseResult:
    problems = []
    if out.shape != ref.shape:
        problems.append(f"shape {out.shape} != {ref.shape}")
    if out.dtype != ref.dtype:
        problems.append(f"dtype {out.dtype} != {ref.dtype}")
    if problems:
        res.status, res.message = "fail", "; ".join(problems)
        return res
    fin_out, fin_ref = np.isfinite(out), np.isfinite(ref)
    if case.check == "nonfinite":
        if fin_ref.all():
            raise AssertionError(f"case {case.id}: the planted NaN/Inf does not reach the reference output")
        if not np.array_equal(fin_out, fin_ref):
            lost = int((fin_out & ~fin_ref).sum())
            spread = int((~fin_out & fin_ref).sum())
            problems.append(f"non-finite pattern differs: {lost} lost, {spread} spread")
    elif inputs_finite and not fin_out.all():
        problems.append(f"{int((~fin_out).sum())} non-finite outputs from finite inputs")
    both = fin_out & fin_ref
    res.nmse = nmse(out[both], ref[both])
    if not (res.nmse <= res.bound):
        problems.append(f"nmse {res.nmse:.3g} > {res.bound:.3g}")
    if problems:
        res.status, res.message = "fail", "; ".join(problems)
    return res


@dataclass
class SuiteReport:
    """All results of one backend, and its coverage: op -> "native", "fallback" or
    "partial" (some cases fall back)."""

    backend: str
    results: list[CaseResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def coverage(self) -> dict[str, str]:
        cov: dict[str, str] = {}
        for op in OPS:
            st = {r.status == "fallback" for r in self.results if r.op == op}
            if st:
                cov[op] = "partial" if len(st) == 2 else ("fallback" if True in st else "native")
        return cov


def run_suite(backend: Backend, op: str | None = None, quick: bool = False,
              progress: Callable[[CaseResult], None] | None = None, min_time: float = 0.0) -> SuiteReport:
    """Run the selected cases on `backend`; `progress` is called after each case;
    `min_time` > 0 times each case (`run_case`)."""
    report = SuiteReport(backend.name)
    for case in select_cases(op, quick):
        r = run_case(backend, case, min_time=min_time)
        report.results.append(r)
        if progress:
            progress(r)
    return report
