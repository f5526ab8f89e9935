"""Malformed GGUF files get FormatError / UnsupportedError naming the file and the
problem, never a crash, hang or huge allocation. Files are built byte by byte here
(not with our writer), following ggml's docs/gguf.md."""
from __future__ import annotations

import struct

import pytest

from edgeformer.errors import FormatError, UnsupportedError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.gguf import GGUFFile

F32, Q8_0 = 0, 8


def s(x: str | bytes) -> bytes:
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("<Q", len(b)) + b


def kv_str(key: str, val: str) -> bytes:
    return s(key) + struct.pack("<I", 8) + s(val)


def kv_u32(key: str, val: int) -> bytes:
    return s(key) + struct.pack("<II", 4, val)


def tinfo(name: str, ne: list[int], typ: int, off: int) -> bytes:
    return s(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, typ, off)


def build(kvs: list[bytes], infos: list[bytes], data: bytes, version: int = 3,
          n_tensors: int | None = None, n_kv: int | None = None) -> tuple[bytes, dict[str, int]]:
    """File bytes and the offsets where its sections start (for truncation tests)."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    marks = {"kv": len(head)}
    head += b"".join(kvs)
    marks["infos"] = len(head)
    head += b"".join(infos)
    pad = (-len(head)) % 32
    marks["data"] = len(head) + pad
    return head + b"\0" * pad + data, marks


def good() -> tuple[bytes, dict[str, int]]:
    return build([kv_str("general.architecture", "llama"), kv_u32("llama.context_length", 64)],
                 [tinfo("a.weight", [4, 2], F32, 0), tinfo("b.weight", [32, 1], Q8_0, 32)],
                 b"\x01" * 32 + b"\x02" * 34)


def check(tmp_path, data: bytes, exc: type, *words: str) -> None:
    p = tmp_path / "bad.gguf"
    p.write_bytes(data)
    with pytest.raises(exc) as ei:
        GGUFFile(p)
    msg = str(ei.value)
    assert str(p) in msg, msg
    for w in words:
        assert w in msg, msg


def test_good_file_parses(tmp_path):
    p = tmp_path / "ok.gguf"
    p.write_bytes(good()[0])
    g = GGUFFile(p)
    assert g.metadata == {"general.architecture": "llama", "llama.context_length": 64}
    assert g.tensors["a.weight"].shape == (2, 4) and g.tensor("b.weight").nbytes == 34


def test_bad_magic(tmp_path):
    check(tmp_path, b"GGML" + good()[0][4:], FormatError, "not a GGUF file")


@pytest.mark.parametrize("version", [1, 4, 0xFFFF])
def test_unsupported_version(tmp_path, version):
    data, _ = good()
    check(tmp_path, data[:4] + struct.pack("<I", version) + data[8:], UnsupportedError,
          f"version {version}")


def test_big_endian_file(tmp_path):
    data, _ = good()
    check(tmp_path, data[:4] + struct.pack(">I", 3) + data[8:], UnsupportedError, "big-endian")


def test_unknown_qtype_id(tmp_path):
    data, _ = build([], [tinfo("x", [32], 99, 0)], b"\0" * 128)
    check(tmp_path, data, UnsupportedError, "'x'", "type id 99")


@pytest.mark.parametrize("where", ["header", "kv", "infos", "data"])
def test_truncated(tmp_path, where):
    data, marks = good()
    cut = {"header": 13, "kv": marks["kv"] + 20, "infos": marks["infos"] + 9,
           "data": len(data) - 5}[where]
    check(tmp_path, data[:cut], FormatError, "truncated")


def test_empty_file(tmp_path):
    check(tmp_path, b"", FormatError, "empty")


def test_tensor_data_past_end(tmp_path):
    data, _ = build([], [tinfo("x", [16], F32, 0)], b"\0" * 32)
    check(tmp_path, data, FormatError, "'x'", "past the end")


@pytest.mark.parametrize("off", [0, 64, 1 << 20, 2**64 - 32])  # overlap, gap, far, wrapping
def test_tensor_offset_not_contiguous(tmp_path, off):
    """gguf.cpp's rule: data offsets run contiguously in tensor-info order (a gap, an
    overlap or a far-away offset is corruption)."""
    data, _ = build([], [tinfo("a", [8], F32, 0), tinfo("x", [8], F32, off)], b"\0" * 96)
    check(tmp_path, data, FormatError, "'x'", f"data offset {off}, expected 32")


def test_offset_not_aligned(tmp_path):
    data, _ = build([], [tinfo("x", [2], F32, 4)], b"\0" * 64)
    check(tmp_path, data, FormatError, "'x'", "alignment")


def test_huge_string_length(tmp_path):
    kv = struct.pack("<Q", 2**40) + b"general.architecture"
    data, _ = build([kv], [], b"")
    check(tmp_path, data, FormatError, "metadata key #0", str(2**40))


def test_huge_string_value_length(tmp_path):
    kv = s("general.name") + struct.pack("<IQ", 8, 2**40) + b"abc"
    data, _ = build([kv], [], b"")
    check(tmp_path, data, FormatError, "general.name", str(2**40))


@pytest.mark.parametrize("elem", [4, 8, 9])  # u32, string, array
def test_huge_array_length(tmp_path, elem):
    kv = s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, elem, 2**40) + b"\0" * 64
    data, _ = build([kv], [], b"")
    check(tmp_path, data, FormatError, "tokenizer.ggml.tokens", str(2**40))


def test_huge_counts(tmp_path):
    data, _ = build([], [], b"", n_tensors=2**60, n_kv=2**60)
    check(tmp_path, data, FormatError, "tensor count", str(2**60))
    data, _ = build([], [], b"", n_tensors=0, n_kv=2**60)
    check(tmp_path, data, FormatError, "metadata count", str(2**60))
    data, _ = build([], [], b"", n_tensors=100, n_kv=100)   # under the limits, over the file
    check(tmp_path, data, FormatError, "truncated", "100 metadata entries and 100 tensor infos")


def test_deeply_nested_arrays(tmp_path):
    kv = s("x") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 100 + struct.pack("<IQ", 4, 0)
    data, _ = build([kv], [], b"")
    check(tmp_path, data, FormatError, "nested")


def test_unknown_value_type(tmp_path):
    data, _ = build([s("x") + struct.pack("<II", 77, 0)], [], b"")
    check(tmp_path, data, FormatError, "'x'", "value type 77")


def test_duplicate_tensor_names(tmp_path):
    data, _ = build([], [tinfo("w", [8], F32, 0), tinfo("w", [8], F32, 32)], b"\0" * 64)
    check(tmp_path, data, FormatError, "duplicate tensor name 'w'")


def test_duplicate_keys(tmp_path):
    data, _ = build([kv_u32("k", 1), kv_u32("k", 2)], [], b"")
    check(tmp_path, data, FormatError, "duplicate metadata key 'k'")


def test_row_not_multiple_of_block(tmp_path):
    data, _ = build([], [tinfo("q", [33], Q8_0, 0)], b"\0" * 64)
    check(tmp_path, data, FormatError, "'q'", "multiple of 32")


def test_too_many_dims(tmp_path):
    data, _ = build([], [tinfo("t", [1, 1, 1, 1, 1], F32, 0)], b"\0" * 64)
    check(tmp_path, data, FormatError, "'t'", "n_dims 5")


def test_bad_alignment(tmp_path):
    data, _ = build([kv_u32("general.alignment", 48)], [], b"")
    check(tmp_path, data, FormatError, "general.alignment", "power of two")


def test_load_checkpoint_not_gguf(tmp_path):
    p = tmp_path / "model.bin"
    p.write_bytes(b"\x80\x02junk" * 10)
    with pytest.raises(FormatError) as ei:
        load_checkpoint(p)
    assert str(p) in str(ei.value) and "not a GGUF file" in str(ei.value)
    with pytest.raises(FormatError) as ei:
        load_checkpoint(tmp_path / "nope.gguf")
    assert "nope.gguf" in str(ei.value) and "no such file" in str(ei.value)
