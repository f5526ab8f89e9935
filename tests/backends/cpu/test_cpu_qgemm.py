"""The cpu backend's activation settings for quantized weights, every quantized qtype,
against float64 numpy on the reference dequantizer's weights (gguf-py's, bit-exact):

- "int16" (the default): activations rounded to int16 per 32-block, exact integer dots;
  the error is bounded by the activation rounding (half a step of max|x_b| / 32767 per
  element) plus float32 accumulation;
- "int8" (llama.cpp's scheme): the same with 127 steps;
- "f32": dequantized panels + the float32 register tile (qgemm.py), exact weights.

Each setting is row-invariant by construction: a row's bits do not depend on how many
rows the call carries or where the row sits (T = 1 .. 130, chunks across 63/64)."""
from __future__ import annotations

import numpy as np
import pytest

import gguf

from edgeformer.backends.base import Ops  # noqa: E402
from edgeformer.backends.cpu import CpuBackend  # noqa: E402
from edgeformer.backends.row_invariant import row_invariant_linear  # noqa: E402
from edgeformer.quant import quantize  # noqa: E402
from edgeformer.quant.qtypes import QType  # noqa: E402

QTYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]
QMAX = {"int16": 32767, "int8": 127}


@pytest.fixture(scope="module", params=["int16", "int8", "f32"])
def backend(request) -> CpuBackend:
    return CpuBackend(request.param)


def _weight(backend, q: str, n: int, k: int, seed: int):
    w32 = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    qt = quantize(w32, QType[q])
    raw = np.asarray(qt.data).reshape(n, -1)
    exact = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[q]).astype(np.float64)
    return backend.prepare_weight(qt, "w"), exact


def _bound(backend, x: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|y - y_exact| bound per output: activation rounding + float32 accumulation."""
    x64 = np.abs(x.astype(np.float64))
    acc = 2e-6 * np.sqrt(x.shape[1] / 32) * (x64 @ np.abs(exact).T)     # float32 sums
    if backend.activations == "f32":
        return acc
    t, k = x.shape
    amax = x64.reshape(t, k // 32, 32).max(2)                           # (T, blocks)
    wsum = np.abs(exact).reshape(exact.shape[0], k // 32, 32).sum(2)    # (N, blocks)
    return acc + 0.5 / QMAX[backend.activations] * (amax @ wsum.T) * (1 + 1e-6)


@pytest.mark.parametrize("q", QTYPES)
@pytest.mark.parametrize("t,n,k", [(1, 70, 512), (5, 33, 288), (64, 70, 512), (77, 64, 768)])
def test_linear_matches_float64_within_the_setting_bound(backend, q, t, n, k):
    if q.endswith("_K") and k % 256:
        k = 512
    w, exact = _weight(backend, q, n, k, seed=t + n)
    rng = np.random.default_rng(k + t)
    x = rng.standard_normal((t, k)).astype(np.float32)
    x[:, :32] *= 20.0                                       # an outlier block
    bias = rng.standard_normal(n).astype(np.float32)
    got = backend.kernels["linear"](x, w.handle, bias)
    ref = x.astype(np.float64) @ exact.T + bias
    assert (np.abs(got - ref) <= _bound(backend, x, exact) + 1e-6 * np.abs(bias)).all()
    nmse = np.mean((got - ref) ** 2) / np.mean(ref ** 2)
    assert nmse < {"int16": 1e-8, "int8": 2e-4, "f32": 1e-11}[backend.activations]


@pytest.mark.parametrize("q", QTYPES)
def test_rows_do_not_depend_on_the_call(backend, q):
    w, _ = _weight(backend, q, 40, 512, seed=3)
    x = np.random.default_rng(4).standard_normal((130, 512)).astype(np.float32)
    lin = backend.kernels["linear"]
    full = lin(x, w.handle)
    for t in (1, 3, 4, 5, 63, 64, 65):
        np.testing.assert_array_equal(lin(x[:t], w.handle), full[:t])
    for chunk in (1, 7, 63, 64):
        np.testing.assert_array_equal(np.concatenate([lin(x[i:i + chunk], w.handle) for i in range(0, 130, chunk)]),
                                      full)
    np.testing.assert_array_equal(lin(x[77:78], w.handle)[0], full[77])


def test_runtime_linear_is_row_invariant(backend):
    w, _ = _weight(backend, "Q4_0", 96, 256, seed=1)
    lin = row_invariant_linear(Ops(backend))
    x = np.random.default_rng(2).standard_normal((133, 256)).astype(np.float32)
    alone = np.concatenate([lin(x[i:i + 1], w) for i in range(x.shape[0])])
    for t in (63, 64, 133):
        np.testing.assert_array_equal(lin(x[:t], w), alone[:t])


def test_int16_is_far_closer_than_int8():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((17, 576)).astype(np.float32)
    errs = {}
    for s in ("int16", "int8"):
        be = CpuBackend(s)
        w, exact = _weight(be, "Q4_1", 48, 576, seed=5)
        ref = x.astype(np.float64) @ exact.T
        errs[s] = np.mean((be.kernels["linear"](x, w.handle) - ref) ** 2) / np.mean(ref ** 2)
    assert errs["int16"] < errs["int8"] / 1000


def test_unknown_setting_is_refused():
    from edgeformer.errors import UnsupportedError
    with pytest.raises(UnsupportedError, match="activations must be one of"):
        CpuBackend("int4")
