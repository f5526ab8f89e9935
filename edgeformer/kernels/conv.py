"""conv1d and conv_transpose1d over one sequence laid out channels-first, (C, T).

The layouts are torch's: conv1d weights are (C_out, C_in / groups, K), transposed-conv
weights are (C_in, C_out / groups, K). Both accumulate in float32 (im2col + matmul), so a
backend only has to beat a matmul over the unfolded input.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from edgeformer.kernels.base import Cost, OpSpec, nbytes_of, out_bytes


def _pads(padding: int | tuple[int, int]) -> tuple[int, int]:
    """(left, right) from an int (both sides) or a pair (asymmetric, e.g. even kernels)."""
    if isinstance(padding, (tuple, list)):
        left, right = int(padding[0]), int(padding[1])
    else:
        left = right = int(padding)
    if left < 0 or right < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return left, right


def conv1d_out_len(t: int, k: int, *, stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1) -> int:
    """Output length of `conv1d` (torch's formula)."""
    left, right = _pads(padding)
    return (t + left + right - dilation * (k - 1) - 1) // stride + 1


def conv1d_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride: int = 1,
               padding: int | tuple[int, int] = 0, dilation: int = 1, groups: int = 1) -> np.ndarray:
    """x: (C_in, T) float32; w: (C_out, C_in / groups, K); b: (C_out,) or None.
    Zero padding of `padding` frames on both sides (or (left, right)), then
    y[o, t] = b[o] + sum_{c in group(o), k} w[o, c, k] * x_pad[c, t * stride + k * dilation].
    Returns (C_out, T_out) float32, T_out = (T + pads - dilation (K - 1) - 1) // stride + 1.
    ValueError when channels do not split into `groups` or T_out < 1."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    c_in, t = x.shape
    c_out, cg, k = w.shape
    if groups < 1 or c_in % groups or c_out % groups or cg != c_in // groups:
        raise ValueError(f"conv1d: x has {c_in} channels, w {w.shape}, groups={groups}: inconsistent")
    if stride < 1 or dilation < 1:
        raise ValueError(f"conv1d: stride {stride} and dilation {dilation} must be >= 1")
    left, right = _pads(padding)
    t_out = conv1d_out_len(t, k, stride=stride, padding=(left, right), dilation=dilation)
    if t_out < 1:
        raise ValueError(f"conv1d: input of length {t} is too short for kernel {k} (dilation {dilation})")
    xp = np.pad(x, ((0, 0), (left, right))) if left or right else x
    s_c, s_t = xp.strides
    # cols[c, k, t] = xp[c, t * stride + k * dilation]: a view, copied once by the reshape
    cols = as_strided(xp, shape=(c_in, k, t_out), strides=(s_c, s_t * dilation, s_t * stride), writeable=False)
    if groups == 1:
        y = w.reshape(c_out, cg * k) @ cols.reshape(c_in * k, t_out)                  # (C_out, T_out)
    else:
        cols_g = cols.reshape(groups, cg * k, t_out)                                   # (G, Cg*K, T_out)
        y = np.matmul(w.reshape(groups, c_out // groups, cg * k), cols_g).reshape(c_out, t_out)
    if b is not None:
        y += np.asarray(b, dtype=np.float32)[:, None]
    return y.astype(np.float32, copy=False)


def conv1d_cost(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1) -> Cost:
    """2 FLOPs per multiply-add (C_out * C_in/groups * K per output frame) plus the bias;
    x and w read once, (C_out, T_out) float32 written."""
    c_out, cg, k = w.shape
    t_out = conv1d_out_len(x.shape[-1], k, stride=stride, padding=padding, dilation=dilation)
    return Cost(flops=2.0 * c_out * cg * k * t_out + (c_out * t_out if b is not None else 0),
                bytes_read=nbytes_of(x) + nbytes_of(w) + nbytes_of(b),
                bytes_written=out_bytes((c_out, t_out)))


def conv_transpose1d_out_len(t: int, k: int, *, stride: int = 1, padding: int = 0, output_padding: int = 0,
                             dilation: int = 1) -> int:
    """Output length of `conv_transpose1d` (torch's formula)."""
    return (t - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1


def conv_transpose1d_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, stride: int = 1,
                         padding: int = 0, output_padding: int = 0, dilation: int = 1,
                         groups: int = 1) -> np.ndarray:
    """x: (C_in, T) float32; w: (C_in, C_out / groups, K) (torch ConvTranspose1d layout);
    b: (C_out,) or None. The adjoint of conv1d: input frame t adds w[c, o, k] * x[c, t]
    to full-output frame t * stride + k * dilation; then `padding` frames are cut from
    both ends (and `output_padding` extra frames kept at the end).
    Returns (C_out, T_out) float32, T_out = (T-1) stride - 2 padding + dilation (K-1) + output_padding + 1.
    ValueError on inconsistent channels/groups or T_out < 1."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    w = np.asarray(w, dtype=np.float32)
    c_in, t = x.shape
    wc_in, og, k = w.shape
    if groups < 1 or wc_in != c_in or c_in % groups:
        raise ValueError(f"conv_transpose1d: x has {c_in} channels, w {w.shape}, groups={groups}: inconsistent")
    if stride < 1 or dilation < 1 or padding < 0 or not 0 <= output_padding < max(stride, dilation):
        raise ValueError(f"conv_transpose1d: bad stride {stride} / dilation {dilation} / padding {padding} "
                         f"/ output_padding {output_padding}")
    c_out = og * groups
    t_out = conv_transpose1d_out_len(t, k, stride=stride, padding=padding, output_padding=output_padding,
                                     dilation=dilation)
    if t_out < 1:
        raise ValueError(f"conv_transpose1d: padding {padding} leaves no output for length {t}")
    cg = c_in // groups
    # cols[g, o, k, t] = sum_c w[g*cg + c, o, k] * x[g*cg + c, t]
    wg = w.reshape(groups, cg, og * k).transpose(0, 2, 1)                              # (G, Og*K, Cg)
    cols = np.matmul(wg, x.reshape(groups, cg, t)).reshape(c_out, k, t)                 # (C_out, K, T)
    full = np.zeros((c_out, (t - 1) * stride + dilation * (k - 1) + 1 + output_padding), dtype=np.float32)
    for kk in range(k):   # scatter-add each tap's frames with stride; K is small (<= ~32)
        start = kk * dilation
        full[:, start:start + (t - 1) * stride + 1:stride] += cols[:, kk]
    y = full[:, padding:padding + t_out]
    if b is not None:
        y = y + np.asarray(b, dtype=np.float32)[:, None]
    return np.ascontiguousarray(y, dtype=np.float32)


def conv_transpose1d_cost(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1) -> Cost:
    """2 FLOPs per multiply-add: every input frame meets C_out/groups * K taps per input
    channel; plus the bias. x and w read once, (C_out, T_out) float32 written."""
    c_in, og, k = w.shape
    t = x.shape[-1]
    c_out = og * groups
    t_out = conv_transpose1d_out_len(t, k, stride=stride, padding=padding, output_padding=output_padding,
                                     dilation=dilation)
    return Cost(flops=2.0 * c_in * og * k * t + (c_out * t_out if b is not None else 0),
                bytes_read=nbytes_of(x) + nbytes_of(w) + nbytes_of(b),
                bytes_written=out_bytes((c_out, t_out)))


# float32 sums over C_in/groups * K terms (up to a few thousand), like linear's
CONV1D = OpSpec("conv1d", conv1d_ref, conv1d_cost, max_nmse={"default": 1e-9},
                doc="1-D convolution (stride, padding, dilation, groups), channels-first")
CONV_TRANSPOSE1D = OpSpec("conv_transpose1d", conv_transpose1d_ref, conv_transpose1d_cost,
                          max_nmse={"default": 1e-9},
                          doc="1-D transposed convolution (HiFi-GAN upsampling), channels-first")
