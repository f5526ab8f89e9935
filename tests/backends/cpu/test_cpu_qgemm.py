"""qgemm (prefill linear for quantized weights: dequantized panels + the float register
tile, bfloat16 pairs where AVX512-BF16 exists), reached through the cpu backend's `linear`
from MIN_T rows: every quantized qtype against float64 numpy on the reference
dequantizer's weights (gguf-py's, bit-exact) within the path's rounding bound, with
a partial last panel (N = 70) and a partial K block; and the row-invariant linear of the
runtime keeps each row's bits whatever the batch size (it stays below MIN_T rows)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
gguf = pytest.importorskip("gguf")

from edgeformer.backends.base import Ops  # noqa: E402
from edgeformer.backends.cpu import CpuBackend  # noqa: E402
from edgeformer.backends.cpu.qgemm import MIN_T, uses_bf16  # noqa: E402
from edgeformer.quant import quantize  # noqa: E402
from edgeformer.quant.qtypes import QType  # noqa: E402
from edgeformer.runtime.batch import row_invariant_linear  # noqa: E402

QTYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"]


@pytest.fixture(scope="module")
def backend() -> CpuBackend:
    return CpuBackend()


def _weight(backend, q: str, n: int, k: int, seed: int):
    w32 = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    qt = quantize(w32, QType[q])
    raw = np.asarray(qt.data).reshape(n, -1)
    exact = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[q]).astype(np.float64)
    return backend.prepare_weight(qt, "w"), exact


@pytest.mark.parametrize("q", QTYPES)
@pytest.mark.parametrize("t,n,k", [(MIN_T, 70, 512), (MIN_T + 13, 64, 768)])
def test_prefill_linear_matches_float64(backend, q, t, n, k):
    w, exact = _weight(backend, q, n, k, seed=t + n)
    rng = np.random.default_rng(k)
    x = rng.standard_normal((t, k)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    got = backend.kernels["linear"](x, w.handle, bias)
    ref = x.astype(np.float64) @ exact.T + bias
    if uses_bf16():
        # bfloat16 weights and activations: each product within 2^-8 relative, float32 sums
        bound = (2.0 ** -8 + 1e-6) * (np.abs(x.astype(np.float64)) @ np.abs(exact).T)
        assert (np.abs(got - ref) <= bound).all()
        assert np.mean((got - ref) ** 2) / np.mean(ref ** 2) < 2e-5
    else:
        scale = np.sqrt((x.astype(np.float64) ** 2).sum(1)).max() * np.sqrt((exact ** 2).sum(1)).max()
        # float32 activations and exact weights: only the float32 FMA chain's rounding
        assert np.abs(got - ref).max() / scale < 4e-7 * np.sqrt(k / 32)
    # the int8 path (below MIN_T) agrees within its activation rounding
    lo = np.concatenate([backend.kernels["linear"](x[i:i + 8], w.handle, bias) for i in range(0, t, 8)])
    assert np.mean((lo - got) ** 2) / np.mean(ref ** 2) < 5e-4


def test_runtime_linear_is_row_invariant_across_the_switch(backend):
    w, _ = _weight(backend, "Q4_0", 96, 256, seed=1)
    lin = row_invariant_linear(Ops(backend))
    x = np.random.default_rng(2).standard_normal((2 * MIN_T + 5, 256)).astype(np.float32)
    alone = np.concatenate([lin(x[i:i + 1], w) for i in range(x.shape[0])])
    for t in (MIN_T - 1, MIN_T, 2 * MIN_T + 5):
        np.testing.assert_array_equal(lin(x[:t], w), alone[:t])
