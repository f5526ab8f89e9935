"""CPU backend linear/embed vs references nobody here wrote: weights are made and
dequantized by the `gguf` package (gguf-py), products by numpy, judged by NMSE against
`LINEAR.max_nmse` on awkward shapes."""
from __future__ import annotations

import numpy as np
import pytest

import gguf.quants as gq
from gguf import GGMLQuantizationType as GT  # noqa: E402

from edgeformer.backends.cpu import CpuBackend  # noqa: E402
from edgeformer.backends.cpu.repack import NATIVE, dequantize_rows, repack  # noqa: E402
from edgeformer.errors import InputError, UnsupportedError  # noqa: E402
from edgeformer.kernels.embed import EMBED  # noqa: E402
from edgeformer.kernels.linear import LINEAR, linear_ref  # noqa: E402
from edgeformer.quant.qtypes import QTensor, QType  # noqa: E402

# f16 offsets of the super-block scales (d, dmin) in the K-quant blocks (ggml-common.h)
_K_SCALES = {QType.Q4_K: (0, 2), QType.Q5_K: (0, 2), QType.Q6_K: (208,)}


def make_weight(q: QType, n: int, k: int, rng: np.random.Generator) -> QTensor:
    """A random (n, k) weight in qtype q. gguf-py quantizes the 32-block types; it has no
    K-quant quantizer, so K-quant blocks are random bytes with sane f16 super-scales
    (every bit pattern of the rest is a valid block)."""
    w = rng.standard_normal((n, k)).astype(np.float32)
    if q == QType.F32:
        return QTensor.from_array(w)
    if q == QType.F16:
        return QTensor.from_array(w.astype(np.float16))
    if q in _K_SCALES:
        nb = k // 256
        raw = rng.integers(0, 256, (n, nb, q.type_size), dtype=np.uint8)
        for i, off in enumerate(_K_SCALES[q]):
            s = (rng.random((n, nb)) * 0.01 + (0.001 if i == 0 else 0.0)).astype(np.float16)
            raw[:, :, off:off + 2] = s.view(np.uint8).reshape(n, nb, 2)
        return QTensor(raw.reshape(-1), q, (n, k))
    raw = gq.quantize(w, GT(q.value))
    return QTensor(np.ascontiguousarray(raw).reshape(-1).view(np.uint8), q, (n, k))


def gguf_dequant(qt: QTensor) -> np.ndarray:
    n, k = qt.shape
    if qt.qtype == QType.F32:
        return qt.data.view(np.float32).reshape(n, k)
    if qt.qtype == QType.F16:
        return qt.data.view(np.float16).reshape(n, k).astype(np.float32)
    return gq.dequantize(qt.data.reshape(n, -1), GT(qt.qtype.value)).astype(np.float32)


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum((a.astype(np.float64) - ref) ** 2) / max(np.sum(ref.astype(np.float64) ** 2), 1e-30))


@pytest.fixture(scope="module")
def backend() -> CpuBackend:
    return CpuBackend()


def _k_for(q: QType) -> int:
    # K not a multiple of 256 where the block size allows it
    return 768 if q.block_size == 256 else 608


@pytest.mark.parametrize("q", NATIVE, ids=lambda q: q.name)
def test_repack_roundtrip_bit_exact(q: QType) -> None:
    rng = np.random.default_rng(1)
    qt = make_weight(q, 33, _k_for(q), rng)
    got = dequantize_rows(repack(qt), np.arange(33))
    np.testing.assert_array_equal(got, gguf_dequant(qt))


@pytest.mark.parametrize("q", NATIVE, ids=lambda q: q.name)
def test_linear_vs_reference(backend: CpuBackend, q: QType) -> None:
    rng = np.random.default_rng(int(q))
    for n, t, with_bias in ((33, 1, False), (99, 7, True), (33, 33, False)):
        k = _k_for(q)
        qt = make_weight(q, n, k, rng)
        w = backend.prepare_weight(qt, "w")
        x = rng.standard_normal((t, k)).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
        got = backend.kernels["linear"](x, w.handle, bias)
        ref = linear_ref(x, gguf_dequant(qt), bias)
        bound = LINEAR.max_nmse.get(q.name, LINEAR.max_nmse["default"])
        assert got.shape == (t, n) and got.dtype == np.float32
        assert nmse(got, ref) <= bound, (q.name, n, t, nmse(got, ref), bound)


def test_linear_leading_dims_and_strided_input(backend: CpuBackend) -> None:
    rng = np.random.default_rng(7)
    qt = make_weight(QType.Q8_0, 45, 96, rng)
    w = backend.prepare_weight(qt)
    x = rng.standard_normal((2, 3, 192)).astype(np.float32)[..., ::2]   # non-contiguous
    got = backend.kernels["linear"](x, w.handle)
    ref = linear_ref(x, gguf_dequant(qt))
    assert got.shape == (2, 3, 45)
    assert nmse(got, ref) <= LINEAR.max_nmse["default"]


@pytest.mark.parametrize("q", [QType.Q8_0, QType.Q4_K, QType.Q6_K, QType.F16], ids=lambda q: q.name)
def test_embed_dequantizes_only_rows(backend: CpuBackend, q: QType) -> None:
    rng = np.random.default_rng(3)
    qt = make_weight(q, 99, _k_for(q), rng)
    w = backend.prepare_weight(qt, "token_embd")
    ids = np.array([0, 98, 5, 5, 42])
    got = backend.kernels["embed"](w.handle, ids)
    ref = gguf_dequant(qt)[ids]
    assert nmse(got, ref) <= EMBED.max_nmse["default"]
    np.testing.assert_array_equal(got, ref)


def test_embed_rejects_out_of_vocab(backend: CpuBackend) -> None:
    w = backend.prepare_weight(make_weight(QType.Q8_0, 10, 32, np.random.default_rng(0)))
    with pytest.raises(InputError, match="outside the vocabulary"):
        backend.kernels["embed"](w.handle, np.array([3, 10]))


def test_linear_rejects_mismatched_shapes(backend: CpuBackend) -> None:
    w = backend.prepare_weight(make_weight(QType.Q8_0, 10, 64, np.random.default_rng(0)))
    with pytest.raises(ValueError):
        backend.kernels["linear"](np.ones((1, 32), np.float32), w.handle)
    with pytest.raises(ValueError):
        backend.kernels["linear"](np.ones((1, 64), np.float32), w.handle, np.ones(9, np.float32))


def test_prepare_weight_rejects_non_2d(backend: CpuBackend) -> None:
    qt = QTensor.from_array(np.zeros((2, 3, 32), np.float32))
    with pytest.raises(UnsupportedError, match="2-D"):
        backend.prepare_weight(qt, "bad")


def test_unsupported_qtype_falls_back_loudly() -> None:
    from edgeformer.quant import quantize
    backend = CpuBackend()    # a fresh one: the fallback warns once per qtype per backend
    rng = np.random.default_rng(5)
    w32 = rng.standard_normal((33, 256)).astype(np.float32)
    qt = quantize(w32, QType.Q3_K)           # no native Q3_K kernel (gguf cannot quantize it)
    with pytest.warns(RuntimeWarning, match="Q3_K"):
        w = backend.prepare_weight(qt, "odd")
    x = rng.standard_normal((3, 256)).astype(np.float32)
    ref = linear_ref(x, gq.dequantize(np.asarray(qt.data).reshape(33, -1), GT.Q3_K).astype(np.float32))
    assert nmse(backend.kernels["linear"](x, w.handle), ref) <= LINEAR.max_nmse["F32"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the reference's own inf * 0
@pytest.mark.parametrize("q", [QType.Q8_0, QType.Q4_K, QType.Q6_K, QType.F16], ids=lambda q: q.name)
def test_linear_nonfinite_input_row_stays_nonfinite(backend: CpuBackend, q: QType) -> None:
    # int8 activation quantization must not turn a NaN/Inf token into finite garbage
    rng = np.random.default_rng(9)
    qt = make_weight(q, 33, _k_for(q), rng)
    w = backend.prepare_weight(qt)
    x = rng.standard_normal((3, _k_for(q))).astype(np.float32)
    x[1, 5] = np.nan
    x[2, 40] = np.inf
    got = backend.kernels["linear"](x, w.handle)
    ref = linear_ref(x, gguf_dequant(qt))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
    assert np.isfinite(got[0]).all() and not np.isfinite(got[1:]).any()
