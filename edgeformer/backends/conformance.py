"""The backend conformance suite, like ggml's `tests/test-backend-ops.cpp`.

Every op in `kernels.OPS` has a case list of awkward shapes (and, for `linear`/`embed`,
every weight qtype). A case runs the backend's kernel (weights through
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
`runtime.batch.row_invariant_linear` over the backend, which is the backend's own
`linear` in calls of up to its `row_invariant_rows` (so a backend declaring row invariance
has its kernels' claim tested directly) and, for a backend declaring none (numpy: BLAS
picks kernels by row count), fixed zero-padded 8-row blocks. Its nmse is the rows-alone
output's, against the reference.

An op the backend reports through `unsupported(op, **attrs)` (attrs: the call's keyword
attributes plus `qtype` of a weight operand) is not run: it is a "fallback" in the
coverage table, as the runtime would use the reference for it.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend
from edgeformer.kernels import OPS
from edgeformer.quant.qtypes import QTensor, QType

# --------------------------------------------------------------------------- weights

# Byte offsets of the float16 scale fields in one block (ggml-common.h `block_*`), so random
# bytes become a valid block with sane scales: (offset, is_min) per field.
_SCALE_FIELDS: dict[QType, tuple[tuple[int, bool], ...]] = {
    QType.Q4_0: ((0, False),), QType.Q5_0: ((0, False),), QType.Q8_0: ((0, False),),
    QType.Q4_1: ((0, False), (2, True)), QType.Q5_1: ((0, False), (2, True)),
    QType.Q2_K: ((80, False), (82, True)), QType.Q3_K: ((108, False),),
    QType.Q4_K: ((0, False), (2, True)), QType.Q5_K: ((0, False), (2, True)),
    QType.Q6_K: ((208, False),), QType.IQ4_NL: ((0, False),), QType.IQ4_XS: ((0, False),),
}


def _random_block_bytes(qtype: QType, shape: tuple[int, ...], rng: np.random.Generator) -> QTensor:
    """Uniform random bytes (every quant code and sub-scale pattern) with the block's f16
    scales overwritten by values of a realistic size (|d| ~ 1/64)."""
    n_blocks = int(np.prod(shape[:-1])) * shape[-1] // qtype.block_size
    blocks = rng.integers(0, 256, size=(n_blocks, qtype.type_size), dtype=np.uint8)
    for off, is_min in _SCALE_FIELDS[qtype]:
        mag = rng.uniform(0.5, 1.5, n_blocks) / 64
        val = mag if is_min else mag * rng.choice([-1.0, 1.0], n_blocks)
        blocks[:, off:off + 2] = val.astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    return QTensor(blocks.reshape(-1), qtype, tuple(shape))


def random_qtensor(qtype: QType, shape: tuple[int, ...], rng: np.random.Generator,
                   scale: float = 1.0, method: str = "quantize") -> QTensor:
    """A random weight of `shape` stored in `qtype`.

    method "quantize": N(0, scale^2) floats through `edgeformer.quant.quantize` (realistic
    weights; block types it cannot make yet fall back to "bytes"). method "bytes": for
    block types, uniform random blocks (every code and sub-scale pattern) with sane f16
    scales, independent of any quantizer; float types are always quantized. Raises
    UnsupportedError if the last dim is not a multiple of the block size."""
    from edgeformer.quant import QUANTIZABLE, quantize
    if method not in ("quantize", "bytes"):
        raise ValueError(f"method must be 'quantize' or 'bytes', got {method!r}")
    qtype.row_bytes(shape[-1])                       # validates the block multiple
    if qtype in _SCALE_FIELDS and (method == "bytes" or qtype not in QUANTIZABLE):
        return _random_block_bytes(qtype, shape, rng)
    return quantize((rng.standard_normal(shape) * scale).astype(np.float32), qtype)


def with_nan(qt: QTensor, row: int) -> QTensor:
    """Copy of an F32 QTensor with a NaN in `row` (first column)."""
    a = qt.data.view(np.float32).reshape(qt.shape).copy()
    a[row, 0] = np.nan
    return QTensor.from_array(a)


# --------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class Case:
    """One conformance case: `build(rng) -> (args, attrs)` makes the op's inputs.
    `check` is "nmse", "nonfinite" or "rows" (row invariance, see the module docstring);
    `dtype` picks the `max_nmse` entry."""

    op: str
    name: str
    build: Callable[[np.random.Generator], tuple[tuple, dict]]
    dtype: str = "F32"
    check: str = "nmse"
    quick: bool = False

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}"


def _randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _plant(a: np.ndarray, idx: tuple, value: float = np.nan) -> np.ndarray:
    a = a.copy()
    a[idx] = value
    return a


FLOAT_QTYPES = (QType.F32, QType.F16, QType.BF16)
BLOCK_QTYPES = (QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q4_K, QType.Q5_K, QType.Q6_K)
WEIGHT_QTYPES = FLOAT_QTYPES + BLOCK_QTYPES


def _linear_cases() -> list[Case]:
    cases = []
    for qt in WEIGHT_QTYPES:
        b = qt.block_size
        if b == 1:
            shapes = [(1, 1, 33), (7, 45, 65), (33, 99, 64), (1, 65, 1025)]
        elif b == 32:
            shapes = [(1, 45, 96), (7, 65, 32), (33, 99, 160)]
        else:
            shapes = [(1, 45, 256), (7, 33, 512)]
        for i, (t, n, k) in enumerate(shapes):
            cases.append(Case("linear", f"{qt.name}_t{t}_n{n}_k{k}",
                              lambda r, t=t, n=n, k=k, qt=qt: ((_randn(r, t, k), random_qtensor(qt, (n, k), r, 0.1)), {}),
                              dtype=qt.name, quick=i == 0 and qt in (QType.F32, QType.Q4_0, QType.Q4_K)))
        k = 2 * b if b > 1 else 33
        cases.append(Case("linear", f"{qt.name}_bias_3d_k{k}",
                          lambda r, k=k, qt=qt: ((_randn(r, 2, 3, k), random_qtensor(qt, (17, k), r, 0.1), _randn(r, 17)), {}),
                          dtype=qt.name))
    cases += [
        Case("linear", "nan_in_x_row", lambda r: ((_plant(_randn(r, 5, 64), (2, 7)), random_qtensor(QType.Q8_0, (9, 64), r)), {}),
             dtype="Q8_0", check="nonfinite", quick=True),
        Case("linear", "nan_in_x_row_Q4_K", lambda r: ((_plant(_randn(r, 3, 256), (1, 200)), random_qtensor(QType.Q4_K, (5, 256), r)), {}),
             dtype="Q4_K", check="nonfinite"),
        Case("linear", "inf_in_x_row", lambda r: ((_plant(_randn(r, 5, 33), (3, 0), np.inf), random_qtensor(QType.F32, (9, 33), r)), {}),
             dtype="F32", check="nonfinite"),
        Case("linear", "nan_in_w_row", lambda r: ((_randn(r, 4, 33), with_nan(random_qtensor(QType.F32, (9, 33), r), 5)), {}),
             dtype="F32", check="nonfinite"),
    ]
    return cases


# row counts of a whole call, and chunk sizes its rows are also computed in (1 = alone);
# 63/64 straddle the row count where kernels classically switch to a prefill path
ROWS_T = (1, 5, 70, 130)
ROWS_CHUNKS = (1, 7, 63, 64)


def _linear_rows_cases() -> list[Case]:
    """Row invariance of `linear` for every weight qtype (odd N, K not a power of two)."""
    cases = []
    for qt in WEIGHT_QTYPES:
        k = {1: 65, 32: 96, 256: 512}[qt.block_size]
        cases.append(Case("linear", f"rows_{qt.name}_n33_k{k}",
                          lambda r, k=k, qt=qt: ((_randn(r, max(ROWS_T), k), random_qtensor(qt, (33, k), r, 0.1)), {}),
                          dtype=qt.name, check="rows", quick=qt == QType.Q4_0))
    return cases


# Batch/chunk invariance of attention (a query's output alone vs with other queries, and
# prefill in chunks vs whole, at the same positions) belongs here as `_attention_rows_cases`,
# judged by a "rows"-style check of its own; it is another change's work and not added yet.


def _embed_cases() -> list[Case]:
    cases = []
    for qt in WEIGHT_QTYPES:
        d = {1: 33, 32: 96, 256: 256}[qt.block_size]
        cases.append(Case("embed", f"{qt.name}_v37_d{d}",
                          lambda r, d=d, qt=qt: ((random_qtensor(qt, (37, d), r), np.array([0, 36, 5, 5, 17, 1, 36])), {}),
                          dtype=qt.name, quick=qt in (QType.F32, QType.Q4_K)))
    cases += [
        Case("embed", "F16_single_id", lambda r: ((random_qtensor(QType.F16, (1025, 64), r), np.array([1024], np.int32)), {}),
             dtype="F16"),
        Case("embed", "nan_in_table_row", lambda r: ((with_nan(random_qtensor(QType.F32, (11, 33), r), 4), np.array([4, 3, 4, 10])), {}),
             dtype="F32", check="nonfinite", quick=True),
    ]
    return cases


_NORM_SHAPES = [(1, 1), (1, 33), (45, 65), (64, 99), (3, 1025), (2, 3, 33)]


def _norm_cases() -> list[Case]:
    cases = []
    for i, s in enumerate(_NORM_SHAPES):
        tag = "x".join(map(str, s))
        cases.append(Case("rms_norm", tag, lambda r, s=s: ((_randn(r, *s), _randn(r, s[-1]), 1e-6), {}), quick=i == 2))
        cases.append(Case("layer_norm", tag, lambda r, s=s: ((_randn(r, *s) + 3, _randn(r, s[-1]), _randn(r, s[-1]), 1e-5), {}),
                          quick=i == 2))
    cases += [
        Case("rms_norm", "no_weight_large", lambda r: ((_randn(r, 5, 99, scale=1e3), None, 1e-6), {})),
        Case("rms_norm", "tiny_eps_dominates", lambda r: ((_randn(r, 5, 64, scale=1e-4), _randn(r, 64), 1e-5), {})),
        Case("rms_norm", "nan_row", lambda r: ((_plant(_randn(r, 6, 65), (4, 9)), _randn(r, 65), 1e-6), {}),
             check="nonfinite", quick=True),
        Case("layer_norm", "no_affine_offset", lambda r: ((_randn(r, 7, 129) + 100, None, None, 1e-5), {})),
        Case("layer_norm", "weight_only", lambda r: ((_randn(r, 7, 33), _randn(r, 33), None, 1e-6), {})),
        Case("layer_norm", "nan_row", lambda r: ((_plant(_randn(r, 6, 65), (1, 64)), _randn(r, 65), _randn(r, 65), 1e-5), {}),
             check="nonfinite", quick=True),
    ]
    return cases


def _inv_freq(r: int, theta: float = 10000.0) -> np.ndarray:
    return (1.0 / theta ** (np.arange(0, r, 2, dtype=np.float64) / r)).astype(np.float32)


def _rope_cases() -> list[Case]:
    # (T, H, D, R, neox, mscale, max position)
    spec = [(1, 1, 64, 64, True, 1.0, 10), (33, 3, 64, 64, True, 1.0, 5000), (7, 2, 128, 64, True, 1.23, 100),
            (33, 3, 64, 64, False, 1.0, 5000), (5, 4, 80, 40, False, 1.0, 50), (1, 5, 2, 2, True, 1.0, 3)]
    cases = []
    for i, (t, h, d, rr, neox, ms, pmax) in enumerate(spec):
        cases.append(Case("rope", f"t{t}_h{h}_d{d}_r{rr}_{'neox' if neox else 'norm'}_ms{ms}",
                          lambda r, t=t, h=h, d=d, rr=rr, neox=neox, ms=ms, pmax=pmax:
                          ((_randn(r, t, h, d), np.sort(r.integers(0, pmax, t)), _inv_freq(rr)), {"neox": neox, "mscale": ms}),
                          quick=i in (1, 3)))
    for neox in (True, False):
        cases.append(Case("rope", f"nan_{'neox' if neox else 'norm'}",
                          lambda r, neox=neox: ((_plant(_randn(r, 4, 2, 64), (2, 1, 3)), np.arange(7, 11), _inv_freq(64)),
                                                {"neox": neox}), check="nonfinite", quick=True))
    return cases


def _attn(t: int, s: int, hq: int, hkv: int, d: int, dv: int | None = None, *, pos: str = "default",
          nan: tuple[str, tuple] | None = None, **attrs: Any) -> Callable:
    """Builder of an attention case; pos: "default" (queries are the last T keys),
    "offset" (explicit positions from 100), "early" (some queries precede every key)."""
    def build(r: np.random.Generator) -> tuple[tuple, dict]:
        q, k, v = _randn(r, t, hq, d), _randn(r, s, hkv, d), _randn(r, s, hkv, dv or d)
        if nan is not None:
            which, idx = nan
            q, k, v = [(_plant(a, idx) if w == which else a) for a, w in ((q, "q"), (k, "k"), (v, "v"))]
        qp = kp = None
        if pos == "offset":
            kp = np.arange(100, 100 + s)
            qp = kp[s - t:]
        elif pos == "early":
            kp = np.arange(10, 10 + s)
            qp = np.arange(5, 5 + t)
        return (q, k, v, qp, kp), {"scale": 1.0 / np.sqrt(d), **attrs}
    return build


def _attention_cases() -> list[Case]:
    a = "attention"
    return [
        Case(a, "single_token", _attn(1, 1, 2, 1, 64), quick=True),
        Case(a, "prefill_t33_gqa1", _attn(33, 33, 3, 3, 64)),
        Case(a, "prefill_t33_gqa7", _attn(33, 33, 7, 1, 32), quick=True),
        Case(a, "decode_s1500_gqa2", _attn(1, 1500, 4, 2, 64)),
        Case(a, "chunk_t5_s45_offset", _attn(5, 45, 4, 2, 64, pos="offset")),
        Case(a, "window8_offset", _attn(33, 45, 4, 2, 64, pos="offset", window=8), quick=True),
        Case(a, "softcap50", _attn(17, 17, 2, 1, 64, softcap=50.0)),
        Case(a, "noncausal_dv48", _attn(9, 13, 6, 2, 64, 48, causal=False)),
        Case(a, "fully_masked_rows", _attn(10, 10, 2, 2, 32, pos="early")),
        Case(a, "nan_q_row", _attn(8, 8, 4, 2, 32, nan=("q", (3, 1, 5))), check="nonfinite", quick=True),
        Case(a, "nan_k_mid", _attn(8, 8, 4, 2, 32, nan=("k", (4, 0, 2))), check="nonfinite"),
        Case(a, "nan_v_mid", _attn(8, 8, 4, 2, 32, nan=("v", (4, 1, 7))), check="nonfinite"),
        Case(a, "nan_k_outside_window", _attn(12, 12, 2, 1, 32, window=4, nan=("k", (1, 0, 0))), check="nonfinite"),
    ]


_ELEM_SHAPES = [(1,), (33,), (45, 65), (1025,)]


def _pointwise_cases() -> list[Case]:
    cases = []
    for kind in ("silu", "gelu", "gelu_tanh", "relu"):
        for i, s in enumerate(_ELEM_SHAPES):
            cases.append(Case("activation", f"{kind}_{'x'.join(map(str, s))}",
                              lambda r, s=s, kind=kind: ((_randn(r, *s, scale=4.0),), {"kind": kind}), quick=i == 2))
        cases.append(Case("activation", f"{kind}_extremes",
                          lambda r, kind=kind: ((np.array([-1e4, -100, -20, -1e-6, 0, 1e-6, 20, 100, 1e4], np.float32),),
                                                {"kind": kind})))
        cases.append(Case("activation", f"{kind}_nan", lambda r, kind=kind: ((_plant(_randn(r, 3, 33), (1, 4)),), {"kind": kind}),
                          check="nonfinite", quick=True))
    for kind in ("silu", "gelu", "gelu_tanh"):
        for s in [(1, 33), (45, 65), (3, 1025)]:
            cases.append(Case("glu", f"{kind}_{'x'.join(map(str, s))}",
                              lambda r, s=s, kind=kind: ((_randn(r, *s, scale=3.0), _randn(r, *s)), {"kind": kind}),
                              quick=s == (45, 65) and kind == "silu"))
    cases.append(Case("glu", "silu_nan_up", lambda r: ((_randn(r, 4, 33), _plant(_randn(r, 4, 33), (2, 2))), {"kind": "silu"}),
                      check="nonfinite", quick=True))
    for i, s in enumerate([(1, 1), (1, 33), (45, 65), (2, 1025)]):
        cases.append(Case("softmax", "x".join(map(str, s)), lambda r, s=s: ((_randn(r, *s, scale=3.0),), {}), quick=i == 2))
    cases += [
        Case("softmax", "large_logits", lambda r: ((_randn(r, 7, 99, scale=100.0),), {})),
        Case("softmax", "masked_entries", lambda r: ((_plant(_randn(r, 5, 33), (slice(None), slice(20, None)), -np.inf),), {})),
        Case("softmax", "nan_row", lambda r: ((_plant(_randn(r, 5, 33), (3, 3)),), {}), check="nonfinite", quick=True),
    ]
    for cap in (30.0, 50.0):
        cases.append(Case("softcap", f"cap{cap:g}", lambda r, cap=cap: ((_randn(r, 45, 65, scale=100.0), cap), {}),
                          quick=cap == 30.0))
    cases.append(Case("softcap", "nan", lambda r: ((_plant(_randn(r, 3, 33), (0, 0)), 30.0), {}), check="nonfinite"))
    for op in ("add", "mul"):
        cases += [
            Case(op, "same_45x65", lambda r: ((_randn(r, 45, 65), _randn(r, 45, 65)), {}), quick=True),
            Case(op, "row_vector", lambda r: ((_randn(r, 2, 3, 33), _randn(r, 33)), {})),
            Case(op, "scalar", lambda r: ((_randn(r, 1, 1025), 0.37), {})),
            Case(op, "nan_in_vector", lambda r: ((_randn(r, 4, 33), _plant(_randn(r, 33), (6,))), {}),
                 check="nonfinite", quick=True),
        ]
    return cases


def _conv_cases() -> list[Case]:
    cases = []
    for name, (ci, co, t, k, s, p, d, g) in {
            "pointwise_33to7_t45": (33, 7, 45, 1, 1, 0, 1, 1), "k7_d3_t99": (16, 16, 99, 7, 1, 9, 3, 1),
            "depthwise_d9_t37": (12, 12, 37, 3, 1, 9, 9, 12), "grouped_stride2": (6, 9, 50, 5, 2, 2, 1, 3),
            "t1": (3, 4, 1, 3, 1, 1, 1, 1)}.items():
        cases.append(Case("conv1d", name, lambda r, ci=ci, co=co, t=t, k=k, s=s, p=p, d=d, g=g: (
            (_randn(r, ci, t), _randn(r, co, ci // g, k), _randn(r, co)),
            {"stride": s, "padding": p, "dilation": d, "groups": g}), quick=name == "k7_d3_t99"))
    cases.append(Case("conv1d", "asym_pad", lambda r: ((_randn(r, 6, 30), _randn(r, 5, 6, 4), None), {"padding": (1, 2)})))
    cases.append(Case("conv1d", "nan", lambda r: ((_plant(_randn(r, 4, 33), (1, 5)), _randn(r, 4, 4, 3), None),
                                                  {"padding": 1}), check="nonfinite", quick=True))
    for name, (ci, co, t, k, s, p) in {"up8_k16": (16, 8, 13, 16, 8, 4), "up4_k8": (8, 4, 33, 8, 4, 2),
                                       "odd": (7, 5, 10, 5, 3, 1), "t1": (3, 5, 1, 7, 5, 1)}.items():
        cases.append(Case("conv_transpose1d", name, lambda r, ci=ci, co=co, t=t, k=k, s=s, p=p: (
            (_randn(r, ci, t), _randn(r, ci, co, k), _randn(r, co)), {"stride": s, "padding": p}),
            quick=name == "up8_k16"))
    # a NaN at input step 4 reaches only the outputs its kernel window touches
    cases.append(Case("conv_transpose1d", "nan", lambda r: (
        (_plant(_randn(r, 4, 21), (2, 4)), _randn(r, 4, 3, 6), None), {"stride": 2, "padding": 1}),
        check="nonfinite", quick=True))
    return cases


def all_cases() -> list[Case]:
    """Every case of every op, in OPS order; each op in OPS has at least one."""
    cases = _linear_cases() + _linear_rows_cases() + _embed_cases() + _norm_cases() + _rope_cases() + _attention_cases() + _pointwise_cases()
    cases += _conv_cases()
    order = {name: i for i, name in enumerate(OPS)}
    return sorted(cases, key=lambda c: order[c.op])


def select_cases(op: str | None = None, quick: bool = False) -> list[Case]:
    """Cases of one op (all ops if None); `quick` keeps a few per op."""
    from edgeformer.errors import UnsupportedError
    if op is not None and op not in OPS:
        raise UnsupportedError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return [c for c in all_cases() if (op is None or c.op == op) and (c.quick or not quick)]


# --------------------------------------------------------------------------- running

@dataclass
class CaseResult:
    """Outcome of one case on one backend. status: "ok", "fail" (a check failed),
    "error" (the kernel raised), "fallback" (backend.unsupported gave reasons)."""

    backend: str
    op: str
    case: str
    status: str
    nmse: float | None = None
    bound: float | None = None
    message: str = ""

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


def run_case(backend: Backend, case: Case, seed: int = 0) -> CaseResult:
    """Run one case on `backend` against the reference; never raises for kernel errors."""
    rng = np.random.default_rng(zlib.crc32(case.id.encode()) + seed)
    args, attrs = case.build(rng)
    res = CaseResult(backend.name, case.op, case.name, "ok", bound=bound_for(case.op, case.dtype))
    reasons = backend.unsupported(case.op, **_call_attrs(args, attrs))
    if reasons:
        res.status, res.message = "fallback", "; ".join(reasons)
        return res
    kernel = backend.kernels.get(case.op)
    if kernel is None:
        res.status, res.message = "fail", f"unsupported() is empty but there is no {case.op!r} kernel"
        return res
    ref = OPS[case.op].reference(*args, **attrs)
    if case.check == "rows":
        return _run_rows(backend, args, ref, res)
    to_device = getattr(backend, "to_device", None)   # not in the Backend base yet: optional
    to_host = getattr(backend, "to_host", None)
    try:
        dev = [backend.prepare_weight(a, f"{case.id}.w{i}").handle if isinstance(a, QTensor)
               else (to_device(a) if to_device and isinstance(a, np.ndarray) else a)
               for i, a in enumerate(args)]
        before = [a.copy() if isinstance(a, np.ndarray) else None for a in dev]
        out = kernel(*dev, **attrs)
        out = to_host(out) if to_host else out
    except Exception as e:                            # noqa: BLE001 - reported, not raised
        res.status, res.message = "error", f"{type(e).__name__}: {e}"
        return res
    res = _judge(res, case, np.asarray(out), ref, _all_finite(args))
    # a kernel that writes into its inputs would corrupt e.g. the residual stream
    changed = [i for i, (a, b) in enumerate(zip(dev, before)) if b is not None and not np.array_equal(a, b, equal_nan=True)]
    if changed:
        res.status = "fail"
        res.message = "; ".join(filter(None, [res.message, f"kernel modified input(s) {changed}"]))
    return res


def _run_rows(backend: Backend, args: tuple, ref: np.ndarray, res: CaseResult) -> CaseResult:
    """A "rows" case of `linear`: every prefix x[:T] (T in ROWS_T) computed whole and in
    ROWS_CHUNKS-row chunks must give each row exactly the bits it gets alone; the rows-alone
    output is also held to the nmse bound (module docstring)."""
    # what BatchEngine runs; imported here (the one place backends/ reaches up to runtime/):
    # the suite judges the runtime's use of a backend that declares no row invariance
    from edgeformer.backends.base import Ops
    from edgeformer.runtime.batch import row_invariant_linear
    x, qt = args[0], args[1]
    declared = getattr(backend, "row_invariant_rows", 0)
    if not declared:
        res.message = "backend declares no row_invariant_rows: judged through runtime/batch.py's fixed row blocks"
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
              progress: Callable[[CaseResult], None] | None = None) -> SuiteReport:
    """Run the selected cases on `backend`; `progress` is called after each case."""
    report = SuiteReport(backend.name)
    for case in select_cases(op, quick):
        r = run_case(backend, case)
        report.results.append(r)
        if progress:
            progress(r)
    return report
