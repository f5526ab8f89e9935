"""linear (y = x @ W.T + b) for packed weights: one Numba kernel per qtype, any T.

Quantized weights meet activations quantized on the fly per 32-block (`act_quant.py`):
int16 by default (scale `xd`, scaled block sum `xs`), int8 as llama.cpp does when asked
(`CpuBackend(activations="int8")`). A `simd.rowdot*` kernel does exact integer block
dots (int16: `vpmaddwd`, fused into `vpdpwssd` with AVX512-VNNI; int8: `vpdpbusd` /
`vpmaddubsw` + `vpmaddwd`) into float vector accumulators. Q8_0/Q4_0/Q4_1/Q5 form the
weight x activation scales in-register from the f16 weight scales and xd; with int16
activations the zero points of Q4_0/Q5_0 go into the integer dot (q - 8, q - 16), the
mins of Q4_1/Q5_1 through xs. Error vs the float reference: int16 NMSE ~4e-10 (int8
~3e-5). Float weights (F32/F16/BF16) keep float32 activations and run `panel_gemm.py`'s
register-tiled kernel; the "f32" setting sends quantized weights there too (`qgemm.py`).

Row invariance is by construction: every kernel computes an output row with the same
sequence of operations whatever T is, so a token's bits do not depend on its batch,
chunk or cached prefix. For T > 1, Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 dot each weight row with 4
tokens at once (`rowdot4_*`: the row is unpacked once per 4 tokens, 4 accumulators, each
token's bits equal to `rowdot2_*`'s alone), over token blocks whose activations fit L1
(~24 KiB), so a block is reused across a task's 16 rows. Every kernel parallelises over
output rows (`prange`, static split).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.act_quant import quantize_x
from edgeformer.backends.cpu.block import slot
from edgeformer.backends.cpu.common import JIT as _JIT
from edgeformer.backends.cpu.panel_gemm import linear_bf16, linear_f16, linear_f32
from edgeformer.backends.cpu.qgemm import linear_dequant
from edgeformer.backends.cpu.repack import FLOAT, PackedWeight
from edgeformer.backends.cpu.simd import rowdot_q4_k, rowdot_q5_k, rowdot_q6_k
from edgeformer.backends.cpu.simd_rows import (rowdot2_q4_0, rowdot2_q4_1, rowdot2_q8_0, rowdot4_q4_0, rowdot4_q4_1,
                                               rowdot4_q8_0)
from edgeformer.backends.cpu.simd_rows import rowdot2_q5_0, rowdot2_q5_1, rowdot4_q5_0, rowdot4_q5_1
from edgeformer.quant.qtypes import QType


# Rows per prange task (a static split of N / CH tasks over the threads).
CH = 16


@njit(**_JIT)
def _token_block(k):
    """Tokens per block so their quantized activations (k bytes each) take ~24 KiB of L1."""
    return max(4, 24576 // k // 4 * 4)


@njit(parallel=True, **_JIT)
def _linear_q8_0(x, qs, d, bias, out, proto):
    xq, xd, xs = quantize_x(x, proto)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4                      # tokens in groups of 4: one unpack per group
    tb = _token_block(xq.shape[1] * xq.itemsize)
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
def _linear_q4_0(x, qs, d, bias, out, proto):
    xq, xd, xs = quantize_x(x, proto)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4                      # tokens in groups of 4: one unpack per group
    tb = _token_block(xq.shape[1] * xq.itemsize)
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
def _linear_q4_1(x, qs, d, m, bias, out, proto):
    # as _linear_q4_0 (rowdot4_q4_1 gives each token the bits rowdot2_q4_1 gives it alone)
    xq, xd, xs = quantize_x(x, proto)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4
    tb = _token_block(xq.shape[1] * xq.itemsize)
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
def _linear_q5_0(x, qs, qh, d, bias, out, proto):
    # as _linear_q4_0: the 5th bits are ORed into the nibbles inside the row dots
    xq, xd, xs = quantize_x(x, proto)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4
    tb = _token_block(xq.shape[1] * xq.itemsize)
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
def _linear_q5_1(x, qs, qh, d, m, bias, out, proto):
    xq, xd, xs = quantize_x(x, proto)
    n, t_ = d.shape[0], x.shape[0]
    t4 = t_ // 4 * 4
    tb = _token_block(xq.shape[1] * xq.itemsize)
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
def _linear_q4_k(x, qs, sc, mn, d, dmin, bias, out, proto):
    xq, xd, xs = quantize_x(x, proto)
    for r in prange(qs.shape[0]):
        b0 = bias[r] if bias.shape[0] else np.float32(0.0)
        for t in range(x.shape[0]):
            out[t, r] = rowdot_q4_k(qs[r], sc[r], mn[r], d[r], dmin[r], xq[t], xd[t], xs[t]) + b0


@njit(parallel=True, **_JIT)
def _linear_q5_k(x, qs, qh, sc, mn, d, dmin, bias, out, proto):
    xq, xd, xs = quantize_x(x, proto)
    for r in prange(qs.shape[0]):
        b0 = bias[r] if bias.shape[0] else np.float32(0.0)
        for t in range(x.shape[0]):
            out[t, r] = rowdot_q5_k(qs[r], qh[r], sc[r], mn[r], d[r], dmin[r], xq[t], xd[t], xs[t]) + b0


@njit(parallel=True, **_JIT)
def _linear_q6_k(x, ql, qh, sc, d, bias, out, proto):
    xq, xd, _ = quantize_x(x, proto)
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
    Same contract as `kernels.matmul.linear_ref`. Quantized weights take the row dots
    over w.act's integer activations for every T (row-invariant by construction), or the
    dequantized float32 panels (`qgemm.py`) when w.act is None ("f32")."""
    # shape checks guard the unchecked kernels against out-of-bounds reads
    if x.shape[-1] != w.k or (bias is not None and bias.shape != (w.n,)):
        raise ValueError(f"linear: x {x.shape} / bias {None if bias is None else np.shape(bias)} "
                         f"do not fit a ({w.n}, {w.k}) weight")
    b = _NO_BIAS if bias is None else _f32(bias)
    # decode's hot path: (T, K) float32 rows pass straight through (a few us per call
    # of Python here is ~1 ms per token at 300 calls)
    if x.ndim == 2 and x.dtype == np.float32 and x.flags.c_contiguous:
        x2, lead = x, None
    else:
        lead = x.shape[:-1]
        x2 = np.ascontiguousarray(x.reshape(-1, w.k), dtype=np.float32)
    out = np.empty((x2.shape[0], w.n), np.float32)
    if w.kind in FLOAT:
        w.kernel(x2, *w.arrays, b, out)
    elif w.act is None:
        linear_dequant(slot(w), w.n, x2, b, out)
    else:
        w.kernel(x2, *w.arrays, b, out, w.act)
    return out if lead is None else out.reshape(lead + (w.n,))


def _f32(b: np.ndarray) -> np.ndarray:
    return b if b.dtype == np.float32 and b.flags.c_contiguous else np.ascontiguousarray(b, dtype=np.float32)
