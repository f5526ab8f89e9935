"""Portable SIMD row-dot kernels for the Numba backend, written as generic LLVM vector IR.

Why IR: LLVM fully unrolls a constant 32-iteration int8 dot loop *before* the loop
vectorizer runs and the SLP vectorizer then leaves it scalar (measured 17x slower); and a
per-block scalar result forces a horizontal reduction per 32 weights. Here each row dot is
one loop that keeps <16 x float> accumulators: per 64 weights, unsigned quants and int8
activations go through `idot64` (one `vpdpbusd` with AVX512-VNNI, `vpmaddubsw` +
`vpmaddwd` with AVX512BW or AVX2, generic IR elsewhere: the choice follows the target
features Numba compiles for, so an AVX2-only CI machine gets AVX2 code), the int32 lanes
are converted and FMA'd with per-lane scales; one horizontal sum per row. Signed Q8_0
quants use the sign-extending pair product (`vpmaddwd` shape) where VNNI is missing.

Every row dot takes one weight row as the six slot fields a..f (1-D C-contiguous rows of
the arrays `kinds.slot` lays out; unused fields are empty) and one token's activations
xq (K,), xd and xs (K/32,), and returns the row's float32 dot product; the K-quants form
every scale in-register. The Q8_0/Q4_0/Q4_1/Q5 row dots are in `simd_rows.py`; both are
built on `vector_ir.py`. Callers guarantee lengths (no bounds checks, like the rest of the
hot path).

Editing this file: Numba's disk cache is keyed on the *calling* kernel's source file, not
on this one; `CpuBackend` drops the cache when any source of the package changes.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from edgeformer.backends.cpu.vector_ir import (F32, I32, IL, V16F, bsplat, const, dot64, ext16, f16, fma, fsplat,
                                               half_to_float, idot64, is16, lanes, length, loop2, ptrs, vec, vload,
                                               wpairs)


@intrinsic
def f16_to_f32(typingctx, h):
    """float32 value of IEEE half bits (uint16). One vcvtph2ps where F16C exists."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, sig, args):
        return half_to_float(context, builder, args[0])
    return sig, codegen


def _kquant_codegen(context, builder, sig, args, with_qh: bool):
    """Q4_K / Q5_K row dot over 256-weight super-blocks j. Scales are formed in-register:
    s_g = d_j * sc_g * xd_g for the 8 sub-blocks at once; the mins term
    -dmin_j * sum_g mn_g * xs_g is folded into lanes 0-7 of the same accumulator."""
    qp, hp, scp, mnp, dp, dmp, xp, xdp, xsp = ptrs(context, builder, sig, args)
    nsb = length(context, builder, sig.args[4], args[4])   # d: one per super-block
    v8f = ir.VectorType(F32, 8)

    def body(j, acc):
        j8 = builder.mul(j, const(j, 8))
        sv = builder.fmul(builder.fmul(builder.uitofp(vload(builder, scp, j8, 8), v8f), vload(builder, xdp, j8, 8)),
                          fsplat(builder, f16(context, builder, dp, j), 8))
        mv = builder.fmul(builder.uitofp(vload(builder, mnp, j8, 8), v8f), vload(builder, xsp, j8, 8))
        wide = vec(I32, 16, list(range(16)))     # lanes 8-15: 0 * 0
        acc = fma(builder, builder.shuffle_vector(mv, ir.Constant(v8f, None), wide),
                   builder.shuffle_vector(fsplat(builder, builder.fneg(f16(context, builder, dmp, j)), 8),
                                          ir.Constant(v8f, None), wide), acc)
        h = vload(builder, hp, builder.mul(j, const(j, 32)), 32) if with_qh else None
        for c in range(4):
            q = vload(builder, qp, builder.add(builder.mul(j, const(j, 128)), const(j, 32 * c)), 32)
            lo = builder.and_(q, bsplat(15))
            hi = builder.lshr(q, bsplat(4))
            if with_qh:   # 5th bit of sub-block g = 2c (+1) is bit g of qh byte l
                lo = builder.or_(lo, builder.shl(builder.and_(builder.lshr(h, bsplat(2 * c)), bsplat(1)), bsplat(4)))
                hi = builder.or_(hi, builder.shl(builder.and_(builder.lshr(h, bsplat(2 * c + 1)), bsplat(1)),
                                                 bsplat(4)))
            xo = builder.add(builder.mul(j, const(j, 256)), const(j, 64 * c))
            xv = vload(builder, xp, xo, 64)
            # sub-blocks 2c, 2c+1 (interleaved for int16 activations)
            q64 = builder.shuffle_vector(lo, hi, vec(I32, 64, IL if is16(xv) else list(range(64))))
            acc = fma(builder, dot64(context, builder, q64, xv),
                       lanes(builder, sv, [2 * c] * 8 + [2 * c + 1] * 8), acc)
        return acc
    return loop2(builder, nsb, body)


@intrinsic
def rowdot_q4_k(typingctx, qs, qh, sc, mn, d, dmin, xq, xd, xs):
    """Q4_K row (packed as in `repack.py`) . activations (xq, xd and xs per 32): qs uint8
    (K/2,), qh empty, sc/mn uint8 (K/32,), d/dmin f16 bits (K/256,). Returns the full dot,
    mins included: sum_g d*sc_g*xd_g*(q_g . xq_g) - dmin*mn_g*xs_g."""
    sig = types.float32(qs, qh, sc, mn, d, dmin, xq, xd, xs)

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
def rowdot_q6_k(typingctx, ql, qh, sc, empty_d, d, empty_f, xq, xd, xs):
    """Q6_K row: ql uint8 (K/2,), qh uint8 (K/4,), sc int8 (K/16,), d f16 bits (K/256,);
    slot fields d and f are empty and xs is unused.
    Per 128 weights: ql 64 bytes (A = first 32, B = next 32) and qh 32 bytes; quarter k of
    32 weights is ((A|B) nibble | (qh bits 2k..2k+1) << 4) - 32 (ggml `dequantize_row_q6_K`);
    each 16 weights have scale d * sc, activations xd per 32."""
    sig = types.float32(ql, qh, sc, empty_d, d, empty_f, xq, xd, xs)

    def codegen(context, builder, sig, args):
        lp, hp, scp, _, dp, _, xp, xdp, _ = ptrs(context, builder, sig, args)
        nsb = length(context, builder, sig.args[4], args[4])

        def body(j, acc):
            xd8 = vload(builder, xdp, builder.mul(j, const(j, 8)), 8)
            sv = builder.fmul(builder.sitofp(vload(builder, scp, builder.mul(j, const(j, 16)), 16), V16F),
                              lanes(builder, xd8, [i // 2 for i in range(16)]))
            sv = builder.fmul(sv, fsplat(builder, f16(context, builder, dp, j), 16))
            for n in range(2):
                base = builder.add(builder.mul(j, const(j, 128)), const(j, 64 * n))
                a = vload(builder, lp, base, 32)
                b = vload(builder, lp, builder.add(base, const(base, 32)), 32)
                h = vload(builder, hp, builder.add(builder.mul(j, const(j, 64)), const(j, 32 * n)), 32)
                nib = (builder.and_(a, bsplat(15)), builder.and_(b, bsplat(15)),
                       builder.lshr(a, bsplat(4)), builder.lshr(b, bsplat(4)))
                q6 = [builder.or_(nib[k], builder.shl(builder.and_(builder.lshr(h, bsplat(2 * k)), bsplat(3)),
                                                      bsplat(4))) for k in range(4)]
                for k in (0, 2):        # quarters k, k+1 are 64 consecutive weights
                    xv = vload(builder, xp, builder.add(builder.mul(j, const(j, 256)), const(j, 128 * n + 32 * k)), 64)
                    g = 8 * n + 2 * k   # 16-weight groups g..g+3
                    if is16(xv):    # signed q6 - 32 (interleaved) straight into the int16 pair products;
                        # A and B stay apart: their lanes hold groups (g, g+2) and (g+1, g+3)
                        q64 = builder.shuffle_vector(q6[k], q6[k + 1], vec(I32, 64, IL))
                        pa, pb = wpairs(context, builder, ext16(builder, builder.sub(q64, bsplat(32, 64)), True), xv)
                        for p_, gs in ((pa, (g, g + 2)), (pb, (g + 1, g + 3))):
                            acc = fma(builder, builder.sitofp(p_, V16F), lanes(builder, sv, [gs[0]] * 8 + [gs[1]] * 8),
                                       acc)
                        continue
                    q64 = builder.shuffle_vector(q6[k], q6[k + 1], vec(I32, 64, list(range(64))))
                    # unsigned q6 in 0..63; weight = q6 - 32: subtract 32 * (quad sums of x)
                    r = builder.sub(idot64(context, builder, q64, xv), idot64(context, builder, bsplat(32, 64), xv))
                    lane_sc = lanes(builder, sv, [g + m // 4 for m in range(16)])   # lanes 4m..4m+3: group g + m
                    acc = fma(builder, builder.sitofp(r, V16F), lane_sc, acc)
            return acc
        return loop2(builder, nsb, body)
    return sig, codegen


# ---------------------------------------------------------------- vectorisable exp

@intrinsic
def ldexp_bits(typingctx, y, k):
    """y * 2**k by adding k to the exponent field (float32 y, int32 k); valid while the
    result stays a normal float (callers clamp), one integer add, no rounding."""
    sig = types.float32(types.float32, types.int32)

    def codegen(context, builder, sig, args):
        bits = builder.add(builder.bitcast(args[0], I32), builder.shl(args[1], ir.Constant(I32, 23)))
        return builder.bitcast(bits, F32)
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
