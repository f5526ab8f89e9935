"""Dequantizers: bit for bit against the `gguf` package and llama.cpp's dequantize_row_*."""
from __future__ import annotations


import gguf
import numpy as np
import pytest

from edgeformer.errors import UnsupportedError
from edgeformer.quant import DEQUANTIZABLE, QTensor, QType, dequantize, nbytes
from edgeformer.quant import dequant as dequant_mod

from support.quant_testutil import bits_equal

BLOCK_TYPES = sorted(q for q in DEQUANTIZABLE if q.block_size > 1)
GGUF_TYPES = sorted(q for q in DEQUANTIZABLE if q != QType.F64)

# Byte offsets of the f16 scale fields in each block (ggml-common.h block_* structs), so
# the special values below land where they matter; random bytes fill the rest.
F16_FIELDS = {
    QType.Q4_0: [0], QType.Q4_1: [0, 2], QType.Q5_0: [0], QType.Q5_1: [0, 2],
    QType.Q8_0: [0], QType.Q2_K: [80, 82], QType.Q3_K: [108], QType.Q4_K: [0, 2],
    QType.Q5_K: [0, 2], QType.Q6_K: [208], QType.IQ4_NL: [0], QType.IQ4_XS: [0],
    QType.F16: [0],
}
# f16 bit patterns: +-0, smallest/largest subnormal, smallest normal, max, +-inf,
# quiet NaN, signalling NaN, negative NaN with payload.
F16_SPECIAL = np.array([0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00,
                        0x7E00, 0x7C01, 0xFE5A], dtype=np.uint16)


def random_bytes(qtype: QType, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random block bytes, with the f16 scale fields of most blocks set to special values
    (all combinations of them over the blocks)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, nbytes(qtype, shape), dtype=np.uint8)
    ts = qtype.type_size
    blocks = raw.reshape(-1, ts)
    for k, off in enumerate(F16_FIELDS.get(qtype, [])):
        pick = rng.integers(0, len(F16_SPECIAL), blocks.shape[0])
        special = F16_SPECIAL[pick].view(np.uint8).reshape(-1, 2)
        keep = rng.random(blocks.shape[0]) < 0.3  # some blocks keep random scales
        blocks[~keep, off:off + 2] = special[~keep]
    return raw


def gguf_dequantize(raw: np.ndarray, qtype: QType, shape: tuple[int, ...]) -> np.ndarray:
    rows = raw.reshape(int(np.prod(shape[:-1])), -1)
    with np.errstate(all="ignore"):
        out = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(int(qtype)))
    return np.asarray(out, dtype=np.float32).reshape(shape)


@pytest.mark.parametrize("qtype", GGUF_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("shape_blocks", [(1, 1), (7, 5), (3, 2, 4)])
def test_bit_exact_vs_gguf(qtype, shape_blocks):
    per_block = qtype.block_size if qtype.block_size > 1 else 3
    shape = (*shape_blocks[:-1], shape_blocks[-1] * per_block)
    raw = random_bytes(qtype, shape, seed=int(qtype) * 1000 + sum(shape))
    ours = dequantize(QTensor(raw, qtype, shape))
    ref = gguf_dequantize(raw, qtype, shape)
    assert ours.dtype == np.float32 and ours.shape == shape and ours.flags.c_contiguous
    assert bits_equal(ours, ref)


def test_special_scales_are_covered():
    # the special-value pass must produce the non-finite outputs the bit test is about
    raw = random_bytes(QType.Q4_1, (16, 256), seed=0)
    out = dequantize(QTensor(raw, QType.Q4_1, (16, 256)))
    assert np.isnan(out).any() and np.isinf(out).any() and (out == 0).any()


@pytest.mark.llamacpp
@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda q: q.name)
def test_bit_exact_vs_llama_cpp(qtype, ggml):
    n = qtype.block_size * 24
    raw = random_bytes(qtype, (n,), seed=int(qtype) + 100)
    ours = dequantize(QTensor(raw, qtype, (n,)))
    assert bits_equal(ours, ggml.dequantize(raw, qtype, n))


def test_bf16_and_f64_plain():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 6)) * 10.0 ** rng.integers(-40, 38, (4, 6))
    ours = dequantize(QTensor(x.reshape(-1).view(np.uint8).copy(), QType.F64, x.shape))
    assert bits_equal(ours, x.astype(np.float32))
    # bf16 is the high half of the f32 pattern, NaN/inf included
    bits = rng.integers(0, 2**16, 64, dtype=np.uint16)
    bits[:4] = [0x7F80, 0xFF80, 0x7FC1, 0x0001]
    out = dequantize(QTensor(bits.view(np.uint8), QType.BF16, (64,)))
    assert np.array_equal(out.view(np.uint32), bits.astype(np.uint32) << 16)


def test_chunking_matches_single_pass(monkeypatch):
    qtype, shape = QType.Q4_K, (5, 7 * 256)
    raw = random_bytes(qtype, shape, seed=11)
    whole = dequantize(QTensor(raw, qtype, shape))
    monkeypatch.setattr(dequant_mod, "_CHUNK_ELEMENTS", 3 * 256)  # 3 blocks per chunk
    assert bits_equal(dequantize(QTensor(raw, qtype, shape)), whole)


def test_reads_readonly_memmap_without_writing(tmp_path):
    qtype, shape = QType.Q6_K, (3, 512)
    raw = random_bytes(qtype, shape, seed=12)
    path = tmp_path / "t.bin"
    path.write_bytes(b"\x00" * 7 + raw.tobytes())
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    qt = QTensor(mm[7:], qtype, shape)  # unaligned start, as tensors inside a GGUF can be
    out = dequantize(qt)
    assert out.flags.writeable and not np.shares_memory(out, mm)
    assert bits_equal(out, gguf_dequantize(raw, qtype, shape))


def test_f32_result_does_not_alias_input():
    x = np.arange(8, dtype=np.float32)
    out = dequantize(QTensor.from_array(x))
    out[0] = 42
    assert x[0] == 0


@pytest.mark.parametrize("qtype", [QType.Q8_1, QType.Q8_K, QType.I32])
def test_unsupported_type_names_supported_ones(qtype):
    qt = QTensor(np.zeros(nbytes(qtype, (2, 256)), np.uint8), qtype, (2, 256))
    with pytest.raises(UnsupportedError, match=qtype.name) as e:
        dequantize(qt)
    assert "Q4_K" in str(e.value) and "MXFP4" in str(e.value)


