"""Quant types and their traits table, and `QTensor`.

Type ids, block sizes and block byte sizes are ggml's (`ggml/src/ggml.c` `type_traits[]`,
`ggml/src/ggml-common.h` `block_*` structs), so a GGUF file's type field maps 1:1.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from math import prod

import numpy as np

from edgeformer.errors import UnsupportedError


class QType(enum.IntEnum):
    """GGML tensor types, with their exact GGUF names and ids."""

    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q8_1 = 9
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    Q8_K = 15
    IQ4_NL = 20
    IQ4_XS = 23
    I8 = 24
    I16 = 25
    I32 = 26
    I64 = 27
    F64 = 28
    BF16 = 30
    MXFP4 = 39

    @classmethod
    def from_id(cls, type_id: int) -> "QType":
        try:
            return cls(type_id)
        except ValueError:
            raise UnsupportedError(
                f"unknown or unsupported ggml tensor type id {type_id}; "
                f"supported: {', '.join(f'{q.name}={q.value}' for q in cls)}"
            ) from None

    @classmethod
    def from_name(cls, name: str) -> "QType":
        try:
            return cls[name.upper()]
        except KeyError:
            raise UnsupportedError(
                f"unknown quant type {name!r}; supported: {', '.join(q.name for q in cls)}"
            ) from None

    @property
    def block_size(self) -> int:
        """Elements per block (1 for plain types)."""
        return TRAITS[self][0]

    @property
    def type_size(self) -> int:
        """Bytes per block."""
        return TRAITS[self][1]

    @property
    def is_float(self) -> bool:
        return self in (QType.F32, QType.F16, QType.BF16, QType.F64)

    def row_bytes(self, n: int) -> int:
        """Bytes of one row of `n` elements; `n` must be a multiple of the block size."""
        if n % self.block_size:
            raise UnsupportedError(
                f"{self.name} needs rows that are a multiple of {self.block_size}, got {n}"
            )
        return n // self.block_size * self.type_size


# qtype -> (block_size, type_size); from ggml's type_traits[].
TRAITS: dict[QType, tuple[int, int]] = {
    QType.F32: (1, 4),
    QType.F16: (1, 2),
    QType.BF16: (1, 2),
    QType.F64: (1, 8),
    QType.I8: (1, 1),
    QType.I16: (1, 2),
    QType.I32: (1, 4),
    QType.I64: (1, 8),
    QType.Q4_0: (32, 2 + 16),
    QType.Q4_1: (32, 2 + 2 + 16),
    QType.Q5_0: (32, 2 + 4 + 16),
    QType.Q5_1: (32, 2 + 2 + 4 + 16),
    QType.Q8_0: (32, 2 + 32),
    QType.Q8_1: (32, 4 + 32),
    QType.Q2_K: (256, 16 + 64 + 2 + 2),
    QType.Q3_K: (256, 32 + 64 + 12 + 2),
    QType.Q4_K: (256, 2 + 2 + 12 + 128),
    QType.Q5_K: (256, 2 + 2 + 12 + 32 + 128),
    QType.Q6_K: (256, 128 + 64 + 16 + 2),
    QType.Q8_K: (256, 4 + 256 + 32),
    QType.IQ4_NL: (32, 2 + 16),
    QType.IQ4_XS: (256, 2 + 2 + 4 + 128),
    QType.MXFP4: (32, 1 + 16),
}

# numpy dtype of the plain (block size 1) types.
PLAIN_DTYPES: dict[QType, np.dtype] = {
    QType.F32: np.dtype("<f4"),
    QType.F16: np.dtype("<f2"),
    QType.F64: np.dtype("<f8"),
    QType.I8: np.dtype("i1"),
    QType.I16: np.dtype("<i2"),
    QType.I32: np.dtype("<i4"),
    QType.I64: np.dtype("<i8"),
    QType.BF16: np.dtype("<u2"),  # raw bits; quant.dequantize turns them into f32
}


def nbytes(qtype: QType, shape: tuple[int, ...]) -> int:
    """Bytes a tensor of `shape` (row-major, last dim contiguous) takes in `qtype`."""
    if not shape:
        return qtype.type_size
    return prod(shape[:-1]) * qtype.row_bytes(shape[-1])


@dataclass(frozen=True)
class QTensor:
    """Raw quantized bytes + qtype + logical shape.

    `shape` is row-major with the last dimension contiguous (ggml's `ne` reversed), so a
    weight of a linear layer with `n_out` outputs and `n_in` inputs has shape
    `(n_out, n_in)` and its blocks run along `n_in`. `data` is a 1-D uint8 array (often a
    read-only memmap slice: no bytes are read until used) of exactly `nbytes` bytes.
    """

    data: np.ndarray
    qtype: QType
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        want = nbytes(self.qtype, self.shape)
        if self.data.dtype != np.uint8 or self.data.ndim != 1 or self.data.size != want:
            raise ValueError(
                f"QTensor {self.qtype.name}{list(self.shape)} needs {want} uint8 bytes, "
                f"got {self.data.dtype}{list(self.data.shape)}"
            )

    @property
    def nbytes(self) -> int:
        return self.data.size

    @property
    def n_elements(self) -> int:
        return prod(self.shape)

    @classmethod
    def from_array(cls, a: np.ndarray) -> "QTensor":
        """Wrap a float32/float16 numpy array without quantizing."""
        qtype = {np.dtype("float32"): QType.F32, np.dtype("float16"): QType.F16}.get(a.dtype)
        if qtype is None:
            raise UnsupportedError(f"from_array takes float32 or float16, got {a.dtype}")
        a = np.ascontiguousarray(a)
        return cls(a.reshape(-1).view(np.uint8), qtype, tuple(a.shape))
