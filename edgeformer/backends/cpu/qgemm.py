"""Linear for quantized weights with float32 activations (the cpu backend's "f32"
activation setting, `act_quant.py`): dequantize a (RV panels x KC columns) block of the
weight into an L2-resident float32 panel buffer (the reference dequantizer's exact
float32 values, ~1-2 ns per weight), then run `panel_gemm`'s register tile over every
token of the call (~210 GFLOP/s per core at T = 512, Zen 5).

`matmul.linear` takes it for every T, so each output is one fixed-order float32 FMA chain
over exact weights (row-invariant, the most exact setting). Decode dequantizes the whole
weight per call: the slowest setting for T = 1.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.common import JIT
from edgeformer.backends.cpu.panel_gemm import KC, P, TT, _panels_per_tile, _tile
from edgeformer.backends.cpu.simd import f16_to_f32

@njit(**JIT)
def _dequant(slot, r0, k0, nk, n, tmp):
    """tmp[i, :nk] = weight row r0 + i, columns k0..k0+nk, as float32 (rows >= n are 0).
    k0 and nk are multiples of the qtype's block (256 for K-quants)."""
    kind, a, b, c, d, e, f = slot
    for i in range(tmp.shape[0]):
        r = r0 + i
        if r >= n:
            tmp[i, :nk] = 0.0
            continue
        if kind == 0:                                    # Q8_0: d * q
            for bl in range(nk // 32):
                o = k0 + 32 * bl
                s = f16_to_f32(e[r, o // 32])
                for j in range(32):
                    q = np.int32(a[r, o + j])
                    tmp[i, 32 * bl + j] = s * np.float32(q - 256 if q >= 128 else q)
        elif kind == 1 or kind == 2 or kind == 6 or kind == 7:   # Q4_0 Q4_1 Q5_0 Q5_1
            for bl in range(nk // 32):
                ob = (k0 + 32 * bl) // 32
                s = f16_to_f32(e[r, ob])
                m = f16_to_f32(f[r, ob]) if kind == 2 or kind == 7 else np.float32(0.0)
                for j in range(16):
                    byte = np.int32(a[r, 16 * ob + j])
                    lo, hi = byte & 15, byte >> 4
                    if kind >= 6:                        # 5th bit: bit j / j+16 of the LE u32 qh
                        lo |= ((np.int32(b[r, 4 * ob + j // 8]) >> (j % 8)) & 1) << 4
                        hi |= ((np.int32(b[r, 4 * ob + 2 + j // 8]) >> (j % 8)) & 1) << 4
                    if kind == 1 or kind == 6:           # zero point 8 / 16
                        z = 8 if kind == 1 else 16
                        tmp[i, 32 * bl + j] = s * np.float32(lo - z)
                        tmp[i, 32 * bl + j + 16] = s * np.float32(hi - z)
                    else:
                        tmp[i, 32 * bl + j] = s * np.float32(lo) + m
                        tmp[i, 32 * bl + j + 16] = s * np.float32(hi) + m
        elif kind == 3 or kind == 4:                     # Q4_K / Q5_K: d*sc*q - dmin*mn
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
                            if kind == 4:
                                q |= ((np.int32(b[r, 32 * js + l]) >> g) & 1) << 4
                            tmp[i, 256 * sb + 32 * g + l] = ds * np.float32(q) - ms
        else:                                            # Q6_K: d * sc * (q6 - 32)
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
                            tmp[i, 256 * sb + 128 * h + 32 * mq + l] = (dd * np.float32(sc)) * np.float32((lo | (hb << 4)) - 32)


@njit(**JIT)
def _to_panels(tmp, nk, panels):
    """(rv * 16, nk) rows -> (rv, nk, 16) panels."""
    for v in range(panels.shape[0]):
        for kk in range(nk):
            for l in range(P):
                panels[v, kk, l] = tmp[v * P + l, kk]


@njit(parallel=True, **JIT)
def linear_dequant(slot, n, x, bias, out):
    """out (T, n) = x (T, K) @ W.T (+ bias) for a quantized weight `slot` (block.slot)."""
    t_, k = x.shape
    rv = _panels_per_tile()
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
            _dequant(slot, r0, k0, nk, n, tmp)
            _to_panels(tmp, nk, panels)
            for ts in range(0, t_, TT):
                _tile(0, panels, 0, KC * P, nrv, nk, x, ts * k + k0, k, min(TT, t_ - ts), y, ts * ys + y0, ys,
                      k0 == 0)
        if not direct:                                # a last group with a partial panel
            for t in range(t_):
                for j in range(n - r0):
                    out[t, r0 + j] = y[t, j]
    if bias.shape[0]:
        for t in prange(t_):
            for j in range(n):
                out[t, j] += bias[j]
