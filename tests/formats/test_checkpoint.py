"""Checkpoint-level checks: load_checkpoint validation (missing tensor, wrong shape,
unknown architecture) and HF checkpoints in BF16 / sharded form."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from edgeformer.errors import FormatError, UnsupportedError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.convert import convert
from edgeformer.formats.gguf import GGUFFile, TensorToWrite, write_gguf
from edgeformer.formats.hf import to_float32
from edgeformer.quant.qtypes import QTensor, QType

from .conftest import build_llama_dir


@pytest.fixture(scope="module")
def good_gguf(tiny_llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "good.gguf"
    convert(tiny_llama, out, "F16")
    return out


def _rewrite(src, dst, drop=(), replace=None, md_update=None):
    g = GGUFFile(src)
    md = {**g.metadata, **(md_update or {})}
    specs = [TensorToWrite(n, t.qtype, t.shape, lambda n=n: g.tensor(n))
             for n, t in g.tensors.items() if n not in drop]
    for name, qt in (replace or {}).items():
        specs = [s if s.name != name else TensorToWrite(name, qt.qtype, qt.shape, lambda qt=qt: qt)
                 for s in specs]
    write_gguf(dst, md, specs, value_types=g.value_types, array_types=g.array_types)
    return dst


def test_good_file_validates(good_gguf):
    ckpt = load_checkpoint(good_gguf)
    assert ckpt.arch == "llama" and len(ckpt.tensors) == 3 + 2 * 9


def test_missing_tensor(good_gguf, tmp_path):
    bad = _rewrite(good_gguf, tmp_path / "missing.gguf", drop={"blk.1.ffn_gate.weight"})
    with pytest.raises(FormatError) as ei:
        load_checkpoint(bad)
    assert str(bad) in str(ei.value) and "missing" in str(ei.value) and "blk.1.ffn_gate.weight" in str(ei.value)


def test_shape_disagrees_with_config(good_gguf, tmp_path):
    wrong = QTensor.from_array(np.zeros((32, 64), np.float16))
    bad = _rewrite(good_gguf, tmp_path / "shape.gguf", replace={"blk.0.attn_q.weight": wrong})
    with pytest.raises(FormatError) as ei:
        load_checkpoint(bad)
    msg = str(ei.value)
    assert str(bad) in msg and "blk.0.attn_q.weight" in msg and "[32, 64]" in msg and "[64, 64]" in msg


def test_unknown_architecture(good_gguf, tmp_path):
    bad = _rewrite(good_gguf, tmp_path / "arch.gguf", md_update={"general.architecture": "mamba9"})
    with pytest.raises(UnsupportedError) as ei:
        load_checkpoint(bad)
    assert str(bad) in str(ei.value) and "mamba9" in str(ei.value)


def test_unknown_hf_model_type(tmp_path, tiny_llama):
    import json
    import shutil

    d = tmp_path / "weird"
    shutil.copytree(tiny_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "mamba9"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedError) as ei:
        load_checkpoint(d)
    assert str(d / "config.json") in str(ei.value) and "mamba9" in str(ei.value)


def test_bf16_hf_checkpoint_stays_bf16(tmp_path):
    d = build_llama_dir(tmp_path / "bf16", dtype="bfloat16")
    ckpt = load_checkpoint(d)
    with safe_open(d / "model.safetensors", "pt") as f:
        emb = f.get_tensor("model.embed_tokens.weight")
        q = f.get_tensor("model.layers.0.self_attn.q_proj.weight")
    t = ckpt.tensors["token_embd.weight"]
    assert t.qtype == QType.BF16
    np.testing.assert_array_equal(to_float32(t), emb.float().numpy())
    tq = ckpt.tensors["blk.0.attn_q.weight"]  # permuted rows: still exactly BF16
    assert tq.qtype == QType.BF16
    np.testing.assert_array_equal(np.sort(to_float32(tq).ravel()), np.sort(q.float().numpy().ravel()))
    # BF16 -> F16 GGUF: the values torch rounds to f16
    out = tmp_path / "f16.gguf"
    convert(d, out, "F16")
    g = load_checkpoint(out)
    assert g.tensors["token_embd.weight"].qtype == QType.F16
    np.testing.assert_array_equal(g.tensors["token_embd.weight"].data.view(np.float16).reshape(emb.shape),
                                  emb.to(torch.float16).numpy())


def test_sharded_hf_checkpoint_equals_single(tmp_path, tiny_llama):
    d = build_llama_dir(tmp_path / "sh", max_shard_size="40KB")
    a, b = load_checkpoint(d), load_checkpoint(tiny_llama)
    assert set(a.tensors) == set(b.tensors)
    for n in a.tensors:
        np.testing.assert_array_equal(a.tensors[n].data, b.tensors[n].data)


def test_tied_embeddings_round_trip(tmp_path):
    """HF tied model: no lm_head in safetensors, no output.weight in the GGUF; both load."""
    d = build_llama_dir(tmp_path / "tied", tie=True)
    h = load_checkpoint(d)
    assert h.config.tie_embeddings and "output.weight" not in h.tensors
    out = tmp_path / "tied.gguf"
    convert(d, out, "F32")
    g = load_checkpoint(out)
    assert "output.weight" not in g.tensors and set(g.tensors) == set(h.tensors)
