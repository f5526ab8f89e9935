"""The cpu backend's native Q5_0 / Q5_1 weights (repack.py layout, simd_rows.py row dots,
linear.py kernels) against references nobody here wrote: the `gguf` package's
dequantizer (bit for bit) and a float64 matmul over its dequantized weights; plus the
numpy reference backend, row invariance, joined weights, and the once-per-qtype warning
for qtypes that still fall back to F32."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from edgeformer.backends import get_backend
from edgeformer.kernels.linear import LINEAR
from edgeformer.quant.qtypes import QTensor, QType

import gguf

Q5 = [QType.Q5_0, QType.Q5_1]
# K: 1, 3, 5 and 20 blocks of 32 (odd block counts take the row dots' one-block tail);
# N odd and not a multiple of the kernels' 16-row tasks
SHAPES = [(17, 32), (37, 96), (33, 160), (19, 640)]


def _qt(q: QType, n: int, k: int, rng) -> QTensor:
    """Rows of different scale and offset (Q5_1's mins matter), quantized by our quantizer."""
    from edgeformer.quant import quantize
    w = rng.standard_normal((n, k)) * rng.uniform(0.05, 3.0, (n, 1)) + rng.uniform(-1.0, 1.0, (n, 1))
    return quantize(w.astype(np.float32), q)


def _gguf_dequant(qt: QTensor) -> np.ndarray:
    n, k = qt.shape
    return gguf.quants.dequantize(np.asarray(qt.data).reshape(n, -1), gguf.GGMLQuantizationType[qt.qtype.name])


def _nmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b) ** 2).mean() / (np.asarray(b, np.float64) ** 2).mean())


@pytest.mark.parametrize("q", Q5, ids=lambda q: q.name)
def test_dequantize_rows_is_bit_exact_with_gguf(q: QType) -> None:
    from edgeformer.backends.cpu.repack import dequantize_rows, repack
    rng = np.random.default_rng(0)
    qt = _qt(q, 23, 160, rng)
    w = repack(qt)
    assert w.nbytes == qt.nbytes           # same bytes per weight as the file
    ids = np.array([22, 0, 5, 5, 17])
    got = dequantize_rows(w, ids)
    want = _gguf_dequant(qt)[ids].astype(np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("q", Q5, ids=lambda q: q.name)
@pytest.mark.parametrize("n,k", SHAPES, ids=lambda v: str(v))
def test_linear_matches_references(q: QType, n: int, k: int) -> None:
    """Within the linear op's NMSE bound of a float64 matmul over gguf's dequantized
    weights and of the numpy reference backend, for T = 1, 3, 5, 17 (the 4-token prefill
    path and its remainder)."""
    cpu, ref = get_backend("cpu"), get_backend("numpy")
    rng = np.random.default_rng(n * 1000 + k)
    qt = _qt(q, n, k, rng)
    with warnings.catch_warnings():
        warnings.simplefilter("error")        # native: no dequantize-at-load warning
        w = cpu.prepare_weight(qt, "w")
    wr = ref.prepare_weight(qt, "w")
    bias = rng.standard_normal(n).astype(np.float32)
    w64 = _gguf_dequant(qt).astype(np.float64)
    bound = LINEAR.max_nmse["default"]
    for t in (1, 3, 5, 17):
        x = rng.standard_normal((t, k)).astype(np.float32)
        got = cpu.kernels["linear"](x, w.handle, bias)
        assert got.shape == (t, n) and got.dtype == np.float32
        assert _nmse(got, x.astype(np.float64) @ w64.T + bias) < bound, t
        assert _nmse(got, ref.kernels["linear"](x, wr.handle, bias)) < bound, t


@pytest.mark.parametrize("q", Q5, ids=lambda q: q.name)
def test_linear_rows_do_not_depend_on_the_token_count(q: QType) -> None:
    """Prefill dots 4 tokens per row pass (rowdot4_q5_*); each token must get the bits
    it gets alone (backends/row_invariant.py relies on row invariance)."""
    be, rng = get_backend("cpu"), np.random.default_rng(6)
    for k in (96, 640):
        w = be.prepare_weight(_qt(q, 41, k, rng))
        x = (rng.standard_normal((9, k)) * rng.uniform(0.1, 10.0, (9, 1))).astype(np.float32)
        alone = np.concatenate([be.kernels["linear"](x[i:i + 1], w.handle) for i in range(9)])
        for t in (4, 5, 8, 9):
            np.testing.assert_array_equal(be.kernels["linear"](x[:t], w.handle), alone[:t])


@pytest.mark.parametrize("q", Q5, ids=lambda q: q.name)
def test_concat_and_embed_rows(q: QType) -> None:
    """Joined q|k|v-style weights give the separate linears' bits; `embed` on a packed
    Q5 weight gives gguf's dequantized rows."""
    be, rng = get_backend("cpu"), np.random.default_rng(3)
    qts = [_qt(q, n, 160, rng) for n in (48, 16, 17)]
    parts = [be.prepare_weight(qt, f"w{i}") for i, qt in enumerate(qts)]
    x = rng.standard_normal((3, 160)).astype(np.float32)
    want = np.concatenate([be.kernels["linear"](x, w.handle) for w in parts], axis=1)
    joined = be.concat_weights(parts, "qkv")
    assert joined is not None and joined.shape == (81, 160)
    np.testing.assert_array_equal(be.kernels["linear"](x, joined.handle), want)
    ids = np.array([3, 0, 47])
    want_rows = _gguf_dequant(qts[0])[ids].astype(np.float32)
    np.testing.assert_array_equal(be.kernels["embed"](parts[0].handle, ids), want_rows)


def test_fallback_warns_once_per_qtype_per_load() -> None:
    """A qtype without a native kernel is dequantized with ONE warning per qtype (naming
    the first weight), not one per tensor; results stay those of the dequantized weight."""
    from edgeformer.quant import quantize
    rng = np.random.default_rng(9)
    qts = {q: [quantize(rng.standard_normal((8, 256)).astype(np.float32), q) for _ in range(3)]
           for q in (QType.Q3_K, QType.Q2_K)}
    be = get_backend("cpu")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ws = [be.prepare_weight(qt, f"blk.{i}.{q.name}") for q in qts for i, qt in enumerate(qts[q])]
    msgs = [str(r.message) for r in rec if issubclass(r.category, RuntimeWarning)]
    assert len(msgs) == 2 and "Q3_K" in msgs[0] and "blk.0.Q3_K" in msgs[0] and "Q2_K" in msgs[1], msgs
    x = rng.standard_normal((2, 256)).astype(np.float32)
    want = x.astype(np.float64) @ _gguf_dequant(qts[QType.Q2_K][1]).astype(np.float64).T
    assert _nmse(be.kernels["linear"](x, ws[4].handle), want) < 1e-10     # F32 weights, F32 math
    with warnings.catch_warnings(record=True) as rec:                      # a new load warns again
        warnings.simplefilter("always")
        get_backend("cpu").prepare_weight(qts[QType.Q3_K][0], "again")
    assert len(rec) == 1
