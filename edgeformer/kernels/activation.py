"""activation, glu (gated activation), softmax, softcap."""
from __future__ import annotations

import math

import numpy as np

from edgeformer.kernels.base import Case, Cost, OpSpec, nbytes_of, same_shape
from edgeformer.kernels.inputs import plant, randn

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


# math.erfc is accurate in float64; numpy has no erf and scipy is not a dependency.
_ERFC = np.frompyfunc(math.erfc, 1, 1)


def _erfc(x: np.ndarray) -> np.ndarray:
    return np.asarray(_ERFC(x), dtype=np.float64)


def activation_ref(x: np.ndarray, kind: str) -> np.ndarray:
    """Elementwise silu | gelu (exact, erf) | gelu_tanh | relu, float32, any shape.
    NaN in gives NaN out (relu included); raises ValueError on an unknown kind."""
    x = x.astype(np.float32, copy=False)
    if kind == "silu":
        with np.errstate(over="ignore"):   # exp(-x) -> inf for x < -88 gives the right limit, -0
            return (x / (np.float32(1.0) + np.exp(-x))).astype(np.float32)
    if kind == "gelu":
        # 0.5 * (1 + erf(x / sqrt 2)) == 0.5 * erfc(-x / sqrt 2), without the cancellation for x < 0
        xd = x.astype(np.float64)
        return (0.5 * xd * _erfc(-xd / math.sqrt(2.0))).astype(np.float32)
    if kind == "gelu_tanh":
        # 0.5 * (1 + tanh(z)) == 1 / (1 + exp(-2z)): same function, no cancellation for x < 0
        z = np.float32(_SQRT_2_OVER_PI) * (x + np.float32(0.044715) * x * x * x)
        with np.errstate(over="ignore"):
            return (x / (np.float32(1.0) + np.exp(np.float32(-2.0) * z))).astype(np.float32)
    if kind == "relu":
        return np.maximum(x, np.float32(0)).astype(np.float32)   # maximum propagates NaN
    raise ValueError(f"unknown activation {kind!r}")


def activation_cost(x, kind) -> Cost:
    """~8 FLOPs per element (exp/tanh counted as a few), x read once, float32 written."""
    n = int(np.prod(x.shape))
    return Cost(flops=8 * n, bytes_read=nbytes_of(x), bytes_written=n * 4)


def glu_ref(gate: np.ndarray, up: np.ndarray, kind: str) -> np.ndarray:
    """act(gate) * up (SwiGLU / GeGLU); gate and up have the same shape; float32."""
    return (activation_ref(gate, kind) * up).astype(np.float32, copy=False)


def glu_cost(gate, up, kind) -> Cost:
    n = int(np.prod(gate.shape))
    return Cost(flops=9 * n, bytes_read=nbytes_of(gate) + nbytes_of(up), bytes_written=n * 4)


def softmax_ref(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32. -inf entries get 0; a row of all -inf, or
    with a NaN or +inf, is NaN."""
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def softmax_cost(x) -> Cost:
    n = int(np.prod(x.shape))
    return Cost(flops=4 * n, bytes_read=nbytes_of(x), bytes_written=n * 4)


def softcap_ref(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap), elementwise, float32 (gemma's logit soft-capping)."""
    return (np.tanh(x.astype(np.float32) / np.float32(cap)) * np.float32(cap)).astype(np.float32)


def softcap_cost(x, cap) -> Cost:
    n = int(np.prod(x.shape))
    return Cost(flops=3 * n, bytes_read=nbytes_of(x), bytes_written=n * 4)


_SHAPES = [(1,), (33,), (45, 65), (1025,)]
KINDS = ("silu", "gelu", "gelu_tanh", "relu")


def activation_cases() -> list[Case]:
    """Every kind on awkward shapes, at extremes (+-1e4, +-1e-6) and with a NaN."""
    cases = []
    for kind in KINDS:
        for i, s in enumerate(_SHAPES):
            cases.append(Case("activation", f"{kind}_{'x'.join(map(str, s))}",
                              lambda r, s=s, kind=kind: ((randn(r, *s, scale=4.0),), {"kind": kind}), quick=i == 2))
        cases.append(Case("activation", f"{kind}_extremes",
                          lambda r, kind=kind: ((np.array([-1e4, -100, -20, -1e-6, 0, 1e-6, 20, 100, 1e4], np.float32),),
                                                {"kind": kind})))
        cases.append(Case("activation", f"{kind}_nan", lambda r, kind=kind: ((plant(randn(r, 3, 33), (1, 4)),), {"kind": kind}),
                          check="nonfinite", quick=True))
    return cases


def glu_cases() -> list[Case]:
    """The gated kinds on awkward shapes, and a NaN in `up`."""
    cases = []
    for kind in ("silu", "gelu", "gelu_tanh"):
        for s in [(1, 33), (45, 65), (3, 1025)]:
            cases.append(Case("glu", f"{kind}_{'x'.join(map(str, s))}",
                              lambda r, s=s, kind=kind: ((randn(r, *s, scale=3.0), randn(r, *s)), {"kind": kind}),
                              quick=s == (45, 65) and kind == "silu"))
    cases.append(Case("glu", "silu_nan_up", lambda r: ((randn(r, 4, 33), plant(randn(r, 4, 33), (2, 2))), {"kind": "silu"}),
                      check="nonfinite", quick=True))
    return cases


def softmax_cases() -> list[Case]:
    """Awkward shapes, large logits, -inf (masked) entries, a NaN row."""
    cases = [Case("softmax", "x".join(map(str, s)), lambda r, s=s: ((randn(r, *s, scale=3.0),), {}), quick=i == 2)
             for i, s in enumerate([(1, 1), (1, 33), (45, 65), (2, 1025)])]
    return cases + [
        Case("softmax", "large_logits", lambda r: ((randn(r, 7, 99, scale=100.0),), {})),
        Case("softmax", "masked_entries", lambda r: ((plant(randn(r, 5, 33), (slice(None), slice(20, None)), -np.inf),), {})),
        Case("softmax", "nan_row", lambda r: ((plant(randn(r, 5, 33), (3, 3)),), {}), check="nonfinite", quick=True),
    ]


def softcap_cases() -> list[Case]:
    """Logits far past the cap, and a NaN."""
    cases = [Case("softcap", f"cap{cap:g}", lambda r, cap=cap: ((randn(r, 45, 65, scale=100.0), cap), {}),
                  quick=cap == 30.0) for cap in (30.0, 50.0)]
    return cases + [Case("softcap", "nan", lambda r: ((plant(randn(r, 3, 33), (0, 0)), 30.0), {}), check="nonfinite")]


ACTIVATION = OpSpec("activation", activation_ref, activation_cost, same_shape, activation_cases,
                    max_nmse={"default": 1e-10})
GLU = OpSpec("glu", glu_ref, glu_cost, same_shape, glu_cases, max_nmse={"default": 1e-10})
SOFTMAX = OpSpec("softmax", softmax_ref, softmax_cost, same_shape, softmax_cases, max_nmse={"default": 1e-10})
SOFTCAP = OpSpec("softcap", softcap_ref, softcap_cost, same_shape, softcap_cases, max_nmse={"default": 1e-10})
