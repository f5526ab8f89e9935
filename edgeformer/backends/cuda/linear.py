"""linear (y = x @ W.T + b) and embed (rows of W) with W dequantized in registers from
its GGUF planes (`weights.py`).

`dequant` turns any (rows, cols) tile of a weight into float32 with the reference's
arithmetic (`quant.dequantize`: Q4_1 is d * q + m, Q4_K (d * sc) * q - dmin * m, Q6_K
(d * sc) * (q - 32)), each element gathering the byte that holds it, so a tile may start
at any column a block boundary allows and no nibble is reordered at load.

Two linear kernels, chosen by the row count T (a call's rows never mix, so a row's bits
depend only on the kernel and tile that ran: the runtime's row-invariant linear calls in
fixed 8-row blocks, which always take the same one):
- `_gemv` (T = 1, decode): one program per BN output rows, products accumulated
  elementwise in float32 and reduced once; memory-bound, no tensor cores.
- `_gemm` (T > 1): (BM, BN) output tiles (BM 16, 32 or 64 by T), tl.dot over BK-wide
  slices, each weight tile dequantized once for BM rows. F32 weights dot in
  IEEE float32; the others in TF32 (10-bit mantissa inputs, float32 accumulation: an
  NMSE near 1e-7 from rounding x, under the F16 bound of 1e-6 and far under the
  quantized ones; the interpreter computes in float32 either way, so only a GPU run
  checks this).
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from edgeformer.backends.cuda.traits import interpreting
from edgeformer.backends.cuda.device import as_f32, as_int, cdiv, pow2
from edgeformer.backends.cuda.weights import CudaWeight
from edgeformer.quant.qtypes import QType

# qtype ids as the kernels branch on them (QType values)
F32: tl.constexpr = tl.constexpr(int(QType.F32))
F16: tl.constexpr = tl.constexpr(int(QType.F16))
BF16: tl.constexpr = tl.constexpr(int(QType.BF16))
Q8_0: tl.constexpr = tl.constexpr(int(QType.Q8_0))
Q4_0: tl.constexpr = tl.constexpr(int(QType.Q4_0))
Q4_1: tl.constexpr = tl.constexpr(int(QType.Q4_1))
Q4_K: tl.constexpr = tl.constexpr(int(QType.Q4_K))
Q6_K: tl.constexpr = tl.constexpr(int(QType.Q6_K))



@triton.jit
def dequant(QT: tl.constexpr, p0, p1, p2, p3, rows, cols, mask, K):
    """float32 weights W[rows[:, None], cols[None, :]] of a (N, K) weight in qtype QT from
    its planes p0..p3 (`weights.py`); 0 where `mask` is False."""
    r = rows[:, None].to(tl.int64)
    c = cols[None, :]
    if QT == F32:
        w = tl.load(p0 + r * K + c, mask=mask, other=0.0)
    elif QT == F16:
        w = tl.load(p0 + r * K + c, mask=mask, other=0.0).to(tl.float32)
    elif QT == BF16:
        bits = tl.load(p0 + r * K + c, mask=mask, other=0)
        w = (bits.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    elif QT == Q8_0:
        q = tl.load(p0 + r * K + c, mask=mask, other=0).to(tl.float32)
        d = tl.load(p1 + r * (K // 32) + c // 32, mask=mask, other=0.0).to(tl.float32)
        w = q * d
    elif QT == Q4_0 or QT == Q4_1:
        # block of 32: byte j holds element j (low nibble) and j + 16 (high)
        j = c % 32
        byte = tl.load(p0 + r * (K // 2) + (c // 32) * 16 + j % 16, mask=mask, other=0).to(tl.int32)
        q = ((byte >> ((j // 16) * 4)) & 15).to(tl.float32)
        d = tl.load(p1 + r * (K // 32) + c // 32, mask=mask, other=0.0).to(tl.float32)
        if QT == Q4_0:
            w = d * (q - 8.0)
        else:
            w = d * q + tl.load(p2 + r * (K // 32) + c // 32, mask=mask, other=0.0).to(tl.float32)
    elif QT == Q4_K:
        # super-block of 256: qs[32g + l] holds element 64g + l (low) and 64g + 32 + l (high)
        e = c % 256
        byte = tl.load(p0 + r * (K // 2) + (c // 256) * 128 + (e // 64) * 32 + e % 32,
                       mask=mask, other=0).to(tl.int32)
        q = ((byte >> (((e // 32) % 2) * 4)) & 15).to(tl.float32)
        sub = r * (K // 32) + c // 32
        sc = tl.load(p1 + sub, mask=mask, other=0).to(tl.float32)
        mn = tl.load(p2 + sub, mask=mask, other=0).to(tl.float32)
        dd = p3 + (r * (K // 256) + c // 256) * 2
        d = tl.load(dd, mask=mask, other=0.0).to(tl.float32)
        dmin = tl.load(dd + 1, mask=mask, other=0.0).to(tl.float32)
        w = (d * sc) * q - dmin * mn
    else:
        tl.static_assert(QT == Q6_K, "dequant: qtype without a kernel")
        # element 128h + 64k + 32j + l: nibble k of ql[64h + 32j + l], bits 2(2k + j) of qh[32h + l]
        e = c % 256
        h = e // 128
        kk = (e % 128) // 64
        jj = (e % 64) // 32
        ll = e % 32
        sb = c // 256
        lo = tl.load(p0 + r * (K // 2) + sb * 128 + h * 64 + jj * 32 + ll, mask=mask, other=0).to(tl.int32)
        hi = tl.load(p1 + r * (K // 4) + sb * 64 + h * 32 + ll, mask=mask, other=0).to(tl.int32)
        q = (((lo >> (kk * 4)) & 15) | (((hi >> ((2 * kk + jj) * 2)) & 3) << 4)).to(tl.float32)
        sc = tl.load(p2 + r * (K // 16) + c // 16, mask=mask, other=0).to(tl.float32)
        d = tl.load(p3 + r * (K // 256) + sb, mask=mask, other=0.0).to(tl.float32)
        w = (d * sc) * (q - 32.0)
    return w


@triton.jit
def _gemv(x, p0, p1, p2, p3, bias, y, N, K, QT: tl.constexpr, HAS_BIAS: tl.constexpr,
          BN: tl.constexpr, BK: tl.constexpr):
    """y[t, n] = x[t] . W[n] (+ bias[n]) for BN rows n of program 0's tile, token t = program 1."""
    t = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    rmask = rows < N
    acc = tl.zeros((BN, BK), dtype=tl.float32)
    for k0 in range(0, K, BK):
        cols = k0 + tl.arange(0, BK)
        cmask = cols < K
        xv = tl.load(x + t * K + cols, mask=cmask, other=0.0)
        w = dequant(QT, p0, p1, p2, p3, rows, cols, rmask[:, None] & cmask[None, :], K)
        acc += w * xv[None, :]
    out = tl.sum(acc, axis=1)
    if HAS_BIAS:
        out += tl.load(bias + rows, mask=rmask, other=0.0)
    tl.store(y + t * N + rows, out, mask=rmask)


@triton.jit
def _gemm(x, p0, p1, p2, p3, bias, y, T, N, K, QT: tl.constexpr, HAS_BIAS: tl.constexpr,
          PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """The (BM, BN) tile (program 0, program 1) of y = x @ W.T (+ bias)."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    mmask = rm < T
    nmask = rn < N
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        ck = k0 + tl.arange(0, BK)
        kmask = ck < K
        xt = tl.load(x + rm[:, None].to(tl.int64) * K + ck[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        w = dequant(QT, p0, p1, p2, p3, rn, ck, nmask[:, None] & kmask[None, :], K)
        acc = tl.dot(xt, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias + rn, mask=nmask, other=0.0)[None, :]
    tl.store(y + rm[:, None].to(tl.int64) * N + rn[None, :], acc, mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _embed(ids, p0, p1, p2, p3, y, K, QT: tl.constexpr, BK: tl.constexpr):
    """y[t] = dequantized row ids[t] of W, columns of program 1's BK-wide slice."""
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BK + tl.arange(0, BK)
    cmask = cols < K
    row = tl.load(ids + t + tl.zeros((1,), dtype=tl.int64))
    w = dequant(QT, p0, p1, p2, p3, row, cols, cmask[None, :], K)
    tl.store(y + t * K + cols[None, :], w, mask=cmask[None, :])


def _gemv_rows(n: int) -> int:
    """Output rows per GEMV program: few enough per program that N / BN programs fill the
    GPU. Triton's interpreter pays per program, not per element, so there the same
    kernel runs with 64-row tiles (N % 64 still leaves ragged tiles in the tests)."""
    if interpreting():
        return 64
    return 16 if n >= 4096 else 8


def _k_block(w: CudaWeight) -> int:
    """The K slice of one GEMM step: a block multiple for block qtypes (64 where K allows)."""
    k = w.shape[1]
    return 64 if k % 64 == 0 else 32


def linear_t(x: torch.Tensor, w: CudaWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) float32 contiguous on w's device -> (..., N) float32 (module docstring)."""
    n, k = w.shape
    lead = tuple(x.shape[:-1])
    x2 = x.reshape(-1, k)
    t = x2.shape[0]
    y = torch.empty((t, n), dtype=torch.float32, device=x.device)
    if t == 0 or n == 0:
        return y.reshape(lead + (n,))
    b = bias if bias is not None else y
    qt = int(w.qtype)
    if t == 1:
        bn = _gemv_rows(n)
        _gemv[(cdiv(n, bn), 1)](x2, *w.planes, b, y, n, k, QT=qt, HAS_BIAS=bias is not None, BN=bn,
                                BK=min(256, pow2(k, 32)), num_warps=4)
    else:
        bm, bn = (16 if t <= 16 else 32 if t <= 32 else 64), 64
        prec = "ieee" if w.qtype == QType.F32 else "tf32"
        _gemm[(cdiv(t, bm), cdiv(n, bn))](x2, *w.planes, b, y, t, n, k, QT=qt, HAS_BIAS=bias is not None,
                                          PRECISION=prec, BM=bm, BN=bn, BK=_k_block(w), num_warps=4)
    return y.reshape(lead + (n,))


def linear(x: Any, w: CudaWeight, bias: Any = None) -> torch.Tensor:
    """The `linear` op: x (..., K) host or device array, w a prepared weight, bias (N,) or None."""
    dev = w.planes[0].device
    return linear_t(as_f32(x, dev), w, None if bias is None else as_f32(bias, dev))


def embed_t(w: CudaWeight, ids: torch.Tensor) -> torch.Tensor:
    """Rows `ids` (T,) int64 on w's device of the (V, D) table -> (T, D) float32."""
    d = w.shape[1]
    t = ids.numel()
    y = torch.empty((t, d), dtype=torch.float32, device=ids.device)
    if t:
        bk = min(1024, pow2(d, 32))
        _embed[(t, cdiv(d, bk))](ids, *w.planes, y, d, QT=int(w.qtype), BK=bk, num_warps=4)
    return y


def embed(w: CudaWeight, ids: Any) -> torch.Tensor:
    """The `embed` op: ids (T,) ints in [0, V)."""
    dev = w.planes[0].device
    shape = tuple(getattr(ids, "shape", ()))
    return embed_t(w, as_int(ids, dev).reshape(-1)).reshape(shape + (w.shape[1],))
