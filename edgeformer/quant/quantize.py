"""Reference quantizers: float array -> `QTensor` in a GGUF type.

F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 follow ggml's `quantize_row_*_ref`
(`ggml/src/ggml-quants.c`) in float32 and match `gguf.quants.quantize` bit for bit, with one
exception where we follow ggml: an all-zero block that starts with -0.0 (see
`_absmax_signed`). K-quants (Q2_K..Q6_K) are in `kquants.py` (llama.cpp's no-imatrix
reference algorithm). Every type's bytes equal llama.cpp's `ggml_quantize_chunk` output
(tests/quant/test_quantize.py checks it when llama-cpp-python is installed).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from edgeformer.errors import InputError, UnsupportedError
from edgeformer.quant.kquants import (first_absmax, first_min_max, quantize_q2_k, quantize_q3_k, quantize_q4_k,
                                      quantize_q5_k, quantize_q6_k)
from edgeformer.quant.qtypes import QTensor, QType

F = np.float32
BlockQuantizer = Callable[[np.ndarray], np.ndarray]

# Blocks per chunk: bounds the K-quant searches' temporaries (tens of arrays of this size).
_CHUNK_ELEMENTS = 1 << 18


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (n, 2) uint8 of GGML_FP32_TO_FP16 (round to nearest even)."""
    return v.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _absmax_signed(x: np.ndarray) -> np.ndarray:
    """Per row, C's `max` after `if (amax < fabsf(v)) { amax = fabsf(v); max = v; }` from
    amax = max = 0: the first element of largest |x|, +0.0 for an all-zero row. (The gguf
    package takes x[0] there, so it writes d = +0.0 where ggml writes -0.0 when an all-zero
    block starts with -0.0; we follow ggml.)"""
    return first_absmax(x, axis=-1)[0]


def _inverse(d: np.ndarray) -> np.ndarray:
    """C `d ? 1.0f/d : 0.0f`."""
    return np.where(d != 0, F(1) / np.where(d != 0, d, F(1)), F(0))


def _c_to_int(v: np.ndarray, hi: int) -> np.ndarray:
    """C's `MIN(hi, (int8_t)v)` for v >= -1 as uint8: truncate toward zero; inf and NaN
    become 0, as x86's cvttss2si makes them (the gguf package gets the same through
    numpy's cast). They only occur when 1/d overflows for subnormal inputs."""
    t = np.trunc(v)
    return np.where(np.isfinite(t), np.minimum(t, hi), 0).astype(np.uint8)


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 32) codes 0..15 -> (n, 16): element j in the low nibble of byte j, j+16 high."""
    return (q[:, :16] & 0x0F) | (q[:, 16:] << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """(n, 32) 5-bit codes -> (n, 4) bytes of the little-endian uint32 of their bit 4s."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little")


def _q4_0(x: np.ndarray) -> np.ndarray:
    # quantize_row_q4_0_ref: d = max / -8, q = MIN(15, (int8)(x/d + 8.5))
    d = _absmax_signed(x) / F(-8)
    q = _c_to_int(x * _inverse(d)[:, None] + F(8.5), 15)
    return np.concatenate([_f16_bytes(d), _pack_nibbles(q)], axis=1)


def _q4_1(x: np.ndarray) -> np.ndarray:
    # quantize_row_q4_1_ref: d = (max - min) / 15, q = MIN(15, (int8)((x - min)/d + 0.5))
    mn, mx = first_min_max(x, axis=-1)  # first of tied values, as C's strict <, >
    d = (mx - mn) / F(15)
    q = _c_to_int((x - mn[:, None]) * _inverse(d)[:, None] + F(0.5), 15)
    return np.concatenate([_f16_bytes(d), _f16_bytes(mn), _pack_nibbles(q)], axis=1)


def _q5_0(x: np.ndarray) -> np.ndarray:
    # quantize_row_q5_0_ref: d = max / -16, q = MIN(31, (int8)(x/d + 16.5))
    d = _absmax_signed(x) / F(-16)
    q = _c_to_int(x * _inverse(d)[:, None] + F(16.5), 31)
    return np.concatenate([_f16_bytes(d), _high_bits(q), _pack_nibbles(q)], axis=1)


def _q5_1(x: np.ndarray) -> np.ndarray:
    # quantize_row_q5_1_ref: d = (max - min) / 31, q = (uint8)((x - min)/d + 0.5)
    mn, mx = first_min_max(x, axis=-1)
    d = (mx - mn) / F(31)
    # C has no MIN here; (x - min)/d + 0.5 never exceeds 31.5 for finite values
    q = _c_to_int((x - mn[:, None]) * _inverse(d)[:, None] + F(0.5), 31)
    return np.concatenate([_f16_bytes(d), _f16_bytes(mn), _high_bits(q), _pack_nibbles(q)],
                          axis=1)


def _roundf(v: np.ndarray) -> np.ndarray:
    """C `roundf` (half away from zero), exact: no `floor(a + 0.5)` double rounding."""
    a = np.abs(v)
    fl = np.floor(a)
    return np.copysign(fl + np.floor(F(2) * (a - fl)), v)


def _q8_0(x: np.ndarray) -> np.ndarray:
    # quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d)
    d = np.abs(x).max(axis=-1) / F(127)
    q = _roundf(x * _inverse(d)[:, None])
    q = np.where(np.isfinite(q), q, 0).astype(np.int8)  # inf/NaN (1/d overflow) -> 0, as in C
    return np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)


_BLOCK_QUANTIZERS: dict[QType, BlockQuantizer] = {
    QType.Q4_0: _q4_0,
    QType.Q4_1: _q4_1,
    QType.Q5_0: _q5_0,
    QType.Q5_1: _q5_1,
    QType.Q8_0: _q8_0,
    QType.Q2_K: quantize_q2_k,
    QType.Q3_K: quantize_q3_k,
    QType.Q4_K: quantize_q4_k,
    QType.Q5_K: quantize_q5_k,
    QType.Q6_K: quantize_q6_k,
}

QUANTIZABLE: frozenset[QType] = frozenset({QType.F32, QType.F16, QType.BF16}) | frozenset(
    _BLOCK_QUANTIZERS)


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """ggml `ggml_compute_fp32_to_bf16`: NaN -> quiet NaN (top half | 0x40), else round to
    nearest even on the top 16 bits."""
    with np.errstate(over="ignore"):  # float64 beyond the f32 range -> inf first
        n = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (n + (np.uint32(0x7FFF) + ((n >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    quiet = (n >> np.uint32(16)) | np.uint32(64)
    with np.errstate(over="ignore"):  # NaN inputs may wrap in `rounded`; they take `quiet`
        return np.where(nan, quiet, rounded).astype(np.uint16)


def quantize(a: np.ndarray, qtype: QType | str) -> QTensor:
    """Quantize a float array to `qtype`; returns a QTensor of shape `a.shape`.

    `a` is any real array; it is converted to float32 first (F16 converts directly, as
    `gguf` does). Blocks run along the last axis, whose length must be a multiple of the
    block size (else UnsupportedError). Block types need finite input (InputError
    otherwise); F32/F16/BF16 keep NaN/inf. Raises UnsupportedError for a type outside
    `QUANTIZABLE`, naming the supported ones.
    """
    if isinstance(qtype, str):
        qtype = QType.from_name(qtype)  # UnsupportedError for unknown names
    try:
        qt = QType(qtype)
    except ValueError:
        qt = None
    if qt not in QUANTIZABLE:
        names = ", ".join(q.name for q in sorted(QUANTIZABLE))
        what = qt.name if qt is not None else repr(qtype)
        raise UnsupportedError(f"cannot quantize to {what}; supported: {names}")
    qtype = qt
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise InputError(f"quantize needs a real numeric array, got dtype {a.dtype}")
    shape = tuple(int(s) for s in a.shape)
    if qtype in (QType.F32, QType.F16):
        # always a fresh copy: the QTensor must not alias the caller's array
        with np.errstate(over="ignore"):  # beyond the f16 range -> inf, like ggml
            plain = np.array(a, dtype=np.float32 if qtype == QType.F32 else np.float16, order="C")
        return QTensor(plain.reshape(-1).view(np.uint8), qtype, shape)
    if qtype == QType.BF16:
        return QTensor(_bf16_bits(a).reshape(-1).view(np.uint8), qtype, shape)
    return _quantize_blocks(a, qtype, shape)


def _quantize_blocks(a: np.ndarray, qtype: QType, shape: tuple[int, ...]) -> QTensor:
    bs, ts = qtype.block_size, qtype.type_size
    qtype.row_bytes(shape[-1] if shape else 1)  # UnsupportedError unless rows fit blocks
    x = np.ascontiguousarray(a, dtype=np.float32).reshape(-1, bs)
    if not np.isfinite(x).all():
        raise InputError(f"cannot quantize to {qtype.name}: input has NaN or inf values")
    fn = _BLOCK_QUANTIZERS[qtype]
    out = np.empty((x.shape[0], ts), dtype=np.uint8)
    step = max(1, _CHUNK_ELEMENTS // bs)
    # all-zero blocks divide by zero on paths whose results the C code (and we) discard
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for start in range(0, x.shape[0], step):
            stop = min(start + step, x.shape[0])
            out[start:stop] = fn(x[start:stop])
    return QTensor(out.reshape(-1), qtype, shape)
