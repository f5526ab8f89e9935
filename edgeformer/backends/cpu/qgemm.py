"""Prefill linear for quantized weights: dequantize a (RV panels x KC columns) block of the
weight into an L2-resident float32 panel buffer, then run `panel_gemm`'s register tile
over every token of the call.

Why: the int8 row dots (`matmul.py`) unpack each weight row once per 4 tokens and reach
~150-180 GFLOP/s per core in prefill; here each weight is dequantized once per call
(~1-2 ns, the reference dequantizer's exact float32 values) and then feeds T FMAs from
registers: ~210 GFLOP/s per core in float32 (Zen 5, T = 512).

Where the CPU has AVX512-BF16 the dequantized block is rounded to bfloat16 (k, k+1) pairs
and the activations too, and the tile runs vdpbf16ps (32 products per instruction, float32
sums): ~330-350 GFLOP/s per core. Error: each product is off by at most 2^-8 relative
(two roundings to 8-bit mantissas), so |y - y_exact| <= 2^-8 sum_k |x_k w_k|; measured
NMSE ~1e-6 against float64, under the int8 path's ~1e-5 (tests/backends/cpu/test_cpu_qgemm.py).

Batch invariance: a row's bits here differ from the int8 path's, so `linear` takes this
path only from `MIN_T` rows up, and the runtime's row-invariant linear (runtime/batch.py)
hands the cpu backend at most MIN_T - 1 rows per call.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.common import JIT
from edgeformer.backends.cpu.panel_gemm import (KC, P, TT, _make_tile, _panels_per_tile, _tile, has_bf16_dot,
                                                target_constant)
from edgeformer.backends.cpu.simd import f16_to_f32

MIN_T = 64      # rows from which `linear` dequantizes to panels instead of int8 row dots
_TILE_BF16PAIR = _make_tile("bf16pair")


_bf16_dot = target_constant(has_bf16_dot)     # 1 where the target has vdpbf16ps


@njit(**JIT)
def _bf16_path():
    return _bf16_dot()


def uses_bf16() -> bool:
    """Whether `linear_dequant` runs bfloat16 products on this host (AVX512-BF16)."""
    return bool(_bf16_path())


@njit(inline="always", **JIT)
def _rne(u):
    """float32 bits -> bfloat16 bits, round to nearest even (a NaN stays a quiet NaN)."""
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return (u >> 16) | 0x40
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


@njit(parallel=True, **JIT)
def _x_pairs(x):
    """(T, K) float32 -> (T, K/2) uint32 of bfloat16 pairs (k even in the low half)."""
    xu = x.view(np.uint32)
    out = np.empty((x.shape[0], x.shape[1] // 2), np.uint32)
    for t in prange(x.shape[0]):
        for j in range(x.shape[1] // 2):
            out[t, j] = np.uint32(_rne(xu[t, 2 * j]) | (_rne(xu[t, 2 * j + 1]) << 16))
    return out


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


@njit(**JIT)
def _to_pair_panels(tmp, nk, panels):
    """(rv * 16, nk) float32 rows -> (rv, nk / 2, 16, 2) bfloat16 bits: lane l of step j
    holds columns 2j, 2j + 1 of row l."""
    tu = tmp.view(np.uint32)
    for v in range(panels.shape[0]):
        for j in range(nk // 2):
            for l in range(P):
                panels[v, j, l, 0] = _rne(tu[v * P + l, 2 * j])
                panels[v, j, l, 1] = _rne(tu[v * P + l, 2 * j + 1])


@njit(parallel=True, **JIT)
def linear_dequant(slot, n, x, bias, out):
    """out (T, n) = x (T, K) @ W.T (+ bias) for a quantized weight `slot` (block.slot)."""
    t_, k = x.shape
    rv = _panels_per_tile()
    rows = rv * P
    n_groups = (n + rows - 1) // rows
    bf = _bf16_dot()
    xb = _x_pairs(x) if bf else np.empty((0, 0), np.uint32)
    for g in prange(n_groups):
        tmp = np.empty((rows, KC), np.float32)
        panels = np.empty((rv, KC, P), np.float32)
        pairs = np.empty((rv, KC // 2, P, 2), np.uint16)
        r0 = g * rows
        nrv = min(rv, (n - r0 + P - 1) // P)
        direct = r0 + nrv * P <= n                    # every panel full: store into out
        y = out if direct else np.empty((t_, rows), np.float32)
        y0, ys = (r0, n) if direct else (0, rows)
        for k0 in range(0, k, KC):
            nk = min(KC, k - k0)
            _dequant(slot, r0, k0, nk, n, tmp)
            if bf:        # bfloat16 weights and activations, float32 sums (vdpbf16ps)
                _to_pair_panels(tmp, nk, pairs)
                for ts in range(0, t_, TT):
                    _TILE_BF16PAIR(pairs, 0, KC * P, nrv, nk // 2, xb, (ts * k + k0) // 2, k // 2, min(TT, t_ - ts),
                                   y, ts * ys + y0, ys, k0 == 0)
            else:
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
