"""Activation quantization for the quantized row dots: per 32-block symmetric integers,
int16 (the default: error ~1e-5 of the block's max, negligible next to 4-8-bit weights)
or int8 (llama.cpp's Q8_1-like scheme, for exact parity with it).

One block of x becomes xq = rint(x / d) with d = max|x| / QMAX (QMAX 32767 or 127, from
xq's dtype), the scale xd = d and the scaled sum xs = d * sum(xq) (for zero points and
mins). int16 blocks are stored pairwise interleaved (`vector_ir.IL`: the order of a Q4 block
pair's nibbles, so one `vpmaddwd` per 32 weights lands each block in its own 8 lanes). A block holding NaN/Inf gets xd = xs = NaN, so every output of that token is NaN
(the reference gives NaN/Inf there too) instead of integer garbage.

Every kernel that quantizes activations (`linear.py`'s linears, `block.py`'s fused decode
step) calls `quant_row`, so a token's integers are the same whatever path it takes.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import overload
from numba.np.numpy_support import as_dtype

from edgeformer.backends.cpu.common import JIT

# activation setting -> integer dtype (None: float32 activations against dequantized weights)
DTYPES = {"int16": np.int16, "int8": np.int8, "f32": None}
DEFAULT = "int16"       # what "auto" means
SETTINGS = ("auto",) + tuple(DTYPES)


def resolve(setting: str | None) -> str:
    """"auto"/None -> DEFAULT; anything else must be a known setting (ValueError)."""
    s = DEFAULT if setting in (None, "auto") else setting
    if s not in DTYPES:
        raise ValueError(f"activations must be one of {', '.join(SETTINGS)}, got {setting!r}")
    return s


def _qmax(xq):
    raise NotImplementedError   # typed only inside Numba (see the overload)


@overload(_qmax)
def _qmax_impl(xq):
    m = np.float32(np.iinfo(as_dtype(xq.dtype)).max)
    return lambda xq: m


def _interleaved(xq):
    raise NotImplementedError


@overload(_interleaved)
def _interleaved_impl(xq):
    il = as_dtype(xq.dtype) == np.int16
    return lambda xq: il


@njit(**JIT)
def quant_row(v, xq, xd, xs):
    """v (K,) float32 -> xq (K,) int16/int8, xd and xs (K/32,) float32, in place."""
    qmax = _qmax(xq)
    nb = v.shape[0] // 32
    il = _interleaved(xq)
    for bk in range(nb):
        o = bk * 32
        # int16: a complete pair of blocks (2g, 2g+1) is stored interleaved (vector_ir.IL):
        # weight i of block h goes to 64 g + 32 (i // 16) + 16 h + i % 16
        pair = il and (bk | 1) < nb
        h = bk & 1
        base = o - 32 * h
        amax = np.float32(0.0)
        chk = np.float32(0.0)        # NaN iff a NaN or Inf is in the block (Inf * 0 = NaN)
        for i in range(32):
            amax = max(amax, abs(v[o + i]))
            chk += v[o + i] * np.float32(0.0)
        d = amax / qmax
        inv = qmax / amax if amax > 0 else np.float32(0.0)
        s = 0
        for i in range(32):
            qi = np.int32(np.rint(v[o + i] * inv)) if chk == 0 else 0
            if pair:
                xq[base + (i >> 4) * 32 + h * 16 + (i & 15)] = qi
            else:
                xq[o + i] = qi
            s += qi
        xd[bk] = d if chk == 0 else np.nan
        xs[bk] = d * np.float32(s) if chk == 0 else np.nan


@njit(**JIT)
def quantize_x(x, proto):
    """x (T, K) float32, K % 32 == 0 -> (xq (T, K) of proto's dtype, xd (T, K/32),
    xs (T, K/32)). Serial: ~1 ns/element, small next to the linear it feeds."""
    t_, k = x.shape
    xq = np.empty((t_, k), proto.dtype)
    xd = np.empty((t_, k // 32), np.float32)
    xs = np.empty((t_, k // 32), np.float32)
    for t in range(t_):
        quant_row(x[t], xq[t], xd[t], xs[t])
    return xq, xd, xs
