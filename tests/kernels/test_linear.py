"""linear reference against torch F.linear on a weight dequantized by the `gguf` package
(never by our dequantizer), and its cost."""
from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from edgeformer.kernels import OPS
from edgeformer.kernels.inputs import random_qtensor
from edgeformer.kernels.linear import linear_ref
from edgeformer.quant.qtypes import QType
from support.kernel_testutil import assert_f32_close, gguf_f32, randn, rng_for, t64


# (T, N, K): 1, 33, 45x65, 64x99, 1025 along the axes that matter
FLOAT_SHAPES = [(1, 1, 1), (1, 33, 33), (45, 65, 65), (64, 99, 99), (2, 7, 1025)]


@pytest.mark.parametrize("shape", FLOAT_SHAPES, ids=str)
@pytest.mark.parametrize("wtype", ["ndarray_f32", "ndarray_f16", "F32", "F16", "BF16"])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_float_weights(shape, wtype, bias):
    t, n, k = shape
    r = rng_for("lin", shape, wtype, bias)
    x = randn(r, t, k)
    b = randn(r, n) if bias else None
    if wtype.startswith("ndarray"):
        w = randn(r, n, k).astype(np.float16 if wtype.endswith("f16") else np.float32)
        wf = w.astype(np.float32)
    else:
        w = random_qtensor(QType[wtype], (n, k), r)
        wf = gguf_f32(w)
    got = linear_ref(x, w, b)
    assert_f32_close(got, F.linear(t64(x), t64(wf), t64(b)), atol_rel=2e-6)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K"])
@pytest.mark.parametrize("t", [1, 33])
def test_linear_block_quant_weights(qtype, t):
    qt = QType[qtype]
    k = 3 * qt.block_size if qt.block_size == 32 else 2 * qt.block_size
    r = rng_for("linq", qtype, t)
    x = randn(r, t, k)
    w = random_qtensor(qt, (45, k), r, method="bytes")   # every code, no quantizer involved
    b = randn(r, 45)
    assert_f32_close(linear_ref(x, w, b), F.linear(t64(x), t64(gguf_f32(w)), t64(b)), atol_rel=2e-6)


def test_linear_batched_leading_dims():
    r = rng_for("lin3d")
    x = randn(r, 2, 3, 65)
    w = random_qtensor(QType.Q8_0, (45, 96), r)          # K mismatch must not broadcast silently
    with pytest.raises(ValueError):
        linear_ref(x, w)
    w = randn(r, 45, 65)
    got = linear_ref(x, w)
    assert got.shape == (2, 3, 45)
    assert_f32_close(got, F.linear(t64(x), t64(w)))


def test_linear_nan_in_x_row_fills_that_row():
    r = rng_for("linnan")
    x = randn(r, 5, 64)
    x[2, 7] = np.nan
    got = linear_ref(x, random_qtensor(QType.Q4_0, (9, 64), r))
    assert np.isnan(got[2]).all() and np.isfinite(np.delete(got, 2, 0)).all()


def test_linear_cost_by_hand():
    x = np.zeros((3, 64), np.float32)
    w = random_qtensor(QType.Q8_0, (5, 64), rng_for("c"))      # 5 rows x 2 blocks x 34 B
    c = OPS["linear"].cost(x, w)
    assert (c.flops, c.bytes_read, c.bytes_written) == (2 * 3 * 5 * 64, 3 * 64 * 4 + 5 * 2 * 34, 3 * 5 * 4)
    b = np.zeros(5, np.float32)
    c = OPS["linear"].cost(x.reshape(1, 3, 64), w, b)
    assert (c.flops, c.bytes_read) == (2 * 3 * 5 * 64 + 15, 3 * 64 * 4 + 340 + 20)
