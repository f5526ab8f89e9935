"""linear (y = x @ W.T + b) for packed weights: one Numba kernel per qtype, any T,
generated from one template per loop shape and the qtype's row dots (`kinds.KINDS`).

Quantized weights meet activations quantized on the fly per 32-block (`act_quant.py`):
int16 by default (scale `xd`, scaled block sum `xs`), int8 as llama.cpp does when asked
(`CpuBackend(activations="int8")`). A row dot (`simd.py`, `simd_rows.py`) does exact
integer block dots (int16: `vpmaddwd`, fused into `vpdpwssd` with AVX512-VNNI; int8:
`vpdpbusd` / `vpmaddubsw` + `vpmaddwd`) into float vector accumulators. Q8_0/Q4_0/Q4_1/Q5 form the
weight x activation scales in-register from the f16 weight scales and xd; with int16
activations the zero points of Q4_0/Q5_0 go into the integer dot (q - 8, q - 16), the
mins of Q4_1/Q5_1 through xs. Error vs the float reference: int16 NMSE ~4e-10 (int8
~3e-5). Float weights (F32/F16/BF16) keep float32 activations and run `panel_gemm.py`'s
register-tiled kernel; the "f32" setting sends quantized weights there too (`qgemm.py`).

Q8_0/Q4_0/Q4_1 weights are bound in the lane layout (`repack.set_lanes`) and meet
activations quantized into it as int16 at the setting's levels (`act_quant.quantize_lanes`):
one int32 lane per block, so one convert/scale/FMA serves 16 blocks (`simd_rows._lanes`).

Row invariance is by construction: every kernel computes an output row with the same
sequence of operations whatever T is, so a token's bits do not depend on its batch,
chunk or cached prefix. For T > 1, Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 dot each weight row with 4
tokens at once (`lanes4_*`, `rowdot4_*`: the row is unpacked once per 4 tokens, 4
accumulators, each token's bits equal to `lanes1_*` / `rowdot2_*`'s alone), over token blocks whose activations fit L1
(~24 KiB), so a block is reused across a task's 16 rows. Every kernel parallelises over
output rows (`prange`, static split).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.act_quant import quantize_lanes, quantize_x
from edgeformer.backends.cpu.common import JIT, specialise
from edgeformer.backends.cpu.kinds import KINDS, fields
from edgeformer.backends.cpu.panel_gemm import linear_bf16, linear_f16, linear_f32
from edgeformer.backends.cpu.qgemm import dequant_kernel
from edgeformer.backends.cpu.repack import FLOAT, PackedWeight, set_lanes
from edgeformer.quant.qtypes import QType


# Rows per prange task (a static split of N / CH tasks over the threads).
CH = 16
# Template globals, bound per qtype by `specialise` to its `kinds.KINDS` row dots.
ROWDOT = ROWDOT4 = QUANT = None


@njit(**JIT)
def _token_block(k):
    """Tokens per block so their quantized activations (k bytes each) take ~24 KiB of L1."""
    return max(4, 24576 // k // 4 * 4)


def _linear_rows4(x, a, b, c, d, e, f, bias, out, proto):
    """out (T, N) = x (T, K) @ W.T (+ bias), W as slot fields a..f (`kinds.slot`), x quantized
    like `proto` by QUANT: ROWDOT4 dots each row with 4 tokens at a time (ROWDOT the last T % 4)."""
    xq, xd, xs = QUANT(x, proto)
    n, t_ = a.shape[0], x.shape[0]
    t4 = t_ // 4 * 4                      # tokens in groups of 4: one unpack per group
    tb = _token_block(xq.shape[1] * xq.itemsize)
    for g in prange((n + CH - 1) // CH):
        for t0 in range(0, t4, tb):       # a token block's activations stay in L1 over the rows
            for r in range(g * CH, min(n, (g + 1) * CH)):
                b0 = bias[r] if bias.shape[0] else np.float32(0.0)
                for t in range(t0, min(t0 + tb, t4), 4):
                    y = ROWDOT4(a[r], b[r], c[r], d[r], e[r], f[r], xq, xd, xs, t)
                    for j in range(4):
                        out[t + j, r] = y[j] + b0
        for r in range(g * CH, min(n, (g + 1) * CH)):
            b0 = bias[r] if bias.shape[0] else np.float32(0.0)
            for t in range(t4, t_):
                out[t, r] = ROWDOT(a[r], b[r], c[r], d[r], e[r], f[r], xq[t], xd[t], xs[t]) + b0


def _linear_rows(x, a, b, c, d, e, f, bias, out, proto):
    """As `_linear_rows4` with ROWDOT for every token (the K-quants)."""
    xq, xd, xs = quantize_x(x, proto)
    for r in prange(a.shape[0]):
        b0 = bias[r] if bias.shape[0] else np.float32(0.0)
        for t in range(x.shape[0]):
            out[t, r] = ROWDOT(a[r], b[r], c[r], d[r], e[r], f[r], xq[t], xd[t], xs[t]) + b0


_PAR = dict(parallel=True, **JIT)
# integer activations / float32 activations (dequantized weights, `qgemm.py`), per qtype
_INT = {q: specialise(_linear_rows4 if k.rowdot4 else _linear_rows, f"linear_{q.name.lower()}", _PAR,
                      ROWDOT=k.rowdot, ROWDOT4=k.rowdot4, QUANT=quantize_lanes if k.lanes else quantize_x)
        for q, k in KINDS.items()}
_F32 = {q: dequant_kernel(f"linear_dequant_{q.name.lower()}", k.dequant) for q, k in KINDS.items()}
_FLOAT = {QType.F32: linear_f32, QType.F16: linear_f16, QType.BF16: linear_bf16}


def bind(w: PackedWeight, act: np.ndarray | None) -> None:
    """Bind w's linear kernel for activations `act` (an empty array of their integer dtype,
    or None for float32) and, for quantized kinds, the slot fields it takes."""
    w.act = act
    set_lanes(w, act is not None and w.kind in KINDS and KINDS[w.kind].lanes)
    if w.kind in FLOAT:
        w.kernel = _FLOAT[w.kind]
    else:
        w.kernel, w.fields = (_INT if act is not None else _F32)[w.kind], fields(w)


_NO_BIAS = np.zeros(0, np.float32)


def linear(x: np.ndarray, w: PackedWeight, bias: np.ndarray | None = None) -> np.ndarray:
    """x: (..., K) float32; w: PackedWeight (N, K); bias: (N,) or None -> (..., N) float32.
    Same contract as `kernels.linear.linear_ref`. Quantized weights take the row dots
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
        w.kernel(x2, *w.fields, b, out)
    else:
        w.kernel(x2, *w.fields, b, out, w.act)
    return out if lead is None else out.reshape(lead + (w.n,))


def _f32(b: np.ndarray) -> np.ndarray:
    return b if b.dtype == np.float32 and b.flags.c_contiguous else np.ascontiguousarray(b, dtype=np.float32)
