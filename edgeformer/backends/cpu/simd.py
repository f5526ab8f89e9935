"""Portable SIMD row-dot kernels for the Numba backend, written as generic LLVM vector IR.

Why IR: LLVM fully unrolls a constant 32-iteration int8 dot loop *before* the loop
vectorizer runs and the SLP vectorizer then leaves it scalar (measured 17x slower); and a
per-block scalar result forces a horizontal reduction per 32 weights. Here each row dot is
one loop that keeps <16 x float> accumulators: per 64 weights, unsigned quants and int8
activations go through `_idot64` (one `vpdpbusd` with AVX512-VNNI, `vpmaddubsw` +
`vpmaddwd` with AVX512BW or AVX2, generic IR elsewhere: the choice follows the target
features Numba compiles for, so an AVX2-only CI machine gets AVX2 code), the int32 lanes
are converted and FMA'd with per-lane scales; one horizontal sum per row. Signed Q8_0
quants use the sign-extending pair product (`vpmaddwd` shape) where VNNI is missing.

Every `rowdot_*` takes 1-D C-contiguous arrays for one weight row (layout: `repack.py`)
and one token's int8 activations `xq` (K,), and returns the row's float32 dot product.
The K-quants take their packed scale fields and the activation scales and form every
scale in-register; the Q8_0/Q4_0/Q4_1 row dots are in `simd_rows.py`, built on these
helpers. Callers guarantee lengths (no bounds checks, like the rest of the hot path).

Editing this file: Numba's on-disk cache is keyed on the *calling* kernel's source file
(matmul.py, block.py), not on this one, so delete `backends/cpu/__pycache__` (or touch matmul.py)
after a change here, or stale machine code keeps running.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

_I8, _I32, _F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
_V16F = ir.VectorType(_F32, 16)


def _features(context) -> set[str]:
    """The LLVM target features Numba compiles for ("+avx2", ...; honours NUMBA_CPU_*)."""
    import llvmlite.binding as llvm
    feats = getattr(context.codegen(), "_tm_features", "") or llvm.get_host_cpu_features().flatten()
    return set(feats.split(","))


def _is_x86() -> bool:
    import llvmlite.binding as llvm
    return llvm.get_process_triple().startswith(("x86", "i386", "i686"))


def _native_half(context) -> bool:
    """Can LLVM lower `fpext half` inline? x86 needs F16C (else it emits a call to
    compiler-rt's __extendhfsf2, which Numba's JIT cannot resolve: a crash, seen with
    NUMBA_CPU_FEATURES=+sse2); AArch64 and others convert natively."""
    return not _is_x86() or "+f16c" in _features(context)


def _half_to_float(context, builder, h):
    """float32 from i16 half bits."""
    if _native_half(context):
        return builder.fpext(builder.bitcast(h, ir.HalfType()), _F32)
    # bit trick (exact for every half): move exponent/mantissa into float position, rescale
    # by 2^112 (fixes the exponent bias and normalises subnormals), restore inf/NaN and sign
    h32 = builder.zext(h, _I32)
    c = lambda k: ir.Constant(_I32, k)  # noqa: E731
    f = builder.fmul(builder.bitcast(builder.shl(builder.and_(h32, c(0x7FFF)), c(13)), _F32),
                     ir.Constant(_F32, 2.0 ** 112))
    bits = builder.bitcast(f, _I32)
    infnan = builder.icmp_unsigned(">=", builder.and_(h32, c(0x7C00)), c(0x7C00))
    bits = builder.select(infnan, builder.or_(bits, c(0x7F800000)), bits)
    return builder.bitcast(builder.or_(bits, builder.shl(builder.and_(h32, c(0x8000)), c(16))), _F32)


@intrinsic
def f16_to_f32(typingctx, h):
    """float32 value of IEEE half bits (uint16). One vcvtph2ps where F16C exists."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, sig, args):
        return _half_to_float(context, builder, args[0])
    return sig, codegen


@intrinsic
def bf16_to_f32(typingctx, h):
    """float32 value of bfloat16 bits (uint16): the bits are the top half of a float32."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, sig, args):
        w = builder.shl(builder.zext(args[0], _I32), ir.Constant(_I32, 16))
        return builder.bitcast(w, ir.FloatType())
    return sig, codegen


# ---------------------------------------------------------------- IR helpers

def _vec(t, n: int, vals=None):
    return ir.Constant(ir.VectorType(t, n), vals)


def _data(context, builder, aryty, ary):
    return context.make_array(aryty)(context, builder, ary).data


def _len(context, builder, aryty, ary):
    return cgutils.unpack_tuple(builder, context.make_array(aryty)(context, builder, ary).shape)[0]


def _vload(builder, ptr, off, n: int):
    p = builder.gep(ptr, [off])
    return builder.load(builder.bitcast(p, ir.VectorType(p.type.pointee, n).as_pointer()), align=1)


def _c(v, k: int):
    return ir.Constant(v.type, k)


def _bsplat(k: int, n: int = 32):
    return _vec(_I8, n, [k] * n)


def _pairdot(builder, q, x):
    """<32 x i8> q, x (signed) -> <16 x float>: lane i = q[2i]x[2i] + q[2i+1]x[2i+1]."""
    v32 = ir.VectorType(_I32, 32)
    m = builder.mul(builder.sext(q, v32), builder.sext(x, v32))
    e = builder.shuffle_vector(m, m, _vec(_I32, 16, list(range(0, 32, 2))))
    o = builder.shuffle_vector(m, m, _vec(_I32, 16, list(range(1, 32, 2))))
    return builder.sitofp(builder.add(e, o), _V16F)


def _call(builder, name: str, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def _dot64(context, builder, q, x):
    """`_idot64` as <16 x float>."""
    return builder.sitofp(_idot64(context, builder, q, x), _V16F)


def _is16(x) -> bool:
    """Whether the activation vector x holds int16 (else int8)."""
    return x.type.element == ir.IntType(16)


def _ext16(builder, q, signed: bool):
    """<n x i8> weight quants -> <n x i16> (sign- or zero-extended)."""
    t = ir.VectorType(ir.IntType(16), q.type.count)
    return builder.sext(q, t) if signed else builder.zext(q, t)


# int16 activations are stored per pair of 32-blocks (2i, 2i+1) in the order
# [b0 0-15 | b1 0-15 | b0 16-31 | b1 16-31] ("interleaved"; a lone last block stays in
# natural order), which is the order of a Q4/Q5 block pair's low then high nibbles. IL maps
# natural positions to it (and back: it is its own inverse).
IL = list(range(16)) + list(range(32, 48)) + list(range(16, 32)) + list(range(48, 64))


def _wpairs(context, builder, q, x):
    """<64 x i16> q . x (both interleaved) -> (A, B) <16 x i32>: A lane l = the pair
    products of elements 2l, 2l+1 (lanes 0-7: block 0 weights 0-15, 8-15: block 1 weights
    0-15), B the same for elements 32 + 2l, 33 + 2l (weights 16-31). One `vpmaddwd` per 32
    elements on AVX512BW, per 16 on AVX2; exact (|q| <= 255, |x| <= 32767)."""
    v16i, f = ir.VectorType(_I32, 16), _features(context) if _is_x86() else set()
    if "+avx512bw" in f:
        return tuple(_call(builder, "llvm.x86.avx512.pmaddw.d.512", v16i,
                           [_lanes(builder, q, list(range(32 * h, 32 * h + 32))),
                            _lanes(builder, x, list(range(32 * h, 32 * h + 32)))]) for h in range(2))
    if "+avx2" in f:
        v8i = ir.VectorType(_I32, 8)
        p = [_call(builder, "llvm.x86.avx2.pmadd.wd", v8i,
                   [_lanes(builder, q, list(range(16 * h, 16 * h + 16))),
                    _lanes(builder, x, list(range(16 * h, 16 * h + 16)))]) for h in range(4)]
        return tuple(builder.shuffle_vector(p[2 * h], p[2 * h + 1], _vec(_I32, 16, list(range(16)))) for h in range(2))
    v64 = ir.VectorType(_I32, 64)           # generic IR: the pmaddwd / smlal shape
    m = builder.mul(builder.sext(q, v64), builder.sext(x, v64))
    a = builder.add(builder.shuffle_vector(m, m, _vec(_I32, 32, list(range(0, 64, 2)))),
                    builder.shuffle_vector(m, m, _vec(_I32, 32, list(range(1, 64, 2)))))
    return _lanes(builder, a, list(range(16))), _lanes(builder, a, list(range(16, 32)))


def _wdot64(context, builder, q, x):
    """<64 x i16> q . x (both interleaved) -> <16 x i32>: lanes 0-7 sum to block 0, lanes
    8-15 to block 1 (`_idot64`'s block membership; lane l = A[l] + B[l] of `_wpairs`)."""
    a, b = _wpairs(context, builder, q, x)
    return builder.add(a, b)


def _idot64(context, builder, q, x):
    """<64 x i8> q (unsigned, < 64) . <64 x i8> x (signed) -> <16 x i32>, lane l = sum of
    the products of bytes 4l..4l+3: lanes 0-7 cover bytes 0-31, lanes 8-15 bytes 32-63.
    x86 gets one `vpdpbusd` (AVX512-VNNI) or `vpmaddubsw` + `vpmaddwd` (AVX512BW / AVX2:
    no widening of either operand; pair sums <= 2*63*127 fit int16, so no saturation);
    other targets get generic IR."""
    if _is16(x):       # int16 activations (interleaved; so must q be): unsigned quants
        return _wdot64(context, builder, _ext16(builder, q, False), x)
    v16i, f = ir.VectorType(_I32, 16), _features(context) if _is_x86() else set()
    if "+avx512vnni" in f and "+avx512f" in f:
        r = _call(builder, "llvm.x86.avx512.vpdpbusd.512", v16i,
                  [ir.Constant(v16i, None), builder.bitcast(q, v16i), builder.bitcast(x, v16i)])
    elif "+avx512bw" in f:
        p = _call(builder, "llvm.x86.avx512.pmaddubs.w.512", ir.VectorType(ir.IntType(16), 32), [q, x])
        r = _call(builder, "llvm.x86.avx512.pmaddw.d.512", v16i, [p, _vec(ir.IntType(16), 32, [1] * 32)])
    elif "+avx2" in f:
        v8i, ones = ir.VectorType(_I32, 8), _vec(ir.IntType(16), 16, [1] * 16)
        halves = []
        for h in range(2):
            idx = _vec(_I32, 32, list(range(32 * h, 32 * h + 32)))
            p = _call(builder, "llvm.x86.avx2.pmadd.ub.sw", ir.VectorType(ir.IntType(16), 16),
                      [builder.shuffle_vector(q, q, idx), builder.shuffle_vector(x, x, idx)])
            halves.append(_call(builder, "llvm.x86.avx2.pmadd.wd", v8i, [p, ones]))
        r = builder.shuffle_vector(halves[0], halves[1], _vec(_I32, 16, list(range(16))))
    else:   # products fit int16 (63 * 127); pair sums in int32 are the pmaddwd / smlal shape
        v64 = ir.VectorType(_I32, 64)
        m = builder.mul(builder.zext(q, v64), builder.sext(x, v64))
        p = builder.add(builder.shuffle_vector(m, m, _vec(_I32, 32, list(range(0, 64, 2)))),
                        builder.shuffle_vector(m, m, _vec(_I32, 32, list(range(1, 64, 2)))))
        r = builder.add(builder.shuffle_vector(p, p, _vec(_I32, 16, list(range(0, 32, 2)))),
                        builder.shuffle_vector(p, p, _vec(_I32, 16, list(range(1, 32, 2)))))
    return r


def _fma(builder, a, b, c):
    """a * b + c with ONE rounding (llvm.fma), for any float or float-vector type: never
    left to LLVM's contraction of a separate multiply and add, which it decides per
    compilation context (a row dot inlined into the fused decode step and into a linear
    kernel must round alike: batch invariance)."""
    t = a.type
    name = "llvm.fma.f32" if t == _F32 else f"llvm.fma.v{t.count}f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t] * 3), name)
    return builder.call(fn, [a, b, c])


def _scale(builder, sp, i, j=None):
    """<16 x float> of s[i] (or s[i] in lanes 0-7 and s[j] in lanes 8-15)."""
    a = builder.insert_element(ir.Constant(ir.VectorType(_F32, 2), None), builder.load(builder.gep(sp, [i])),
                               ir.Constant(_I32, 0))
    if j is not None:
        a = builder.insert_element(a, builder.load(builder.gep(sp, [j])), ir.Constant(_I32, 1))
    mask = [0] * 16 if j is None else [0] * 8 + [1] * 8
    return builder.shuffle_vector(a, a, _vec(_I32, 16, mask))


def _hsum(builder, v):
    n = v.type.count
    while n > 1:
        n //= 2
        v = builder.fadd(builder.shuffle_vector(v, v, _vec(_I32, n, list(range(n)))),
                         builder.shuffle_vector(v, v, _vec(_I32, n, list(range(n, 2 * n)))))
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _loop2(builder, n, body):
    """sum over i < n of body(i, acc) with two <16 x float> accumulators (even/odd i), so
    consecutive FMAs do not wait on each other; returns the horizontal sum."""
    a0 = cgutils.alloca_once_value(builder, ir.Constant(_V16F, None))
    a1 = cgutils.alloca_once_value(builder, ir.Constant(_V16F, None))
    one = _c(n, 1)
    with cgutils.for_range(builder, builder.ashr(n, one)) as loop:
        i = builder.shl(loop.index, one)
        builder.store(body(i, builder.load(a0)), a0)
        builder.store(body(builder.add(i, one), builder.load(a1)), a1)
    with builder.if_then(builder.icmp_signed("!=", builder.and_(n, one), _c(n, 0))):
        builder.store(body(builder.sub(n, one), builder.load(a0)), a0)
    return _hsum(builder, builder.fadd(builder.load(a0), builder.load(a1)))


def _ptrs(context, builder, sig, args):
    return [_data(context, builder, t, a) for t, a in zip(sig.args, args)]


# ---------------------------------------------------------------- row dots

def _f16(context, builder, ptr, i):
    return _half_to_float(context, builder, builder.load(builder.gep(ptr, [i])))


def _fsplat(builder, v, n: int):
    """Scalar float -> <n x float>."""
    t = ir.VectorType(_F32, n)
    x = builder.insert_element(ir.Constant(t, None), v, ir.Constant(_I32, 0))
    return builder.shuffle_vector(x, ir.Constant(t, None), _vec(_I32, n, [0] * n))


def _lanes(builder, v, mask):
    return builder.shuffle_vector(v, v, _vec(_I32, len(mask), mask))


def _kquant_codegen(context, builder, sig, args, with_qh: bool):
    """Q4_K / Q5_K row dot over 256-weight super-blocks j. Scales are formed in-register:
    s_g = d_j * sc_g * xd_g for the 8 sub-blocks at once; the mins term
    -dmin_j * sum_g mn_g * xs_g is folded into lanes 0-7 of the same accumulator."""
    ps = _ptrs(context, builder, sig, args)
    qp, hp = ps[0], (ps[1] if with_qh else None)
    scp, mnp, dp, dmp, xp, xdp, xsp = ps[2:] if with_qh else ps[1:]
    nsb = _len(context, builder, sig.args[-5], args[-5])   # d: one per super-block
    v8f = ir.VectorType(_F32, 8)

    def body(j, acc):
        j8 = builder.mul(j, _c(j, 8))
        sv = builder.fmul(builder.fmul(builder.uitofp(_vload(builder, scp, j8, 8), v8f), _vload(builder, xdp, j8, 8)),
                          _fsplat(builder, _f16(context, builder, dp, j), 8))
        mv = builder.fmul(builder.uitofp(_vload(builder, mnp, j8, 8), v8f), _vload(builder, xsp, j8, 8))
        wide = _vec(_I32, 16, list(range(16)))     # lanes 8-15: 0 * 0
        acc = _fma(builder, builder.shuffle_vector(mv, ir.Constant(v8f, None), wide),
                   builder.shuffle_vector(_fsplat(builder, builder.fneg(_f16(context, builder, dmp, j)), 8),
                                          ir.Constant(v8f, None), wide), acc)
        h = _vload(builder, hp, builder.mul(j, _c(j, 32)), 32) if with_qh else None
        for c in range(4):
            q = _vload(builder, qp, builder.add(builder.mul(j, _c(j, 128)), _c(j, 32 * c)), 32)
            lo = builder.and_(q, _bsplat(15))
            hi = builder.lshr(q, _bsplat(4))
            if with_qh:   # 5th bit of sub-block g = 2c (+1) is bit g of qh byte l
                lo = builder.or_(lo, builder.shl(builder.and_(builder.lshr(h, _bsplat(2 * c)), _bsplat(1)), _bsplat(4)))
                hi = builder.or_(hi, builder.shl(builder.and_(builder.lshr(h, _bsplat(2 * c + 1)), _bsplat(1)),
                                                 _bsplat(4)))
            xo = builder.add(builder.mul(j, _c(j, 256)), _c(j, 64 * c))
            xv = _vload(builder, xp, xo, 64)
            # sub-blocks 2c, 2c+1 (interleaved for int16 activations)
            q64 = builder.shuffle_vector(lo, hi, _vec(_I32, 64, IL if _is16(xv) else list(range(64))))
            acc = _fma(builder, _dot64(context, builder, q64, xv),
                       _lanes(builder, sv, [2 * c] * 8 + [2 * c + 1] * 8), acc)
        return acc
    return _loop2(builder, nsb, body)


@intrinsic
def rowdot_q4_k(typingctx, qs, sc, mn, d, dmin, xq, xd, xs):
    """Q4_K row (packed as in `repack.py`) . activations (xq int8, xd and xs per 32):
    qs uint8 (K/2,), sc/mn uint8 (K/32,), d/dmin f16 bits (K/256,). Returns the full dot,
    mins included: sum_g d*sc_g*xd_g*(q_g . xq_g) - dmin*mn_g*xs_g."""
    sig = types.float32(qs, sc, mn, d, dmin, xq, xd, xs)

    def codegen(context, builder, sig, args):
        return _kquant_codegen(context, builder, sig, args, False)
    return sig, codegen


@intrinsic
def rowdot_q5_k(typingctx, qs, qh, sc, mn, d, dmin, xq, xd, xs):
    """Q5_K: as `rowdot_q4_k` plus qh uint8 (K/8,), 32 bytes per 256 weights."""
    sig = types.float32(qs, qh, sc, mn, d, dmin, xq, xd, xs)

    def codegen(context, builder, sig, args):
        return _kquant_codegen(context, builder, sig, args, True)
    return sig, codegen


@intrinsic
def rowdot_q6_k(typingctx, ql, qh, sc, d, xq, xd):
    """Q6_K row: ql uint8 (K/2,), qh uint8 (K/4,), sc int8 (K/16,), d f16 bits (K/256,).
    Per 128 weights: ql 64 bytes (A = first 32, B = next 32) and qh 32 bytes; quarter k of
    32 weights is ((A|B) nibble | (qh bits 2k..2k+1) << 4) - 32 (ggml `dequantize_row_q6_K`);
    each 16 weights have scale d * sc, activations xd per 32."""
    sig = types.float32(ql, qh, sc, d, xq, xd)

    def codegen(context, builder, sig, args):
        lp, hp, scp, dp, xp, xdp = _ptrs(context, builder, sig, args)
        nsb = _len(context, builder, sig.args[3], args[3])

        def body(j, acc):
            xd8 = _vload(builder, xdp, builder.mul(j, _c(j, 8)), 8)
            sv = builder.fmul(builder.sitofp(_vload(builder, scp, builder.mul(j, _c(j, 16)), 16), _V16F),
                              _lanes(builder, xd8, [i // 2 for i in range(16)]))
            sv = builder.fmul(sv, _fsplat(builder, _f16(context, builder, dp, j), 16))
            for n in range(2):
                base = builder.add(builder.mul(j, _c(j, 128)), _c(j, 64 * n))
                a = _vload(builder, lp, base, 32)
                b = _vload(builder, lp, builder.add(base, _c(base, 32)), 32)
                h = _vload(builder, hp, builder.add(builder.mul(j, _c(j, 64)), _c(j, 32 * n)), 32)
                nib = (builder.and_(a, _bsplat(15)), builder.and_(b, _bsplat(15)),
                       builder.lshr(a, _bsplat(4)), builder.lshr(b, _bsplat(4)))
                q6 = [builder.or_(nib[k], builder.shl(builder.and_(builder.lshr(h, _bsplat(2 * k)), _bsplat(3)),
                                                      _bsplat(4))) for k in range(4)]
                for k in (0, 2):        # quarters k, k+1 are 64 consecutive weights
                    xv = _vload(builder, xp, builder.add(builder.mul(j, _c(j, 256)), _c(j, 128 * n + 32 * k)), 64)
                    g = 8 * n + 2 * k   # 16-weight groups g..g+3
                    if _is16(xv):    # signed q6 - 32 (interleaved) straight into the int16 pair products;
                        # A and B stay apart: their lanes hold groups (g, g+2) and (g+1, g+3)
                        q64 = builder.shuffle_vector(q6[k], q6[k + 1], _vec(_I32, 64, IL))
                        pa, pb = _wpairs(context, builder, _ext16(builder, builder.sub(q64, _bsplat(32, 64)), True), xv)
                        for p_, gs in ((pa, (g, g + 2)), (pb, (g + 1, g + 3))):
                            acc = _fma(builder, builder.sitofp(p_, _V16F), _lanes(builder, sv, [gs[0]] * 8 + [gs[1]] * 8),
                                       acc)
                        continue
                    q64 = builder.shuffle_vector(q6[k], q6[k + 1], _vec(_I32, 64, list(range(64))))
                    # unsigned q6 in 0..63; weight = q6 - 32: subtract 32 * (quad sums of x)
                    r = builder.sub(_idot64(context, builder, q64, xv), _idot64(context, builder, _bsplat(32, 64), xv))
                    lane_sc = _lanes(builder, sv, [g + m // 4 for m in range(16)])   # lanes 4m..4m+3: group g + m
                    acc = _fma(builder, builder.sitofp(r, _V16F), lane_sc, acc)
            return acc
        return _loop2(builder, nsb, body)
    return sig, codegen


# ---------------------------------------------------------------- vectorisable exp

@intrinsic
def ldexp_bits(typingctx, y, k):
    """y * 2**k by adding k to the exponent field (float32 y, int32 k); valid while the
    result stays a normal float (callers clamp), one integer add, no rounding."""
    sig = types.float32(types.float32, types.int32)

    def codegen(context, builder, sig, args):
        bits = builder.add(builder.bitcast(args[0], _I32), builder.shl(args[1], ir.Constant(_I32, 23)))
        return builder.bitcast(bits, _F32)
    return sig, codegen


# Cephes expf: exp(x) = 2^n * exp(r), r = x - n ln2 in two parts, degree-5 minimax for
# (exp(r) - 1 - r) / r^2; ~1 ulp on the normal range.
_LOG2E = np.float32(1.44269504088896341)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)


@njit(fastmath={"nsz", "contract"}, cache=True, inline="always")
def fast_exp(x):
    """exp(x) for float32 x, made of plain arithmetic so LLVM vectorises loops that call it
    (Numba has no vector exp without Intel SVML; libm expf is a scalar call ~5x slower).
    Results below ~1.2e-38 (x < -87.33) are 0 (numpy gives denormals there);
    x > ln(FLT_MAX) gives inf, NaN gives NaN."""
    xc = min(max(x, np.float32(-87.33)), np.float32(88.72284))
    n = np.rint(xc * _LOG2E)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    # the clamp keeps 2^n * p normal (exponent in [-126, 127]) for the bit-level scaling
    y = ldexp_bits(p * r * r + r + np.float32(1.0), np.int32(n))
    if x > np.float32(88.72284):   # ln(FLT_MAX)
        y = np.float32(np.inf)
    if x < np.float32(-87.33):
        y = np.float32(0.0)
    if x != x:
        y = x
    return y
