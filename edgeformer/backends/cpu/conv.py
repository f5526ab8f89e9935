"""Numba conv1d / conv_transpose1d for the CPU backend: direct convolution, no im2col.

Same contract as `kernels/conv.py` (channels-first (C, T) float32, torch weight layouts,
stride / int-or-(left, right) padding / dilation / groups; transposed: stride, padding,
output_padding, dilation, groups), same ValueErrors (bad arguments go to the reference,
which raises the error that names the problem).

Why direct: the reference unfolds the input (im2col), which for a HiFi-GAN stage of
32 channels x 60k frames x 7 taps is a 55 MB matrix written and re-read from DRAM before
a skinny (32 x 224) GEMM. Here the weights are packed once per call as (tap, channel)
rows and one register tile of R=8 output channels x 32 frames (`_conv_tile`, LLVM IR:
sixteen <16 x float> accumulators that never leave registers) walks every (input channel,
tap): two unaligned input-vector loads and eight broadcast weights feed 16 FMAs. Tiles
are independent tasks of a `prange`. Channels are zero-padded to a multiple of 8 (one
group) and frames to a multiple of 32; the padded input is sized so no load leaves it.
Stride s > 1 is made contiguous by splitting the padded input into its s phases once
(x_pad[c, t*s + k*d] = phase[(k*d) % s][c, t + (k*d) // s]). Groups whose channel count
is not a multiple of 8 (depthwise DDSConv, odd groupings) take `_conv_tiles`, a plain
Numba loop with 4-row accumulators in L1 (measured ~36-70 GFLOP/s per Zen 4 core vs
~110-200 for the register tile, see bench/multimodal.py for end-to-end numbers).

conv_transpose1d is computed polyphase: output frame j = q*s + p only receives taps k
with (k*d) % s == p, from input frame q - (k*d) // s, so each phase is a stride-1
correlation over x (the same register tile) and no zero-stuffed input or scatter-add is
needed.

Accumulation is float32 in a fixed (c, k) order per output (FMA-contracted), as the
reference's GEMM sums; NaN/Inf propagate as in the reference.
"""
from __future__ import annotations

import threading

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from edgeformer.backends.cpu.common import jit_pair
from edgeformer.kernels.conv import conv_pads, conv1d_out_len, conv1d_ref, conv_transpose1d_out_len

_TB = 512    # frames per task of the generic path: 4 x 512 float32 accumulators = 8 KB of L1
_SERIAL_FLOPS = 1 << 21   # below ~2 MFLOP a serial loop beats waking the thread pool
# Register tile: R output channels x NV * 16 frames = 16 <16 x float> accumulators (half
# of AVX-512's 32 registers; two per channel hide the FMA latency; AVX2 splits each into
# two ymm). Measured on one Zen 4 core (GFLOP per CPU-second, Piper shapes): 8x32 ~160-220,
# 4x32 ~130-190, 8x16 ~150-200, 4x64 ~150-220.
_R, _NV = 8, 2
_L = 16 * _NV
_V16 = ir.VectorType(ir.FloatType(), 16)


@intrinsic
def _conv_tile(typingctx, xf, xs, offs, wp, ws, bp, bs, yf, ys, ystr):
    """y[ys + r*ystr + j] = bp[bs + r] + sum_i wp[ws + i*R + r] * xf[xs + offs[i] + j]
    for r < R, j < 16*NV: one register tile, accumulated in (c, k) order over i."""
    sig = types.void(xf, xs, offs, wp, ws, bp, bs, yf, ys, ystr)

    def codegen(context, builder, sig, args):
        def data(k):
            return context.make_array(sig.args[k])(context, builder, args[k]).data
        xptr, offp, wptr, bptr, yptr = data(0), data(2), data(3), data(5), data(7)
        xs_, ws_, bs_, ys_, ystr_ = args[1], args[4], args[6], args[8], args[9]
        n = cgutils.unpack_tuple(builder, context.make_array(sig.args[2])(context, builder, args[2]).shape)[0]
        i64 = n.type
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V16, [_V16] * 3), "llvm.fmuladd.v16f32")
        zeros = ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16)

        def splat(v):
            v = builder.insert_element(ir.Constant(_V16, None), v, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(v, v, zeros)

        def vptr(ptr, off):
            return builder.bitcast(builder.gep(ptr, [off]), _V16.as_pointer())
        # allocas that mem2reg turns into registers across the loop, started at the bias
        bias = [splat(builder.load(builder.gep(bptr, [builder.add(bs_, ir.Constant(i64, r))]))) for r in range(_R)]
        acc = [[cgutils.alloca_once_value(builder, bias[r]) for _ in range(_NV)] for r in range(_R)]
        with cgutils.for_range(builder, n) as loop:
            i = loop.index
            base = builder.add(xs_, builder.load(builder.gep(offp, [i])))
            xv = [builder.load(vptr(xptr, builder.add(base, ir.Constant(i64, 16 * v))), align=4) for v in range(_NV)]
            wb = builder.add(ws_, builder.mul(i, ir.Constant(i64, _R)))
            for r in range(_R):
                wv = splat(builder.load(builder.gep(wptr, [builder.add(wb, ir.Constant(i64, r))])))
                for v in range(_NV):
                    builder.store(builder.call(fma, [wv, xv[v], builder.load(acc[r][v])]), acc[r][v])
        for r in range(_R):
            row = builder.add(ys_, builder.mul(ir.Constant(i64, r), ystr_))
            for v in range(_NV):
                builder.store(builder.load(acc[r][v]), vptr(yptr, builder.add(row, ir.Constant(i64, 16 * v))), align=4)
        return context.get_dummy_value()
    return sig, codegen


def _tiles(xf, x0, gstride, offs, wp, bias, yf, n_blocks, n_chunks, og, tpad):
    """Every register tile of a (blocks of R channels) x (chunks of L frames) output:
    block ob (channels ob*R..) reads group g = ob*R // og, whose inputs start at
    g * gstride in xf; chunk ch covers frames ch*L.. of y rows (padded to tpad)."""
    n_ck = offs.shape[0]
    for task in prange(n_blocks * n_chunks):
        ob = task // n_chunks
        t0 = (task - ob * n_chunks) * _L
        g = (ob * _R) // og
        _conv_tile(xf, g * gstride + x0 + t0, offs, wp, ob * n_ck * _R, bias, ob * _R, yf, ob * _R * tpad + t0, tpad)


def _conv_tiles(xph, w, b, y, groups, dil, stride, tb):
    """y[o, t] = b[o] + sum_{c, k} w[o, c, k] * xph[(k*dil) % stride, g*cg + c, t + (k*dil) // stride]
    for every (o, t) of y; tasks = (block of <= 4 channels inside one group) x (tb frames)."""
    c_out, t_out = y.shape
    cg, kk = w.shape[1], w.shape[2]
    og = c_out // groups
    nob = (og + 3) // 4                     # channel blocks per group
    ntb = (t_out + tb - 1) // tb
    for task in prange(groups * nob * ntb):
        gi = task // (nob * ntb)
        rem = task - gi * nob * ntb
        o0 = gi * og + (rem // ntb) * 4
        t0 = (rem % ntb) * tb
        t1 = min(t0 + tb, t_out)
        n = t1 - t0
        nr = min(4, gi * og + og - o0)
        c0 = gi * cg
        for r in range(nr):
            bv = b[o0 + r]
            for t in range(t0, t1):
                y[o0 + r, t] = bv
        if nr == 4:
            y0 = y[o0, t0:t1]
            y1 = y[o0 + 1, t0:t1]
            y2 = y[o0 + 2, t0:t1]
            y3 = y[o0 + 3, t0:t1]
            for c in range(cg):
                for k in range(kk):
                    off = k * dil
                    s0 = t0 + off // stride
                    xr = xph[off % stride, c0 + c, s0:s0 + n]
                    w0 = w[o0, c, k]
                    w1 = w[o0 + 1, c, k]
                    w2 = w[o0 + 2, c, k]
                    w3 = w[o0 + 3, c, k]
                    for t in range(n):
                        xv = xr[t]
                        y0[t] += w0 * xv
                        y1[t] += w1 * xv
                        y2[t] += w2 * xv
                        y3[t] += w3 * xv
        else:
            for r in range(nr):
                yr = y[o0 + r, t0:t1]
                for c in range(cg):
                    for k in range(kk):
                        off = k * dil
                        s0 = t0 + off // stride
                        xr = xph[off % stride, c0 + c, s0:s0 + n]
                        wv = w[o0 + r, c, k]
                        for t in range(n):
                            yr[t] += wv * xr[t]


def _convt_tiles(xp, w, b, y, groups, dil, stride, pad, amax, tb):
    """Transposed conv, polyphase. xp: x with `amax` zero frames on the left (and enough
    on the right); w (C_in, Og, K); y (C_out, T_out) with y[o, j] = full[o, j + pad].
    Tasks = (output channel) x (phase p) x (tb frames of that phase)."""
    c_out, t_out = y.shape
    c_in, og, kk = w.shape
    cg = c_in // groups
    nq = (t_out + stride - 1) // stride + 1          # frames per phase, upper bound
    ntb = (nq + tb - 1) // tb
    for task in prange(c_out * stride * ntb):
        o = task // (stride * ntb)
        rem = task - o * stride * ntb
        p = rem // ntb
        gi = o // og
        oi = o - gi * og
        c0 = gi * cg
        # full-output frames j' = q*stride + p inside [pad, pad + t_out)
        q_lo = (pad - p + stride - 1) // stride if pad > p else 0
        q_hi = (pad + t_out - 1 - p) // stride       # inclusive; may be < q_lo
        qa = q_lo + (rem % ntb) * tb
        qb = min(qa + tb, q_hi + 1)
        n = qb - qa
        if n <= 0:
            continue
        acc = np.full(n, b[o], dtype=np.float32)
        for c in range(cg):
            for k in range(kk):
                off = k * dil
                if off % stride != p:
                    continue
                s0 = qa - off // stride + amax
                xr = xp[c0 + c, s0:s0 + n]
                wv = w[c0 + c, oi, k]
                for t in range(n):
                    acc[t] += wv * xr[t]
        j0 = qa * stride + p - pad
        for t in range(n):
            y[o, j0 + t * stride] = acc[t]


_conv_serial, _conv_parallel = jit_pair(_conv_tiles)
_tiles_serial, _tiles_parallel = jit_pair(_tiles)
_convt_serial, _convt_parallel = jit_pair(_convt_tiles)


_local = threading.local()


def _scratch(n: int) -> np.ndarray:
    """A per-thread float32 buffer of n elements, reused between calls: a fresh multi-MB
    array per HiFi-GAN conv costs ~20% of the conv in first-touch page faults."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < n:
        buf = _local.buf = np.empty(max(n, 1 << 16), dtype=np.float32)
    return buf[:n]


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _run_tiles(xf: np.ndarray, x0: int, gstride: int, offs: np.ndarray, w_rows: np.ndarray,
               bias: np.ndarray, og: int, n_out: int) -> np.ndarray:
    """(C_out, n_out) = the register-tile correlation with `w_rows` (C_out, n_ck), row o =
    its taps in `offs` order, channel rows of a group sharing `gstride`-spaced inputs.
    Rows are zero-padded to a multiple of R (only when there is one group), frames to L;
    xf must hold every frame the padded output reads."""
    c_out, n_ck = w_rows.shape
    c_pad = -(-c_out // _R) * _R
    if c_pad != c_out:
        w_rows = np.concatenate([w_rows, np.zeros((c_pad - c_out, n_ck), np.float32)])
        bias = np.concatenate([bias, np.zeros(c_pad - c_out, np.float32)])
    nb, tpad = c_pad // _R, -(-n_out // _L) * _L
    wp = np.ascontiguousarray(w_rows.reshape(nb, _R, n_ck).transpose(0, 2, 1)).reshape(-1)   # (nb, n_ck, R)
    y = np.empty((c_pad, tpad), dtype=np.float32)
    kern = _tiles_serial if 2.0 * c_pad * n_ck * tpad < _SERIAL_FLOPS else _tiles_parallel
    og = og if og % _R == 0 else c_pad           # one group whose rows were padded
    kern(xf, x0, gstride, offs.astype(np.int64), wp, bias, y.reshape(-1), nb, tpad // _L, og, tpad)
    return y if (c_pad, tpad) == (c_out, n_out) else np.ascontiguousarray(y[:c_out, :n_out])


def conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride: int = 1,
           padding: int | tuple[int, int] = 0, dilation: int = 1, groups: int = 1) -> np.ndarray:
    """`kernels.conv.conv1d_ref`'s contract: x (C_in, T), w (C_out, C_in/groups, K), b (C_out,)
    or None -> (C_out, T_out) float32; ValueError on inconsistent shapes or T_out < 1."""
    x, w = _f32(x), _f32(w)
    if x.ndim != 2 or w.ndim != 3:
        return conv1d_ref(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    c_in, t = x.shape
    c_out, cg, k = w.shape
    if (groups < 1 or c_in % groups or c_out % groups or cg != c_in // groups or stride < 1 or dilation < 1
            or conv1d_out_len(t, k, stride=stride, padding=padding, dilation=dilation) < 1):
        # the reference raises the ValueError that names the problem
        return conv1d_ref(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    left, right = conv_pads(padding)
    t_out = conv1d_out_len(t, k, stride=stride, padding=(left, right), dilation=dilation)
    og = c_out // groups
    fast = groups == 1 or og % _R == 0
    # phases of the padded input, each long enough for the last tap of the last (padded) frame
    n_ph = (-(-t_out // _L) * _L if fast else t_out) + (dilation * (k - 1)) // stride
    if stride == 1:     # one copy, zeros written only where padding goes (HiFi-GAN rows are MBs)
        xph = _scratch(c_in * n_ph).reshape(1, c_in, n_ph)
        m = min(t, n_ph - left)
        xph[0, :, :left] = 0.0
        xph[0, :, left:left + m] = x[:, :m]
        xph[0, :, left + m:] = 0.0
    else:
        xph = np.zeros((stride, c_in, n_ph), dtype=np.float32)
        xp = np.pad(x, ((0, 0), (left, right))) if left or right else x
        for p in range(stride):
            seg = xp[:, p::stride][:, :n_ph]
            xph[p, :, :seg.shape[1]] = seg
    bias = np.zeros(c_out, np.float32) if b is None else _f32(b).reshape(c_out)
    if fast:
        kd = np.arange(k) * dilation
        offs = ((kd % stride)[None, :] * (c_in * n_ph) + np.arange(cg)[:, None] * n_ph + (kd // stride)[None, :])
        return _run_tiles(xph.reshape(-1), 0, cg * n_ph, offs.reshape(-1), w.reshape(c_out, cg * k), bias, og, t_out)
    y = np.empty((c_out, t_out), dtype=np.float32)
    flops = 2.0 * c_out * cg * k * t_out
    kern = _conv_serial if flops < _SERIAL_FLOPS else _conv_parallel
    kern(xph, w, bias, y, groups, dilation, stride, _TB)
    return y


def conv_transpose1d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride: int = 1,
                     padding: int = 0, output_padding: int = 0, dilation: int = 1,
                     groups: int = 1) -> np.ndarray:
    """`kernels.conv.conv_transpose1d_ref`'s contract: x (C_in, T), w (C_in, C_out/groups, K),
    b (C_out,) or None -> (C_out, T_out) float32; ValueError on bad shapes or attributes."""
    from edgeformer.kernels.conv import conv_transpose1d_ref
    x, w = _f32(x), _f32(w)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    if x.ndim != 2 or w.ndim != 3:
        return conv_transpose1d_ref(x, w, b, **kw)
    c_in, t = x.shape
    wc_in, og, k = w.shape
    t_out = conv_transpose1d_out_len(t, k, stride=stride, padding=padding, output_padding=output_padding,
                                     dilation=dilation)
    if (groups < 1 or wc_in != c_in or c_in % groups or stride < 1 or dilation < 1 or padding < 0
            or not 0 <= output_padding < max(stride, dilation) or t_out < 1):
        return conv_transpose1d_ref(x, w, b, **kw)
    c_out = og * groups
    amax = (dilation * (k - 1)) // stride
    bias = np.zeros(c_out, np.float32) if b is None else _f32(b).reshape(c_out)
    if groups == 1 or og % _R == 0:
        return _convt_polyphase(x, w, bias, stride, padding, dilation, groups, t_out)
    q_max = (padding + t_out - 1) // stride + 1      # largest input index a phase reads, + 1
    right = max(0, q_max + 1 - t)
    xp = np.pad(x, ((0, 0), (amax, right)))
    y = np.empty((c_out, t_out), dtype=np.float32)
    flops = 2.0 * c_in * og * k * t
    kern = _convt_serial if flops < _SERIAL_FLOPS else _convt_parallel
    kern(xp, w, bias, y, groups, dilation, stride, padding, amax, _TB * 4)
    return y


def _convt_polyphase(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int, padding: int, dilation: int,
                     groups: int, t_out: int) -> np.ndarray:
    """Transposed conv as `stride` register-tile correlations: phase p (output frames
    j + padding = q*stride + p) takes the taps k with (k*dilation) % stride == p, tap k
    reading input frame q - (k*dilation) // stride."""
    c_in, t = x.shape
    _, og, k = w.shape
    c_out, cg = og * groups, c_in // groups
    amax = (dilation * (k - 1)) // stride
    y = np.empty((c_out, t_out), dtype=np.float32)
    phases = []
    for p in range(stride):
        q_lo = -(-(padding - p) // stride) if padding > p else 0
        q_hi = (padding + t_out - 1 - p) // stride
        if q_hi >= q_lo:
            phases.append((p, q_lo, q_hi - q_lo + 1))
    # zero frames: amax on the left (q - a < 0), and past the end for the padded last chunk
    n_x = max(q_lo + -(-n // _L) * _L for _, q_lo, n in phases) + amax + 1
    xp = np.zeros((c_in, max(n_x, t + amax)), dtype=np.float32)
    xp[:, amax:amax + t] = x
    n_x = xp.shape[1]
    wg = w.reshape(groups, cg, og, k).transpose(0, 2, 1, 3)                       # (G, Og, Cg, K)
    for p, q_lo, n in phases:
        taps = [kk for kk in range(k) if (kk * dilation) % stride == p]
        j0 = q_lo * stride + p - padding
        if not taps:                      # no tap lands on this phase: bias only
            y[:, j0::stride][:, :n] = bias[:, None]
            continue
        a = np.array([(kk * dilation) // stride for kk in taps])
        offs = (np.arange(cg)[:, None] * n_x + (amax - a)[None, :]).reshape(-1)     # (Cg * taps,) in (c, k) order
        w_rows = np.ascontiguousarray(wg[..., taps]).reshape(c_out, cg * len(taps))
        y[:, j0::stride][:, :n] = _run_tiles(xp.reshape(-1), q_lo, cg * n_x, offs, w_rows, bias, og, n)
    return y

KERNELS = {"conv1d": conv1d, "conv_transpose1d": conv_transpose1d}   # CpuBackend.kernels entries
