"""Activation quantization for the quantized row dots: per 32-block symmetric integers,
int16 (the default: error ~1e-5 of the block's max, negligible next to 4-8-bit weights)
or int8 (llama.cpp's Q8_1-like scheme, for exact parity with it).

One block of x becomes xq = rint(x / d) with d = max|x| / QMAX (QMAX 32767 or 127, from
xq's dtype), the scale xd = d and the scaled sum xs = d * sum(xq) (for zero points and
mins). int16 blocks are stored pairwise interleaved (`vector_ir.IL`: the order of a Q4 block
pair's nibbles, so one `vpmaddwd` per 32 weights lands each block in its own 8 lanes);
for the kinds with a lane layout (Q8_0/Q4_0/Q4_1, `simd_rows._lanes`) whole groups of 16
blocks are stored one block per lane instead (`lane_pos`; `quantize_lanes`, or
`to_lanes` on a row `quant_row` made: int16 at the setting's levels). A block holding
NaN/Inf gets xd = xs = NaN, so every output of that token is NaN (the reference gives
NaN/Inf there too) instead of integer garbage.

Every kernel that quantizes activations (`linear.py`'s linears, `block.py`'s fused decode
step) goes through `quant_into`, so a token's integers are the same whatever path it takes.
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


@njit(inline="always")
def lane_pos(b, i, nb, lanes, il):
    """Where element i of 32-block b of a row of nb blocks is stored: in the lane layout
    (`lanes`, `simd_rows._lanes`) inside a whole group of 16 blocks at [p, h, j, e] for
    element 16 h + 2 p + e of the group's block j; else in a complete pair of blocks
    interleaved (`il`, `vector_ir.IL`: weight i of block h of pair g at 64 g + 32 (i // 16)
    + 16 h + i % 16); else in natural order."""
    if lanes and b < nb >> 4 << 4:
        return (b >> 4) * 512 + ((i & 15) >> 1) * 64 + (i >> 4) * 32 + (b & 15) * 2 + (i & 1)
    if il and (b | 1) < nb:
        return (b & ~1) * 32 + (i >> 4) * 32 + (b & 1) * 16 + (i & 15)
    return b * 32 + i


@njit(**JIT)
def positions(k, lanes, il):
    """lane_pos of every element of a row of k values, in natural order."""
    nb = k // 32
    out = np.empty(k, np.int32)
    for b in range(nb):
        for i in range(32):
            out[b * 32 + i] = lane_pos(b, i, nb, lanes, il)
    return out


@njit(**JIT)
def quant_row(v, xq, xd, xs):
    """v (K,) float32 -> xq (K,) int16 (interleaved pairs) or int8 (natural order),
    xd and xs (K/32,) float32, in place."""
    quant_into(v, xq, xd, xs, _qmax(xq), positions(v.shape[0], False, _interleaved(xq)))


@njit(**JIT)
def quant_into(v, xq, xd, xs, qmax, pos):
    """`quant_row` to qmax levels, element i stored at xq[pos[i]] (`positions`)."""
    nb = v.shape[0] // 32
    q = np.empty(32, np.int32)
    bits = v.view(np.uint32)
    top = np.empty(1, np.uint32)
    for bk in range(nb):
        o = bk * 32
        # max |v| as bits (an integer max vectorises; a float max does not, for NaN's
        # sake): at or above the Inf pattern iff the block holds a NaN or an Inf
        m = np.uint32(0)
        for i in range(32):
            m = max(m, bits[o + i] & np.uint32(0x7FFFFFFF))
        top[0] = m
        amax = top.view(np.float32)[0]
        ok = m < np.uint32(0x7F800000)
        d = amax / qmax
        inv = qmax / amax if amax > 0 else np.float32(0.0)
        s = 0
        for i in range(32):          # rounded apart from the scattered stores: vectorises
            q[i] = np.int32(np.rint(v[o + i] * inv)) if ok else 0
            s += q[i]
        for i in range(32):
            xq[pos[o + i]] = q[i]
        xd[bk] = d if ok else np.nan
        xs[bk] = d * np.float32(s) if ok else np.nan


@njit(**JIT)
def to_lanes(xq):
    """A row quantized by `quant_row` (int16 interleaved or int8 natural) -> the same
    integers as int16 in the lane layout (what `quant_into(..., lanes=True)` writes)."""
    nb = xq.shape[0] // 32
    il = _interleaved(xq)
    out = np.empty(xq.shape[0], np.int16)
    for b in range(nb):
        for i in range(32):
            out[lane_pos(b, i, nb, True, True)] = xq[lane_pos(b, i, nb, False, il)]
    return out


@njit(**JIT)
def quantize_x(x, proto):
    """x (T, K) float32, K % 32 == 0 -> (xq (T, K) of proto's dtype, xd (T, K/32),
    xs (T, K/32)). Serial: ~1 ns/element, small next to the linear it feeds."""
    return _quantize(x, np.empty((x.shape[0], x.shape[1]), proto.dtype), _qmax(proto), False)


@njit(**JIT)
def quantize_lanes(x, proto):
    """`quantize_x` at proto's levels into int16 in the lane layout (`lane_pos`)."""
    return _quantize(x, _aligned(x.shape[0], x.shape[1]), _qmax(proto), True)


@njit(**JIT)
def _aligned(t, k):
    """An empty (t, k) int16 array whose rows start on 64-byte lines when k * 2 is a
    multiple of 64 (the lane row dots' 64-byte loads then never split a line)."""
    buf = np.empty(t * k + 32, np.int16)
    off = (64 - buf.ctypes.data % 64) % 64 // 2
    return buf[off:off + t * k].reshape((t, k))


@njit(**JIT)
def _quantize(x, xq, qmax, lanes):
    t_, nb = x.shape[0], x.shape[1] // 32
    xd = np.empty((t_, nb), np.float32)
    xs = np.empty((t_, nb), np.float32)
    pos = positions(x.shape[1], lanes, _interleaved(xq))
    for t in range(t_):
        quant_into(x[t], xq[t], xd[t], xs[t], qmax, pos)
    return xq, xd, xs
