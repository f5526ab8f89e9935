"""Reference dequantizers for GGUF tensor types, bit-exact with the `gguf` package.

Every kernel does its arithmetic in float32 in the same order as `gguf.quants`
(which in turn follows ggml's `dequantize_row_*` in `ggml/src/ggml-quants.c`), e.g. Q4_1
is `(d * q) + m`, Q4_K is `(d * sc) * q - dmin * m`, so results agree bit for bit, NaN and
inf scales included. Block layouts are ggml's `block_*` structs (`ggml-common.h`).

Kernels are vectorised over blocks; `dequantize` runs them over chunks of blocks so the
temporaries stay cache-sized and a memmap-backed tensor is read once, chunk by chunk.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from edgeformer.errors import UnsupportedError
from edgeformer.quant.qtypes import QTensor, QType

# IQ4_NL / IQ4_XS non-linear 4-bit levels: ggml-common.h `kvalues_iq4nl`.
KVALUES_IQ4NL = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32
)
# MXFP4 e2m1 levels, doubled (the scale is halved to match): ggml-common.h `kvalues_mxfp4`.
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12],
                         dtype=np.float32)

# Signed 4/5/6-bit level tables: value of a code as float32, so a lookup replaces the
# int8 subtract + int->float conversion the C code does (same values, exactly).
_Q4_SIGNED = np.arange(16, dtype=np.float32) - 8
_Q5_SIGNED = np.arange(32, dtype=np.float32) - 16
_Q6_SIGNED = np.arange(64, dtype=np.float32) - 32
_U8_TO_F32 = np.arange(256, dtype=np.float32)

# Blocks per chunk: about 1 Mi output floats (4 MiB) per chunk.
_CHUNK_ELEMENTS = 1 << 20

Kernel = Callable[[np.ndarray, np.ndarray], None]


def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """(n, 1) float32 from the little-endian f16 at byte `offset` of each block."""
    return blocks[:, offset:offset + 2].view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """(n, k) packed bytes -> (n, 2k) codes: the k low nibbles, then the k high nibbles
    (ggml's layout for Q4_0/Q4_1/Q5_x/IQ4_NL/MXFP4 blocks)."""
    n, k = qs.shape
    q = np.empty((n, 2 * k), dtype=np.uint8)
    np.bitwise_and(qs, 0x0F, out=q[:, :k])
    np.right_shift(qs, 4, out=q[:, k:])
    return q


def _high_bits32(qh: np.ndarray) -> np.ndarray:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) bits, bit i at column i, as 0/16."""
    return np.unpackbits(qh, axis=-1, bitorder="little") << np.uint8(4)


# --- 32-element blocks --------------------------------------------------------------------

def _q4_0(b: np.ndarray, out: np.ndarray) -> None:
    # block_q4_0: d f16, qs[16]; y = d * (q - 8)
    np.multiply(_f16(b, 0), _Q4_SIGNED[_nibbles(b[:, 2:])], out=out)


def _q4_1(b: np.ndarray, out: np.ndarray) -> None:
    # block_q4_1: d f16, m f16, qs[16]; y = (d * q) + m
    np.multiply(_f16(b, 0), _U8_TO_F32[_nibbles(b[:, 4:])], out=out)
    out += _f16(b, 2)


def _q5_0(b: np.ndarray, out: np.ndarray) -> None:
    # block_q5_0: d f16, qh u32 (bit i = high bit of element i), qs[16]
    q = _nibbles(b[:, 6:]) | _high_bits32(b[:, 2:6])
    np.multiply(_f16(b, 0), _Q5_SIGNED[q], out=out)


def _q5_1(b: np.ndarray, out: np.ndarray) -> None:
    # block_q5_1: d f16, m f16, qh u32, qs[16]; y = (d * q) + m
    q = _nibbles(b[:, 8:]) | _high_bits32(b[:, 4:8])
    np.multiply(_f16(b, 0), _U8_TO_F32[q], out=out)
    out += _f16(b, 2)


def _q8_0(b: np.ndarray, out: np.ndarray) -> None:
    # block_q8_0: d f16, qs[32] int8; gguf computes q * d (same product)
    np.multiply(b[:, 2:].view(np.int8).astype(np.float32), _f16(b, 0), out=out)


def _iq4_nl(b: np.ndarray, out: np.ndarray) -> None:
    # block_iq4_nl: d f16, qs[16] (codes index kvalues_iq4nl)
    np.multiply(_f16(b, 0), KVALUES_IQ4NL[_nibbles(b[:, 2:])], out=out)


def _e8m0_to_fp32_half(e: np.ndarray) -> np.ndarray:
    """ggml-impl.h `ggml_e8m0_to_fp32_half`: 2**(e-127) / 2, denormal for e < 2."""
    e32 = e.astype(np.uint32)
    bits = np.where(e32 < 2, np.uint32(0x00200000) << e32, (e32 - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


def _mxfp4(b: np.ndarray, out: np.ndarray) -> None:
    # block_mxfp4: e (e8m0 scale), qs[16]; y = d * kvalues_mxfp4[q]
    np.multiply(_e8m0_to_fp32_half(b[:, :1]), KVALUES_MXFP4[_nibbles(b[:, 1:])], out=out)


# --- 256-element super-blocks (K-quants) ----------------------------------------------------

def _q2_k(b: np.ndarray, out: np.ndarray) -> None:
    # block_q2_K: scales[16] (lo nibble scale, hi nibble min), qs[64], d f16, dmin f16
    n = b.shape[0]
    scales = b[:, :16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    dl = (d * _U8_TO_F32[scales & 0x0F]).reshape(n, 16, 1)
    ml = (dmin * _U8_TO_F32[scales >> 4]).reshape(n, 16, 1)
    # qs[32h + l] holds, at bits 2s, element 128h + 32s + l
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    q = (b[:, 16:80].reshape(n, 2, 1, 32) >> shifts) & np.uint8(3)  # (n, 2, 4, 32)
    q = _U8_TO_F32[q.reshape(n, 16, 16)]
    o = out.reshape(n, 16, 16)
    np.multiply(dl, q, out=o)
    o -= ml


def _six_bit_scales_q3(sc: np.ndarray) -> np.ndarray:
    """Q3_K's 12 scale bytes -> (n, 16) 6-bit codes (ggml `dequantize_row_q3_K` aux[] unpack):
    low nibbles from bytes 0..7 (scales 0-7 low, 8-15 high), 2 high bits from bytes 8..11."""
    n = sc.shape[0]
    low = (sc[:, :8].reshape(n, 1, 8) >> np.array([0, 4], dtype=np.uint8).reshape(1, 2, 1))
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 4, 1)
    high = sc[:, 8:12].reshape(n, 1, 4) >> shifts
    low = low.reshape(n, 16) & np.uint8(0x0F)
    return low | ((high.reshape(n, 16) & np.uint8(3)) << np.uint8(4))


def _q3_k(b: np.ndarray, out: np.ndarray) -> None:
    # block_q3_K: hmask[32], qs[64], scales[12] (6-bit, offset 32), d f16
    n = b.shape[0]
    d = _f16(b, 108)
    sc = _six_bit_scales_q3(b[:, 96:108]).astype(np.int8) - np.int8(32)
    dl = (d * sc.astype(np.float32)).reshape(n, 16, 1)
    shifts2 = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    ql = ((b[:, 32:96].reshape(n, 2, 1, 32) >> shifts2) & np.uint8(3)).reshape(n, 16, 16)
    # hmask bit s of byte l is the high bit of element 32s + l; a *clear* bit subtracts 4
    shifts8 = np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)
    qh = ((b[:, :32].reshape(n, 1, 1, 32) >> shifts8) & np.uint8(1)).reshape(n, 16, 16)
    q = ql.astype(np.int8) - ((qh ^ np.uint8(1)) << np.uint8(2)).astype(np.int8)
    np.multiply(dl, q.astype(np.float32), out=out.reshape(n, 16, 16))


def _scale_min_k4(sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 scale bytes -> (n, 8) 6-bit scales and (n, 8) 6-bit mins
    (ggml `get_scale_min_k4`)."""
    n = sc.shape[0]
    s = sc.reshape(n, 3, 4)
    d, m, md = s[:, 0], s[:, 1], s[:, 2]
    scale = np.concatenate([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mins = np.concatenate([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return scale, mins


def _k4_scales(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 8, 1) d*sc and dmin*m for Q4_K/Q5_K (d f16, dmin f16, scales[12] at bytes 0..16)."""
    n = b.shape[0]
    sc, m = _scale_min_k4(b[:, 4:16])
    d = (_f16(b, 0) * _U8_TO_F32[sc]).reshape(n, 8, 1)
    dm = (_f16(b, 2) * _U8_TO_F32[m]).reshape(n, 8, 1)
    return d, dm


def _low_high_nibbles_k(qs: np.ndarray) -> np.ndarray:
    """(n, 128) bytes -> (n, 8, 32): sub-block 2g is the low nibbles of qs[32g:32g+32],
    sub-block 2g+1 their high nibbles (ggml Q4_K/Q5_K layout)."""
    n = qs.shape[0]
    q = np.empty((n, 4, 2, 32), dtype=np.uint8)
    qs = qs.reshape(n, 4, 32)
    np.bitwise_and(qs, 0x0F, out=q[:, :, 0])
    np.right_shift(qs, 4, out=q[:, :, 1])
    return q.reshape(n, 8, 32)


def _q4_k(b: np.ndarray, out: np.ndarray) -> None:
    # block_q4_K: d f16, dmin f16, scales[12], qs[128]; y = (d*sc) * q - dmin*m
    n = b.shape[0]
    d, dm = _k4_scales(b)
    o = out.reshape(n, 8, 32)
    np.multiply(d, _U8_TO_F32[_low_high_nibbles_k(b[:, 16:])], out=o)
    o -= dm


def _q5_k(b: np.ndarray, out: np.ndarray) -> None:
    # block_q5_K: d, dmin, scales[12], qh[32] (bit s of qh[l] -> element 32s + l), qs[128]
    n = b.shape[0]
    d, dm = _k4_scales(b)
    shifts8 = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)
    qh = ((b[:, 16:48].reshape(n, 1, 32) >> shifts8) & np.uint8(1)) << np.uint8(4)
    q = _low_high_nibbles_k(b[:, 48:]) | qh
    o = out.reshape(n, 8, 32)
    np.multiply(d, _U8_TO_F32[q], out=o)
    o -= dm


def _q6_k(b: np.ndarray, out: np.ndarray) -> None:
    # block_q6_K: ql[128], qh[64], scales[16] int8, d f16; y = (d * sc) * (q - 32)
    n = b.shape[0]
    d = (_f16(b, 208) * b[:, 192:208].view(np.int8).astype(np.float32)).reshape(n, 16, 1)
    # element 128h + 64k + 32j + l: nibble k of ql[64h + 32j + l], bits 2(2k+j) of qh[32h + l]
    ql = b[:, :128].reshape(n, 2, 1, 64) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    ql = (ql & np.uint8(0x0F)).reshape(n, 2, 4, 32)
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)
    qh = b[:, 128:192].reshape(n, 2, 1, 32) >> shifts
    q = ql | ((qh & np.uint8(3)) << np.uint8(4))
    np.multiply(d, _Q6_SIGNED[q.reshape(n, 16, 16)], out=out.reshape(n, 16, 16))


def _iq4_xs(b: np.ndarray, out: np.ndarray) -> None:
    # block_iq4_xs: d f16, scales_h u16, scales_l[4], qs[128]; 8 sub-blocks of 32
    n = b.shape[0]
    d = _f16(b, 0)
    sh = b[:, 2:4].view(np.uint16)  # (n, 1)
    sh = (sh >> (2 * np.arange(8, dtype=np.uint16))) & np.uint16(3)  # (n, 8)
    sl = (b[:, 4:8].reshape(n, 4, 1) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2))
    sl = sl.reshape(n, 8) & np.uint8(0x0F)
    ls = (sl | (sh.astype(np.uint8) << np.uint8(4))).astype(np.int8) - np.int8(32)
    dl = (d * ls.astype(np.float32)).reshape(n, 8, 1)
    q = b[:, 8:].reshape(n, 8, 1, 16) >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)
    q = (q & np.uint8(0x0F)).reshape(n, 8, 32)
    np.multiply(dl, KVALUES_IQ4NL[q], out=out.reshape(n, 8, 32))


_BLOCK_KERNELS: dict[QType, Kernel] = {
    QType.Q4_0: _q4_0,
    QType.Q4_1: _q4_1,
    QType.Q5_0: _q5_0,
    QType.Q5_1: _q5_1,
    QType.Q8_0: _q8_0,
    QType.Q2_K: _q2_k,
    QType.Q3_K: _q3_k,
    QType.Q4_K: _q4_k,
    QType.Q5_K: _q5_k,
    QType.Q6_K: _q6_k,
    QType.IQ4_NL: _iq4_nl,
    QType.IQ4_XS: _iq4_xs,
    QType.MXFP4: _mxfp4,
}

_PLAIN = (QType.F32, QType.F16, QType.BF16, QType.F64)

DEQUANTIZABLE: frozenset[QType] = frozenset(_PLAIN) | frozenset(_BLOCK_KERNELS)


def _unsupported(qtype: QType) -> UnsupportedError:
    names = ", ".join(q.name for q in sorted(DEQUANTIZABLE))
    return UnsupportedError(f"cannot dequantize {qtype.name}; supported: {names}")


def dequantize(qt: QTensor) -> np.ndarray:
    """Dequantize `qt` to a new, writable C-contiguous float32 array of shape `qt.shape`.

    Bit-exact with `gguf.quants.dequantize` for every type in `DEQUANTIZABLE` (F64 is
    rounded to float32). `qt.data` may be a read-only memmap: it is read chunk by chunk and
    never copied whole. Raises UnsupportedError for other types (e.g. Q8_1, Q8_K, IQ2_*).
    """
    qtype = QType(qt.qtype)
    n_elem = qt.n_elements
    if qtype in _PLAIN:
        if qtype == QType.BF16:
            # bf16 is the top half of an f32: widen the bits (exact, NaN payloads kept)
            bits = qt.data.view(np.uint16).astype(np.uint32) << np.uint32(16)
            return bits.view(np.float32).reshape(qt.shape)
        src_dtype = {QType.F32: "<f4", QType.F16: "<f2", QType.F64: "<f8"}[qtype]
        return qt.data.view(src_dtype).astype(np.float32).reshape(qt.shape)
    kernel = _BLOCK_KERNELS.get(qtype)
    if kernel is None:
        raise _unsupported(qtype)
    bs, ts = qtype.block_size, qtype.type_size
    n_blocks = n_elem // bs
    blocks = qt.data.reshape(n_blocks, ts)
    out = np.empty((n_blocks, bs), dtype=np.float32)
    step = max(1, _CHUNK_ELEMENTS // bs)
    with np.errstate(invalid="ignore", over="ignore"):  # inf/NaN scales are legal data
        for start in range(0, n_blocks, step):
            stop = min(start + step, n_blocks)
            kernel(blocks[start:stop], out[start:stop])
    return out.reshape(qt.shape)
