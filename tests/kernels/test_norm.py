"""rms_norm / layer_norm references against torch.nn.functional (float64), and their costs."""
from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from edgeformer.kernels import OPS
from edgeformer.kernels.norm import layer_norm_ref, rms_norm_ref
from support.kernel_testutil import assert_f32_close, randn, rng_for, t64

SHAPES = [(1, 1), (1, 33), (45, 65), (64, 99), (2, 1025), (2, 3, 33)]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("with_weight", [True, False])
@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_rms_norm_matches_torch(shape, with_weight, eps):
    r = rng_for("rms", shape, with_weight, eps)
    x = randn(r, *shape, scale=2.0)
    w = randn(r, shape[-1]) if with_weight else None
    got = rms_norm_ref(x, w, eps)
    assert_f32_close(got, F.rms_norm(t64(x), (shape[-1],), t64(w), eps))


@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_rms_norm_extreme_scales(scale):
    # tiny inputs: eps dominates the denominator; large: x*x must not lose precision
    r = rng_for("rms_scale", scale)
    x = randn(r, 5, 64, scale=scale)
    w = randn(r, 64)
    assert_f32_close(rms_norm_ref(x, w, 1e-5), F.rms_norm(t64(x), (64,), t64(w), 1e-5))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("affine", ["wb", "w", "none"])
def test_layer_norm_matches_torch(shape, affine):
    r = rng_for("ln", shape, affine)
    x = randn(r, *shape) + 3.0          # a non-zero mean makes centering matter
    w = randn(r, shape[-1]) if affine != "none" else None
    b = randn(r, shape[-1]) if affine == "wb" else None
    got = layer_norm_ref(x, w, b, 1e-5)
    assert_f32_close(got, F.layer_norm(t64(x), (shape[-1],), t64(w), t64(b), 1e-5))


def test_layer_norm_large_offset():
    # mean 100, std 1: a one-pass E[x^2]-E[x]^2 variance would lose ~4 digits here
    r = rng_for("ln_off")
    x = randn(r, 7, 129) + 100.0
    assert_f32_close(layer_norm_ref(x, None, None, 1e-5), F.layer_norm(t64(x), (129,), None, None, 1e-5),
                     rtol=1e-4, atol_rel=1e-5)


@pytest.mark.parametrize("ref", ["rms", "ln"])
def test_nan_stays_in_its_row(ref):
    r = rng_for("nan", ref)
    x = randn(r, 6, 65)
    x[4, 9] = np.nan
    w = randn(r, 65)
    got = rms_norm_ref(x, w, 1e-6) if ref == "rms" else layer_norm_ref(x, w, None, 1e-6)
    want = (F.rms_norm(t64(x), (65,), t64(w), 1e-6) if ref == "rms"
            else F.layer_norm(t64(x), (65,), t64(w), None, 1e-6)).numpy()
    assert np.isnan(got[4]).all()
    assert np.isfinite(np.delete(got, 4, axis=0)).all()
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))


def test_norm_costs_by_hand():
    x = np.zeros((3, 5), np.float32)
    w = np.zeros(5, np.float32)
    c = OPS["rms_norm"].cost(x, w, 1e-6)
    # x*x, sum, scale, *w: 4 FLOPs per element of 15; reads x (60 B) + w (20 B); writes 60 B
    assert (c.flops, c.bytes_read, c.bytes_written) == (60, 80, 60)
    c = OPS["rms_norm"].cost(x, None, 1e-6)
    assert (c.bytes_read, c.bytes_written) == (60, 60)
    c = OPS["layer_norm"].cost(x, w, w, 1e-5)
    assert (c.flops, c.bytes_read, c.bytes_written) == (7 * 15, 60 + 20 + 20, 60)
    assert c.bytes == 160
