"""Linear for quantized weights with float32 activations (the cpu backend's "f32"
activation setting, `act_quant.py`): dequantize a (RV panels x KC columns) block of the
weight into an L2-resident float32 panel buffer (the reference dequantizer's exact
float32 values, ~1-2 ns per weight), then run `panel_gemm`'s register tile over every
token of the call (~210 GFLOP/s per core at T = 512, Zen 5).

`linear.linear` takes it for every T, so each output is one fixed-order float32 FMA chain
over exact weights (row-invariant, the most exact setting). Decode dequantizes the whole
weight per call: the slowest setting for T = 1. One kernel per qtype (`dequant_kernel`),
generated from `_linear_dequant` and the qtype's `dequant_*` (`kinds.py`'s table).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.common import JIT, specialise
from edgeformer.backends.cpu.panel_gemm import KC, P, TT, panels_per_tile, tile
from edgeformer.backends.cpu.simd import f16_to_f32

# Template globals, bound per qtype by `specialise`.
ZERO, MINS, HIGH = 0, False, False
DEQUANT = None


@njit(**JIT)
def dequant_q8_0(a, b, c, d, e, f, r, k0, nk, out):
    """out[:nk] = row r of a Q8_0 weight (slot fields, `kinds.slot`), columns k0..k0+nk, as
    float32: d * q. k0 and nk are multiples of the qtype's block (256 for K-quants); so for
    every `dequant_*`."""
    for bl in range(nk // 32):
        o = k0 + 32 * bl
        s = f16_to_f32(e[r, o // 32])
        for j in range(32):
            q = np.int32(a[r, o + j])
            out[32 * bl + j] = s * np.float32(q - 256 if q >= 128 else q)


def _dequant_nibbles(a, b, c, d, e, f, r, k0, nk, out):
    """Q4_0 / Q4_1 / Q5_0 / Q5_1 (ZERO, MINS, HIGH bound per qtype): d * (q - ZERO), or
    d * q + m with MINS; HIGH ORs in the 5th bit (bit j / j+16 of the block's LE u32 qh)."""
    for bl in range(nk // 32):
        ob = (k0 + 32 * bl) // 32
        s = f16_to_f32(e[r, ob])
        m = f16_to_f32(f[r, ob]) if MINS else np.float32(0.0)
        for j in range(16):
            byte = np.int32(a[r, 16 * ob + j])
            lo, hi = byte & 15, byte >> 4
            if HIGH:
                lo |= ((np.int32(b[r, 4 * ob + j // 8]) >> (j % 8)) & 1) << 4
                hi |= ((np.int32(b[r, 4 * ob + 2 + j // 8]) >> (j % 8)) & 1) << 4
            if MINS:
                out[32 * bl + j] = s * np.float32(lo) + m
                out[32 * bl + j + 16] = s * np.float32(hi) + m
            else:
                out[32 * bl + j] = s * np.float32(lo - ZERO)
                out[32 * bl + j + 16] = s * np.float32(hi - ZERO)


dequant_q4_0 = specialise(_dequant_nibbles, "dequant_q4_0", JIT, ZERO=8, MINS=False, HIGH=False)
dequant_q4_1 = specialise(_dequant_nibbles, "dequant_q4_1", JIT, ZERO=0, MINS=True, HIGH=False)
dequant_q5_0 = specialise(_dequant_nibbles, "dequant_q5_0", JIT, ZERO=16, MINS=False, HIGH=True)
dequant_q5_1 = specialise(_dequant_nibbles, "dequant_q5_1", JIT, ZERO=0, MINS=True, HIGH=True)


def _dequant_k(a, b, c, d, e, f, r, k0, nk, out):
    """Q4_K / Q5_K (HIGH: Q5_K's 5th bit from qh): d*sc*q - dmin*mn per 32-weight sub-block."""
    for sb in range(nk // 256):
        js = (k0 + 256 * sb) // 256
        dd, dm = f16_to_f32(e[r, js]), f16_to_f32(f[r, js])
        for ch in range(4):
            for h in range(2):
                g = 2 * ch + h
                ds = dd * np.float32(c[r, 8 * js + g])
                ms = dm * np.float32(d[r, 8 * js + g])
                for l in range(32):
                    q = (np.int32(a[r, 128 * js + 32 * ch + l]) >> (4 * h)) & 15
                    if HIGH:
                        q |= ((np.int32(b[r, 32 * js + l]) >> g) & 1) << 4
                    out[256 * sb + 32 * g + l] = ds * np.float32(q) - ms


dequant_q4_k = specialise(_dequant_k, "dequant_q4_k", JIT, HIGH=False)
dequant_q5_k = specialise(_dequant_k, "dequant_q5_k", JIT, HIGH=True)


@njit(**JIT)
def dequant_q6_k(a, b, c, d, e, f, r, k0, nk, out):
    """Q6_K: d * sc * (q6 - 32)."""
    for sb in range(nk // 256):
        js = (k0 + 256 * sb) // 256
        dd = f16_to_f32(e[r, js])
        for h in range(2):
            for mq in range(4):
                for l in range(32):
                    lb = np.int32(a[r, 128 * js + 64 * h + 32 * (mq & 1) + l])
                    lo = (lb >> 4) if mq >= 2 else (lb & 15)
                    hb = (np.int32(b[r, 64 * js + 32 * h + l]) >> (2 * mq)) & 3
                    sc = np.int32(c[r, 16 * js + 8 * h + 2 * mq + l // 16])
                    sc = sc - 256 if sc >= 128 else sc
                    out[256 * sb + 128 * h + 32 * mq + l] = (dd * np.float32(sc)) * np.float32((lo | (hb << 4)) - 32)


@njit(**JIT)
def _to_panels(tmp, nk, panels):
    """(rv * 16, nk) rows -> (rv, nk, 16) panels."""
    for v in range(panels.shape[0]):
        for kk in range(nk):
            for l in range(P):
                panels[v, kk, l] = tmp[v * P + l, kk]


def _linear_dequant(x, a, b, c, d, e, f, bias, out):
    """out (T, N) = x (T, K) @ W.T (+ bias) for a quantized weight W given as its slot fields
    (`kinds.slot`), dequantized by DEQUANT (bound per qtype)."""
    t_, k = x.shape
    n = a.shape[0]
    rv = panels_per_tile()
    rows = rv * P
    n_groups = (n + rows - 1) // rows
    for g in prange(n_groups):
        tmp = np.empty((rows, KC), np.float32)
        panels = np.empty((rv, KC, P), np.float32)
        r0 = g * rows
        nrv = min(rv, (n - r0 + P - 1) // P)
        direct = r0 + nrv * P <= n                    # every panel full: store into out
        y = out if direct else np.empty((t_, rows), np.float32)
        y0, ys = (r0, n) if direct else (0, rows)
        for k0 in range(0, k, KC):
            nk = min(KC, k - k0)
            for i in range(rows):                     # rows >= n are 0
                if r0 + i < n:
                    DEQUANT(a, b, c, d, e, f, r0 + i, k0, nk, tmp[i])
                else:
                    tmp[i, :nk] = 0.0
            _to_panels(tmp, nk, panels)
            for ts in range(0, t_, TT):
                tile(0, panels, 0, KC * P, nrv, nk, x, ts * k + k0, k, min(TT, t_ - ts), y, ts * ys + y0, ys,
                     k0 == 0)
        if not direct:                                # a last group with a partial panel
            for t in range(t_):
                for j in range(n - r0):
                    out[t, r0 + j] = y[t, j]
    if bias.shape[0]:
        for t in prange(t_):
            for j in range(n):
                out[t, j] += bias[j]


def dequant_kernel(name: str, dequant) -> Callable[..., None]:
    """The "f32"-activation linear kernel `name` for a qtype whose `dequant_*` is `dequant`:
    kernel(x (T, K), a, b, c, d, e, f, bias, out (T, N))."""
    return specialise(_linear_dequant, name, dict(parallel=True, **JIT), DEQUANT=dequant)
