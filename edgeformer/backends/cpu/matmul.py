"""linear (y = x @ W.T + b) for packed weights: one Numba kernel per qtype, any T.

Quantized weights use llama.cpp's scheme: activations are quantized on the fly to int8 per
32-block (Q8_1-like: scale `xd` and scaled block sum `xs`); per row, a short vectorised
loop folds weight and activation scales into one float per block (mins/offsets into one
scalar), and a `simd.rowdot_*` kernel does the integer block dots with a vector
accumulator. Measured error vs the float reference:
NMSE ~3e-5 from the activation rounding (bound: 5e-4). Float weights (F32/F16/BF16) keep
float32 activations. Every kernel parallelises over output rows (`prange`, static split),
and for T > 1 sweeps all tokens while a weight row is hot in L1.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.common import JIT as _JIT
from edgeformer.backends.cpu.repack import PackedWeight
from edgeformer.backends.cpu.simd import (bf16_to_f32, f16_to_f32, rowdot_q4_0, rowdot_q4_k, rowdot_q5_k,
                                          rowdot_q6_k, rowdot_q8_0)
from edgeformer.quant.qtypes import QType


@njit(**_JIT)
def quantize_x(x):
    """x (T, K) float32, K % 32 == 0 -> (xq int8 (T, K), xd (T, K/32), xs = xd * sum(xq)).
    A block holding NaN/Inf gets xd = xs = NaN, so every output of that token is NaN (the
    reference gives NaN/Inf there too) instead of int8 garbage."""
    t_, k = x.shape
    nb = k // 32
    xq = np.empty((t_, k), np.int8)
    xd = np.empty((t_, nb), np.float32)
    xs = np.empty((t_, nb), np.float32)
    for t in range(t_):      # serial: ~1 ns/element, small next to the matmul it feeds
        for b in range(nb):
            o = b * 32
            amax = np.float32(0.0)
            chk = np.float32(0.0)        # NaN iff a NaN or Inf is in the block (Inf * 0 = NaN)
            for i in range(32):
                amax = max(amax, abs(x[t, o + i]))
                chk += x[t, o + i] * np.float32(0.0)
            d = amax / np.float32(127.0)
            inv = np.float32(127.0) / amax if amax > 0 else np.float32(0.0)
            s = 0
            for i in range(32):
                qi = np.int32(np.rint(x[t, o + i] * inv)) if chk == 0 else 0
                xq[t, o + i] = qi
                s += qi
            xd[t, b] = d if chk == 0 else np.nan
            xs[t, b] = d * np.float32(s) if chk == 0 else np.nan
    return xq, xd, xs


# Rows per prange task: the per-block scale scratch `s` is allocated once per task.
CH = 16


@njit(parallel=True, **_JIT)
def _linear_q8_0(x, qs, d, bias, out):
    xq, xd, _ = quantize_x(x)
    n, nb = d.shape
    for c in prange((n + CH - 1) // CH):
        s = np.empty(nb, np.float32)
        for r in range(c * CH, min(n, (c + 1) * CH)):
            wd = d[r]
            b0 = bias[r] if bias.shape[0] else np.float32(0.0)
            for t in range(x.shape[0]):
                xdt = xd[t]
                for b in range(nb):
                    s[b] = f16_to_f32(wd[b]) * xdt[b]
                out[t, r] = rowdot_q8_0(qs[r], xq[t], s) + b0


@njit(parallel=True, **_JIT)
def _linear_q4_0(x, qs, d, bias, out):
    xq, xd, xs = quantize_x(x)
    n, nb = d.shape
    for c in prange((n + CH - 1) // CH):
        s = np.empty(nb, np.float32)
        for r in range(c * CH, min(n, (c + 1) * CH)):
            wd = d[r]
            b0 = bias[r] if bias.shape[0] else np.float32(0.0)
            for t in range(x.shape[0]):
                xdt, xst = xd[t], xs[t]
                zp = np.float32(0.0)            # sum((q - 8) x) = sum(q x) - 8 sum(x)
                for b in range(nb):
                    s[b] = f16_to_f32(wd[b]) * xdt[b]
                    zp += f16_to_f32(wd[b]) * xst[b]
                out[t, r] = rowdot_q4_0(qs[r], xq[t], s) - np.float32(8.0) * zp + b0


@njit(parallel=True, **_JIT)
def _linear_q4_1(x, qs, d, m, bias, out):
    xq, xd, xs = quantize_x(x)
    n, nb = d.shape
    for c in prange((n + CH - 1) // CH):
        s = np.empty(nb, np.float32)
        for r in range(c * CH, min(n, (c + 1) * CH)):
            wd, wm = d[r], m[r]
            b0 = bias[r] if bias.shape[0] else np.float32(0.0)
            for t in range(x.shape[0]):
                xdt, xst = xd[t], xs[t]
                mins = np.float32(0.0)          # sum_b m_b * sum(x_b)
                for b in range(nb):
                    s[b] = f16_to_f32(wd[b]) * xdt[b]
                    mins += f16_to_f32(wm[b]) * xst[b]
                out[t, r] = rowdot_q4_0(qs[r], xq[t], s) + mins + b0


@njit(parallel=True, **_JIT)
def _linear_q4_k(x, qs, sc, mn, d, dmin, bias, out):
    xq, xd, xs = quantize_x(x)
    for r in prange(qs.shape[0]):
        b0 = bias[r] if bias.shape[0] else np.float32(0.0)
        for t in range(x.shape[0]):
            out[t, r] = rowdot_q4_k(qs[r], sc[r], mn[r], d[r], dmin[r], xq[t], xd[t], xs[t]) + b0


@njit(parallel=True, **_JIT)
def _linear_q5_k(x, qs, qh, sc, mn, d, dmin, bias, out):
    xq, xd, xs = quantize_x(x)
    for r in prange(qs.shape[0]):
        b0 = bias[r] if bias.shape[0] else np.float32(0.0)
        for t in range(x.shape[0]):
            out[t, r] = rowdot_q5_k(qs[r], qh[r], sc[r], mn[r], d[r], dmin[r], xq[t], xd[t], xs[t]) + b0


@njit(parallel=True, **_JIT)
def _linear_q6_k(x, ql, qh, sc, d, bias, out):
    xq, xd, _ = quantize_x(x)
    for r in prange(ql.shape[0]):
        b0 = bias[r] if bias.shape[0] else np.float32(0.0)
        for t in range(x.shape[0]):
            out[t, r] = rowdot_q6_k(ql[r], qh[r], sc[r], d[r], xq[t], xd[t]) + b0


@njit(parallel=True, **_JIT)
def _linear_f32(x, w, bias, out):
    for r in prange(w.shape[0]):
        wr = w[r]
        b0 = bias[r] if bias.shape[0] else np.float32(0.0)
        for t in range(x.shape[0]):
            xt = x[t]
            acc = np.float32(0.0)
            for i in range(wr.shape[0]):
                acc += wr[i] * xt[i]
            out[t, r] = acc + b0


@njit(parallel=True, **_JIT)
def _linear_f16(x, w, bias, out):
    for r in prange(w.shape[0]):
        wr = w[r]
        b0 = bias[r] if bias.shape[0] else np.float32(0.0)
        for t in range(x.shape[0]):
            xt = x[t]
            acc = np.float32(0.0)
            for i in range(wr.shape[0]):
                acc += f16_to_f32(wr[i]) * xt[i]
            out[t, r] = acc + b0


@njit(parallel=True, **_JIT)
def _linear_bf16(x, w, bias, out):
    for r in prange(w.shape[0]):
        wr = w[r]
        b0 = bias[r] if bias.shape[0] else np.float32(0.0)
        for t in range(x.shape[0]):
            xt = x[t]
            acc = np.float32(0.0)
            for i in range(wr.shape[0]):
                acc += bf16_to_f32(wr[i]) * xt[i]
            out[t, r] = acc + b0


KERNELS = {
    QType.Q8_0: _linear_q8_0, QType.Q4_0: _linear_q4_0, QType.Q4_1: _linear_q4_1,
    QType.Q4_K: _linear_q4_k, QType.Q5_K: _linear_q5_k, QType.Q6_K: _linear_q6_k,
    QType.F32: _linear_f32, QType.F16: _linear_f16, QType.BF16: _linear_bf16,
}
_NO_BIAS = np.zeros(0, np.float32)


def linear(x: np.ndarray, w: PackedWeight, bias: np.ndarray | None = None) -> np.ndarray:
    """x: (..., K) float32; w: PackedWeight (N, K); bias: (N,) or None -> (..., N) float32.
    Same contract as `kernels.matmul.linear_ref`."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, w.k)
    if x2.dtype != np.float32 or not x2.flags.c_contiguous:
        x2 = np.ascontiguousarray(x2, dtype=np.float32)
    out = np.empty((x2.shape[0], w.n), np.float32)
    b = _NO_BIAS if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    w.kernel(x2, *w.arrays, b, out)
    return out.reshape(lead + (w.n,))
