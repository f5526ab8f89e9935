"""activation / glu / softmax / softcap references against torch (float64), and costs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeformer.kernels import OPS
from edgeformer.kernels.activation import activation_ref, glu_ref, softcap_ref, softmax_ref
from support.kernel_testutil import assert_f32_close, randn, rng_for, t64

TORCH_ACT = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}
SHAPES = [(1,), (33,), (45, 65), (1025,), (2, 3, 33)]
EXTREMES = np.array([-1e4, -100, -88.8, -20, -3, -1e-6, 0, 1e-6, 3, 20, 88.8, 100, 1e4], np.float32)


@pytest.mark.parametrize("kind", list(TORCH_ACT))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_activation_matches_torch(kind, shape):
    x = randn(rng_for("act", kind, shape), *shape, scale=4.0)
    assert_f32_close(activation_ref(x, kind), TORCH_ACT[kind](t64(x)))


@pytest.mark.parametrize("kind", list(TORCH_ACT))
def test_activation_extremes(kind):
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # no warnings leak out
        got = activation_ref(EXTREMES, kind)
    # elementwise: compare each value to its own magnitude (tiny outputs near -inf inputs)
    np.testing.assert_allclose(got, TORCH_ACT[kind](t64(EXTREMES)).numpy(), rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("kind", list(TORCH_ACT))
def test_activation_nan_is_elementwise(kind):
    x = randn(rng_for("actnan", kind), 3, 33)
    x[1, 4] = np.nan
    got = activation_ref(x, kind)
    want = np.isnan(TORCH_ACT[kind](t64(x)).numpy())
    assert want.sum() == 1
    np.testing.assert_array_equal(np.isnan(got), want)


def test_activation_unknown_kind():
    with pytest.raises(ValueError, match="swish2"):
        activation_ref(np.zeros(3, np.float32), "swish2")


@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh"])
@pytest.mark.parametrize("shape", [(1, 33), (45, 65), (3, 1025)], ids=str)
def test_glu_matches_torch(kind, shape):
    r = rng_for("glu", kind, shape)
    gate, up = randn(r, *shape, scale=3.0), randn(r, *shape)
    assert_f32_close(glu_ref(gate, up, kind), TORCH_ACT[kind](t64(gate)) * t64(up))


@pytest.mark.parametrize("shape", [(1, 1), (1, 33), (45, 65), (64, 99), (2, 1025)], ids=str)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_softmax_matches_torch(shape, scale):
    x = randn(rng_for("sm", shape, scale), *shape, scale=scale)
    want = torch.softmax(t64(x), dim=-1)
    # probabilities span many decades: compare relative to each row's largest entry
    assert_f32_close(softmax_ref(x), want, atol_rel=1e-7)
    np.testing.assert_allclose(softmax_ref(x).sum(-1), 1.0, rtol=1e-5)


def test_softmax_masked_entries_and_nan_rows():
    r = rng_for("smmask")
    x = randn(r, 5, 33)
    x[:, 20:] = -np.inf            # masked logits get exactly 0
    x[3, 3] = np.nan               # a NaN poisons its own row only
    got = softmax_ref(x)
    want = torch.softmax(t64(x), dim=-1).numpy()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[3]).all() and np.isfinite(np.delete(got, 3, 0)).all()
    assert (np.delete(got, 3, 0)[:, 20:] == 0).all()
    assert_f32_close(np.delete(got, 3, 0), np.delete(want, 3, 0), atol_rel=1e-7)


@pytest.mark.parametrize("cap", [30.0, 50.0])
def test_softcap_matches_torch(cap):
    x = randn(rng_for("cap", cap), 45, 65, scale=100.0)
    assert_f32_close(softcap_ref(x, cap), cap * torch.tanh(t64(x) / cap))
    assert np.abs(softcap_ref(x, cap)).max() <= cap


def test_pointwise_costs_by_hand():
    x = np.zeros((4, 6), np.float32)
    c = OPS["activation"].cost(x, "silu")
    assert (c.flops, c.bytes_read, c.bytes_written) == (8 * 24, 96, 96)
    c = OPS["glu"].cost(x, x.astype(np.float16), "silu")
    assert (c.flops, c.bytes_read, c.bytes_written) == (9 * 24, 96 + 48, 96)
    c = OPS["softmax"].cost(x)
    assert (c.flops, c.bytes_read, c.bytes_written) == (4 * 24, 96, 96)
    c = OPS["softcap"].cost(x, 30.0)
    assert (c.flops, c.bytes_read, c.bytes_written) == (3 * 24, 96, 96)
