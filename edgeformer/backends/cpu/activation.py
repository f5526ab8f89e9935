"""activation, glu (gated activation), softcap and softmax, float32, same semantics as
`kernels/activation.py`. exp is `simd.fast_exp` (vectorises; libm expf does not). The
activation kind is resolved to a small int in Python so each kernel compiles once."""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.common import EXACT, JIT, PARALLEL_MIN, jit_pair
from edgeformer.backends.cpu.simd import fast_exp

ACTIVATION_IDS = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}
_SQRT_2_OVER_PI = np.float32(math.sqrt(2.0 / math.pi))
_INV_SQRT2 = np.float32(1.0 / math.sqrt(2.0))


@njit(inline="always", **JIT)
def _erfc(z):
    """erfc(z) in float32 arithmetic that vectorises (libm's erfc is a scalar float64 call:
    16 ns per element, most of a ViT's gelu). Numerical Recipes' Chebyshev fit `erfcc`
    (fractional error < 1.2e-7 for every z) with `fast_exp`; erfc(-z) = 2 - erfc(z)."""
    a = abs(z)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.5) * a)
    p = np.float32(0.17087277)
    p = p * t + np.float32(-0.82215223)
    p = p * t + np.float32(1.48851587)
    p = p * t + np.float32(-1.13520398)
    p = p * t + np.float32(0.27886807)
    p = p * t + np.float32(-0.18628806)
    p = p * t + np.float32(0.09678418)
    p = p * t + np.float32(0.37409196)
    p = p * t + np.float32(1.00002368)
    p = p * t + np.float32(-1.26551223)
    r = t * fast_exp(p - a * a)
    return r if not z < 0 else np.float32(2.0) - r


@njit(inline="always", **JIT)
def _act(x, kind):
    if kind == 0:
        return x / (np.float32(1.0) + fast_exp(-x))
    if kind == 1:   # exact (erf) gelu in the reference's cancellation-free erfc form
        return np.float32(0.5) * x * _erfc(-x * _INV_SQRT2)
    if kind == 2:   # 0.5 (1 + tanh z) == 1 / (1 + exp(-2z)), the reference's cancellation-free form
        z = _SQRT_2_OVER_PI * (x + np.float32(0.044715) * x * x * x)
        return x / (np.float32(1.0) + fast_exp(np.float32(-2.0) * z))
    return x if not x < 0 else np.float32(0.0)   # NaN passes through, like np.maximum


@njit(**EXACT)
def glu_row(src, go, usrc, uo, f, kind, out):
    """out[j] = act(src[go + j]) * usrc[uo + j], j < f: one row of glu. The op path and the
    fused decode step (`block.py`) both call it, compiled without fast-math flags, so a
    token's bits do not depend on the path (LLVM must round as written wherever it is
    inlined). One branch-free loop per kind, as `_glu_rows`; indices from 0 over views (an
    offset index made LLVM gather: 3x slower)."""
    g, u = src[go:go + f], usrc[uo:uo + f]
    if kind == 0:
        for j in range(f):
            out[j] = _act(g[j], 0) * u[j]
    elif kind == 1:
        for j in range(f):
            out[j] = _act(g[j], 1) * u[j]
    elif kind == 2:
        for j in range(f):
            out[j] = _act(g[j], 2) * u[j]
    else:
        for j in range(f):
            out[j] = _act(g[j], 3) * u[j]


# One loop per activation kind with a branch-free body, so LLVM vectorises it (one loop
# holding a kind test or an "is there an up?" test measured 7x slower: 1.45 vs 0.2 ns per
# element). `src` / `usrc` are C-contiguous (rows, width) arrays holding gate at column
# `go` / up at column `uo` of each row (uo < 0: no up); both may be the joined gate|up
# projection, which is then read in place instead of being copied into two halves.
def _glu_rows(src, go, usrc, uo, f, kind, out):
    for r in prange(out.shape[0]):
        if uo >= 0:                  # glu: the exact row the fused decode step also runs
            glu_row(src[r], go, usrc[r], uo, f, kind, out[r])
        elif kind == 0:
            for j in range(f):
                out[r, j] = _act(src[r, go + j], 0)
        elif kind == 1:
            for j in range(f):
                out[r, j] = _act(src[r, go + j], 1)
        elif kind == 2:
            for j in range(f):
                out[r, j] = _act(src[r, go + j], 2)
        else:
            for j in range(f):
                out[r, j] = _act(src[r, go + j], 3)


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


_glu = jit_pair(_glu_rows)
_softcap = jit_pair(_softcap_flat)
_softmax = jit_pair(_softmax_rows)


def _flat(x: np.ndarray) -> np.ndarray:
    x = x if x.dtype == np.float32 and x.flags.c_contiguous else np.ascontiguousarray(x, dtype=np.float32)
    return x.reshape(-1)


def _kind(kind: str) -> int:
    k = ACTIVATION_IDS.get(kind)
    if k is None:
        raise ValueError(f"unknown activation {kind!r}; known: {', '.join(ACTIVATION_IDS)}")
    return k


def _rows_source(gate: np.ndarray, up: np.ndarray | None) -> tuple[np.ndarray, int, np.ndarray, int]:
    """(gate source, gate column, up source, up column) for `_glu_rows`: C-contiguous 2-D
    float32 arrays, one view of both operands when they are column ranges of one array
    (the joined gate|up output), else each operand (copied only if not contiguous)."""
    f = gate.shape[-1]
    if up is None:
        g = _flat(gate).reshape(-1, f)
        return g, 0, g, -1
    g2, u2 = gate.reshape(-1, f), up.reshape(-1, f)
    if (not g2.flags.c_contiguous and g2.dtype == u2.dtype == np.float32 and g2.strides == u2.strides
            and g2.strides[1] == 4 and (u2.ctypes.data - g2.ctypes.data) % 4 == 0):
        d = (u2.ctypes.data - g2.ctypes.data) // 4
        first = g2 if d >= 0 else u2
        if g2.strides[0] // 4 >= abs(d) + f:
            src = np.lib.stride_tricks.as_strided(first, shape=(g2.shape[0], abs(d) + f), strides=g2.strides)
            if src.flags.c_contiguous:
                return src, max(0, -d), src, max(0, d)
    return _flat(gate).reshape(-1, f), 0, _flat(up).reshape(-1, f), 0


def glu(gate: np.ndarray, up: np.ndarray, kind: str) -> np.ndarray:
    """act(gate) * up, elementwise, float32 (SwiGLU / GeGLU); gate and up have one shape."""
    if np.shape(gate) != np.shape(up):
        raise ValueError(f"glu: gate {np.shape(gate)} and up {np.shape(up)} differ")
    k = _kind(kind)
    if gate.size == 0:
        return np.empty(np.shape(gate), np.float32)
    src, go, usrc, uo = _rows_source(gate, up)
    out = np.empty((src.shape[0], gate.shape[-1]), np.float32)
    _glu[gate.size >= PARALLEL_MIN](src, go, usrc, uo, gate.shape[-1], k, out)
    return out.reshape(gate.shape)


def activation(x: np.ndarray, kind: str) -> np.ndarray:
    """Elementwise silu | gelu (erf) | gelu_tanh | relu, float32."""
    k = _kind(kind)
    if x.size == 0:
        return np.empty(np.shape(x), np.float32)
    f = x.shape[-1] if x.ndim else 1
    src, go, usrc, uo = _rows_source(np.reshape(x, (-1, f)), None)
    out = np.empty_like(src)
    _glu[x.size >= PARALLEL_MIN](src, go, usrc, uo, f, k, out)
    return out.reshape(np.shape(x))


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
