"""safetensors reader against the `safetensors` library; HF directory handling."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edgeformer.errors import FormatError, UnsupportedError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.hf import hf_chat_template, open_shards, transform_to_qtensor, to_float32
from edgeformer.formats.safetensors import SafetensorsFile
from edgeformer.quant.qtypes import QTensor, QType

from .conftest import CHAT_TEMPLATE, build_llama_dir


def test_safetensors_matches_reference(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(3, 5, generator=g),
        "b": torch.randn(7, generator=g).half(),
        "c": torch.randn(4, 6, generator=g).bfloat16(),
        "d": torch.arange(10, dtype=torch.int64),
        "e": torch.randn(2, 3, 4, generator=g, dtype=torch.float64),
    }
    p = tmp_path / "x.safetensors"
    save_file(tensors, p, metadata={"format": "pt"})
    st = SafetensorsFile(p)
    assert st.metadata == {"format": "pt"}
    assert {n: t.qtype for n, t in st.tensors.items()} == {
        "a": QType.F32, "b": QType.F16, "c": QType.BF16, "d": QType.I64, "e": QType.F64}
    with safe_open(p, "pt") as ref:
        for name in tensors:
            r = ref.get_tensor(name)
            ours = st.qtensor(name)
            assert ours.shape == tuple(r.shape)
            bits = r.view(torch.int16) if r.dtype == torch.bfloat16 else r
            np.testing.assert_array_equal(ours.data, bits.contiguous().numpy().reshape(-1).view(np.uint8))
    # BF16 -> float32 is exact and matches torch's own upcast
    np.testing.assert_array_equal(to_float32(st.qtensor("c")), tensors["c"].float().numpy())


def _st_bytes(header: dict | bytes, data: bytes, n: int | None = None) -> bytes:
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if n is None else n) + h + data


@pytest.mark.parametrize("case,words", [
    ("short", "no header length"),
    ("huge_len", "corrupt safetensors header"),
    ("not_json", "not JSON"),
    ("not_object", "not a JSON object"),
    ("bad_offsets", "hold 8 bytes"),
    ("past_end", "cover 16 data bytes, the file has 8"),
    ("missing_keys", "needs dtype"),
    ("bad_shape", "shape must be a list of unsigned"),
])
def test_safetensors_bad_input(tmp_path, case, words):
    ok = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    data = {
        "short": b"\x01\x02",
        "huge_len": _st_bytes(ok, b"\0" * 8, n=2**40),
        "not_json": _st_bytes(b"{not json", b""),
        "not_object": _st_bytes([1, 2], b""),
        "bad_offsets": _st_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
        "past_end": _st_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8),
        "missing_keys": _st_bytes({"w": {"dtype": "F32"}}, b""),
        "bad_shape": _st_bytes({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8),
    }[case]
    p = tmp_path / "bad.safetensors"
    p.write_bytes(data)
    with pytest.raises(FormatError) as ei:
        SafetensorsFile(p)
    assert str(p) in str(ei.value) and words in str(ei.value)


def test_safetensors_unsupported_dtype(tmp_path):
    p = tmp_path / "b.safetensors"
    p.write_bytes(_st_bytes({"m": {"dtype": "BOOL", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4))
    with pytest.raises(UnsupportedError, match="BOOL"):
        SafetensorsFile(p)


def test_sharded_directory_matches_single(tmp_path, tiny_llama):
    d = build_llama_dir(tmp_path / "sharded", max_shard_size="40KB")
    assert (d / "model.safetensors.index.json").is_file()
    sharded, single = open_shards(d), open_shards(tiny_llama)
    assert len({id(s) for s in sharded.values()}) > 1
    assert sharded.keys() == single.keys()
    for name in single:
        np.testing.assert_array_equal(sharded[name].array(name), single[name].array(name))


def test_index_points_to_missing_shard(tmp_path, tiny_llama):
    d = build_llama_dir(tmp_path / "m", max_shard_size="40KB")
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    victim = sorted(set(idx["weight_map"].values()))[-1]
    (d / victim).unlink()
    with pytest.raises(FormatError) as ei:
        open_shards(d)
    assert victim in str(ei.value) and "missing" in str(ei.value)
    assert str(d / "model.safetensors.index.json") in str(ei.value)


def test_index_names_tensor_absent_from_shard(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    save_file({"a": torch.zeros(2)}, d / "s1.safetensors")
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors",
                                                                               "b": "s1.safetensors"}}))
    with pytest.raises(FormatError, match="'b' listed in the index is not in this shard"):
        open_shards(d)


def test_missing_config_json(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(FormatError) as ei:
        load_checkpoint(d)
    assert str(d) in str(ei.value) and "config.json" in str(ei.value)


def test_no_safetensors(tmp_path):
    d = tmp_path / "bin"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FormatError, match="only safetensors"):
        open_shards(d)


def test_chat_template_lookup(tmp_path, tiny_llama):
    assert hf_chat_template(tiny_llama, {}) == CHAT_TEMPLATE  # from chat_template.jinja
    assert hf_chat_template(tiny_llama, {"chat_template": "X"}) == "X"  # tokenizer_config first
    named = [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]
    assert hf_chat_template(tmp_path, {"chat_template": named}) == "D"
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "J"}))
    assert hf_chat_template(tmp_path, {}) == "J"


def test_transform_keeps_dtype_where_exact(monkeypatch):
    """Transforms run in float32; the result is stored back as BF16/F16 only if exact."""
    import edgeformer.formats.hf as hf

    bits = (np.random.default_rng(0).standard_normal(64).astype(np.float32).view(np.uint32) >> 16)
    raw = QTensor(bits.astype(np.uint16).view(np.uint8), QType.BF16, (8, 8))
    monkeypatch.setattr(hf, "transform_hf_tensor", lambda c, n, a: a)
    assert transform_to_qtensor(None, "x", raw) is raw
    monkeypatch.setattr(hf, "transform_hf_tensor", lambda c, n, a: a[::-1].copy())  # a permutation
    out = transform_to_qtensor(None, "x", raw)
    assert out.qtype == QType.BF16
    np.testing.assert_array_equal(to_float32(out), to_float32(raw)[::-1])
    monkeypatch.setattr(hf, "transform_hf_tensor", lambda c, n, a: a + 1)  # Gemma-style +1
    out = transform_to_qtensor(None, "x", raw)
    assert out.qtype == QType.F32
    np.testing.assert_array_equal(to_float32(out), to_float32(raw) + 1)
