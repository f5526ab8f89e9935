"""GGUF reader/writer against the `gguf` package (llama.cpp's own Python reader/writer)."""
from __future__ import annotations

import resource
import struct

import gguf
import numpy as np
import pytest

from edgeformer.errors import InputError, UnsupportedError
from edgeformer.formats.gguf import GGUFFile, GGUFValueType, TensorToWrite, write_gguf
from edgeformer.quant.qtypes import QTensor, QType, nbytes

# One value of every metadata type, with the type gguf.GGUFWriter should write it as.
ALL_KV = [
    ("t.u8", 200, gguf.GGUFValueType.UINT8),
    ("t.i8", -100, gguf.GGUFValueType.INT8),
    ("t.u16", 60000, gguf.GGUFValueType.UINT16),
    ("t.i16", -30000, gguf.GGUFValueType.INT16),
    ("t.u32", 4_000_000_000, gguf.GGUFValueType.UINT32),
    ("t.i32", -2_000_000_000, gguf.GGUFValueType.INT32),
    ("t.u64", 2**63 + 5, gguf.GGUFValueType.UINT64),
    ("t.i64", -(2**62), gguf.GGUFValueType.INT64),
    ("t.f32", 0.25, gguf.GGUFValueType.FLOAT32),
    ("t.f64", 1e-300, gguf.GGUFValueType.FLOAT64),
    ("t.bool", True, gguf.GGUFValueType.BOOL),
    ("t.str", "héllo ✓ wörld", gguf.GGUFValueType.STRING),
    ("t.empty_str", "", gguf.GGUFValueType.STRING),
]
ARRAYS = {
    "a.i32": [1, -2, 3],
    "a.f32": [0.5, -1.5],
    "a.str": ["a", "", "ünï", "<|im_end|>"],
    "a.bool": [True, False, True],
    "a.nested": [[1, 2], [3, 4, 5]],
    "a.nested_str": [["x", "y"], ["z"]],
}


def _gguf_writer_file(path, tensors: dict[str, np.ndarray], version_patch: int | None = None):
    w = gguf.GGUFWriter(str(path), "llama")
    for key, val, vt in ALL_KV:
        w.add_key_value(key, val, vt)
    for key, val in ARRAYS.items():
        w.add_array(key, val)
    for name, (arr, qt) in tensors.items():
        w.add_tensor(name, arr, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version_patch is not None:
        with open(path, "r+b") as f:
            f.seek(4)
            f.write(struct.pack("<I", version_patch))


def _random_raw(qtype: QType, shape: tuple[int, ...], rng) -> np.ndarray:
    """Random raw bytes of a tensor; for float types, finite values (NaN bit patterns
    would still round trip, but keep comparisons simple)."""
    if qtype == QType.F32:
        return rng.standard_normal(shape).astype(np.float32).view(np.uint8).reshape(-1)
    if qtype == QType.F16:
        return rng.standard_normal(shape).astype(np.float16).view(np.uint8).reshape(-1)
    return rng.integers(0, 256, nbytes(qtype, shape), dtype=np.uint8)


@pytest.mark.parametrize("version", [2, 3])
def test_read_file_written_by_gguf_writer(tmp_path, version):
    rng = np.random.default_rng(0)
    t1 = rng.standard_normal((3, 5)).astype(np.float32)
    t2 = rng.standard_normal((7,)).astype(np.float16)
    p = tmp_path / "ref.gguf"
    _gguf_writer_file(p, {"a.weight": (t1, None), "b.bias": (t2, None)},
                      version_patch=None if version == 3 else 2)
    g = GGUFFile(p)
    assert g.version == version
    assert g.metadata["general.architecture"] == "llama"
    for key, val, vt in ALL_KV:
        got = g.metadata[key]
        assert g.value_types[key] == int(vt)
        if vt == gguf.GGUFValueType.FLOAT32:
            assert got == float(np.float32(val))
        else:
            assert got == val and type(got) is type(val)
    for key, val in ARRAYS.items():
        if key == "a.f32":
            assert g.metadata[key] == [float(np.float32(v)) for v in val]
        else:
            assert g.metadata[key] == val
    assert g.array_types["a.str"] == (GGUFValueType.STRING,)
    assert g.array_types["a.nested"] == (GGUFValueType.ARRAY, GGUFValueType.INT32)
    ref = gguf.GGUFReader(p)
    assert list(g.tensors) == [t.name for t in ref.tensors]
    for rt in ref.tensors:
        qt = g.tensor(rt.name)
        assert qt.shape == tuple(reversed([int(x) for x in rt.shape]))
        assert qt.qtype == QType(int(rt.tensor_type))
        assert g.tensors[rt.name].offset == rt.data_offset
        np.testing.assert_array_equal(qt.data, np.asarray(rt.data).view(np.uint8).reshape(-1))
    np.testing.assert_array_equal(g.tensor("a.weight").data.view(np.float32).reshape(3, 5), t1)


# Q8_1 is left out: ggml's block_q8_1 is 36 bytes (two halves + 32 int8, ggml-common.h),
# but gguf-py's GGML_QUANT_SIZES still says 40 (the old float d/s layout); it is only ever
# a dot-product intermediate and never stored in files.
QTYPE_CASES = [q for q in QType if q != QType.Q8_1]


def test_every_qtype_raw_bytes_round_trip(tmp_path):
    """Our writer -> gguf.GGUFReader and our reader: every qtype's bytes, shape, type."""
    rng = np.random.default_rng(1)
    tensors = {}
    for i, q in enumerate(QTYPE_CASES):
        shape = (3, 2 * q.block_size) if i % 2 else (2, 2, q.block_size)
        tensors[f"t{i}.{q.name}"] = QTensor(_random_raw(q, shape, rng), q, shape)
    md = {"general.architecture": "llama", "general.alignment": 64}
    p = tmp_path / "ours.gguf"
    write_gguf(p, md, [TensorToWrite(n, t.qtype, t.shape, lambda t=t: t) for n, t in tensors.items()])
    ref = gguf.GGUFReader(p)
    assert ref.alignment == 64
    by_name = {t.name: t for t in ref.tensors}
    ours = GGUFFile(p)
    for name, t in tensors.items():
        rt = by_name[name]
        assert int(rt.tensor_type) == int(t.qtype)
        assert tuple(int(x) for x in rt.shape) == tuple(reversed(t.shape))
        assert rt.data_offset % 64 == 0
        np.testing.assert_array_equal(np.asarray(rt.data).view(np.uint8).reshape(-1), t.data)
        back = ours.tensor(name)
        assert back.qtype == t.qtype and back.shape == t.shape
        np.testing.assert_array_equal(back.data, t.data)


def test_our_writer_metadata_read_by_reference(tmp_path):
    md = {"general.architecture": "llama", "general.name": "tiny ✓"}
    types = {}
    for key, val, vt in ALL_KV:
        md[key] = val
        types[key] = GGUFValueType(int(vt))
    md.update(ARRAYS)
    md["a.np_i32"] = np.array([5, -6], dtype=np.int32)
    md["a.np_f32"] = np.array([0.5, 2.0], dtype=np.float32)
    md["a.big"] = [2**31, 1]
    md["a.huge"] = [2**40, -1]
    md["s.neg"] = -5
    md["s.np_f64"] = np.float64(0.5)  # numpy's default float: written like a Python float
    p = tmp_path / "md.gguf"
    write_gguf(p, md, [], value_types=types)
    ref = gguf.GGUFReader(p)
    for key, val, vt in ALL_KV:
        f = ref.get_field(key)
        assert f.types == [vt]
        want = float(np.float32(val)) if vt == gguf.GGUFValueType.FLOAT32 else val
        assert f.contents() == want
    assert ref.get_field("a.str").contents() == ARRAYS["a.str"]
    # untyped int lists are written as i32, as gguf-py's add_array does
    assert ref.get_field("a.i32").types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32]
    assert ref.get_field("a.i32").contents() == ARRAYS["a.i32"]
    assert ref.get_field("a.np_i32").types[-1] == gguf.GGUFValueType.INT32
    assert ref.get_field("a.np_i32").contents() == [5, -6]
    assert ref.get_field("a.np_f32").types[-1] == gguf.GGUFValueType.FLOAT32
    assert ref.get_field("a.bool").contents() == [True, False, True]
    assert ref.get_field("a.big").types[-1] == gguf.GGUFValueType.UINT32
    assert ref.get_field("a.huge").types[-1] == gguf.GGUFValueType.INT64
    assert ref.get_field("a.huge").contents() == [2**40, -1]
    assert ref.get_field("s.neg").types == [gguf.GGUFValueType.INT32]
    assert ref.get_field("s.np_f64").types == [gguf.GGUFValueType.FLOAT32]
    assert ref.get_field("general.name").contents() == "tiny ✓"
    # ours reads back what it wrote, nested arrays included
    g = GGUFFile(p)
    for key, val in ARRAYS.items():
        want = [float(np.float32(v)) for v in val] if key == "a.f32" else val
        assert g.metadata[key] == want
    for key, val, vt in ALL_KV:
        assert g.value_types[key] == int(vt)


def test_rewrite_preserves_types_bytes_exact(tmp_path):
    """gguf.GGUFWriter file -> our reader -> our writer -> identical metadata section."""
    p = tmp_path / "ref.gguf"
    _gguf_writer_file(p, {"w": (np.arange(64, dtype=np.float32).reshape(2, 32), None)})
    g = GGUFFile(p)
    q = tmp_path / "rewritten.gguf"
    write_gguf(q, g.metadata, [TensorToWrite(n, t.qtype, t.shape, lambda n=n: g.tensor(n))
                               for n, t in g.tensors.items()],
               value_types=g.value_types, array_types=g.array_types)
    assert q.read_bytes() == p.read_bytes()


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc), not the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        pytest.skip("needs /proc/self/statm")


def test_open_is_lazy_on_a_1gib_file(tmp_path):
    """A sparse 1 GiB GGUF opens fast without reading or allocating its tensor bytes."""
    name = b"big.weight"
    ne = (1024, 262144)  # 2**28 f32 = 1 GiB
    head = b"GGUF" + struct.pack("<IQQ", 3, 1, 0)
    head += struct.pack("<Q", len(name)) + name + struct.pack("<I2QIQ", 2, *ne, 0, 0)
    data_off = (len(head) + 31) // 32 * 32
    p = tmp_path / "big.gguf"
    with open(p, "wb") as f:
        f.write(head)
        f.truncate(data_off + 4 * ne[0] * ne[1])  # a hole: no disk, no page cache
    rss0 = _rss_bytes()
    g = GGUFFile(p)
    qt = g.tensor("big.weight")
    rss1 = _rss_bytes()
    assert qt.shape == (262144, 1024) and qt.nbytes == 2**30
    assert g.file_bytes == data_off + 2**30
    assert rss1 - rss0 < 64 * 2**20  # reading (or copying) the tensor would add 1 GiB
    assert float(qt.data[-4:].view(np.float32)[0]) == 0.0


def test_writer_rejects_what_gguf_cannot_hold(tmp_path):
    """The writer's errors are the project's: UnsupportedError for a value GGUF has no type
    for, InputError for bad arguments; nothing is left behind."""
    out = tmp_path / "x.gguf"
    w = TensorToWrite("w", QType.F32, (2,), lambda: np.zeros(2, np.float32))
    for md in ({"k": object()}, {"k": [1, "a"]}, {"k": np.zeros(2, np.complex64)}):
        with pytest.raises(UnsupportedError, match="GGUF"):
            write_gguf(out, md, [w])
    with pytest.raises(InputError, match="power of two"):
        write_gguf(out, {"general.alignment": 3}, [w])
    with pytest.raises(InputError, match="duplicate"):
        write_gguf(out, {}, [w, w])
    with pytest.raises(InputError, match="declared F16"):
        write_gguf(out, {}, [TensorToWrite("w", QType.F16, (2,), lambda: QTensor.from_array(np.zeros(2, np.float32)))])
    with pytest.raises(InputError, match="expected 8"):
        write_gguf(out, {}, [TensorToWrite("w", QType.F32, (2,), lambda: np.zeros(3, np.float32))])
    assert not any(tmp_path.iterdir())
