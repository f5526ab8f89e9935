"""conv1d and conv_transpose1d over one sequence laid out channels-first, (C, T).

The layouts are torch's: conv1d weights are (C_out, C_in / groups, K), transposed-conv
weights are (C_in, C_out / groups, K). Both accumulate in float32 (im2col + matmul), so a
backend only has to beat a matmul over the unfolded input.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from edgeformer.kernels.base import Case, Cost, OpSpec, nbytes_of, out_bytes
from edgeformer.kernels.inputs import plant, randn


def conv_pads(padding: int | tuple[int, int]) -> tuple[int, int]:
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
    left, right = conv_pads(padding)
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
    left, right = conv_pads(padding)
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
    _, cg, k = w.shape
    c_out, t_out = conv1d_shape(x, w, stride=stride, padding=padding, dilation=dilation)
    return Cost(flops=2.0 * c_out * cg * k * t_out + (c_out * t_out if b is not None else 0),
                bytes_read=nbytes_of(x) + nbytes_of(w) + nbytes_of(b),
                bytes_written=out_bytes((c_out, t_out)))


def conv1d_shape(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1) -> tuple[int, ...]:
    return (w.shape[0], conv1d_out_len(x.shape[-1], w.shape[-1], stride=stride, padding=padding, dilation=dilation))


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
    c_out, t_out = conv_transpose1d_shape(x, w, stride=stride, padding=padding, output_padding=output_padding,
                                          dilation=dilation, groups=groups)
    return Cost(flops=2.0 * c_in * og * k * t + (c_out * t_out if b is not None else 0),
                bytes_read=nbytes_of(x) + nbytes_of(w) + nbytes_of(b),
                bytes_written=out_bytes((c_out, t_out)))


def conv_transpose1d_shape(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                           groups=1) -> tuple[int, ...]:
    return (w.shape[1] * groups, conv_transpose1d_out_len(x.shape[-1], w.shape[-1], stride=stride, padding=padding,
                                                          output_padding=output_padding, dilation=dilation))


def conv1d_cases() -> list[Case]:
    """Pointwise, dilated, depthwise, grouped with stride, T = 1, asymmetric padding, NaN."""
    cases = []
    for name, (ci, co, t, k, s, p, d, g) in {
            "pointwise_33to7_t45": (33, 7, 45, 1, 1, 0, 1, 1), "k7_d3_t99": (16, 16, 99, 7, 1, 9, 3, 1),
            "depthwise_d9_t37": (12, 12, 37, 3, 1, 9, 9, 12), "grouped_stride2": (6, 9, 50, 5, 2, 2, 1, 3),
            "t1": (3, 4, 1, 3, 1, 1, 1, 1)}.items():
        cases.append(Case("conv1d", name, lambda r, ci=ci, co=co, t=t, k=k, s=s, p=p, d=d, g=g: (
            (randn(r, ci, t), randn(r, co, ci // g, k), randn(r, co)),
            {"stride": s, "padding": p, "dilation": d, "groups": g}), quick=name == "k7_d3_t99"))
    cases.append(Case("conv1d", "asym_pad", lambda r: ((randn(r, 6, 30), randn(r, 5, 6, 4), None), {"padding": (1, 2)})))
    cases.append(Case("conv1d", "nan", lambda r: ((plant(randn(r, 4, 33), (1, 5)), randn(r, 4, 4, 3), None),
                                                  {"padding": 1}), check="nonfinite", quick=True))
    return cases


def conv_transpose1d_cases() -> list[Case]:
    """HiFi-GAN-like upsampling (stride 8 and 4), odd sizes, T = 1, NaN."""
    cases = []
    for name, (ci, co, t, k, s, p) in {"up8_k16": (16, 8, 13, 16, 8, 4), "up4_k8": (8, 4, 33, 8, 4, 2),
                                       "odd": (7, 5, 10, 5, 3, 1), "t1": (3, 5, 1, 7, 5, 1)}.items():
        cases.append(Case("conv_transpose1d", name, lambda r, ci=ci, co=co, t=t, k=k, s=s, p=p: (
            (randn(r, ci, t), randn(r, ci, co, k), randn(r, co)), {"stride": s, "padding": p}),
            quick=name == "up8_k16"))
    # a NaN at input step 4 reaches only the outputs its kernel window touches
    cases.append(Case("conv_transpose1d", "nan", lambda r: (
        (plant(randn(r, 4, 21), (2, 4)), randn(r, 4, 3, 6), None), {"stride": 2, "padding": 1}),
        check="nonfinite", quick=True))
    return cases


# float32 sums over C_in/groups * K terms (up to a few thousand), like linear's
CONV1D = OpSpec("conv1d", conv1d_ref, conv1d_cost, conv1d_shape, conv1d_cases, max_nmse={"default": 1e-9},
                doc="1-D convolution (stride, padding, dilation, groups), channels-first")
CONV_TRANSPOSE1D = OpSpec("conv_transpose1d", conv_transpose1d_ref, conv_transpose1d_cost, conv_transpose1d_shape,
                          conv_transpose1d_cases, max_nmse={"default": 1e-9},
                          doc="1-D transposed convolution (HiFi-GAN upsampling), channels-first")
