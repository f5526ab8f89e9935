"""linear for float weights (F32 / F16 / BF16) stored in 16-row panels: one register-tiled
kernel for every token count, decode (T = 1) and prefill alike.

Layout (made once at load by `to_panels`, in place of the file's row-major bytes): the
(N, K) weight becomes (ceil(N/16), K, 16): panel p holds rows 16p..16p+15 interleaved, so
the 16 weights of one column k are one 64-byte vector (F32) or 32 bytes (F16/BF16 bits,
widened in-register). Padding rows are zero.

Kernel (`tile`, LLVM IR built with vector_ir.py): RV panels x TT tokens of <16 x float> accumulators
(AVX-512: 4 x 6 = 24 of the 32 registers; AVX2: 1 x 6, each accumulator two ymm). Per
column k it loads RV weight vectors and broadcasts TT activations x[t, k]: RV*TT FMAs per
RV + TT loads, so prefill is FMA-bound instead of reading the weights once per token.
K is walked in blocks of KC columns (a panel group's block stays in L2 while the tokens
of a task sweep it); partial sums go through the output and are reloaded, which is exact.

Numerics: every output is ONE fused-multiply-add chain over k = 0..K-1 in order, started
at 0, with the bias added at the end. That sequence does not depend on the tile shape, the
token count, the row's position in the batch or the K blocking, so a row's bits are the
same whether it is decoded alone or inside a 16-row batch or a 512-token prefill (the
runtime's batch invariance; `tests/backends/cpu/test_cpu_panel_gemm.py` checks it). A
single chain has FMA latency, which the RV*TT independent chains of a tile hide.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeformer.backends.cpu.common import JIT
from edgeformer.backends.cpu.vector_ir import I32, V16F, data, features, fma, fsplat, is_x86, native_half

P = 16          # rows per panel (one <16 x float>)
KC = 512        # columns per K block: a 4-panel block is 128 KiB of F32
TT = 6          # tokens per tile (T = 1 gets a 1-token tile: no idle FMAs in decode)


def _rv(context) -> int:
    """Panels per tile: 4 where AVX-512 gives 32 vector registers, else 1."""
    f = features(context) if is_x86() else set()
    return 4 if "+avx512f" in f else 1


def _widen(context, builder, v, kind: str):
    """<16 x float> from 16 loaded weight elements of `kind` (f32 / f16 / bf16 bits)."""
    if isinstance(v.type.element, ir.FloatType):    # f32 weights (whatever `kind` says:
        return v                                     # `tile` compiles every kind's branch)
    v16i32 = ir.VectorType(I32, 16)
    if kind != "f16":
        return builder.bitcast(builder.shl(builder.zext(v, v16i32), ir.Constant(v16i32, [16] * 16)), V16F)
    if native_half(context):
        return builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), 16)), V16F)
    # exact bit trick (see vector_ir.half_to_float), lane-wise
    c = lambda k: ir.Constant(v16i32, [k] * 16)  # noqa: E731
    h = builder.zext(v, v16i32)
    f = builder.fmul(builder.bitcast(builder.shl(builder.and_(h, c(0x7FFF)), c(13)), V16F),
                     ir.Constant(V16F, [2.0 ** 112] * 16))
    bits = builder.bitcast(f, v16i32)
    infnan = builder.icmp_unsigned(">=", builder.and_(h, c(0x7C00)), c(0x7C00))
    bits = builder.select(infnan, builder.or_(bits, c(0x7F800000)), bits)
    return builder.bitcast(builder.or_(bits, builder.shl(builder.and_(h, c(0x8000)), c(16))), V16F)


def _emit_tile(context, builder, args, wp, xp, yp, kind: str, rv: int, tt: int) -> None:
    """The IR of one rv x tt tile (see `_make_tile`)."""
    w_off, w_ps, nrv, nk, x_off, x_ts, nt, y_off, y_ts, first = (args[i] for i in (1, 2, 3, 4, 6, 7, 8, 10, 11, 12))
    i64 = nk.type
    k64 = lambda k: ir.Constant(i64, k)  # noqa: E731

    def clamp(i, n):    # min(i, n - 1)
        return builder.select(builder.icmp_signed("<", k64(i), n), k64(i), builder.sub(n, k64(1)))
    wbase = [builder.add(w_off, builder.mul(clamp(v, nrv), w_ps)) for v in range(rv)]
    xbase = [builder.add(x_off, builder.mul(clamp(t, nt), x_ts)) for t in range(tt)]
    ybase = [[builder.add(builder.add(y_off, builder.mul(k64(t), y_ts)), k64(P * v)) for t in range(tt)]
             for v in range(rv)]
    wvt = ir.VectorType(wp.type.pointee, P)

    def yptr(v, t):
        return builder.bitcast(builder.gep(yp, [ybase[v][t]]), V16F.as_pointer())

    def live(v, t):
        return builder.and_(builder.icmp_signed("<", k64(v), nrv), builder.icmp_signed("<", k64(t), nt))
    acc = [[cgutils.alloca_once_value(builder, ir.Constant(V16F, None)) for _ in range(tt)] for _ in range(rv)]
    with builder.if_then(builder.icmp_signed("==", first, ir.Constant(first.type, 0))):
        for v in range(rv):
            for t in range(tt):
                with builder.if_then(live(v, t)):
                    builder.store(builder.load(yptr(v, t), align=4), acc[v][t])
    with cgutils.for_range(builder, nk) as loop:
        k = loop.index
        wk = builder.mul(k, k64(P))
        wv = [builder.load(builder.bitcast(builder.gep(wp, [builder.add(wbase[v], wk)]), wvt.as_pointer()), align=2)
              for v in range(rv)]
        wv = [_widen(context, builder, w, kind) for w in wv]
        for t in range(tt):
            xb = fsplat(builder, builder.load(builder.gep(xp, [builder.add(xbase[t], k)])), P)
            for v in range(rv):
                builder.store(fma(builder, wv[v], xb, builder.load(acc[v][t])), acc[v][t])
    for v in range(rv):
        for t in range(tt):
            with builder.if_then(live(v, t)):
                builder.store(builder.load(acc[v][t]), yptr(v, t), align=4)


def _make_tile(kind: str):
    """The tile intrinsic for weights of `kind` ("f32", "f16", "bf16")."""
    @intrinsic
    def tile(typingctx, w, w_off, w_pstride, nrv, nk, x, x_off, x_tstride, nt, y, y_off, y_tstride, first):
        """Accumulate y[t, v*16 + l] (+)= sum_{k < nk} w[panel v, k, lane l] * x[t, k] for
        v < nrv (<= RV), t < nt (<= TT): element offsets w_off (panel 0, first column),
        w_pstride (between panels), x_off / x_tstride, y_off / y_tstride. `first`: start
        from 0, else from y. Panels / tokens past nrv / nt are computed on clamped
        addresses and not stored; nt == 1 runs a 1-token tile (decode: no idle FMAs; each
        output's FMA chain, hence its bits, is the same)."""
        sig = types.void(w, w_off, w_pstride, nrv, nk, x, x_off, x_tstride, nt, y, y_off, y_tstride, first)

        def codegen(context, builder, sig, args):
            rv = _rv(context)
            wp, xp, yp = (data(context, builder, sig.args[i], args[i]) for i in (0, 5, 9))
            nt = args[8]
            with builder.if_else(builder.icmp_signed("==", nt, ir.Constant(nt.type, 1))) as (gemv, gemm):
                with gemv:
                    _emit_tile(context, builder, args, wp, xp, yp, kind, rv, 1)
                with gemm:
                    _emit_tile(context, builder, args, wp, xp, yp, kind, rv, TT)
            return context.get_dummy_value()
        return sig, codegen
    return tile


_TILE_F32, _TILE_F16, _TILE_BF16 = (_make_tile(kind) for kind in ("f32", "f16", "bf16"))


def target_constant(fn):
    """An intrinsic `f()` returning the int64 fn(context): a fact about the target the
    calling kernel is compiled for (ISA features), folded into its machine code."""
    @intrinsic
    def const(typingctx):
        sig = types.int64()

        def codegen(context, builder, sig, args):
            return ir.Constant(ir.IntType(64), int(fn(context)))
        return sig, codegen
    return const


panels_per_tile = target_constant(_rv)     # RV of the target


@njit(**JIT)
def tile(kind, w, w_off, w_ps, nrv, nk, x, x_off, x_ts, nt, y, y_off, y_ts, first):
    if kind == 0:
        _TILE_F32(w, w_off, w_ps, nrv, nk, x, x_off, x_ts, nt, y, y_off, y_ts, first)
    elif kind == 1:
        _TILE_F16(w, w_off, w_ps, nrv, nk, x, x_off, x_ts, nt, y, y_off, y_ts, first)
    else:
        _TILE_BF16(w, w_off, w_ps, nrv, nk, x, x_off, x_ts, nt, y, y_off, y_ts, first)


@njit(parallel=True, **JIT)
def _linear(kind, x, w, bias, out):
    """out (T, N) = x (T, K) @ W.T (+ bias); w: panels (ceil(N/16), K, 16) of `kind`
    (0 f32, 1 f16 bits, 2 bf16 bits)."""
    t_, k = x.shape
    n = out.shape[1]
    n_full = n // P                          # panels stored straight into out
    rv = panels_per_tile()
    n_groups = (n_full + rv - 1) // rv
    tb = max(TT, 96 // TT * TT)              # tokens per task: the group's K block stays in L2
    n_tt = (t_ + tb - 1) // tb
    ps = k * P
    for task in prange(n_groups * n_tt):
        g = task // n_tt
        t0 = (task - g * n_tt) * tb
        t1 = min(t_, t0 + tb)
        p0 = g * rv
        nrv = min(rv, n_full - p0)
        for k0 in range(0, k, KC):
            nk = min(KC, k - k0)
            for ts in range(t0, t1, TT):
                tile(kind, w, p0 * ps + k0 * P, ps, nrv, nk, x, ts * k + k0, k, min(TT, t1 - ts), out,
                     ts * n + p0 * P, n, k0 == 0)
    if n_full * P < n:                       # a last, partial panel: through scratch
        nl = n - n_full * P
        scratch = np.empty((TT, P), np.float32)
        for ts in range(0, t_, TT):
            nt = min(TT, t_ - ts)
            for k0 in range(0, k, KC):
                tile(kind, w, n_full * ps + k0 * P, ps, 1, min(KC, k - k0), x, ts * k + k0, k, nt, scratch, 0, P,
                     k0 == 0)
            for t in range(nt):
                for j in range(nl):
                    out[ts + t, n_full * P + j] = scratch[t, j]
    if bias.shape[0]:
        for t in prange(t_):
            for j in range(n):
                out[t, j] += bias[j]


@njit(**JIT)
def linear_f32(x, w, bias, out):
    _linear(0, x, w, bias, out)


@njit(**JIT)
def linear_f16(x, w, bias, out):
    _linear(1, x, w, bias, out)


@njit(**JIT)
def linear_bf16(x, w, bias, out):
    _linear(2, x, w, bias, out)


def to_panels(w: np.ndarray) -> np.ndarray:
    """(N, K) row-major (float32, or uint16 bits) -> (ceil(N/16), K, 16), zero-padded rows."""
    n, k = w.shape
    npan = -(-n // P)
    out = np.zeros((npan * P, k), w.dtype)
    out[:n] = w
    return np.ascontiguousarray(out.reshape(npan, P, k).transpose(0, 2, 1))


def from_panels(p: np.ndarray, n: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Rows `rows` (default all n) of a panel array, as (len(rows), K) in its dtype."""
    ids = np.arange(n) if rows is None else np.asarray(rows)
    return p[ids // P, :, ids % P]
