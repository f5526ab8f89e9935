"""activation, glu (gated activation), softcap and softmax, float32, same semantics as
`kernels/activation.py`. exp is `simd.fast_exp` (vectorises; libm expf does not). The
activation kind is resolved to a small int in Python so each kernel compiles once."""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.common import JIT, PARALLEL_MIN, jit_pair
from edgeformer.backends.cpu.simd import fast_exp

_KINDS = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}
_NONE = np.zeros(0, np.float32)
_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


@njit(inline="always", **JIT)
def _act(x, kind):
    if kind == 0:
        return x / (np.float32(1.0) + fast_exp(-x))
    if kind == 1:   # exact gelu in float64, erfc form (no cancellation for x < 0), as the reference
        xd = np.float64(x)
        return np.float32(0.5 * xd * math.erfc(-xd * _INV_SQRT2))
    if kind == 2:   # 0.5 (1 + tanh z) == 1 / (1 + exp(-2z)), the reference's cancellation-free form
        z = _SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)
        return x / (np.float32(1.0) + fast_exp(np.float32(-2.0) * z))
    return x if not x < 0 else np.float32(0.0)   # NaN passes through, like np.maximum


@njit(inline="always", **JIT)
def _act_range(x, up, kind, out, lo, hi):
    """out[lo:hi] = act(x[lo:hi]) (* up[lo:hi] when up is non-empty). One loop per case, so
    each loop body is branch-free with unconditional loads and LLVM vectorises it (a kind
    test or a conditional load inside the loop does not)."""
    if up.shape[0] == 0:
        if kind == 0:
            for i in range(lo, hi):
                out[i] = _act(x[i], 0)
        elif kind == 1:
            for i in range(lo, hi):
                out[i] = _act(x[i], 1)
        elif kind == 2:
            for i in range(lo, hi):
                out[i] = _act(x[i], 2)
        else:
            for i in range(lo, hi):
                out[i] = _act(x[i], 3)
    elif kind == 0:
        for i in range(lo, hi):
            out[i] = _act(x[i], 0) * up[i]
    elif kind == 1:
        for i in range(lo, hi):
            out[i] = _act(x[i], 1) * up[i]
    elif kind == 2:
        for i in range(lo, hi):
            out[i] = _act(x[i], 2) * up[i]
    else:
        for i in range(lo, hi):
            out[i] = _act(x[i], 3) * up[i]


def _glu_flat(gate, up, kind, out):
    n = gate.shape[0]
    for c in prange((n + 4095) // 4096):
        _act_range(gate, up, kind, out, c * 4096, min(n, (c + 1) * 4096))


def _softcap_flat(x, cap, out):
    n = x.shape[0]
    nch = (n + 4095) // 4096
    for c in prange(nch):
        for i in range(c * 4096, min(n, (c + 1) * 4096)):
            out[i] = np.tanh(x[i] / cap) * cap


def _softmax_rows(x, out):
    for r in prange(x.shape[0]):
        xr, o = x[r], out[r]
        m = -np.inf
        nan = False
        for i in range(xr.shape[0]):
            m = max(m, xr[i])
            nan |= xr[i] != xr[i]
        if nan:                      # a NaN row is all NaN, as the reference's max() makes it
            m = np.nan
        s = np.float32(0.0)
        for i in range(xr.shape[0]):
            e = fast_exp(xr[i] - m)
            o[i] = e
            s += e
        for i in range(xr.shape[0]):
            o[i] /= s


_glu = jit_pair(_glu_flat)
_softcap = jit_pair(_softcap_flat)
_softmax = jit_pair(_softmax_rows)


def _flat(x: np.ndarray) -> np.ndarray:
    x = x if x.dtype == np.float32 and x.flags.c_contiguous else np.ascontiguousarray(x, dtype=np.float32)
    return x.reshape(-1)


def _kind(kind: str) -> int:
    k = _KINDS.get(kind)
    if k is None:
        raise ValueError(f"unknown activation {kind!r}; known: {', '.join(_KINDS)}")
    return k


def glu(gate: np.ndarray, up: np.ndarray, kind: str) -> np.ndarray:
    """act(gate) * up, elementwise, float32 (SwiGLU / GeGLU); gate and up have one shape."""
    if np.shape(gate) != np.shape(up):
        raise ValueError(f"glu: gate {np.shape(gate)} and up {np.shape(up)} differ")
    g, u = _flat(gate), _flat(up)
    out = np.empty_like(g)
    _glu[g.size >= PARALLEL_MIN](g, u, _kind(kind), out)
    return out.reshape(gate.shape)


def activation(x: np.ndarray, kind: str) -> np.ndarray:
    """Elementwise silu | gelu (erf) | gelu_tanh | relu, float32."""
    f = _flat(x)
    out = np.empty_like(f)
    _glu[f.size >= PARALLEL_MIN](f, _NONE, _kind(kind), out)   # ungated: empty `up`
    return out.reshape(x.shape)


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap), float32."""
    f = _flat(x)
    out = np.empty_like(f)
    _softcap[f.size >= PARALLEL_MIN](f, np.float32(cap), out)
    return out.reshape(x.shape)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32."""
    x2 = _flat(x).reshape(-1, x.shape[-1])
    out = np.empty_like(x2)
    _softmax[x2.size >= PARALLEL_MIN](x2, out)
    return out.reshape(x.shape)
