"""linear (y = x @ W.T + b) for packed weights: one Numba kernel per qtype, any T.

Quantized weights use llama.cpp's scheme: activations are quantized on the fly to int8 per
32-block (Q8_1-like: scale `xd` and scaled block sum `xs`) and a `simd.rowdot*` kernel
does integer block dots (vpdpbusd / vpmaddubsw / vpmaddwd) into a float vector
accumulator. Q8_0/Q4_0/Q4_1 form the weight x activation scales in-register from the
f16 weight scales and xd, and fold the zero point / mins through xs (`rowdot2_*`; on
AVX512-VNNI Q8_0 is dotted as unsigned q + 128 with one vpdpbusd per 64 weights, the
offset removed via xs); the K-quants form their scales in-register too. Error vs the
float reference: NMSE ~1e-5..7e-5 from the activation rounding (bound 5e-4; measured on
random weights in the tests). Int8 was chosen over float32 activations because it is
1.8-2x faster per weight byte here (float dequant-and-FMA is instruction-bound) at an
error 10x under the bound. Float weights (F32/F16/BF16) keep float32 activations and
run `panel_gemm.py`'s register-tiled kernel (16-row panels, any T).

From MIN_T (64) rows up, quantized weights take `qgemm.py` instead (dequantized panels +
the float register tile: ~1.2-1.4x the int8 path per core at T = 512, float32 activations;
its bits differ from the int8 rows', so the runtime's row-invariant linear stays below
MIN_T rows per call, runtime/batch.py).

Every kernel parallelises over output rows (`prange`, static split). For 1 < T < MIN_T
Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 dot each weight row with 4 tokens at once (`rowdot4_*`: the row is
unpacked once per 4 tokens, 4 accumulators), over token blocks whose int8 activations
fit L1 (~24 KiB), so a block is reused across a task's 16 rows.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.block import slot
from edgeformer.backends.cpu.common import JIT as _JIT
from edgeformer.backends.cpu.panel_gemm import linear_bf16, linear_f16, linear_f32
from edgeformer.backends.cpu.qgemm import MIN_T, linear_dequant
from edgeformer.backends.cpu.repack import FLOAT, PackedWeight
from edgeformer.backends.cpu.simd import rowdot_q4_k, rowdot_q5_k, rowdot_q6_k
from edgeformer.backends.cpu.simd_rows import (rowdot2_q4_0, rowdot2_q4_1, rowdot2_q8_0, rowdot4_q4_0, rowdot4_q4_1,
                                               rowdot4_q8_0)
from edgeformer.backends.cpu.simd_rows import rowdot2_q5_0, rowdot2_q5_1, rowdot4_q5_0, rowdot4_q5_1
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


# Rows per prange task (a static split of N / CH tasks over the threads).
CH = 16


@njit(**_JIT)
def _token_block(k):
    """Tokens per block so their int8 activations (k bytes each) take ~24 KiB of L1."""
    return max(4, 24576 // k // 4 * 4)


@njit(parallel=True, **_JIT)
def _linear_q8_0(x, qs, d, bias, out):
    xq, xd, xs = quantize_x(x)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4                      # tokens in groups of 4: one unpack per group
    tb = _token_block(x.shape[1])
    for c in prange((n + CH - 1) // CH):
        for t0 in range(0, t4, tb):       # a token block's activations stay in L1 over the rows
            for r in range(c * CH, min(n, (c + 1) * CH)):
                b0 = bias[r] if bias.shape[0] else np.float32(0.0)
                for t in range(t0, min(t0 + tb, t4), 4):
                    y = rowdot4_q8_0(qs[r], xq, d[r], xd, xs, t)
                    for j in range(4):
                        out[t + j, r] = y[j] + b0
        for r in range(c * CH, min(n, (c + 1) * CH)):
            b0 = bias[r] if bias.shape[0] else np.float32(0.0)
            for t in range(t4, t_):
                out[t, r] = rowdot2_q8_0(qs[r], xq[t], d[r], xd[t], xs[t]) + b0


@njit(parallel=True, **_JIT)
def _linear_q4_0(x, qs, d, bias, out):
    xq, xd, xs = quantize_x(x)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4                      # tokens in groups of 4: one unpack per group
    tb = _token_block(x.shape[1])
    for c in prange((n + CH - 1) // CH):
        for t0 in range(0, t4, tb):       # a token block's activations stay in L1 over the rows
            for r in range(c * CH, min(n, (c + 1) * CH)):
                b0 = bias[r] if bias.shape[0] else np.float32(0.0)
                for t in range(t0, min(t0 + tb, t4), 4):
                    y = rowdot4_q4_0(qs[r], xq, d[r], xd, xs, t)
                    for j in range(4):
                        out[t + j, r] = y[j] + b0
        for r in range(c * CH, min(n, (c + 1) * CH)):
            b0 = bias[r] if bias.shape[0] else np.float32(0.0)
            for t in range(t4, t_):
                out[t, r] = rowdot2_q4_0(qs[r], xq[t], d[r], xd[t], xs[t]) + b0


@njit(parallel=True, **_JIT)
def _linear_q4_1(x, qs, d, m, bias, out):
    # as _linear_q4_0 (rowdot4_q4_1 gives each token the bits rowdot2_q4_1 gives it alone)
    xq, xd, xs = quantize_x(x)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4
    tb = _token_block(x.shape[1])
    for c in prange((n + CH - 1) // CH):
        for t0 in range(0, t4, tb):
            for r in range(c * CH, min(n, (c + 1) * CH)):
                b0 = bias[r] if bias.shape[0] else np.float32(0.0)
                for t in range(t0, min(t0 + tb, t4), 4):
                    y = rowdot4_q4_1(qs[r], xq, d[r], xd, xs, m[r], t)
                    for j in range(4):
                        out[t + j, r] = y[j] + b0
        for r in range(c * CH, min(n, (c + 1) * CH)):
            b0 = bias[r] if bias.shape[0] else np.float32(0.0)
            for t in range(t4, t_):
                out[t, r] = rowdot2_q4_1(qs[r], xq[t], d[r], xd[t], xs[t], m[r]) + b0


@njit(parallel=True, **_JIT)
def _linear_q5_0(x, qs, qh, d, bias, out):
    # as _linear_q4_0: the 5th bits are ORed into the nibbles inside the row dots
    xq, xd, xs = quantize_x(x)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4
    tb = _token_block(x.shape[1])
    for c in prange((n + CH - 1) // CH):
        for t0 in range(0, t4, tb):
            for r in range(c * CH, min(n, (c + 1) * CH)):
                b0 = bias[r] if bias.shape[0] else np.float32(0.0)
                for t in range(t0, min(t0 + tb, t4), 4):
                    y = rowdot4_q5_0(qs[r], xq, d[r], xd, xs, qh[r], t)
                    for j in range(4):
                        out[t + j, r] = y[j] + b0
        for r in range(c * CH, min(n, (c + 1) * CH)):
            b0 = bias[r] if bias.shape[0] else np.float32(0.0)
            for t in range(t4, t_):
                out[t, r] = rowdot2_q5_0(qs[r], xq[t], d[r], xd[t], xs[t], qh[r]) + b0


@njit(parallel=True, **_JIT)
def _linear_q5_1(x, qs, qh, d, m, bias, out):
    xq, xd, xs = quantize_x(x)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4
    tb = _token_block(x.shape[1])
    for c in prange((n + CH - 1) // CH):
        for t0 in range(0, t4, tb):
            for r in range(c * CH, min(n, (c + 1) * CH)):
                b0 = bias[r] if bias.shape[0] else np.float32(0.0)
                for t in range(t0, min(t0 + tb, t4), 4):
                    y = rowdot4_q5_1(qs[r], xq, d[r], xd, xs, m[r], qh[r], t)
                    for j in range(4):
                        out[t + j, r] = y[j] + b0
        for r in range(c * CH, min(n, (c + 1) * CH)):
            b0 = bias[r] if bias.shape[0] else np.float32(0.0)
            for t in range(t4, t_):
                out[t, r] = rowdot2_q5_1(qs[r], xq[t], d[r], xd[t], xs[t], m[r], qh[r]) + b0


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


KERNELS = {
    QType.Q8_0: _linear_q8_0, QType.Q4_0: _linear_q4_0, QType.Q4_1: _linear_q4_1,
    QType.Q5_0: _linear_q5_0, QType.Q5_1: _linear_q5_1,
    QType.Q4_K: _linear_q4_k, QType.Q5_K: _linear_q5_k, QType.Q6_K: _linear_q6_k,
    QType.F32: linear_f32, QType.F16: linear_f16, QType.BF16: linear_bf16,
}
_NO_BIAS = np.zeros(0, np.float32)


def linear(x: np.ndarray, w: PackedWeight, bias: np.ndarray | None = None) -> np.ndarray:
    """x: (..., K) float32; w: PackedWeight (N, K); bias: (N,) or None -> (..., N) float32.
    Same contract as `kernels.matmul.linear_ref`."""
    # shape checks guard the unchecked kernels against out-of-bounds reads
    if x.shape[-1] != w.k or (bias is not None and bias.shape != (w.n,)):
        raise ValueError(f"linear: x {x.shape} / bias {None if bias is None else np.shape(bias)} "
                         f"do not fit a ({w.n}, {w.k}) weight")
    # decode's hot path: (1, K) float32 rows pass straight through (a few us per call
    # of Python here is ~1 ms per token at 300 calls)
    if x.ndim == 2 and x.dtype == np.float32 and x.flags.c_contiguous and x.shape[0] < MIN_T:
        out = np.empty((x.shape[0], w.n), np.float32)
        w.kernel(x, *w.arrays, _NO_BIAS if bias is None else _f32(bias), out)
        return out
    lead = x.shape[:-1]
    x2 = x.reshape(-1, w.k)
    if x2.dtype != np.float32 or not x2.flags.c_contiguous:
        x2 = np.ascontiguousarray(x2, dtype=np.float32)
    out = np.empty((x2.shape[0], w.n), np.float32)
    b = _NO_BIAS if bias is None else _f32(bias)
    if x2.shape[0] >= MIN_T and w.kind not in FLOAT:     # prefill: dequantized panels (qgemm.py)
        linear_dequant(slot(w), w.n, x2, b, out)
    else:
        w.kernel(x2, *w.arrays, b, out)
    return out.reshape(lead + (w.n,))


def _f32(b: np.ndarray) -> np.ndarray:
    return b if b.dtype == np.float32 and b.flags.c_contiguous else np.ascontiguousarray(b, dtype=np.float32)
