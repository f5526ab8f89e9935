"""Row dots for Q8_0 / Q4_0 / Q4_1 (one block per lane: `lanes1_*` one token, `lanes4_*`
four tokens per weight-row pass) and Q5_0 / Q5_1 (two blocks per 16 lanes: `rowdot2_*`,
`rowdot4_*`), every scale formed in registers, in the generic LLVM vector IR of
`vector_ir.py` (see `simd.py`'s docstring for why IR).

Editing this file: as for `simd.py`, Numba's disk cache is keyed on the calling kernels'
files; `CpuBackend` drops the cache when any source of the package changes.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeformer.backends.cpu.vector_ir import (F32, I8, I32, IL, V16F, bsplat, const, data, dot64, dpwssd, ext16, f16,
                                               fma, fsplat, hsum, is16, lanes, length, loop2, native_half, ptrs, vec, vload,
                                               wdot64)


# ---------------------------------------------------------------- row dots, pair layout
# Q5_0 / Q5_1 rows (two blocks per 16 lanes: 8 lanes each) read the weight's f16 scales and
# the activation's xd/xs directly and return the whole row result (zero point / mins
# included). Q8_0 / Q4_0 / Q4_1 have the lane layout below instead.

def _floats(context, builder, ptr, off, n: int, half: bool):
    """<n x float> of ptr[off:off + n], f16 bits converted when `half` (one load and one
    `vcvtph2ps` where LLVM converts halves inline, instead of n of each and n inserts)."""
    vt = ir.VectorType(F32, n)
    if not half:
        return vload(builder, ptr, off, n)
    if native_half(context):
        return builder.fpext(builder.bitcast(vload(builder, ptr, off, n), ir.VectorType(ir.HalfType(), n)), vt)
    out = ir.Constant(vt, None)
    for j in range(n):
        out = builder.insert_element(out, f16(context, builder, ptr, builder.add(off, const(off, j))), ir.Constant(I32, j))
    return out


_Q5 = ("q5_0", "q5_1")
_ZP = {"q5_0": 16}     # zero points: with int16 activations q - zp goes into the integer dot


def _signed_dot(context, builder, q64, x64, zp: int):
    """int16 activations: (q - zp) . x exactly in the integers, <16 x float> (no xs term)."""
    qs = builder.sub(q64, bsplat(zp, q64.type.count)) if zp else q64
    return builder.sitofp(wdot64(context, builder, ext16(builder, qs, True), x64), V16F)


def _has_z(kind: str, il: bool) -> bool:
    """Whether the kind needs the xs (zero point / mins) term: always for mins kinds; for
    zero-point kinds only with int8 activations (int16 folds the zero point into the dot)."""
    return kind in _MINS or (kind in _ZP and not il)
_MINS = ("q5_1",)          # kinds with a per-block min m_b instead of a zero point
# zero-point weight per kind: the dot of unsigned quants is corrected by zpw * sum_b d_b xs_b
# (Q5_0: q - 16, int8 activations); mins kinds add + sum_b m_b xs_b
_ZPW = {"q5_0": -16.0, "q5_1": 1.0}


def _hibits(builder, hp, b, nblk: int, il: bool = False):
    """<32 nblk x i8>: 16 where the 5th bit of a weight of blocks b..b+nblk-1 is set, else 0,
    in natural order (or interleaved, `vector_ir.IL`, for two blocks and `il`).
    qh holds each block's little-endian uint32 (bit j = weight j; ggml `block_q5_0`)."""
    n = 32 * nblk
    h = vload(builder, hp, builder.mul(b, const(b, 4)), 4 * nblk)
    pos = IL if il else list(range(n))      # natural weight index at each output position
    spread = builder.shuffle_vector(h, h, vec(I32, n, [4 * (p // 32) + p % 32 // 8 for p in pos]))
    bit = builder.and_(spread, vec(I8, n, [(1 << (p % 8)) if p % 8 < 7 else -128 for p in pos]))
    return builder.select(builder.icmp_unsigned("!=", bit, bsplat(0, n)), bsplat(16, n), bsplat(0, n))


def _add_tail(context, builder, kind: str, wp, hp, mp, b, d, xp, xdp, xsp, res, z) -> None:
    """The last block b of an odd block count, for one token: res += d xd_b (q_b . x_b) and
    the zero-point / mins term into z (lane 0), as the paired loop does for two blocks.
    d: the block's weight scale (float); xp/xdp/xsp: the token's xq / xd / xs pointers."""
    x32 = vload(builder, xp, builder.mul(b, const(b, 32)), 32)
    il = is16(x32)
    q = vload(builder, wp, builder.mul(b, const(b, 16)), 16)
    q32 = builder.shuffle_vector(builder.and_(q, bsplat(15, 16)), builder.lshr(q, bsplat(4, 16)),
                                 vec(I32, 32, list(range(32))))
    if hp is not None:
        q32 = builder.or_(q32, _hibits(builder, hp, b, 1))
    widen = vec(I32, 64, list(range(64)))
    q64, x64 = builder.shuffle_vector(q32, vec(I8, 32), widen), builder.shuffle_vector(
        x32, ir.Constant(x32.type, None), widen)
    if il and kind in _ZP:    # zero point inside the integer dot (the padding's -zp meets x = 0)
        tail = hsum(builder, _signed_dot(context, builder, q64, x64, _ZP[kind]))
    else:
        tail = hsum(builder, dot64(context, builder, q64, x64))
    if _has_z(kind, il):
        zv, i0 = builder.load(z), ir.Constant(I32, 0)
        z0 = fma(builder, f16(context, builder, mp, b) if mp is not None else d,
                  builder.load(builder.gep(xsp, [b])), builder.extract_element(zv, i0))
        builder.store(builder.insert_element(zv, z0, i0), z)
    s = builder.fmul(d, builder.load(builder.gep(xdp, [b])))
    builder.store(fma(builder, tail, s, builder.load(res)), res)


def _rowdot_scaled_codegen(context, builder, sig, args, kind: str):
    """kind "q5_0" | "q5_1": sum_b d_b xd_b (q_b . xq_b) + zero-point term, with q unsigned in
    the integer dot: nibbles with the 5th bit ORed in (0..31; zero point 16 / min m_b). The
    zero-point term is
    zpw * sum_b d_b xs_b  (xs_b = xd_b * sum(xq_b)), or + sum_b m_b xs_b for Q5_1.
    Arguments: the slot fields w, qh (Q5 kinds), -, -, d, m (mins kinds), then xq, xd, xs."""
    wp, hp, _, _, dp, mp, xp, xdp, xsp = ptrs(context, builder, sig, args)
    mp = mp if kind in _MINS else None
    hp = hp if kind in _Q5 else None
    nb = length(context, builder, sig.args[4], args[4])
    z = cgutils.alloca_once_value(builder, ir.Constant(ir.VectorType(F32, 2), None))   # zero-point / mins sums
    il = sig.args[6].dtype == types.int16       # int16 activations are interleaved (vector_ir.IL)
    order = vec(I32, 64, list(range(64)) if il else IL)   # lo|hi nibbles -> natural or interleaved
    split = vec(I32, 16, [0] * 8 + [1] * 8)

    def scales(b):
        d2 = _floats(context, builder, dp, b, 2, True)
        if _has_z(kind, il):
            xs2 = _floats(context, builder, xsp, b, 2, False)
            builder.store(fma(builder, _floats(context, builder, mp, b, 2, True) if mp is not None else d2, xs2,
                               builder.load(z)), z)
        s2 = builder.fmul(d2, _floats(context, builder, xdp, b, 2, False))
        return builder.shuffle_vector(s2, s2, split)

    def body(i, acc):     # blocks 2i, 2i+1: 64 weights
        b = builder.shl(i, const(i, 1))
        x64 = vload(builder, xp, builder.mul(i, const(i, 64)), 64)
        q = vload(builder, wp, builder.mul(i, const(i, 32)), 32)
        q64 = builder.shuffle_vector(builder.and_(q, bsplat(15)), builder.lshr(q, bsplat(4)), order)
        if hp is not None:
            q64 = builder.or_(q64, _hibits(builder, hp, b, 2, il))
        f = _signed_dot(context, builder, q64, x64, _ZP[kind]) if il and kind in _ZP else \
            dot64(context, builder, q64, x64)
        return fma(builder, f, scales(b), acc)

    res = cgutils.alloca_once_value(builder, loop2(builder, builder.ashr(nb, const(nb, 1)), body))
    with builder.if_then(builder.icmp_signed("!=", builder.and_(nb, const(nb, 1)), const(nb, 0))):
        b = builder.sub(nb, const(nb, 1))           # odd count: the last block alone
        _add_tail(context, builder, kind, wp, hp, mp, b, f16(context, builder, dp, b), xp, xdp, xsp, res, z)
    if not _has_z(kind, il):
        return builder.load(res)
    zs = builder.load(z)
    zsum = builder.fadd(builder.extract_element(zs, ir.Constant(I32, 0)), builder.extract_element(zs, ir.Constant(I32, 1)))
    return fma(builder, zsum, ir.Constant(F32, _ZPW[kind]), builder.load(res))


# ---------------------------------------------------------------- four tokens per row pass
# Prefill: each weight row meets T tokens. Unpacking its quants and converting its scales
# once per 4 tokens (instead of once per token), with 4 independent accumulators, is the
# register-tiling step that a (row x token) dot misses.

def _rowdot4_codegen(context, builder, sig, args, kind: str):
    """As `_rowdot_scaled_codegen` for tokens t0..t0+3 of 2-D xq (T, K), xd/xs (T, K/32);
    returns a UniTuple(float32, 4)."""
    wty, hty, _, _, dty, mty, xqty, xdty, xsty, _ = sig.args
    w, h, _, _, d, m, xq, xd, xs, t0 = args
    wp, dp = data(context, builder, wty, w), data(context, builder, dty, d)
    mp = data(context, builder, mty, m) if kind in _MINS else None
    hp = data(context, builder, hty, h) if kind in _Q5 else None
    xqa = context.make_array(xqty)(context, builder, xq)
    xda = context.make_array(xdty)(context, builder, xd)
    xsa = context.make_array(xsty)(context, builder, xs)
    k = cgutils.unpack_tuple(builder, xqa.shape)[1]
    nb = length(context, builder, dty, d)
    xps = [builder.gep(xqa.data, [builder.mul(builder.add(t0, const(t0, j)), k)]) for j in range(4)]
    xdps = [builder.gep(xda.data, [builder.mul(builder.add(t0, const(t0, j)), nb)]) for j in range(4)]
    xsps = [builder.gep(xsa.data, [builder.mul(builder.add(t0, const(t0, j)), nb)]) for j in range(4)]
    # two accumulators per token (even / odd pair), summed as `loop2` does: every token's
    # result has the bits `rowdot2_*` gives it alone (row-invariant batches rely on that)
    accs = [[cgutils.alloca_once_value(builder, ir.Constant(V16F, None)) for _ in range(4)] for _ in range(2)]
    zs = [cgutils.alloca_once_value(builder, ir.Constant(ir.VectorType(F32, 2), None)) for _ in range(4)]
    il = xqty.dtype == types.int16       # int16 activations are interleaved (vector_ir.IL)
    order = vec(I32, 64, list(range(64)) if il else IL)   # lo|hi nibbles -> natural or interleaved
    split = vec(I32, 16, [0] * 8 + [1] * 8)

    def pair(i, acc):          # blocks 2i, 2i+1 of all 4 tokens into accumulators `acc`
        b = builder.shl(i, const(i, 1))
        q = vload(builder, wp, builder.mul(i, const(i, 32)), 32)
        q64 = builder.shuffle_vector(builder.and_(q, bsplat(15)), builder.lshr(q, bsplat(4)), order)
        if hp is not None:
            q64 = builder.or_(q64, _hibits(builder, hp, b, 2, il))
        d2 = _floats(context, builder, dp, b, 2, True)
        zw = _floats(context, builder, mp, b, 2, True) if mp is not None else d2
        if il and kind in _ZP:       # shared by the 4 tokens: the signed, widened quants
            q64 = builder.sub(q64, bsplat(_ZP[kind], 64))
        for j in range(4):
            x64 = vload(builder, xps[j], builder.mul(i, const(i, 64)), 64)
            if il and kind in _ZP:
                f = _signed_dot(context, builder, q64, x64, 0)
            else:
                f = dot64(context, builder, q64, x64)
            if _has_z(kind, il):
                builder.store(fma(builder, zw, _floats(context, builder, xsps[j], b, 2, False), builder.load(zs[j])), zs[j])
            s2 = builder.fmul(d2, _floats(context, builder, xdps[j], b, 2, False))
            builder.store(fma(builder, f, builder.shuffle_vector(s2, s2, split), builder.load(acc[j])), acc[j])

    npairs = builder.ashr(nb, const(nb, 1))
    one = const(npairs, 1)
    with cgutils.for_range(builder, builder.ashr(npairs, one)) as loop:
        i = builder.shl(loop.index, one)
        pair(i, accs[0])
        pair(builder.add(i, one), accs[1])
    with builder.if_then(builder.icmp_signed("!=", builder.and_(npairs, one), const(npairs, 0))):
        pair(builder.sub(npairs, one), accs[0])
    accs = [builder.fadd(builder.load(accs[0][j]), builder.load(accs[1][j])) for j in range(4)]
    res = [cgutils.alloca_once_value(builder, hsum(builder, a)) for a in accs]
    with builder.if_then(builder.icmp_signed("!=", builder.and_(nb, const(nb, 1)), const(nb, 0))):
        b = builder.sub(nb, const(nb, 1))
        dd = f16(context, builder, dp, b)
        for j in range(4):
            _add_tail(context, builder, kind, wp, hp, mp, b, dd, xps[j], xdps[j], xsps[j], res[j], zs[j])
    zpw = ir.Constant(F32, _ZPW[kind])
    if not _has_z(kind, il):
        return context.make_tuple(builder, sig.return_type, [builder.load(r) for r in res])
    outs = []
    for j in range(4):
        zv = builder.load(zs[j])
        zsum = builder.fadd(builder.extract_element(zv, ir.Constant(I32, 0)), builder.extract_element(zv, ir.Constant(I32, 1)))
        outs.append(fma(builder, zsum, zpw, builder.load(res[j])))
    return context.make_tuple(builder, sig.return_type, outs)


# ---------------------------------------------------------------- one block per lane
# Q8_0 / Q4_0 / Q4_1 against int16 activations in the lane layout (`act_quant.lane_pos`,
# `repack.lanes_of`): a group of 16 blocks is stored so that one `vpmaddwd` multiplies two
# elements of each of the 16 blocks, one block per int32 lane. 8 step pairs then leave the
# 16 whole block dots in 16 lanes, and one convert, one scale multiply and one FMA (one
# more for the Q4_1 mins) serve 16 blocks; the pair layout's loop spends them per 2 blocks
# (BENCHMARKS "What bounds the row dots"). Blocks past the last whole group keep the pair
# layout, summed into the same accumulators (`_lane_tail`).
#
# Group layout, 16 blocks j = 0..15, step pair p = 0..7, half h = 0..1, e = 0..1:
#   activations int16 [p, h, j, e] = x[block j][16 h + 2 p + e]          (512 values)
#   Q8_0 weights int8 [p, h, j, e] = q[block j][16 h + 2 p + e]          (512 bytes)
#   Q4 weights  uint8 [p, j, e]    = byte 2 p + e of block j (ggml: low nibble element
#                                    2 p + e, high nibble element 16 + 2 p + e)  (256 bytes)

_LANE_BYTES = {"q8_0": 512, "q4_0": 256, "q4_1": 256}     # weight bytes per group of 16 blocks


def _lanes(context, builder, kind: str, wp, dp, mp, xps, xdps, xsps, nb):
    """Row . tokens xps (int16 lane layout) -> one float per token; every token's bits are
    what it gets alone (the same operations in the same order per token)."""
    ntok, mins = len(xps), kind == "q4_1"
    nacc = 4 if ntok == 1 else 2
    i16 = ir.IntType(16)
    ngrp = builder.ashr(nb, const(nb, 4))
    accs = [cgutils.alloca_once_value(builder, ir.Constant(V16F, None)) for _ in range(ntok)]
    v16i = ir.VectorType(I32, 16)
    with cgutils.for_range(builder, ngrp) as loop:
        g = loop.index
        wb = builder.mul(g, const(g, _LANE_BYTES[kind]))
        xb = builder.mul(g, const(g, 512))
        sb = builder.shl(g, const(g, 4))
        ia = [[ir.Constant(v16i, None)] * nacc for _ in range(ntok)]
        for p in range(8):
            if kind == "q8_0":
                w = ext16(builder, vload(builder, wp, builder.add(wb, const(wb, 64 * p)), 64), True)
            else:
                raw = ext16(builder, vload(builder, wp, builder.add(wb, const(wb, 32 * p)), 32), False)
                w = builder.shuffle_vector(builder.and_(raw, vec(i16, 32, [15] * 32)),
                                           builder.lshr(raw, vec(i16, 32, [4] * 32)), vec(I32, 64, list(range(64))))
                if kind == "q4_0":
                    w = builder.sub(w, vec(i16, 64, [8] * 64))
            wh = [lanes(builder, w, list(range(32 * h, 32 * h + 32))) for h in range(2)]
            for t in range(ntok):
                for h in range(2):
                    x = vload(builder, xps[t], builder.add(xb, const(xb, 64 * p + 32 * h)), 32)
                    a = (2 * p + h) % nacc
                    ia[t][a] = dpwssd(context, builder, ia[t][a], wh[h], x)
        d16 = _floats(context, builder, dp, sb, 16, True)
        m16 = _floats(context, builder, mp, sb, 16, True) if mins else None
        for t in range(ntok):
            isum = ia[t][0]
            for a in ia[t][1:]:
                isum = builder.add(isum, a)
            s = builder.fmul(d16, vload(builder, xdps[t], sb, 16))
            acc = fma(builder, builder.sitofp(isum, V16F), s, builder.load(accs[t]))
            if mins:
                acc = fma(builder, m16, vload(builder, xsps[t], sb, 16), acc)
            builder.store(acc, accs[t])
    done = builder.shl(ngrp, const(ngrp, 4))
    _lane_tail(context, builder, kind, wp, dp, mp, xps, xdps, xsps, ngrp, done, nb, accs)
    return [hsum(builder, builder.load(a)) for a in accs]


def _lane_tail(context, builder, kind: str, wp, dp, mp, xps, xdps, xsps, ngrp, done, nb, accs):
    """The blocks done..nb-1 past the last whole group, in the pair layout (weights as the
    file's, activations interleaved per pair, a lone last block natural), into the same
    per-token accumulators: lanes 0-7 of a pair's dot hold its first block, 8-15 the
    second (a lone block: all 16), scaled per lane; the mins go into lanes 0 and 8."""
    i16, per = ir.IntType(16), 32 if kind == "q8_0" else 16      # weight bytes per block
    wt = builder.gep(wp, [builder.mul(ngrp, const(ngrp, _LANE_BYTES[kind]))])
    xts = [builder.gep(x, [builder.mul(ngrp, const(ngrp, 512))]) for x in xps]
    rest = builder.sub(nb, done)
    zero2 = ir.Constant(ir.VectorType(F32, 2), [0.0, 0.0])
    spread = vec(I32, 16, [0] * 8 + [1] * 8)
    at08 = vec(I32, 16, [0] + [2] * 7 + [1] + [2] * 7)         # two values into lanes 0 and 8

    def quants(off, nblk):       # <32 nblk x i16> of blocks at byte offset off, activation order
        if kind == "q8_0":
            q = vload(builder, wt, off, 32 * nblk)
            return ext16(builder, lanes(builder, q, IL) if nblk == 2 else q, True)
        raw = ext16(builder, vload(builder, wt, off, 16 * nblk), False)
        w = builder.shuffle_vector(builder.and_(raw, vec(i16, 16 * nblk, [15] * (16 * nblk))),
                                   builder.lshr(raw, vec(i16, 16 * nblk, [4] * (16 * nblk))),
                                   vec(I32, 32 * nblk, list(range(32 * nblk))))
        return builder.sub(w, vec(i16, 32 * nblk, [8] * (32 * nblk))) if kind == "q4_0" else w

    with cgutils.for_range(builder, builder.ashr(rest, const(rest, 1))) as loop:
        i = loop.index
        b = builder.add(done, builder.shl(i, const(i, 1)))
        w = quants(builder.mul(i, const(i, 2 * per)), 2)
        d2 = _floats(context, builder, dp, b, 2, True)
        m2 = _floats(context, builder, mp, b, 2, True) if kind == "q4_1" else None
        for t in range(len(xps)):
            x = vload(builder, xts[t], builder.mul(i, const(i, 64)), 64)
            isum = ir.Constant(ir.VectorType(I32, 16), None)
            for h in range(2):
                r = list(range(32 * h, 32 * h + 32))
                isum = dpwssd(context, builder, isum, lanes(builder, w, r), lanes(builder, x, r))
            s2 = builder.fmul(d2, _floats(context, builder, xdps[t], b, 2, False))
            acc = fma(builder, builder.sitofp(isum, V16F), builder.shuffle_vector(s2, s2, spread), builder.load(accs[t]))
            if m2 is not None:
                xs2 = _floats(context, builder, xsps[t], b, 2, False)
                acc = fma(builder, builder.shuffle_vector(m2, zero2, at08), builder.shuffle_vector(xs2, zero2, at08), acc)
            builder.store(acc, accs[t])
    with builder.if_then(builder.icmp_signed("!=", builder.and_(rest, const(rest, 1)), const(rest, 0))):
        b = builder.sub(nb, const(nb, 1))
        i = builder.sub(rest, const(rest, 1))
        w = quants(builder.mul(i, const(i, per)), 1)
        d = f16(context, builder, dp, b)
        for t in range(len(xps)):
            x = vload(builder, xts[t], builder.mul(i, const(i, 32)), 32)
            isum = dpwssd(context, builder, ir.Constant(ir.VectorType(I32, 16), None), w, x)
            s = fsplat(builder, builder.fmul(d, builder.load(builder.gep(xdps[t], [b]))), 16)
            acc = fma(builder, builder.sitofp(isum, V16F), s, builder.load(accs[t]))
            if kind == "q4_1":
                mx = builder.fmul(f16(context, builder, mp, b), builder.load(builder.gep(xsps[t], [b])))
                acc = builder.insert_element(acc, builder.fadd(builder.extract_element(acc, ir.Constant(I32, 0)), mx),
                                             ir.Constant(I32, 0))
            builder.store(acc, accs[t])


def _lanes1_codegen(context, builder, sig, args, kind: str):
    wp, _, _, _, dp, mp, xp, xdp, xsp = ptrs(context, builder, sig, args)
    nb = length(context, builder, sig.args[4], args[4])
    return _lanes(context, builder, kind, wp, dp, mp, [xp], [xdp], [xsp], nb)[0]


def _lanes4_codegen(context, builder, sig, args, kind: str):
    """As `_lanes1_codegen` for tokens t0..t0+3 of 2-D xq (T, K), xd/xs (T, K/32)."""
    wty, _, _, _, dty, mty, xqty, xdty, xsty, _ = sig.args
    w, _, _, _, d, m, xq, xd, xs, t0 = args
    wp, dp, mp = data(context, builder, wty, w), data(context, builder, dty, d), data(context, builder, mty, m)
    nb = length(context, builder, dty, d)
    rows = []
    for ty, arr, n in ((xqty, xq, None), (xdty, xd, nb), (xsty, xs, nb)):
        a = context.make_array(ty)(context, builder, arr)
        n = cgutils.unpack_tuple(builder, a.shape)[1] if n is None else n
        rows.append([builder.gep(a.data, [builder.mul(builder.add(t0, const(t0, j)), n)]) for j in range(4)])
    return context.make_tuple(builder, sig.return_type, _lanes(context, builder, kind, wp, dp, mp, *rows, nb))


# ---------------------------------------------------------------- the row dots
# Arguments: one weight row as the slot fields a..f (`kinds.slot`: a the quants, b the Q5
# high bits qh, e the f16 scales d, f the f16 mins m; the others empty), then the
# activations: one token's xq (K,), xd, xs (K/32,) for `rowdot2_*`, or 2-D xq (T, K), xd, xs
# (T, K/32) and a first token t0 for `rowdot4_*` (tokens t0..t0+3, each with the bits
# `rowdot2_*` gives it alone: row-invariant batches rely on that).

def _rowdot2(kind: str, *tys):
    def codegen(context, builder, sig, args):
        return _rowdot_scaled_codegen(context, builder, sig, args, kind)
    return types.float32(*tys), codegen


def _rowdot4(kind: str, *tys):
    def codegen(context, builder, sig, args):
        return _rowdot4_codegen(context, builder, sig, args, kind)
    return types.UniTuple(types.float32, 4)(*tys), codegen


@intrinsic
def rowdot2_q5_0(typingctx, a, b, c, d, e, f, xq, xd, xs):
    """Q5_0 row: a nibbles as Q4_0, b uint8 (K/8,) (each block's uint32 high bits,
    little-endian) -> sum_b f16(e_b) (xd_b (q_b . xq_b) - 16 xs_b)."""
    return _rowdot2("q5_0", a, b, c, d, e, f, xq, xd, xs)


@intrinsic
def rowdot2_q5_1(typingctx, a, b, c, d, e, f, xq, xd, xs):
    """Q5_1 row (as Q5_0 plus mins f) -> sum_b f16(e_b) xd_b (q_b . xq_b) + f16(f_b) xs_b."""
    return _rowdot2("q5_1", a, b, c, d, e, f, xq, xd, xs)


@intrinsic
def rowdot4_q5_0(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q5_0 row . tokens t0..t0+3."""
    return _rowdot4("q5_0", a, b, c, d, e, f, xq, xd, xs, t0)


@intrinsic
def rowdot4_q5_1(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q5_1 row . tokens t0..t0+3."""
    return _rowdot4("q5_1", a, b, c, d, e, f, xq, xd, xs, t0)


def _lanes_rowdot(kind: str, ntok: int, *tys):
    def codegen(context, builder, sig, args):
        return (_lanes1_codegen if ntok == 1 else _lanes4_codegen)(context, builder, sig, args, kind)
    return (types.float32 if ntok == 1 else types.UniTuple(types.float32, 4))(*tys), codegen


@intrinsic
def lanes1_q8_0(typingctx, a, b, c, d, e, f, xq, xd, xs):
    """Q8_0 row in the lane layout . one token's int16 lane-layout activations -> float32."""
    return _lanes_rowdot("q8_0", 1, a, b, c, d, e, f, xq, xd, xs)


@intrinsic
def lanes1_q4_0(typingctx, a, b, c, d, e, f, xq, xd, xs):
    """Q4_0 row in the lane layout . one token (zero point 8 inside the integer dot)."""
    return _lanes_rowdot("q4_0", 1, a, b, c, d, e, f, xq, xd, xs)


@intrinsic
def lanes1_q4_1(typingctx, a, b, c, d, e, f, xq, xd, xs):
    """Q4_1 row in the lane layout . one token (mins f through xs)."""
    return _lanes_rowdot("q4_1", 1, a, b, c, d, e, f, xq, xd, xs)


@intrinsic
def lanes4_q8_0(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q8_0 lane-layout row . tokens t0..t0+3 of 2-D lane-layout xq -> 4 float32."""
    return _lanes_rowdot("q8_0", 4, a, b, c, d, e, f, xq, xd, xs, t0)


@intrinsic
def lanes4_q4_0(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q4_0 lane-layout row . tokens t0..t0+3."""
    return _lanes_rowdot("q4_0", 4, a, b, c, d, e, f, xq, xd, xs, t0)


@intrinsic
def lanes4_q4_1(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q4_1 lane-layout row . tokens t0..t0+3."""
    return _lanes_rowdot("q4_1", 4, a, b, c, d, e, f, xq, xd, xs, t0)
