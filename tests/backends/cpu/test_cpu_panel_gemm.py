"""panel_gemm (float weights in 16-row panels, one register tile for every T): the cpu
backend's F32/F16/BF16 linear against float64 numpy on the same (rounded) weights, on
awkward shapes (N not a multiple of 16 or of the tile's 64 rows, K past one K block,
T = 1, tails of the 6-token tile); every row's bits equal to the row computed alone (the
batch invariance the runtime relies on); NaN/Inf propagate; panels round-trip."""
from __future__ import annotations

import numpy as np
import pytest


from edgeformer.backends.cpu import CpuBackend  # noqa: E402
from edgeformer.backends.cpu.panel_gemm import KC, from_panels, to_panels  # noqa: E402
from edgeformer.quant.qtypes import QTensor, QType  # noqa: E402


@pytest.fixture(scope="module")
def backend() -> CpuBackend:
    return CpuBackend()


def _weight(rng, qtype: QType, n: int, k: int):
    """A random (n, k) weight in `qtype` and its exact float64 values."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    if qtype == QType.F16:
        h = w.astype(np.float16)
        return QTensor.from_array(h), h.astype(np.float64)
    if qtype == QType.BF16:
        bits = (w.view(np.uint32) >> 16).astype(np.uint16)
        exact = (bits.astype(np.uint32) << 16).view(np.float32)
        return QTensor(bits.reshape(-1).view(np.uint8), QType.BF16, (n, k)), exact.astype(np.float64)
    return QTensor.from_array(w), w.astype(np.float64)


SHAPES = [(1, 1, 32), (5, 17, 64), (7, 64, 96), (13, 100, 160), (1, 385, 1030), (29, 37, KC + 96)]


@pytest.mark.parametrize("qtype", [QType.F32, QType.F16, QType.BF16])
@pytest.mark.parametrize("t,n,k", SHAPES)
def test_linear_matches_float64(backend, qtype, t, n, k):
    rng = np.random.default_rng(t * 1000 + n + k)
    qt, exact = _weight(rng, qtype, n, k)
    w = backend.prepare_weight(qt, "w")
    x = rng.standard_normal((t, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = backend.kernels["linear"](x, w.handle, bias)
    ref = x.astype(np.float64) @ exact.T + bias
    # float32 FMA chain over k: error grows ~ sqrt(k) * eps * |x||w|
    scale = np.sqrt((x.astype(np.float64) ** 2).sum(1))[:, None] * np.sqrt((exact ** 2).sum(1))[None, :]
    assert got.shape == (t, n) and got.dtype == np.float32
    assert np.abs(got - ref).max() / scale.max() < 4e-7 * np.sqrt(k / 32)


@pytest.mark.parametrize("qtype", [QType.F32, QType.BF16])
def test_rows_are_batch_invariant(backend, qtype):
    rng = np.random.default_rng(7)
    n, k = 150, 700                               # a partial panel and a partial K block
    qt, _ = _weight(rng, qtype, n, k)
    w = backend.prepare_weight(qt, "w")
    x = rng.standard_normal((40, k)).astype(np.float32)
    alone = np.concatenate([backend.kernels["linear"](x[i:i + 1], w.handle) for i in range(x.shape[0])])
    for t in (2, 5, 6, 7, 16, 40):
        np.testing.assert_array_equal(backend.kernels["linear"](x[:t], w.handle), alone[:t])
    # a row's bits do not depend on its neighbours either
    y = x.copy()
    y[::2] = rng.standard_normal(y[::2].shape)
    np.testing.assert_array_equal(backend.kernels["linear"](y, w.handle)[1::2], alone[1::2])


def test_nan_and_inf_propagate(backend):
    rng = np.random.default_rng(3)
    w32 = rng.standard_normal((20, 64)).astype(np.float32)
    w = backend.prepare_weight(QTensor.from_array(w32), "w")
    x = rng.standard_normal((3, 64)).astype(np.float32)
    x[1, 5] = np.nan
    x[2, 9] = np.inf
    got = backend.kernels["linear"](x, w.handle)
    with np.errstate(invalid="ignore"):
        ref = x.astype(np.float64) @ w32.T.astype(np.float64)
    assert np.isfinite(got[0]).all() and np.isnan(got[1]).all()
    np.testing.assert_array_equal(got[2], ref[2])          # +-inf with the weight's sign


def test_panels_round_trip_and_joined_weights(backend):
    rng = np.random.default_rng(11)
    w = rng.standard_normal((37, 48)).astype(np.float32)
    p = to_panels(w)
    assert p.shape == (3, 48, 16) and (p[2, :, 5:] == 0).all()
    np.testing.assert_array_equal(from_panels(p, 37), w)
    np.testing.assert_array_equal(from_panels(p, 37, np.array([36, 0, 17])), w[[36, 0, 17]])
    # q|k|v-style joining of parts whose row counts are not multiples of 16
    parts = [backend.prepare_weight(QTensor.from_array(rng.standard_normal((n, 48)).astype(np.float32)), f"p{n}")
             for n in (20, 7, 33)]
    joined = backend.concat_weights(parts, "qkv")
    x = rng.standard_normal((4, 48)).astype(np.float32)
    want = np.concatenate([backend.kernels["linear"](x, q.handle) for q in parts], axis=1)
    np.testing.assert_array_equal(backend.kernels["linear"](x, joined.handle), want)
    ids = np.array([0, 19, 20, 26, 27, 59])
    full = np.concatenate([from_panels(q.handle.arrays[0], q.handle.n) for q in parts])
    np.testing.assert_array_equal(backend.kernels["embed"](joined.handle, ids), full[ids])
