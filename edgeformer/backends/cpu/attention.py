"""attention: GQA scaled dot-product attention with causal-by-position masking, sliding
window and logit soft-capping; same semantics as `kernels.attention.attention_ref`.

Batch invariance: a query row's output bits depend only on its own query, position and
the keys/values/positions it sees, never on how many other queries share the call, where
it sits in it, or the keys masked for it. Prefill, a chunk of a prefill, one decode step
(`attention` with T = 1, and the fused step in `block.py`, which calls `attend_one`), a
batch and a speculative verify all run `_blocked` (see the comment above it) and give a
token the same bits.

- `_blocked`: one task per (kv head, block of BQ queries, halved while that leaves under
  two tasks per thread); a task's BQ*G query rows meet the keys BK at a time, read
  straight from the (S, Hkv, D) arrays (copied only to pad D or Dv to a multiple of 16):
  `_kt64` transposes the block's keys in registers into a (D, BK) tile, a register-tiled
  Q.K^T micro-kernel (`_qk*`: up to ROWS rows x 32 keys of <16 x float> accumulators)
  fills a (rows, BK) score tile, masking/soft-cap/online softmax run on it (running max
  and sum per row, `fast_exp`), and `_pv*` adds P.V into the output rows. Blocks and
  32-key halves that no row of a task or tile can see are skipped.
- `_attn_rows` / `_exact_task` (exact softmax: max, exp, sum) keeps the contract's NaN/Inf
  rules: a `_blocked` task that meets a non-finite output or a NaN score is redone by it.
- Paged operands (`kernels.kv_pages.PagedKV`, the continuous-batching cache's views):
  `_task` converts each block's keys and values from the pages into a float32 scratch
  and runs the same tiles on it, so a row's bits are those of the gathered arrays.

Editing this file: Numba's on-disk cache keys `block.py`'s fused step on block.py alone,
and that step has `attend_one` compiled into it, so touch block.py (or delete
`backends/cpu/__pycache__`) after a change here, or the fused decode step keeps running
the old attention (and stops matching the op path).
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import get_num_threads, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from edgeformer.backends.cpu.common import EXACT, JIT, PARALLEL_MIN, jit_pair
from edgeformer.backends.cpu.simd import fast_exp
from edgeformer.backends.cpu.vector_ir import F32, I32, V16F, data, fma, fsplat, half_to_float, vload
from edgeformer.kernels.kv_pages import PagedKV, PagedKVBatch


@njit(**JIT)
def _exact_task(q, k, v, qp, kp, t, h, ksorted, scale, causal, window, softcap, out):
    """Query t, the G query heads of kv head h, into out[t]: exact softmax over a score
    scratch, key-major (one key row serves all G heads). Reads q's D and out's Dv columns
    of k and v (they may be wider)."""
    hq, d = q.shape[1], q.shape[2]
    s_, hkv = k.shape[0], k.shape[1]
    dv = out.shape[2]
    g_ = hq // hkv
    # keys outside [j0, j1) are masked for sure (causal prefill: half of them)
    j0, j1 = 0, s_
    if ksorted:
        if causal:
            j1 = np.searchsorted(kp, qp[t], side="right")
        if window < (1 << 61):
            j0 = np.searchsorted(kp, qp[t] - window, side="right")
    sc = np.empty((g_, s_), np.float32)      # scores, then probabilities
    m = np.full(g_, -np.inf, np.float32)
    vis = np.zeros(s_, np.bool_)
    for g in range(g_):
        sc[g, :j0] = -np.inf
        sc[g, j1:] = -np.inf
    for j in range(j0, j1):                  # key-major: one key row serves all G heads
        diff = qp[t] - kp[j]
        vis[j] = (not causal or diff >= 0) and diff < window
        if not vis[j]:
            for g in range(g_):
                sc[g, j] = -np.inf
            continue
        kr = k[j, h]
        for g in range(g_):
            qr = q[t, h * g_ + g]
            acc = np.float32(0.0)
            for i in range(d):
                acc += qr[i] * kr[i]
            x = acc * scale
            if softcap > 0:
                x = np.tanh(x / softcap) * softcap
            sc[g, j] = x
            m[g] = max(m[g], x)
    den = np.zeros(g_, np.float32)
    for g in range(g_):                      # contiguous over keys: vectorised exp
        mg = m[g] if m[g] != -np.inf else np.float32(0.0)
        row = sc[g]
        for j in range(j0, j1):
            e = fast_exp(row[j] - mg)
            row[j] = e
            den[g] += e
    o = out[t, h * g_:(h + 1) * g_]          # (G, Dv)
    o[:] = 0.0
    for j in range(j0, j1):
        if not vis[j]:                       # never touch masked values (NaN-safe)
            continue
        vr = v[j, h]
        for g in range(g_):
            p = sc[g, j]
            og = o[g]
            for i in range(dv):
                og[i] += p * vr[i]
    for g in range(g_):
        if den[g] > 0:                       # else no visible key: zeros, as the reference
            inv = np.float32(1.0) / den[g]
            og = o[g]
            for i in range(dv):
                og[i] *= inv


def _attn_rows(q, k, v, qp, kp, scale, causal, window, softcap, out):
    """The exact kernel over every (query, kv head): the contract's NaN/Inf rules (keys a
    query cannot see never touch its output)."""
    t_ = q.shape[0]
    s_, hkv = k.shape[0], k.shape[1]
    ksorted = True                           # cache positions ascend: visible keys are one range
    for j in range(1, s_):
        if kp[j] < kp[j - 1]:
            ksorted = False
    for task in prange(t_ * hkv):
        t = task // hkv
        _exact_task(q, k, v, qp, kp, t, task - t * hkv, ksorted, scale, causal, window, softcap, out)


_attn_ser, _attn_par = jit_pair(_attn_rows)


# ---------------------------------------------------------------- blocked kernel (every T)
#
# One arithmetic for a query row whatever call it arrives in (prefill, a chunk of it,
# decode, a batch, speculative verify): the row meets the keys in blocks of BK aligned
# at absolute key position 0, BK, 2 BK, ... (at index 0, BK, ... when positions are not
# consecutive), and everything it does per block depends on the row, the block and the
# keys only:
# - scores: q (pre-multiplied by the scale) . k as one FMA chain over D in order, per
#   (row, key) lane of the `_qk*` tile;
# - soft-cap, mask (-inf), the block max (exact in any order), p = exp(s - max) with the
#   running max rescaling (online softmax), the block's sum of p by a fixed tree;
# - P.V: per output lane, one FMA chain over the block's keys in order, added to the row.
# A block that holds no key the row sees leaves every running value as it is (max
# unchanged: alpha = exp(0) = 1, p = 0), and keys at either end of a block that the row
# does not see add exact zeros, so skipping masked blocks, 32-key halves and end keys (a chunk
# sees fewer future keys than a whole prompt; decode sees none) changes no bit. Which
# rows share a task, a tile or a call (bq, ROWS, thread count) never enters a row's
# arithmetic. These functions are compiled without fast-math flags (EXACT): LLVM must
# round as written, so the serial, parallel and fused-decode copies agree.

BQ = 64      # queries per task (x G heads = rows of the score scratch)
BQ_MIN = 16  # smaller tasks when there are too few to feed every thread
BK = 64      # keys per block (a multiple of 32: the micro-kernels' key tile)
ROWS = 4     # rows per micro-kernel call (up to 4 x 2 <16 x float> accumulators)
_NOWIN = 1 << 61     # windows at or above this are "no window"

# `_kt64`: 16 x 16 transposes in registers. Stage 1/2 interleave floats and float pairs
# within 128-bit chunks (unpcklps/unpckhps, unpcklpd/unpckhpd), stage 3/4 move whole
# chunks (shuff32x4). Moves only: the transposed keys are the keys' own bits.
_T1 = ([x for c in range(4) for x in (4 * c, 16 + 4 * c, 4 * c + 1, 17 + 4 * c)],
       [x for c in range(4) for x in (4 * c + 2, 18 + 4 * c, 4 * c + 3, 19 + 4 * c)])
_T2 = ([x for c in range(4) for x in (4 * c, 4 * c + 1, 16 + 4 * c, 17 + 4 * c)],
       [x for c in range(4) for x in (4 * c + 2, 4 * c + 3, 18 + 4 * c, 19 + 4 * c)])
_T3 = ([0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27],
       [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31])


def _i32v(vals):
    return ir.Constant(ir.VectorType(ir.IntType(32), len(vals)), vals)


def _transpose16(builder, rows):
    """16 <16 x float> rows -> 16 columns (column i = lane i of every row)."""
    sh = lambda a, b, m: builder.shuffle_vector(a, b, _i32v(m))  # noqa: E731
    t = [None] * 16
    for k in range(8):                       # lane l of 128-bit chunk c: rows 2k, 2k+1 interleaved
        t[2 * k] = sh(rows[2 * k], rows[2 * k + 1], _T1[0])
        t[2 * k + 1] = sh(rows[2 * k], rows[2 * k + 1], _T1[1])
    u = [None] * 16                          # u[4k + m], chunk c: rows 4k..4k+3 at column 4c + m
    for k in range(4):
        u[4 * k] = sh(t[4 * k], t[4 * k + 2], _T2[0])
        u[4 * k + 1] = sh(t[4 * k], t[4 * k + 2], _T2[1])
        u[4 * k + 2] = sh(t[4 * k + 1], t[4 * k + 3], _T2[0])
        u[4 * k + 3] = sh(t[4 * k + 1], t[4 * k + 3], _T2[1])
    cols = [None] * 16
    for m in range(4):                       # a 4 x 4 transpose of chunks of u[m], u[4+m], u[8+m], u[12+m]
        a, b, c, d = u[m], u[4 + m], u[8 + m], u[12 + m]
        x0, x1 = sh(a, b, _T3[0]), sh(a, b, _T3[1])      # chunks (a0 a2 b0 b2), (a1 a3 b1 b3)
        x2, x3 = sh(c, d, _T3[0]), sh(c, d, _T3[1])
        cols[m] = sh(x0, x2, _T3[0])         # chunk 0 of a, b, c, d
        cols[8 + m] = sh(x0, x2, _T3[1])     # chunk 2
        cols[4 + m] = sh(x1, x3, _T3[0])     # chunk 1
        cols[12 + m] = sh(x1, x3, _T3[1])    # chunk 3
    return cols


@intrinsic
def _kt64(typingctx, k, kbase, ldk, jb, s, nch, kt, g0, g1):
    """kt[i BK + j] = k[kbase + jj ldk + i] for the keys jj = jb + j, j in [16 g0, 16 g1)
    (clamped into [0, s): a key outside is read as a neighbour and must be masked), i <
    16 nch."""
    ip = types.intp

    def codegen(context, builder, sig, args):
        ka, kbase, ldk, jb, s, nch, kta, g0, g1 = args
        kp_, tp_ = data(context, builder, sig.args[0], ka), data(context, builder, sig.args[6], kta)
        i64 = ir.IntType(64)
        zero_i, last = ir.Constant(i64, 0), builder.sub(s, ir.Constant(i64, 1))
        offs = []
        for j in range(BK):
            jj = builder.add(jb, ir.Constant(i64, j))
            jj = builder.select(builder.icmp_signed("<", jj, zero_i), zero_i, jj)
            jj = builder.select(builder.icmp_signed(">", jj, last), last, jj)
            offs.append(builder.add(kbase, builder.mul(jj, ldk)))
        with cgutils.for_range(builder, nch) as loop:
            c16 = builder.mul(loop.index, ir.Constant(i64, 16))
            for g in range(BK // 16):
                gc = ir.Constant(i64, g)
                inside = builder.and_(builder.icmp_signed("<=", g0, gc), builder.icmp_signed(">", g1, gc))
                with builder.if_then(inside):
                    rows = [vload(builder, kp_, builder.add(offs[16 * g + r], c16), 16) for r in range(16)]
                    for i, col in enumerate(_transpose16(builder, rows)):
                        off = builder.add(builder.mul(builder.add(c16, ir.Constant(i64, i)), ir.Constant(i64, BK)),
                                          ir.Constant(i64, 16 * g))
                        p = builder.bitcast(builder.gep(tp_, [off]), V16F.as_pointer())
                        builder.store(col, p, align=4)
        return context.get_dummy_value()
    return types.void(k, ip, ip, ip, ip, ip, kt, ip, ip), codegen


def _reduce64_codegen(is_max: bool):
    def codegen(context, builder, sig, args):
        ary, off = args
        p = data(context, builder, sig.args[0], ary)
        v = [vload(builder, p, builder.add(off, ir.Constant(off.type, 16 * c)), 16) for c in range(BK // 16)]

        def op(a, b):
            return builder.select(builder.fcmp_ordered(">", a, b), a, b) if is_max else builder.fadd(a, b)
        x = v[0]
        for y in v[1:]:
            x = op(x, y)
        n = 16
        while n > 1:
            n //= 2
            x = op(builder.shuffle_vector(x, x, _i32v(list(range(n)))),
                   builder.shuffle_vector(x, x, _i32v(list(range(n, 2 * n)))))
        return builder.extract_element(x, ir.Constant(ir.IntType(32), 0))
    return codegen


@intrinsic
def _max64(typingctx, a, off):
    """max of a[off : off + BK] (finite or -inf values; exact in any order)."""
    return types.float32(a, types.intp), _reduce64_codegen(True)


@intrinsic
def _sum64(typingctx, a, off):
    """sum of a[off : off + BK]: lanes i, i + 16, i + 32, i + 48 in turn, then a fixed tree."""
    return types.float32(a, types.intp), _reduce64_codegen(False)


def _tile_codegen(nc: int, rows: int, qk: bool):
    """IR of a rows x (16 nc) tile: for rr < rows, lanes c < 16 nc,
    acc[rr, c] = sum_{i<n} a[aoff + rr*lda + i] * b[boff + i*ldb + c], one FMA chain per
    (row, lane) over i in order; then qk: c[coff + rr*ldc + c] = acc, else c[...] += acc."""
    def codegen(context, builder, sig, args):
        a_ary, aoff, lda, b_ary, boff, ldb, c_ary, coff, ldc, n = args
        ap, bp, cp = (data(context, builder, sig.args[i], args[i]) for i in (0, 3, 6))
        i64 = ir.IntType(64)
        zero = ir.Constant(V16F, None)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(nc)] for _ in range(rows)]
        with cgutils.for_range(builder, n) as loop:
            i = loop.index
            bb = builder.add(boff, builder.mul(i, ldb))
            bv = [vload(builder, bp, builder.add(bb, ir.Constant(i64, 16 * c)), 16) for c in range(nc)]
            for rr in range(rows):
                ai = builder.add(builder.add(aoff, builder.mul(ir.Constant(i64, rr), lda)), i)
                av = fsplat(builder, builder.load(builder.gep(ap, [ai])), 16)
                for c in range(nc):
                    builder.store(fma(builder, av, bv[c], builder.load(acc[rr][c])), acc[rr][c])
        for rr in range(rows):
            cb = builder.add(coff, builder.mul(ir.Constant(i64, rr), ldc))
            for c in range(nc):
                p = builder.bitcast(builder.gep(cp, [builder.add(cb, ir.Constant(i64, 16 * c))]), V16F.as_pointer())
                x = builder.load(acc[rr][c])
                if not qk:
                    x = builder.fadd(builder.load(p, align=4), x)
                builder.store(x, p, align=4)
        return context.get_dummy_value()
    return codegen


def _tile_intrinsic(nc: int, rows: int, qk: bool):
    @intrinsic
    def tile(typingctx, a, aoff, lda, b, boff, ldb, c, coff, ldc, n):
        ip = types.intp
        return types.void(a, ip, ip, b, ip, ip, c, ip, ip, ip), _tile_codegen(nc, rows, qk)
    return tile


# scores: rows x 32 keys, reduce over D; out += P.V: rows x 32 (or the last 16) columns of
# Dv, reduce over keys. A row's chains do not depend on how many rows share the call.
_qk1, _qk2, _qk3, _qk4 = (_tile_intrinsic(2, r, True) for r in (1, 2, 3, 4))
_pv1a, _pv2a, _pv3a, _pv4a = (_tile_intrinsic(2, r, False) for r in (1, 2, 3, 4))
_pv1b, _pv2b, _pv3b, _pv4b = (_tile_intrinsic(1, r, False) for r in (1, 2, 3, 4))


@njit(inline="always", **EXACT)
def _qk(nr, qs, aoff, lda, kt, boff, sc, coff, n):
    """sc[rows, 32 keys] = qs[rows] . kt[:, keys] for nr (1..4) rows."""
    if nr == 4:
        _qk4(qs, aoff, lda, kt, boff, BK, sc, coff, BK, n)
    elif nr == 3:
        _qk3(qs, aoff, lda, kt, boff, BK, sc, coff, BK, n)
    elif nr == 2:
        _qk2(qs, aoff, lda, kt, boff, BK, sc, coff, BK, n)
    else:
        _qk1(qs, aoff, lda, kt, boff, BK, sc, coff, BK, n)


@njit(inline="always", **EXACT)
def _pv(nr, sc, aoff, v, boff, ldb, o, coff, ldc, n):
    """o[rows] += P.V over n keys for nr (1..4) rows, in 32- then 16-column strips."""
    c = 0
    while c + 32 <= ldc:
        if nr == 4:
            _pv4a(sc, aoff, BK, v, boff + c, ldb, o, coff + c, ldc, n)
        elif nr == 3:
            _pv3a(sc, aoff, BK, v, boff + c, ldb, o, coff + c, ldc, n)
        elif nr == 2:
            _pv2a(sc, aoff, BK, v, boff + c, ldb, o, coff + c, ldc, n)
        else:
            _pv1a(sc, aoff, BK, v, boff + c, ldb, o, coff + c, ldc, n)
        c += 32
    if c < ldc:
        if nr == 4:
            _pv4b(sc, aoff, BK, v, boff + c, ldb, o, coff + c, ldc, n)
        elif nr == 3:
            _pv3b(sc, aoff, BK, v, boff + c, ldb, o, coff + c, ldc, n)
        elif nr == 2:
            _pv2b(sc, aoff, BK, v, boff + c, ldb, o, coff + c, ldc, n)
        else:
            _pv1b(sc, aoff, BK, v, boff + c, ldb, o, coff + c, ldc, n)


# Keys and values reach `_task` as (S, Hkv, Dp) float32 arrays or as pages read in place
# (`_paged_args`): (P, bs, Hkv, D) pages of float32, uint16 (f16 bits), int16 (bf16 bits)
# or int8, with `pk` = (int8 key scales, value scales, page ids), S = the number of key
# positions (empty placeholders in `pk` for arrays). The paged task converts the keys and
# values of each block it is about to use into a (BK, Dp) float32 scratch and runs the
# same tiles on it. The conversions give `PagedKV.dense`'s float32 bits for every value
# but NaN payloads (F16C's `vcvtph2ps` quiets signalling NaNs; a NaN a row meets sends the
# call to the dense path anyway, see `_redo`). (Arrays, not a tuple of them: Numba's
# dispatcher types a tuple ~10 us slower per call.)

def _dims(src, kp):
    """(S, Hkv, Dp) of an operand (Dp: D rounded up to a multiple of 16)."""


def _scratch(src, dp):
    """A paged operand's (BK, dp) zeroed float32 block scratch (a placeholder for arrays)."""


def _rows(src, scale, table, h, jb, a, b, scr):
    """(array, base, ld, j0): kv head h of key jj (jb <= jj < jb + BK) starts at array[base
    + (jj - j0) ld]. Arrays are read in place (j0 = 0); pages first convert keys [a, b) into
    rows jj - jb of scr (j0 = jb)."""


def _redo(q, k, v, qp, kp, t0, t1, h, ksorted, scale, causal, window, softcap, out):
    """Redo a task's rows with the exact kernel; False if done, True if the caller must
    (paged operands: it reruns the call on `PagedKV.dense` arrays)."""


@intrinsic
def _half(typingctx, h):
    """float32 of f16 bits (uint16) or bf16 bits (int16)."""
    bf16 = h == types.int16

    def codegen(context, builder, sig, args):
        if bf16:
            return builder.bitcast(builder.shl(builder.zext(args[0], I32), ir.Constant(I32, 16)), F32)
        return half_to_float(context, builder, args[0])
    return types.float32(h), codegen


def _page_f32(pages, scale, p, sl, h, dst):
    dst[:pages.shape[3]] = pages[p, sl, h]


def _page_16(pages, scale, p, sl, h, dst):
    src = pages[p, sl, h]
    for i in range(src.shape[0]):
        dst[i] = _half(src[i])


def _page_int8(pages, scale, p, sl, h, dst):
    src, sc = pages[p, sl, h], scale[p, sl, h]
    for i in range(src.shape[0]):
        dst[i] = np.float32(src[i]) * sc


_PAGE_ROW = {types.float32: njit(inline="always", **EXACT)(_page_f32),
             types.uint16: njit(inline="always", **EXACT)(_page_16),
             types.int16: njit(inline="always", **EXACT)(_page_16),
             types.int8: njit(inline="always", **EXACT)(_page_int8)}


@overload(_dims, jit_options=EXACT)
def _dims_impl(src, kp):
    if src.ndim == 3:
        return lambda src, kp: src.shape
    return lambda src, kp: (kp.shape[0], src.shape[2], (src.shape[3] + 15) // 16 * 16)


@overload(_scratch, jit_options=EXACT)
def _scratch_impl(src, dp):
    if src.ndim == 3:
        return lambda src, dp: np.empty((0, dp), np.float32)
    return lambda src, dp: np.zeros((BK, dp), np.float32)


@overload(_rows, jit_options=EXACT)
def _rows_impl(src, scale, table, h, jb, a, b, scr):
    if src.ndim == 3:
        return lambda src, scale, table, h, jb, a, b, scr: (src, h * src.shape[2], src.shape[1] * src.shape[2], 0)
    row = _PAGE_ROW[src.dtype]

    def paged(src, scale, table, h, jb, a, b, scr):
        bs = src.shape[1]
        for jj in range(a, b):
            blk = jj // bs
            row(src, scale, table[blk], jj - blk * bs, h, scr[jj - jb])
        return scr, 0, scr.shape[1], jb
    return paged


@overload(_redo, jit_options=EXACT)
def _redo_impl(q, k, v, qp, kp, t0, t1, h, ksorted, scale, causal, window, softcap, out):
    if k.ndim == 4:
        return lambda q, k, v, qp, kp, t0, t1, h, ksorted, scale, causal, window, softcap, out: True

    def exact(q, k, v, qp, kp, t0, t1, h, ksorted, scale, causal, window, softcap, out):
        for t in range(t0, t1):
            _exact_task(q, k, v, qp, kp, t, h, ksorted, scale, causal, window, softcap, out)
        return False
    return exact


@njit(**EXACT)
def _task(q, k, v, pk, qp, kp, h, t0, t1, shift, ksorted, scale, causal, window, softcap, out):
    """Queries t0..t1-1, the query heads of kv head h, into out. k: (S, Hkv, Dp), v: (S,
    Hkv, Dvp) with Dp, Dvp multiples of 16 (zero-padded beyond q's D and out's Dv).
    Returns True when an output is not finite or a visible score is NaN (the caller then
    redoes these rows with the exact kernel, which has the contract's NaN/Inf rules)."""
    hq, d = q.shape[1], q.shape[2]
    s_, hkv, dp = _dims(k, kp)
    dvp = _dims(v, kp)[2]
    dv = out.shape[2]
    g_ = hq // hkv
    nt = t1 - t0
    kscr, vscr = _scratch(k, dp), _scratch(v, dvp)
    r_ = nt * g_
    # one scratch allocation per task (decode makes one task per kv head per layer)
    buf = np.empty(r_ * (dp + dvp + BK + 2) + dp * BK, np.float32)
    qs = buf[:r_ * dp].reshape((r_, dp))         # row r: query t0 + r // G, head h G + r % G
    o = buf[r_ * dp:r_ * (dp + dvp)].reshape((r_, dvp))
    sc = buf[r_ * (dp + dvp):r_ * (dp + dvp + BK)].reshape((r_, BK))
    m = buf[r_ * (dp + dvp + BK):r_ * (dp + dvp + BK + 1)]
    den = buf[r_ * (dp + dvp + BK + 1):r_ * (dp + dvp + BK + 2)]
    kt = buf[r_ * (dp + dvp + BK + 2):]          # the block's keys, transposed: (Dp, BK)
    qs[:, d:] = 0.0
    o[:] = 0.0
    sc[:] = 0.0
    m[:] = -np.inf
    den[:] = 0.0
    for r in range(r_):
        tq, hh = t0 + r // g_, h * g_ + r % g_
        for i in range(d):
            qs[r, i] = q[tq, hh, i] * scale
    # keys [lo, hi) of each query: exactly the visible ones with ascending positions (a
    # superset, masked per key, otherwise)
    lohi = np.empty(2 * nt, np.int64)
    lo, hi = lohi[:nt], lohi[nt:]
    lo[:] = 0
    hi[:] = s_
    jlo, jhi = s_, 0
    for tt in range(nt):
        if ksorted:
            if causal:
                hi[tt] = np.searchsorted(kp, qp[t0 + tt], side="right")
            if window < _NOWIN:
                lo[tt] = np.searchsorted(kp, qp[t0 + tt] - window, side="right")
        if lo[tt] < hi[tt]:
            jlo, jhi = min(jlo, lo[tt]), max(jhi, hi[tt])
    bad = False
    jb = (jlo + shift) // BK * BK - shift if jlo < jhi else jhi    # first block (may start before key 0)
    while jb < jhi:
        c0 = (max(jlo, jb) - jb) // 32 * 32                 # the 32-key halves some row sees
        c1 = (min(jhi, jb + BK) - jb + 31) // 32 * 32
        ka_, kbase, ldk, kj0 = _rows(k, pk[0], pk[2], h, jb, max(jb + c0, 0), min(jb + c1, s_), kscr)
        _kt64(ka_, kbase, ldk, jb - kj0, s_ - kj0, dp // 16, kt, c0 // 16, c1 // 16)
        for r in range(0, r_, ROWS):
            nr = min(ROWS, r_ - r)
            ta, tb = s_, 0                                   # keys some row of the tile sees
            for tt in range(r // g_, (r + nr - 1) // g_ + 1):
                if lo[tt] < hi[tt]:
                    ta, tb = min(ta, lo[tt]), max(tb, hi[tt])
            for c in range(0, BK, 32):                       # (a row's masked keys become -inf below)
                if jb + c + 32 > ta and jb + c < tb:
                    _qk(nr, qs, r * dp, dp, kt, c, sc, r * BK + c, dp)
        for r in range(r_):
            tt = r // g_
            a, b = lo[tt], hi[tt]
            row = sc[r]
            if b <= jb or a >= jb + BK or a >= b:           # sees no key here: p = 0
                for j in range(BK):
                    row[j] = 0.0
                continue
            if softcap > 0:
                for j in range(BK):
                    row[j] = np.tanh(row[j] / softcap) * softcap
            if not (ksorted and a <= jb and jb + BK <= b):   # not every key of the block visible
                for j in range(BK):
                    jj = jb + j
                    if jj < a or jj >= b:
                        row[j] = -np.inf
                    elif not ksorted:
                        diff = qp[t0 + tt] - kp[jj]
                        if (causal and diff < 0) or diff >= window:
                            row[j] = -np.inf
            mx = max(m[r], _max64(sc, r * BK))
            if mx == -np.inf:                                # nothing visible yet (or NaN scores)
                for j in range(BK):
                    if row[j] != row[j]:
                        bad = True
                    row[j] = 0.0
                continue
            alpha = fast_exp(m[r] - mx)                      # 1 when the max stays, 0 at the first block
            m[r] = mx
            for j in range(BK):
                row[j] = fast_exp(row[j] - mx)
            den[r] = den[r] * alpha + _sum64(sc, r * BK)
            if alpha != 1.0:
                for i in range(dvp):
                    o[r, i] *= alpha
        va, vbase, ldv, vj0 = _rows(v, pk[1], pk[2], h, jb, max(jb, jlo), min(jb + BK, jhi), vscr)
        for r in range(0, r_, ROWS):
            nr = min(ROWS, r_ - r)
            ka, kb = max(jb, 0), min(jb + BK, s_)
            ta, tb = s_, 0
            for tt in range(r // g_, (r + nr - 1) // g_ + 1):
                if lo[tt] < hi[tt]:
                    ta, tb = min(ta, lo[tt]), max(tb, hi[tt])
            ka, kb = max(ka, ta), min(kb, tb)                # keys past either end add exact zeros
            if ka < kb:
                _pv(nr, sc, r * BK + ka - jb, va, vbase + (ka - vj0) * ldv, ldv, o, r * dvp, dvp, kb - ka)
        jb += BK
    for r in range(r_):
        tq, hh = t0 + r // g_, h * g_ + r % g_
        inv = np.float32(1.0) / den[r] if den[r] > 0 else np.float32(0.0)   # no visible key: zeros
        for i in range(dv):
            x = o[r, i] * inv
            out[tq, hh, i] = x
            if x - x != 0:
                bad = True
    return bad


def _blocked(q, k, v, ksc, vsc, table, qp, kp, scale, causal, window, softcap, bq, out):
    """Every (kv head, block of bq queries) task; tasks that met a non-finite value are
    redone by the exact kernel. Returns how many were not (paged operands)."""
    t_ = q.shape[0]
    s_, hkv = _dims(k, kp)[:2]
    ksorted, consec = True, True
    for j in range(1, s_):
        if kp[j] < kp[j - 1]:
            ksorted = False
        if kp[j] != kp[j - 1] + 1:
            consec = False
    shift = kp[0] % BK if consec and s_ > 0 else 0     # blocks at absolute positions
    nqb = (t_ + bq - 1) // bq
    left = 0
    for task in prange(hkv * nqb):
        h = task // nqb
        b = task - h * nqb
        # zigzag 0, n-1, 1, n-2, ...: causal tasks grow with b, and prange hands each thread
        # a contiguous run of tasks; pairing big with small evens the threads' work out
        t0 = (b // 2 if b % 2 == 0 else nqb - 1 - b // 2) * bq
        t1 = min(t_, t0 + bq)
        pk = (ksc, vsc, table)
        if _task(q, k, v, pk, qp, kp, h, t0, t1, shift, ksorted, scale, causal, window, softcap, out) \
                and _redo(q, k, v, qp, kp, t0, t1, h, ksorted, scale, causal, window, softcap, out):
            left += 1
    return left


_blocked_ser, _blocked_par = jit_pair(_blocked, EXACT)


def _blocked_batch(q, k, v, ksc, vsc, tables, kstart, kn, rows, qp, scale, causal, window, softcap, bq, out):
    """`_blocked` over several sequences' paged keys in one call (`PagedKVBatch`): one task
    per (sequence, kv head, block of bq of its query rows), each `_task` with that
    sequence's page table and key positions kstart[b] .. kstart[b] + kn[b] - 1, so a row
    gets the bits a call on its sequence alone gives it. Returns how many tasks met a
    non-finite value (the caller redoes those sequences on dense arrays)."""
    nseg = rows.shape[0] - 1
    hkv = k.shape[2]
    first = np.zeros(nseg + 1, np.int64)         # first task of each sequence
    for b in range(nseg):
        first[b + 1] = first[b] + hkv * ((rows[b + 1] - rows[b] + bq - 1) // bq)
    left = 0
    for task in prange(first[nseg]):
        b = np.searchsorted(first, task, side="right") - 1
        nqb = (rows[b + 1] - rows[b] + bq - 1) // bq
        h = (task - first[b]) // nqb
        t0 = rows[b] + (task - first[b] - h * nqb) * bq
        t1 = min(rows[b + 1], t0 + bq)
        kp = np.arange(kstart[b], kstart[b] + kn[b])
        shift = kstart[b] % BK                   # consecutive positions: blocks at absolute positions
        if _task(q, k, v, (ksc, vsc, tables[b]), qp, kp, h, t0, t1, shift, True, scale, causal, window,
                 softcap, out):
            left += 1
    return left


_batch_ser, _batch_par = jit_pair(_blocked_batch, EXACT)


@njit(**EXACT)
def _pad16(a):
    """a (S, H, D) with D rounded up to a multiple of 16, zeros beyond (a itself if D is)."""
    s_, h_, d = a.shape
    dp = (d + 15) // 16 * 16
    if dp == d:
        return a
    b = np.zeros((s_, h_, dp), np.float32)
    b[:, :, :d] = a
    return b


# placeholders of the paged operands (int8 scales of keys and values, page ids)
_NO_SCALE, _NO_TABLE = np.zeros((0, 0, 0), np.float32), np.zeros(0, np.int64)
_NO_PAGES = (_NO_SCALE, _NO_SCALE, _NO_TABLE)
_PAGE_BITS = {"f16": np.uint16, "bf16": np.int16}   # which conversion `_half` makes


def _paged_args(k: PagedKV | PagedKVBatch, v: PagedKV | PagedKVBatch) -> tuple[np.ndarray, ...]:
    """The kernels' k, v, ksc, vsc for views of one pool."""
    def pages(x: PagedKV | PagedKVBatch) -> np.ndarray:
        return x.pages.view(_PAGE_BITS[x.dtype]) if x.dtype in _PAGE_BITS else x.pages
    return (pages(k), pages(v), _NO_SCALE if k.scale is None else k.scale, _NO_SCALE if v.scale is None else v.scale)


@njit(**EXACT)
def attend_one(q, k, v, kp, pos, scale, window, softcap, out):
    """One query token at position `pos`, causal: q (1, Hq, D), k (S, Hkv, D), v (S, Hkv,
    Dv) -> out (1, Hq, Dv), serially; the bits `attention` gives this token in any call
    (the fused decode step's attention)."""
    qp = np.empty(1, np.int64)
    qp[0] = pos
    _blocked_ser(q, _pad16(k), _pad16(v), _NO_SCALE, _NO_SCALE, _NO_TABLE, qp, kp, scale, True, window, softcap, 1, out)


_NO_WINDOW = 1 << 62   # "no window": every diff is below it


def _i64(a: np.ndarray) -> np.ndarray:
    return a if isinstance(a, np.ndarray) and a.dtype == np.int64 and a.flags.c_contiguous \
        else np.ascontiguousarray(a, dtype=np.int64)


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=np.float32)


def attention(q: np.ndarray, k: np.ndarray | PagedKV, v: np.ndarray | PagedKV,
              q_pos: np.ndarray | None = None, k_pos: np.ndarray | None = None, *,
              scale: float, causal: bool = True, window: int | None = None,
              softcap: float | None = None) -> np.ndarray:
    """q: (T, Hq, D); k: (S, Hkv, D); v: (S, Hkv, Dv) -> (T, Hq, Dv) float32.
    Contract of `kernels.attention.attention_ref` (positions default to the last T of S).
    A query's bits do not depend on the other queries of the call (see `_blocked`). k and
    v may both be `PagedKV` views, read in place: the bits of their `dense()` arrays."""
    if isinstance(k, PagedKVBatch) and isinstance(v, PagedKVBatch):
        return _attention_batch(q, k, v, q_pos, scale=scale, causal=causal, window=window, softcap=softcap)
    t, hq, d = q.shape
    s, hkv, dv = v.shape
    if k.shape != (s, hkv, d) or hq % hkv or (q_pos is not None and np.shape(q_pos) != (t,)) \
            or (k_pos is not None and np.shape(k_pos) != (s,)):
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} (positions "
                         f"{np.shape(q_pos)}, {np.shape(k_pos)}) are inconsistent")
    if q_pos is None:
        q_pos = np.arange(s - t, s)
    if k_pos is None:
        k_pos = np.arange(s)
    out = np.empty((t, hq, dv), np.float32)
    if t == 0:
        return out
    paged = isinstance(k, PagedKV) and isinstance(v, PagedKV)
    kv = _paged_args(k, v) + (k.table,) if paged else (_pad16(_f32(k)), _pad16(_f32(v))) + _NO_PAGES
    q, qp, kp = _f32(q), _i64(q_pos), _i64(k_pos)
    win, cap = _NO_WINDOW if window is None else int(window), np.float32(softcap or 0.0)
    # decode-sized work (one token, a short cache) runs serially: waking the thread pool
    # (~10-30 us with OMP_WAIT_POLICY=PASSIVE) costs more than the few heads' dot products
    parallel = t * hkv > 1 and t * hq * s * d >= PARALLEL_MIN
    bq = BQ
    while parallel and bq > BQ_MIN and hkv * -(-t // bq) < 2 * get_num_threads():
        bq //= 2                                         # e.g. a 64-token chunk of an MQA model
    if (_blocked_par if parallel else _blocked_ser)(q, *kv, qp, kp, np.float32(scale), bool(causal),
                                                    win, cap, bq, out):
        # a task met a non-finite value: the exact kernel needs contiguous keys and values
        return attention(q, k.dense(), v.dense(), qp, kp, scale=scale, causal=causal, window=window, softcap=softcap)
    return out


def _attention_batch(q: np.ndarray, k: PagedKVBatch, v: PagedKVBatch, q_pos: np.ndarray | None, *,
                     scale: float, causal: bool, window: int | None, softcap: float | None) -> np.ndarray:
    """`attention` of each sequence of a `PagedKVBatch` on its rows of q, in one call:
    each row the bits of `attention(q[rows], k.segment(b), v.segment(b), q_pos[rows],
    k.positions(b))`."""
    t, hq, d = q.shape
    hkv, dv = v.pages.shape[2], v.pages.shape[3]
    nseg = k.rows.shape[0] - 1
    if q_pos is None or np.shape(q_pos) != (t,) or k.pages.shape[2:] != (hkv, d) or hq % hkv \
            or k.rows.shape != (nseg + 1,) or int(k.rows[-1]) != t or v.rows is not k.rows \
            or k.tables.shape[0] != nseg or k.n.shape != (nseg,) or k.start.shape != (nseg,):
        raise ValueError(f"attention: q {q.shape} (positions {np.shape(q_pos)}) and a batch of {nseg} paged "
                         f"sequences ({k.pages.shape[2:]} keys, {v.pages.shape[2:]} values) are inconsistent")
    out = np.empty((t, hq, dv), np.float32)
    kk, vv, ksc, vsc = _paged_args(k, v)
    q, qp = _f32(q), _i64(q_pos)
    win, cap = _NO_WINDOW if window is None else int(window), np.float32(softcap or 0.0)
    parallel = nseg * hkv > 1 and t * hq * int(k.n.max()) * d >= PARALLEL_MIN
    if (_batch_par if parallel else _batch_ser)(q, kk, vv, ksc, vsc, _i64(k.tables), _i64(k.start), _i64(k.n),
                                                _i64(k.rows), qp, np.float32(scale), bool(causal), win, cap, BQ, out):
        for b in range(nseg):   # a task met a non-finite value: each sequence on its own (dense)
            a, e = int(k.rows[b]), int(k.rows[b + 1])
            out[a:e] = attention(q[a:e], k.segment(b), v.segment(b), qp[a:e], k.positions(b), scale=scale,
                                 causal=causal, window=window, softcap=softcap)
    return out
