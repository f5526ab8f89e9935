"""LLVM vector IR helpers for the cpu backend's intrinsics (row dots, panel tiles,
attention and norm rows): target features, half -> float, vector loads and splats, the
integer block dots (`idot64`, `wdot64`: one `vpdpbusd` with AVX512-VNNI, `vpmaddubsw` /
`vpmaddwd` with AVX512BW or AVX2, generic IR elsewhere, chosen from the target features
Numba compiles for), explicit FMAs and the two-accumulator loop.

Callers emit IR inside a Numba `@intrinsic` codegen (`context`, `builder`); array
arguments are Numba array structs, read through `data` / `length` without bounds checks.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

I8, I32, F32 = ir.IntType(8), ir.IntType(32), ir.FloatType()
V16F = ir.VectorType(F32, 16)


def features(context) -> set[str]:
    """The LLVM target features Numba compiles for ("+avx2", ...; honours NUMBA_CPU_*)."""
    import llvmlite.binding as llvm
    feats = getattr(context.codegen(), "_tm_features", "") or llvm.get_host_cpu_features().flatten()
    return set(feats.split(","))


def is_x86() -> bool:
    import llvmlite.binding as llvm
    return llvm.get_process_triple().startswith(("x86", "i386", "i686"))


def native_half(context) -> bool:
    """Can LLVM lower `fpext half` inline? x86 needs F16C (else it emits a call to
    compiler-rt's __extendhfsf2, which Numba's JIT cannot resolve: a crash, seen with
    NUMBA_CPU_FEATURES=+sse2); AArch64 and others convert natively."""
    return not is_x86() or "+f16c" in features(context)


def half_to_float(context, builder, h):
    """float32 from i16 half bits."""
    if native_half(context):
        return builder.fpext(builder.bitcast(h, ir.HalfType()), F32)
    # bit trick (exact for every half): move exponent/mantissa into float position, rescale
    # by 2^112 (fixes the exponent bias and normalises subnormals), restore inf/NaN and sign
    h32 = builder.zext(h, I32)
    c = lambda k: ir.Constant(I32, k)  # noqa: E731
    f = builder.fmul(builder.bitcast(builder.shl(builder.and_(h32, c(0x7FFF)), c(13)), F32),
                     ir.Constant(F32, 2.0 ** 112))
    bits = builder.bitcast(f, I32)
    infnan = builder.icmp_unsigned(">=", builder.and_(h32, c(0x7C00)), c(0x7C00))
    bits = builder.select(infnan, builder.or_(bits, c(0x7F800000)), bits)
    return builder.bitcast(builder.or_(bits, builder.shl(builder.and_(h32, c(0x8000)), c(16))), F32)


def vec(t, n: int, vals=None):
    return ir.Constant(ir.VectorType(t, n), vals)


def data(context, builder, aryty, ary):
    return context.make_array(aryty)(context, builder, ary).data


def length(context, builder, aryty, ary):
    return cgutils.unpack_tuple(builder, context.make_array(aryty)(context, builder, ary).shape)[0]


def vload(builder, ptr, off, n: int):
    p = builder.gep(ptr, [off])
    return builder.load(builder.bitcast(p, ir.VectorType(p.type.pointee, n).as_pointer()), align=1)


def const(v, k: int):
    return ir.Constant(v.type, k)


def bsplat(k: int, n: int = 32):
    return vec(I8, n, [k] * n)


def call(builder, name: str, ret, args):
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, [a.type for a in args]), name)
    return builder.call(fn, args)


def dot64(context, builder, q, x):
    """`idot64` as <16 x float>."""
    return builder.sitofp(idot64(context, builder, q, x), V16F)


def is16(x) -> bool:
    """Whether the activation vector x holds int16 (else int8)."""
    return x.type.element == ir.IntType(16)


def ext16(builder, q, signed: bool):
    """<n x i8> weight quants -> <n x i16> (sign- or zero-extended)."""
    t = ir.VectorType(ir.IntType(16), q.type.count)
    return builder.sext(q, t) if signed else builder.zext(q, t)


# int16 activations are stored per pair of 32-blocks (2i, 2i+1) in the order
# [b0 0-15 | b1 0-15 | b0 16-31 | b1 16-31] ("interleaved"; a lone last block stays in
# natural order), which is the order of a Q4/Q5 block pair's low then high nibbles. IL maps
# natural positions to it (and back: it is its own inverse).
IL = list(range(16)) + list(range(32, 48)) + list(range(16, 32)) + list(range(48, 64))


def pmadd32(context, builder, q, x):
    """<32 x i16> q . x -> <16 x i32>, lane l = q[2l] x[2l] + q[2l+1] x[2l+1]: one `vpmaddwd`
    on AVX512BW, two on AVX2, generic IR elsewhere; exact (|q| <= 255, |x| <= 32767)."""
    v16i, f = ir.VectorType(I32, 16), features(context) if is_x86() else set()
    if "+avx512bw" in f:
        return call(builder, "llvm.x86.avx512.pmaddw.d.512", v16i, [q, x])
    if "+avx2" in f:
        v8i = ir.VectorType(I32, 8)
        p = [call(builder, "llvm.x86.avx2.pmadd.wd", v8i,
                   [lanes(builder, q, list(range(16 * h, 16 * h + 16))),
                    lanes(builder, x, list(range(16 * h, 16 * h + 16)))]) for h in range(2)]
        return builder.shuffle_vector(p[0], p[1], vec(I32, 16, list(range(16))))
    v32 = ir.VectorType(I32, 32)           # generic IR: the pmaddwd / smlal shape
    m = builder.mul(builder.sext(q, v32), builder.sext(x, v32))
    return builder.add(builder.shuffle_vector(m, m, vec(I32, 16, list(range(0, 32, 2)))),
                       builder.shuffle_vector(m, m, vec(I32, 16, list(range(1, 32, 2)))))


def wpairs(context, builder, q, x):
    """<64 x i16> q . x (both interleaved) -> (A, B) <16 x i32>: A lane l = the pair
    products of elements 2l, 2l+1 (lanes 0-7: block 0 weights 0-15, 8-15: block 1 weights
    0-15), B the same for elements 32 + 2l, 33 + 2l (weights 16-31), by `pmadd32`."""
    return tuple(pmadd32(context, builder, lanes(builder, q, list(range(32 * h, 32 * h + 32))),
                         lanes(builder, x, list(range(32 * h, 32 * h + 32)))) for h in range(2))


def dpwssd(context, builder, acc, q, x):
    """acc (<16 x i32>) + the pair products of <32 x i16> q and x (lane l: elements 2l,
    2l+1), exact. One `vpdpwssd` with AVX512-VNNI, emitted as inline assembly: LLVM's
    machine combiner splits the intrinsic back into `vpmaddwd` + `vpaddd` (two uops on
    the two vector ports instead of one) whenever that shortens its critical path, which
    it does in the row dots' loops. Elsewhere `vpmaddwd` + `vpaddd` (AVX2: on two halves)."""
    v16i, f = ir.VectorType(I32, 16), features(context) if is_x86() else set()
    if "+avx512vnni" in f and "+avx512bw" in f:
        import llvmlite.binding as llvm
        llvm.initialize_native_asmparser()     # the JIT parses inline assembly with it
        asm = ir.InlineAsm(ir.FunctionType(v16i, [v16i] * 3), "vpdpwssd $3, $2, $0", "=v,0,v,v")
        return builder.call(asm, [acc, builder.bitcast(q, v16i), builder.bitcast(x, v16i)])
    return builder.add(acc, pmadd32(context, builder, q, x))


def wdot64(context, builder, q, x):
    """<64 x i16> q . x (both interleaved) -> <16 x i32>: lanes 0-7 sum to block 0, lanes
    8-15 to block 1 (`idot64`'s block membership; lane l = A[l] + B[l] of `wpairs`)."""
    a, b = wpairs(context, builder, q, x)
    return builder.add(a, b)


def idot64(context, builder, q, x):
    """<64 x i8> q (unsigned, < 64) . <64 x i8> x (signed) -> <16 x i32>, lane l = sum of
    the products of bytes 4l..4l+3: lanes 0-7 cover bytes 0-31, lanes 8-15 bytes 32-63.
    x86 gets one `vpdpbusd` (AVX512-VNNI) or `vpmaddubsw` + `vpmaddwd` (AVX512BW / AVX2:
    no widening of either operand; pair sums <= 2*63*127 fit int16, so no saturation);
    other targets get generic IR."""
    if is16(x):       # int16 activations (interleaved; so must q be): unsigned quants
        return wdot64(context, builder, ext16(builder, q, False), x)
    v16i, f = ir.VectorType(I32, 16), features(context) if is_x86() else set()
    if "+avx512vnni" in f and "+avx512f" in f:
        r = call(builder, "llvm.x86.avx512.vpdpbusd.512", v16i,
                  [ir.Constant(v16i, None), builder.bitcast(q, v16i), builder.bitcast(x, v16i)])
    elif "+avx512bw" in f:
        p = call(builder, "llvm.x86.avx512.pmaddubs.w.512", ir.VectorType(ir.IntType(16), 32), [q, x])
        r = call(builder, "llvm.x86.avx512.pmaddw.d.512", v16i, [p, vec(ir.IntType(16), 32, [1] * 32)])
    elif "+avx2" in f:
        v8i, ones = ir.VectorType(I32, 8), vec(ir.IntType(16), 16, [1] * 16)
        halves = []
        for h in range(2):
            idx = vec(I32, 32, list(range(32 * h, 32 * h + 32)))
            p = call(builder, "llvm.x86.avx2.pmadd.ub.sw", ir.VectorType(ir.IntType(16), 16),
                      [builder.shuffle_vector(q, q, idx), builder.shuffle_vector(x, x, idx)])
            halves.append(call(builder, "llvm.x86.avx2.pmadd.wd", v8i, [p, ones]))
        r = builder.shuffle_vector(halves[0], halves[1], vec(I32, 16, list(range(16))))
    else:   # products fit int16 (63 * 127); pair sums in int32 are the pmaddwd / smlal shape
        v64 = ir.VectorType(I32, 64)
        m = builder.mul(builder.zext(q, v64), builder.sext(x, v64))
        p = builder.add(builder.shuffle_vector(m, m, vec(I32, 32, list(range(0, 64, 2)))),
                        builder.shuffle_vector(m, m, vec(I32, 32, list(range(1, 64, 2)))))
        r = builder.add(builder.shuffle_vector(p, p, vec(I32, 16, list(range(0, 32, 2)))),
                        builder.shuffle_vector(p, p, vec(I32, 16, list(range(1, 32, 2)))))
    return r


def fma(builder, a, b, c):
    """a * b + c with ONE rounding (llvm.fma), for any float or float-vector type: never
    left to LLVM's contraction of a separate multiply and add, which it decides per
    compilation context (a row dot inlined into the fused decode step and into a linear
    kernel must round alike: batch invariance)."""
    t = a.type
    name = "llvm.fma.f32" if t == F32 else f"llvm.fma.v{t.count}f32"
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(t, [t] * 3), name)
    return builder.call(fn, [a, b, c])


def hsum(builder, v):
    n = v.type.count
    while n > 1:
        n //= 2
        v = builder.fadd(builder.shuffle_vector(v, v, vec(I32, n, list(range(n)))),
                         builder.shuffle_vector(v, v, vec(I32, n, list(range(n, 2 * n)))))
    return builder.extract_element(v, ir.Constant(I32, 0))


def loop2(builder, n, body):
    """sum over i < n of body(i, acc) with two <16 x float> accumulators (even/odd i), so
    consecutive FMAs do not wait on each other; returns the horizontal sum."""
    a0 = cgutils.alloca_once_value(builder, ir.Constant(V16F, None))
    a1 = cgutils.alloca_once_value(builder, ir.Constant(V16F, None))
    one = const(n, 1)
    with cgutils.for_range(builder, builder.ashr(n, one)) as loop:
        i = builder.shl(loop.index, one)
        builder.store(body(i, builder.load(a0)), a0)
        builder.store(body(builder.add(i, one), builder.load(a1)), a1)
    with builder.if_then(builder.icmp_signed("!=", builder.and_(n, one), const(n, 0))):
        builder.store(body(builder.sub(n, one), builder.load(a0)), a0)
    return hsum(builder, builder.fadd(builder.load(a0), builder.load(a1)))


def ptrs(context, builder, sig, args):
    return [data(context, builder, t, a) for t, a in zip(sig.args, args)]


def f16(context, builder, ptr, i):
    return half_to_float(context, builder, builder.load(builder.gep(ptr, [i])))


def fsplat(builder, v, n: int):
    """Scalar float -> <n x float>."""
    t = ir.VectorType(F32, n)
    x = builder.insert_element(ir.Constant(t, None), v, ir.Constant(I32, 0))
    return builder.shuffle_vector(x, ir.Constant(t, None), vec(I32, n, [0] * n))


def lanes(builder, v, mask):
    return builder.shuffle_vector(v, v, vec(I32, len(mask), mask))
