"""The conformance suite (edgeformer/backends/conformance.py) on every registered backend
x every op x its cases. A backend registered later (cpu, cuda, entry points) is picked up
automatically; one not available on this machine is skipped with its reason; an op the
backend declines through `unsupported()` is skipped as "fallback"."""
from __future__ import annotations

import functools

import pytest

from edgeformer.backends import backend_names, get_backend
from edgeformer.backends.conformance import all_cases, run_case, select_cases
from edgeformer.kernels import OPS

CASES = all_cases()


@functools.cache
def _backend(name: str):
    b = get_backend(name)
    return b, b.available()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("backend_name", backend_names())
def test_conformance(backend_name, case):
    backend, why_not = _backend(backend_name)
    if why_not:
        pytest.skip(f"backend {backend_name} unavailable: {why_not}")
    r = run_case(backend, case)
    if r.status == "fallback":
        pytest.skip(f"fallback: {r.message}")
    assert r.status == "ok", f"{backend_name} {case.id}: {r.status}: {r.message}"


def test_case_list_covers_every_op():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for op in OPS:
        ours = [c for c in CASES if c.op == op]
        assert any(c.check == "nmse" for c in ours), f"{op}: no accuracy case"
        assert any(c.check == "nonfinite" for c in ours), f"{op}: no NaN-propagation case"
        assert select_cases(op, quick=True), f"{op}: nothing in --quick"


def test_weight_ops_cover_every_qtype():
    for op in ("linear", "embed"):
        dtypes = {c.dtype for c in CASES if c.op == op}
        assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K", "Q6_K"} <= dtypes
