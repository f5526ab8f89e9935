"""rms_norm and layer_norm over the last axis (float32), one row per prange iteration.

Rows are independent, so the kernel is a plain row loop; small inputs (decode: one row)
run serially because starting the thread pool costs more than the row.

`rms_row` is the one rms_norm arithmetic of the backend: the op path and the fused decode
step (`block.py`) both call it, compiled without fast-math flags (LLVM must round as
written wherever it inlines it) and with the sum of squares in a fixed order (`_sumsq`),
so a token's normalised row has the same bits in a prefill, a chunk, a batch or a decode
step."""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeformer.backends.cpu.common import EXACT, PARALLEL_MIN, jit_pair
from edgeformer.backends.cpu.vector_ir import V16F, data, fma, hsum, vload

_NONE = np.zeros(0, np.float32)


@intrinsic
def _sumsq(typingctx, x, n):
    """sum of x[i]^2, i < n (x contiguous): four <16 x float> FMA chains over 64-element
    steps, joined (0 + 1) + (2 + 3); the remaining 16-element chunks FMA'd into that in
    turn; a halving tree over the lanes; the last n % 16 squares added one by one. A fixed
    order for each n (the caller's flags never reach it: only exact callers use it)."""
    def codegen(context, builder, sig, args):
        xa, n = args
        xp = data(context, builder, sig.args[0], xa)
        i64 = ir.IntType(64)
        c = lambda k: ir.Constant(i64, k)  # noqa: E731
        zero = ir.Constant(V16F, None)
        acc = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]
        with cgutils.for_range(builder, builder.sdiv(n, c(64))) as loop:
            base = builder.mul(loop.index, c(64))
            for k in range(4):
                v = vload(builder, xp, builder.add(base, c(16 * k)), 16)
                builder.store(fma(builder, v, v, builder.load(acc[k])), acc[k])
        a = [builder.load(x) for x in acc]
        tot = cgutils.alloca_once_value(builder, builder.fadd(builder.fadd(a[0], a[1]), builder.fadd(a[2], a[3])))
        done = builder.mul(builder.sdiv(n, c(64)), c(64))
        with cgutils.for_range(builder, builder.sdiv(builder.sub(n, done), c(16))) as loop:
            v = vload(builder, xp, builder.add(done, builder.mul(loop.index, c(16))), 16)
            builder.store(fma(builder, v, v, builder.load(tot)), tot)
        s = cgutils.alloca_once_value(builder, hsum(builder, builder.load(tot)))
        tail = builder.mul(builder.sdiv(n, c(16)), c(16))
        with cgutils.for_range(builder, builder.sub(n, tail)) as loop:
            xi = builder.load(builder.gep(xp, [builder.add(tail, loop.index)]))
            builder.store(builder.fadd(builder.load(s), builder.fmul(xi, xi)), s)
        return builder.load(s)
    return types.float32(x, types.intp), codegen


@njit(**EXACT)
def rms_row(x, w, eps, out):
    """out = x / sqrt(mean(x^2) + eps) * w for one contiguous row (no weight: w empty);
    out may be x."""
    n = x.shape[0]
    inv = np.float32(1.0) / np.sqrt(_sumsq(x, n) / np.float32(n) + eps)
    if w.shape[0]:
        for i in range(n):
            out[i] = x[i] * inv * w[i]
    else:
        for i in range(n):
            out[i] = x[i] * inv


def _rms_rows(x, w, eps, out):
    for r in prange(x.shape[0]):
        rms_row(x[r], w, eps, out[r])


def _ln_rows(x, w, b, eps, out):
    for r in prange(x.shape[0]):
        xr = x[r]
        n = np.float32(xr.shape[0])
        mu = np.float32(0.0)
        for i in range(xr.shape[0]):
            mu += xr[i]
        mu /= n
        var = np.float32(0.0)
        for i in range(xr.shape[0]):
            c = xr[i] - mu
            var += c * c
        inv = np.float32(1.0) / np.sqrt(var / n + eps)
        for i in range(xr.shape[0]):
            y = (xr[i] - mu) * inv
            if w.shape[0]:
                y *= w[i]
            if b.shape[0]:
                y += b[i]
            out[r, i] = y


_rms_ser, _rms_par = jit_pair(_rms_rows)
_ln_ser, _ln_par = jit_pair(_ln_rows)


def _rows(x: np.ndarray) -> np.ndarray:
    x2 = x.reshape(-1, x.shape[-1])
    if x2.dtype != np.float32 or not x2.flags.c_contiguous:
        x2 = np.ascontiguousarray(x2, dtype=np.float32)
    return x2


def vec(w: np.ndarray | None, d: int) -> np.ndarray:
    if w is None:
        return _NONE
    if np.shape(w) != (d,):   # the kernels index w unchecked
        raise ValueError(f"norm weight/bias of shape {np.shape(w)} for rows of {d}")
    return np.ascontiguousarray(w, dtype=np.float32)


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; same contract as `rms_norm_ref`."""
    x2 = _rows(x)
    out = np.empty_like(x2)
    (_rms_par if x2.size >= PARALLEL_MIN else _rms_ser)(x2, vec(w, x2.shape[1]), np.float32(eps), out)
    return out.reshape(x.shape)


def layer_norm(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * w + b over the last axis; contract of `layer_norm_ref`."""
    x2 = _rows(x)
    out = np.empty_like(x2)
    d = x2.shape[1]
    (_ln_par if x2.size >= PARALLEL_MIN else _ln_ser)(x2, vec(w, d), vec(b, d), np.float32(eps), out)
    return out.reshape(x.shape)
