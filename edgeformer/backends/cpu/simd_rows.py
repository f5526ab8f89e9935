"""Row dots for Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 with every scale formed in registers (`rowdot2_*`,
one token; `rowdot4_*`, four tokens per weight-row pass for prefill), in the generic LLVM
vector IR of `vector_ir.py` (see `simd.py`'s docstring for why IR).

Editing this file: as for `simd.py`, Numba's disk cache is keyed on the calling kernels'
files; `CpuBackend` drops the cache when any source of the package changes.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeformer.backends.cpu.vector_ir import (F32, I8, I32, IL, V16F, bsplat, const, data, dot64, ext16, f16,
                                               features, fma, hsum, is16, is_x86, lanes, length, loop2, native_half, pairdot,
                                               ptrs, vec, vload, wdot64)


# ---------------------------------------------------------------- row dots, scales in-register
# The Q8_0/Q4_0/Q4_1 dots above take per-block scales `s` that the caller forms in a
# separate Numba loop per row; for short rows (K = 576: 18 blocks) that loop costs as much
# as the dot. These variants read the weight's f16 scales and the activation's xd/xs
# directly and return the whole row result (zero point / mins included).

def _vnni(context) -> bool:
    f = features(context) if is_x86() else set()
    return "+avx512vnni" in f and "+avx512f" in f


def _f2(context, builder, ptr, b, half: bool):
    """<2 x float> of ptr[b], ptr[b + 1] (f16 bits converted when `half`: one 4-byte load and
    one `vcvtph2ps` where LLVM converts halves inline, instead of two of each and an insert)."""
    v2 = ir.VectorType(F32, 2)
    if half and native_half(context):
        return builder.fpext(builder.bitcast(vload(builder, ptr, b, 2), ir.VectorType(ir.HalfType(), 2)), v2)
    out = ir.Constant(v2, None)
    for j in range(2):
        i = builder.add(b, const(b, j))
        x = f16(context, builder, ptr, i) if half else builder.load(builder.gep(ptr, [i]))
        out = builder.insert_element(out, x, ir.Constant(I32, j))
    return out


_Q5 = ("q5_0", "q5_1")
_ZP = {"q4_0": 8, "q5_0": 16}     # zero points: with int16 activations q - zp goes into the integer dot


def _signed_dot(context, builder, q64, x64, zp: int):
    """int16 activations: (q - zp) . x exactly in the integers, <16 x float> (no xs term)."""
    qs = builder.sub(q64, bsplat(zp, q64.type.count)) if zp else q64
    return builder.sitofp(wdot64(context, builder, ext16(builder, qs, True), x64), V16F)


def _has_z(kind: str, il: bool) -> bool:
    """Whether the kind needs the xs (zero point / mins) term: always for mins kinds; for
    zero-point kinds only with int8 activations (int16 folds the zero point into the dot)."""
    return kind in _MINS or (kind in _ZP and not il)
_MINS = ("q4_1", "q5_1")          # kinds with a per-block min m_b instead of a zero point
# zero-point weight per kind: the dot of unsigned quants is corrected by zpw * sum_b d_b xs_b
# (Q4_0: q - 8, Q5_0: q - 16; Q8_0 on VNNI: (q + 128) - 128); mins kinds add + sum_b m_b xs_b
_ZPW = {"q4_0": -8.0, "q4_1": 1.0, "q5_0": -16.0, "q5_1": 1.0}


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


def _pairdot64(context, builder, q, x64):
    """Signed <64 x i8> q . x64 -> <16 x float>: lanes 0-7 sum to block (bytes 0-31),
    lanes 8-15 to the next (each block's 16 pair sums folded to 8), `idot64`'s layout."""
    if is16(x64):     # q in natural order -> interleaved, as int16 activations are
        q = lanes(builder, q, IL)
        return builder.sitofp(wdot64(context, builder, ext16(builder, q, True), x64), V16F)
    lo = pairdot(builder, lanes(builder, q, list(range(32))), lanes(builder, x64, list(range(32))))
    hi = pairdot(builder, lanes(builder, q, list(range(32, 64))), lanes(builder, x64, list(range(32, 64))))
    return builder.fadd(builder.shuffle_vector(lo, hi, vec(I32, 16, list(range(0, 16, 2)) + list(range(16, 32, 2)))),
                        builder.shuffle_vector(lo, hi, vec(I32, 16, list(range(1, 16, 2)) + list(range(17, 32, 2)))))


def _add_tail(context, builder, kind: str, wp, hp, mp, b, d, xp, xdp, xsp, res, z) -> None:
    """The last block b of an odd block count, for one token: res += d xd_b (q_b . x_b) and
    the zero-point / mins term into z (lane 0), as the paired loop does for two blocks.
    d: the block's weight scale (float); xp/xdp/xsp: the token's xq / xd / xs pointers."""
    x32 = vload(builder, xp, builder.mul(b, const(b, 32)), 32)
    il = is16(x32)
    if kind == "q8_0":       # signed pair products, exact on every target; no zero point
        tail = hsum(builder, pairdot(builder, vload(builder, wp, builder.mul(b, const(b, 32)), 32), x32))
    else:
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
    """kind "q8_0" | "q4_0" | "q4_1" | "q5_0" | "q5_1": sum_b d_b xd_b (q_b . xq_b) + zero-point
    term, with q unsigned in the integer dot: Q4 nibbles (zero point 8 / min m_b), Q5 nibbles
    with the 5th bit ORed in (0..31; zero point 16 / min m_b) and, on VNNI, Q8_0 as q + 128
    (one vpdpbusd per 64 weights instead of widening multiplies). The zero-point term is
    zpw * sum_b d_b xs_b  (xs_b = xd_b * sum(xq_b)), or + sum_b m_b xs_b for Q4_1/Q5_1.
    Arguments: the slot fields w, qh (Q5 kinds), -, -, d, m (mins kinds), then xq, xd, xs."""
    wp, hp, _, _, dp, mp, xp, xdp, xsp = ptrs(context, builder, sig, args)
    mp = mp if kind in _MINS else None
    hp = hp if kind in _Q5 else None
    nb = length(context, builder, sig.args[4], args[4])
    z = cgutils.alloca_once_value(builder, ir.Constant(ir.VectorType(F32, 2), None))   # zero-point / mins sums
    unsigned8 = kind == "q8_0" and _vnni(context) and sig.args[6].dtype == types.int8
    il = sig.args[6].dtype == types.int16       # int16 activations are interleaved (vector_ir.IL)
    order = vec(I32, 64, list(range(64)) if il else IL)   # lo|hi nibbles -> natural or interleaved
    split = vec(I32, 16, [0] * 8 + [1] * 8)

    def scales(b):
        d2 = _f2(context, builder, dp, b, True)
        if _has_z(kind, il) or unsigned8:
            xs2 = _f2(context, builder, xsp, b, False)
            builder.store(fma(builder, _f2(context, builder, mp, b, True) if mp is not None else d2, xs2,
                               builder.load(z)), z)
        s2 = builder.fmul(d2, _f2(context, builder, xdp, b, False))
        return builder.shuffle_vector(s2, s2, split)

    def body(i, acc):     # blocks 2i, 2i+1: 64 weights
        b = builder.shl(i, const(i, 1))
        x64 = vload(builder, xp, builder.mul(i, const(i, 64)), 64)
        if kind == "q8_0":
            q = vload(builder, wp, builder.mul(i, const(i, 64)), 64)
            if unsigned8:
                f = dot64(context, builder, builder.xor(q, bsplat(-128, 64)), x64)
            else:
                f = _pairdot64(context, builder, q, x64)
        else:
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
    if not (_has_z(kind, il) or unsigned8):
        return builder.load(res)
    zs = builder.load(z)
    zsum = builder.fadd(builder.extract_element(zs, ir.Constant(I32, 0)), builder.extract_element(zs, ir.Constant(I32, 1)))
    zpw = -128.0 if unsigned8 else _ZPW[kind]
    return fma(builder, zsum, ir.Constant(F32, zpw), builder.load(res))


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
    unsigned8 = kind == "q8_0" and _vnni(context) and xqty.dtype == types.int8

    def pair(i, acc):          # blocks 2i, 2i+1 of all 4 tokens into accumulators `acc`
        b = builder.shl(i, const(i, 1))
        if kind == "q8_0":
            q64 = vload(builder, wp, builder.mul(i, const(i, 64)), 64)
            q64 = builder.xor(q64, bsplat(-128, 64)) if unsigned8 else q64
        else:
            q = vload(builder, wp, builder.mul(i, const(i, 32)), 32)
            q64 = builder.shuffle_vector(builder.and_(q, bsplat(15)), builder.lshr(q, bsplat(4)), order)
            if hp is not None:
                q64 = builder.or_(q64, _hibits(builder, hp, b, 2, il))
        d2 = _f2(context, builder, dp, b, True)
        zw = _f2(context, builder, mp, b, True) if mp is not None else d2
        if il and kind in _ZP:       # shared by the 4 tokens: the signed, widened quants
            q64 = builder.sub(q64, bsplat(_ZP[kind], 64))
        for j in range(4):
            x64 = vload(builder, xps[j], builder.mul(i, const(i, 64)), 64)
            if il and kind in _ZP:
                f = _signed_dot(context, builder, q64, x64, 0)
            elif kind != "q8_0" or unsigned8:
                f = dot64(context, builder, q64, x64)
            else:
                f = _pairdot64(context, builder, q64, x64)
            if _has_z(kind, il) or unsigned8:
                builder.store(fma(builder, zw, _f2(context, builder, xsps[j], b, False), builder.load(zs[j])), zs[j])
            s2 = builder.fmul(d2, _f2(context, builder, xdps[j], b, False))
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
    zpw = ir.Constant(F32, -128.0 if unsigned8 else 0.0 if kind == "q8_0" else _ZPW[kind])
    if not (_has_z(kind, il) or unsigned8):
        return context.make_tuple(builder, sig.return_type, [builder.load(r) for r in res])
    outs = []
    for j in range(4):
        zv = builder.load(zs[j])
        zsum = builder.fadd(builder.extract_element(zv, ir.Constant(I32, 0)), builder.extract_element(zv, ir.Constant(I32, 1)))
        outs.append(fma(builder, zsum, zpw, builder.load(res[j])))
    return context.make_tuple(builder, sig.return_type, outs)


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
def rowdot2_q8_0(typingctx, a, b, c, d, e, f, xq, xd, xs):
    """Q8_0 row: a int8 (K,), e f16 bits (K/32,) -> sum_b f16(e_b) xd_b (a_b . xq_b), float32."""
    return _rowdot2("q8_0", a, b, c, d, e, f, xq, xd, xs)


@intrinsic
def rowdot2_q4_0(typingctx, a, b, c, d, e, f, xq, xd, xs):
    """Q4_0 row (a uint8 (K/2,) in ggml block order: byte i of a 16-byte block holds weight i in
    the low nibble, weight i + 16 in the high) -> sum_b f16(e_b) (xd_b (q_b . xq_b) - 8 xs_b)."""
    return _rowdot2("q4_0", a, b, c, d, e, f, xq, xd, xs)


@intrinsic
def rowdot2_q4_1(typingctx, a, b, c, d, e, f, xq, xd, xs):
    """Q4_1 row (mins f) -> sum_b f16(e_b) xd_b (q_b . xq_b) + f16(f_b) xs_b."""
    return _rowdot2("q4_1", a, b, c, d, e, f, xq, xd, xs)


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
def rowdot4_q8_0(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q8_0 row . tokens t0..t0+3 -> 4 float32 (the unsigned-offset dot on VNNI, signed pair
    products elsewhere)."""
    return _rowdot4("q8_0", a, b, c, d, e, f, xq, xd, xs, t0)


@intrinsic
def rowdot4_q4_0(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q4_0 row . tokens t0..t0+3, as `rowdot4_q8_0`."""
    return _rowdot4("q4_0", a, b, c, d, e, f, xq, xd, xs, t0)


@intrinsic
def rowdot4_q4_1(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q4_1 row . tokens t0..t0+3."""
    return _rowdot4("q4_1", a, b, c, d, e, f, xq, xd, xs, t0)


@intrinsic
def rowdot4_q5_0(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q5_0 row . tokens t0..t0+3."""
    return _rowdot4("q5_0", a, b, c, d, e, f, xq, xd, xs, t0)


@intrinsic
def rowdot4_q5_1(typingctx, a, b, c, d, e, f, xq, xd, xs, t0):
    """Q5_1 row . tokens t0..t0+3."""
    return _rowdot4("q5_1", a, b, c, d, e, f, xq, xd, xs, t0)
