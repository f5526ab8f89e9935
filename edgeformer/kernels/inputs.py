"""Random op inputs for the conformance cases and the kernel tests: float arrays, planted
NaN/Inf, and weights in any qtype (realistic, or uniform random blocks)."""
from __future__ import annotations

import numpy as np

from edgeformer.quant import QUANTIZABLE, quantize
from edgeformer.quant.qtypes import QTensor, QType

FLOAT_QTYPES = (QType.F32, QType.F16, QType.BF16)
BLOCK_QTYPES = (QType.Q8_0, QType.Q4_0, QType.Q4_1, QType.Q5_0, QType.Q5_1, QType.Q4_K, QType.Q5_K, QType.Q6_K)
WEIGHT_QTYPES = FLOAT_QTYPES + BLOCK_QTYPES

# Byte offsets of the float16 scale fields in one block (ggml-common.h `block_*`), so random
# bytes become a valid block with sane scales: (offset, is_min) per field.
_SCALE_FIELDS: dict[QType, tuple[tuple[int, bool], ...]] = {
    QType.Q4_0: ((0, False),), QType.Q5_0: ((0, False),), QType.Q8_0: ((0, False),),
    QType.Q4_1: ((0, False), (2, True)), QType.Q5_1: ((0, False), (2, True)),
    QType.Q2_K: ((80, False), (82, True)), QType.Q3_K: ((108, False),),
    QType.Q4_K: ((0, False), (2, True)), QType.Q5_K: ((0, False), (2, True)),
    QType.Q6_K: ((208, False),), QType.IQ4_NL: ((0, False),), QType.IQ4_XS: ((0, False),),
}


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    """N(0, scale^2) float32 of `shape`."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def plant(a: np.ndarray, idx: tuple, value: float = np.nan) -> np.ndarray:
    """Copy of `a` with `value` (NaN by default) at `idx`."""
    a = a.copy()
    a[idx] = value
    return a


def _random_block_bytes(qtype: QType, shape: tuple[int, ...], rng: np.random.Generator) -> QTensor:
    """Uniform random bytes (every quant code and sub-scale pattern) with the block's f16
    scales overwritten by values of a realistic size (|d| ~ 1/64)."""
    n_blocks = int(np.prod(shape[:-1])) * shape[-1] // qtype.block_size
    blocks = rng.integers(0, 256, size=(n_blocks, qtype.type_size), dtype=np.uint8)
    for off, is_min in _SCALE_FIELDS[qtype]:
        mag = rng.uniform(0.5, 1.5, n_blocks) / 64
        val = mag if is_min else mag * rng.choice([-1.0, 1.0], n_blocks)
        blocks[:, off:off + 2] = val.astype("<f2").view(np.uint8).reshape(n_blocks, 2)
    return QTensor(blocks.reshape(-1), qtype, tuple(shape))


def random_qtensor(qtype: QType, shape: tuple[int, ...], rng: np.random.Generator,
                   scale: float = 1.0, method: str = "quantize") -> QTensor:
    """A random weight of `shape` stored in `qtype`.

    method "quantize": N(0, scale^2) floats through `edgeformer.quant.quantize` (realistic
    weights; block types it cannot make yet fall back to "bytes"). method "bytes": for
    block types, uniform random blocks (every code and sub-scale pattern) with sane f16
    scales, independent of any quantizer; float types are always quantized. Raises
    UnsupportedError if the last dim is not a multiple of the block size."""
    if method not in ("quantize", "bytes"):
        raise ValueError(f"method must be 'quantize' or 'bytes', got {method!r}")
    qtype.row_bytes(shape[-1])                       # validates the block multiple
    if qtype in _SCALE_FIELDS and (method == "bytes" or qtype not in QUANTIZABLE):
        return _random_block_bytes(qtype, shape, rng)
    return quantize((rng.standard_normal(shape) * scale).astype(np.float32), qtype)


def with_nan(qt: QTensor, row: int) -> QTensor:
    """Copy of an F32 QTensor with a NaN in `row` (first column)."""
    a = qt.data.view(np.float32).reshape(qt.shape).copy()
    a[row, 0] = np.nan
    return QTensor.from_array(a)
