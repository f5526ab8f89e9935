"""conv1d / conv_transpose1d references against torch.nn.functional (float64), and their costs."""
from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from edgeformer.kernels.conv import (CONV1D, CONV_TRANSPOSE1D, conv1d_out_len, conv1d_ref,
                                     conv_transpose1d_out_len, conv_transpose1d_ref)
from support.kernel_testutil import assert_f32_close, rng_for, t64


def _randn(r, *shape):
    return r.standard_normal(shape).astype(np.float32)


# (C_in, C_out, T, K, stride, padding, dilation, groups): pointwise, "same" convs, HiFi-GAN
# dilated resblock taps, VITS depthwise dilated (groups = C), strided, odd sizes, T = 1
CONV_CASES = [
    (1, 1, 1, 1, 1, 0, 1, 1),
    (33, 7, 45, 1, 1, 0, 1, 1),
    (8, 12, 65, 3, 1, 1, 1, 1),
    (16, 16, 99, 7, 1, 9, 3, 1),
    (12, 12, 37, 3, 1, 9, 9, 12),     # depthwise, dilation 9 (VITS DDSConv layer 3)
    (6, 9, 50, 5, 2, 2, 1, 3),        # grouped and strided
    (4, 6, 33, 4, 3, 0, 2, 2),
    (5, 3, 20, 11, 1, 5, 1, 1),
    (3, 4, 1, 3, 1, 1, 1, 1),         # a single frame
]


@pytest.mark.parametrize("case", CONV_CASES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_matches_torch(case, bias):
    c_in, c_out, t, k, stride, pad, dil, groups = case
    r = rng_for("conv1d", case, bias)
    x, w = _randn(r, c_in, t), _randn(r, c_out, c_in // groups, k)
    b = _randn(r, c_out) if bias else None
    got = conv1d_ref(x, w, b, stride=stride, padding=pad, dilation=dil, groups=groups)
    want = F.conv1d(t64(x)[None], t64(w), t64(b), stride=stride, padding=pad, dilation=dil, groups=groups)[0]
    assert_f32_close(got, want)
    assert got.shape[1] == conv1d_out_len(t, k, stride=stride, padding=pad, dilation=dil)


def test_conv1d_asymmetric_padding_matches_torch_pad():
    # even kernels pad (K-1)//2 left and K//2 right (VITS FFN "same" padding)
    r = rng_for("conv1d_asym")
    x, w, b = _randn(r, 6, 30), _randn(r, 5, 6, 4), _randn(r, 5)
    got = conv1d_ref(x, w, b, padding=(1, 2))
    want = F.conv1d(F.pad(t64(x)[None], (1, 2)), t64(w), t64(b))[0]
    assert_f32_close(got, want)
    assert got.shape == (5, 30)


def test_conv1d_rejects_bad_shapes():
    x = np.zeros((6, 10), np.float32)
    with pytest.raises(ValueError):
        conv1d_ref(x, np.zeros((4, 4, 3), np.float32), groups=1)   # C_in mismatch
    with pytest.raises(ValueError):
        conv1d_ref(x, np.zeros((4, 2, 3), np.float32), groups=4)   # 6 channels do not split in 4
    with pytest.raises(ValueError):
        conv1d_ref(np.zeros((6, 2), np.float32), np.zeros((4, 6, 5), np.float32))   # too short


# (C_in, C_out, T, K, stride, padding, output_padding, dilation, groups): HiFi-GAN
# upsamplers (K = 2 stride, padding (K - stride) / 2), odd ones, grouped
CONVT_CASES = [
    (1, 1, 1, 1, 1, 0, 0, 1, 1),
    (16, 8, 13, 16, 8, 4, 0, 1, 1),
    (8, 4, 33, 8, 4, 2, 0, 1, 1),
    (7, 5, 10, 4, 2, 1, 1, 1, 1),
    (6, 9, 12, 5, 3, 0, 2, 1, 3),
    (4, 4, 9, 3, 1, 1, 0, 2, 2),
    (3, 5, 1, 7, 5, 1, 0, 1, 1),
]


@pytest.mark.parametrize("case", CONVT_CASES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose1d_matches_torch(case, bias):
    c_in, c_out, t, k, stride, pad, opad, dil, groups = case
    r = rng_for("convt", case, bias)
    x, w = _randn(r, c_in, t), _randn(r, c_in, c_out // groups, k)
    b = _randn(r, c_out) if bias else None
    got = conv_transpose1d_ref(x, w, b, stride=stride, padding=pad, output_padding=opad, dilation=dil, groups=groups)
    want = F.conv_transpose1d(t64(x)[None], t64(w), t64(b), stride=stride, padding=pad, output_padding=opad,
                              groups=groups, dilation=dil)[0]
    assert_f32_close(got, want)
    assert got.shape[1] == conv_transpose1d_out_len(t, k, stride=stride, padding=pad, output_padding=opad,
                                                    dilation=dil)


def test_conv_transpose1d_rejects_bad_shapes():
    with pytest.raises(ValueError):
        conv_transpose1d_ref(np.zeros((6, 4), np.float32), np.zeros((5, 2, 3), np.float32))
    with pytest.raises(ValueError):
        conv_transpose1d_ref(np.zeros((2, 1), np.float32), np.zeros((2, 2, 1), np.float32), padding=1)


def test_costs_count_macs():
    x = np.zeros((8, 50), np.float32)
    w = np.zeros((12, 4, 3), np.float32)
    c = CONV1D.cost(x, w, np.zeros(12, np.float32), padding=1, groups=2)
    assert c.flops == 2 * 12 * 4 * 3 * 50 + 12 * 50
    assert c.bytes_read == x.nbytes + w.nbytes + 48 and c.bytes_written == 12 * 50 * 4
    wt = np.zeros((8, 4, 16), np.float32)
    ct = CONV_TRANSPOSE1D.cost(x, wt, None, stride=8, padding=4)
    assert ct.flops == 2 * 8 * 4 * 16 * 50
    assert ct.bytes_written == 4 * (49 * 8 - 8 + 16) * 4
