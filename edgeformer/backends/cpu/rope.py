"""rope: rotary position embedding, neox (pairs i, i + R/2) and interleaved (2i, 2i + 1).

cos/sin are computed once per (token, frequency) in float32 exactly as the reference does
(angle = float32(pos) * float32(inv_freq), then cos/sin, then * mscale), and shared by all
heads of the token. `cos_sin` and `rotate` are shared with the fused decode step
(`block.py` `_rope_heads`), and every function that runs them is compiled without
fast-math flags, so a token is rotated to the same bits on every path (no FMA contraction
that one call site makes and another does not)."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.common import EXACT, PARALLEL_MIN, jit_pair


@njit(inline="always", **EXACT)
def cos_sin(p, inv_freq, mscale, cs, sn):
    """cs[i], sn[i] = mscale * cos / sin(p * inv_freq[i]) for position p (float32)."""
    for i in range(inv_freq.shape[0]):
        a = p * inv_freq[i]
        cs[i] = np.cos(a) * mscale
        sn[i] = np.sin(a) * mscale


@njit(inline="always", **EXACT)
def rotate(xr, o, cs, sn, neox):
    """The first 2 * len(cs) dims of one head xr rotated into o (o may be xr): pairs
    (i, i + half) when neox, else (2i, 2i + 1). The rest of o is left alone."""
    half = cs.shape[0]
    if neox:
        for i in range(half):
            x1, x2 = xr[i], xr[i + half]
            o[i] = x1 * cs[i] - x2 * sn[i]
            o[i + half] = x2 * cs[i] + x1 * sn[i]
    else:
        for i in range(half):
            x1, x2 = xr[2 * i], xr[2 * i + 1]
            o[2 * i] = x1 * cs[i] - x2 * sn[i]
            o[2 * i + 1] = x2 * cs[i] + x1 * sn[i]


def _rope_rows(x, pos, inv_freq, neox, mscale, out):
    t_, h_, d_ = x.shape
    half = inv_freq.shape[0]
    for t in prange(t_):
        cs = np.empty(half, np.float32)
        sn = np.empty(half, np.float32)
        cos_sin(np.float32(pos[t]), inv_freq, mscale, cs, sn)
        for h in range(h_):
            xr, o = x[t, h], out[t, h]
            for i in range(2 * half, d_):
                o[i] = xr[i]
            rotate(xr, o, cs, sn, neox)


_rope_ser, _rope_par = jit_pair(_rope_rows, EXACT)


def rope(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, *,
         neox: bool = True, mscale: float = 1.0) -> np.ndarray:
    """x: (T, H, D) float32; positions: (T,) ints; inv_freq: (R/2,), R <= D. Returns a new
    (T, H, D) float32 array; same contract as `kernels.rope.rope_ref`."""
    if x.ndim != 3 or 2 * np.shape(inv_freq)[0] > x.shape[2] or np.shape(positions) != (x.shape[0],):
        raise ValueError(f"rope: x {x.shape}, positions {np.shape(positions)}, inv_freq "
                         f"{np.shape(inv_freq)}: need (T, H, D), (T,), (R/2,) with R <= D")
    if x.dtype != np.float32 or not x.flags.c_contiguous:
        x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(x)
    (_rope_par if x.size >= PARALLEL_MIN else _rope_ser)(x, np.ascontiguousarray(positions, dtype=np.int64),
          np.ascontiguousarray(inv_freq, dtype=np.float32), bool(neox), np.float32(mscale), out)
    return out
