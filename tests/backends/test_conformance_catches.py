"""The suite must fail broken backends: each mutant below is the numpy backend with one
classic kernel bug, and must be flagged on the case built to catch it, while the numpy
backend passes that same case (tested in test_conformance.py)."""
from __future__ import annotations

import re

import numpy as np
import pytest

from edgeformer.backends import NumpyBackend
from edgeformer.backends import base as backends_base
from edgeformer.backends.conformance import all_cases, nmse, run_case, run_suite
from edgeformer.cli.__main__ import main
from edgeformer.kernels import OPS
from edgeformer.kernels.activation import softmax_ref
from edgeformer.kernels.attention import attention_ref
from edgeformer.kernels.linear import linear_ref
from edgeformer.kernels.rope import rope_ref

CASES = {c.id: c for c in all_cases()}


def mutant(**kernels):
    cls = type("Mutant", (NumpyBackend,), {"name": "mutant", "kernels": {**NumpyBackend.kernels, **kernels}})
    return cls()


def rms_eps_outside_sqrt(x, w, eps):
    x = x.astype(np.float32)
    return (x / (np.sqrt(np.mean(x * x, -1, keepdims=True)) + np.float32(eps)) * (1 if w is None else w)).astype(np.float32)


def attention_masks_by_adding(q, k, v, q_pos=None, k_pos=None, *, scale, causal=True, window=None, softcap=None):
    # softmax(scores + mask) with -inf in the mask: a NaN score at a hidden key survives
    t, hq, _ = q.shape
    s, hkv, _ = k.shape
    kk, vv = np.repeat(k, hq // hkv, 1), np.repeat(v, hq // hkv, 1)            # (S, Hq, D)
    sc = np.einsum("thd,shd->hts", q, kk) * np.float32(scale)                  # (Hq, T, S)
    qp = np.arange(s - t, s) if q_pos is None else np.asarray(q_pos)
    kp = np.arange(s) if k_pos is None else np.asarray(k_pos)
    diff = qp[:, None] - kp[None, :]
    ok = (diff >= 0) if causal else np.ones_like(diff, bool)
    if window is not None:
        ok &= diff < window
    p = softmax_ref(sc + np.where(ok, 0.0, -np.inf).astype(np.float32))
    return np.einsum("hts,shd->thd", p, vv).astype(np.float32)


def naive_softmax(x):
    with np.errstate(over="ignore", invalid="ignore"):     # the overflow is the bug under test
        return (np.exp(x) / np.exp(x).sum(-1, keepdims=True)).astype(np.float32)


BUGS = {
    # mutant kernels -> the case id that must catch them
    "rms_eps_outside_sqrt": ({"rms_norm": rms_eps_outside_sqrt}, "rms_norm-tiny_eps_dominates"),
    "attention_ignores_window": ({"attention": lambda *a, window=None, **kw: attention_ref(*a, **kw)},
                                 "attention-window8_offset"),
    "attention_drops_softcap": ({"attention": lambda *a, softcap=None, **kw: attention_ref(*a, **kw)},
                                "attention-softcap50"),
    "attention_adds_mask": ({"attention": attention_masks_by_adding}, "attention-nan_k_outside_window"),
    "rope_wrong_pairs": ({"rope": lambda x, p, f, neox=True, mscale=1.0: rope_ref(x, p, f, neox=not neox, mscale=mscale)},
                         "rope-t33_h3_d64_r64_neox_ms1.0"),
    "linear_returns_f64": ({"linear": lambda x, w, b=None: linear_ref(x, w, b).astype(np.float64)},
                           "linear-F32_t7_n45_k65"),
    "linear_squeezes": ({"linear": lambda x, w, b=None: linear_ref(x, w, b).squeeze()}, "linear-F32_t1_n1_k33"),
    "linear_hides_nan": ({"linear": lambda x, w, b=None: np.nan_to_num(linear_ref(np.nan_to_num(x), w, b))},
                         "linear-nan_in_x_row"),
    "linear_f16_accumulate": ({"linear": lambda x, w, b=None: linear_ref(x.astype(np.float16), w.astype(np.float16), b)},
                              "linear-F32_t1_n65_k1025"),
    "softmax_no_max_shift": ({"softmax": lambda x: naive_softmax(x)},
                             "softmax-large_logits"),
    "relu_eats_nan": ({"activation": lambda x, kind: np.where(x > 0, x, 0).astype(np.float32) if kind == "relu"
                       else OPS["activation"].reference(x, kind)}, "activation-relu_nan"),
    "rms_norm_in_place": ({"rms_norm": lambda x, w, eps: np.multiply(x, 1 / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w, out=x)},
                          "rms_norm-45x65"),
    "embed_off_by_one": ({"embed": lambda t, ids: OPS["embed"].reference(t, np.minimum(np.asarray(ids) + 1, t.shape[0] - 1))},
                         "embed-F32_v37_d33"),
}


@pytest.mark.parametrize("bug", list(BUGS))
def test_suite_catches(bug):
    kernels, case_id = BUGS[bug]
    r = run_case(mutant(**kernels), CASES[case_id])
    assert r.status == "fail", f"{bug} slipped through {case_id}: {r}"


def test_raising_kernel_is_an_error_not_a_crash():
    def boom(*a, **k):
        raise RuntimeError("kernel exploded")
    r = run_case(mutant(mul=boom), CASES["mul-same_45x65"])
    assert r.status == "error" and "exploded" in r.message


def test_unsupported_is_fallback_in_coverage():
    class NoKQuants(NumpyBackend):
        name = "nok"
        kernels = {k: v for k, v in NumpyBackend.kernels.items() if k != "softcap"}

        def unsupported(self, op, **attrs):
            if op == "linear" and attrs.get("qtype") is not None and attrs["qtype"].name.endswith("_K"):
                return ["no K-quant matmul"]
            return super().unsupported(op, **attrs)

    rep = run_suite(NoKQuants(), quick=True)
    cov = rep.coverage()
    assert rep.ok
    assert cov["linear"] == "partial" and cov["softcap"] == "fallback" and cov["rms_norm"] == "native"
    assert any(r.status == "fallback" and "K-quant" in r.message for r in rep.results)


def test_nmse_definition():
    ref = np.array([3.0, 4.0], np.float32)
    assert nmse(ref, ref) == 0.0
    assert nmse(np.array([3.0, 5.0]), ref) == pytest.approx(1 / 25)
    assert nmse(np.zeros(2), np.zeros(2)) == 0.0 and nmse(np.ones(2), np.zeros(2)) == float("inf")


def test_cli_check_backend(monkeypatch, capsys):
    assert main(["check-backend", "numpy", "--quick", "--op", "rms_norm"]) == 0
    out = capsys.readouterr().out
    assert "rms_norm" in out and "nan_row" in out and "coverage" in out
    cls = type(mutant(rms_norm=rms_eps_outside_sqrt))
    monkeypatch.setitem(backends_base._BACKENDS, "mutant", cls)
    assert main(["check-backend", "mutant", "--op", "rms_norm"]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert main(["check-backend", "numpy", "--op", "no_such_op"]) == 1
    assert main(["check-backend", "no_such_backend"]) == 1


def test_cli_check_backend_names_kernel_and_time_per_case(monkeypatch, capsys):
    """Each case row says native or fallback and gives a time per call."""
    class NoSoftcap(NumpyBackend):
        name = "nosoftcap"

        def unsupported(self, op, **attrs):
            return ["no softcap kernel"] if op == "softcap" else super().unsupported(op, **attrs)

    monkeypatch.setitem(backends_base._BACKENDS, "nosoftcap", NoSoftcap)
    assert main(["check-backend", "nosoftcap", "--quick", "--op", "softcap", "--min-time", "0.001"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if "cap30" in ln]          # the case rows
    assert rows and all("fallback" in ln and re.search(r"\d+ (us|ms)", ln) for ln in rows)
    assert main(["check-backend", "numpy", "--quick", "--op", "rms_norm", "--min-time", "0.001"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("│ rms_norm │") and "e-" in ln]
    assert rows and all("native" in ln and re.search(r"\d+ (us|ms)", ln) for ln in rows)


def _linear_switches_at_64(x, w, b=None):
    # row by row (so row-invariant: BLAS on many rows is not), but a "prefill kernel" from 64
    # rows on whose rounding differs by one ulp: far inside the nmse bound, yet a row's bits
    # then depend on its batch mates
    out = np.concatenate([linear_ref(x[i:i + 1], w, b) for i in range(x.shape[0])])
    return np.nextafter(out, np.float32(np.inf)) if x.shape[0] >= 64 else out


@pytest.mark.parametrize("rows", [1 << 30, 63])
def test_rows_case_catches_a_row_count_dependent_kernel(rows):
    """A backend declaring row invariance is judged by its own kernel: one whose bits change
    at 64 rows fails the rows case when it claims invariance past 63 rows, and passes when
    it claims only 63 (the runtime then never calls it with more)."""
    cls = type("RowMutant", (NumpyBackend,), {"name": "rowmutant", "row_invariant_rows": rows,
                                              "kernels": {**NumpyBackend.kernels, "linear": _linear_switches_at_64}})
    r = run_case(cls(), CASES["linear-rows_Q4_0_n33_k96"])
    assert r.status == ("fail" if rows > 63 else "ok"), r
    if rows > 63:
        assert "T=70" in r.message and "T=5" not in r.message


def test_rows_case_judges_undeclared_backends_through_the_runtime_blocks():
    """numpy declares no row invariance (its BLAS picks kernels by row count): the rows case
    runs it through row_invariant_linear's fixed blocks, and says so."""
    r = run_case(NumpyBackend(), CASES["linear-rows_F32_n33_k65"])
    assert r.status == "ok" and "row_invariant_rows" in r.message
