"""The GGUF our converter writes loads in llama.cpp, tokenizes like the HF tokenizer and
computes the same logits as transformers."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.formats.convert import convert

llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = ["Hello world! Numbers 12345 and 67890.", "The quick brown fox\n\tjumps over  the lazy dog",
         "def main():\n    return 42"]


@pytest.fixture(scope="module")
def hf_model_and_tokenizer(tiny_llama):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_llama)


def _llama(path, **kw):
    return llama_cpp.Llama(model_path=str(path), vocab_only=False, n_ctx=64, verbose=False, **kw)


@pytest.mark.llamacpp
def test_llama_cpp_tokenizes_like_hf(tiny_llama, tmp_path, hf_model_and_tokenizer):
    _, tok = hf_model_and_tokenizer
    out = tmp_path / "tiny-q8.gguf"
    convert(tiny_llama, out, "Q8_0")
    llm = _llama(out)
    assert llm.n_vocab() == len(tok) + 3
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == ids
        assert llm.detokenize(ids[1:]).decode() == text
    # special tokens are CONTROL tokens in llama.cpp: parsed as one id when special=True
    assert llm.tokenize(b"<|start|>hi", add_bos=False, special=True)[0] == tok.convert_tokens_to_ids("<|start|>")


@pytest.mark.llamacpp
def test_llama_cpp_logits_match_transformers(tiny_llama, tmp_path, hf_model_and_tokenizer):
    import torch

    model, tok = hf_model_and_tokenizer
    out = tmp_path / "tiny-f32.gguf"
    convert(tiny_llama, out, "F32")
    # f32 KV cache (ggml type 0) so the only differences are f32 summation order
    llm = _llama(out, logits_all=True, type_k=0, type_v=0)
    ids = tok(TEXTS[1])["input_ids"]
    llm.eval(ids)
    ours = np.asarray(llm.scores[: len(ids)])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    print("max |llama.cpp - transformers| =", np.abs(ours - ref).max(), "max |ref| =", np.abs(ref).max())
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max() + 1e-5, rtol=0)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.llamacpp
def test_our_decoder_matches_llama_cpp_on_converted_file(tiny_llama, tmp_path, hf_model_and_tokenizer):
    """Same GGUF file (F32, so no quantized-activation differences) in llama.cpp and in
    our decoder: logits at every prompt position, then 8 greedy tokens."""
    from edgeformer.backends.numpy_ref import NumpyBackend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder

    _, tok = hf_model_and_tokenizer
    out = tmp_path / "tiny-f32.gguf"
    convert(tiny_llama, out, "F32")
    llm = _llama(out, logits_all=True, type_k=0, type_v=0)
    ids = tok(TEXTS[0])["input_ids"]
    llm.eval(ids)
    ref = np.asarray(llm.scores[: len(ids)])
    model = Decoder(load_checkpoint(out), NumpyBackend())
    cache = model.make_cache(64)
    ours = model.forward(np.array(ids), cache)
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max() + 1e-5, rtol=0)

    llm.reset()
    want = []
    for t in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
        want.append(t)
        if len(want) == 8:
            break
    got, logits = [], ours[-1:]
    for _ in range(8):
        got.append(int(logits[-1].argmax()))
        logits = model.forward(np.array(got[-1:]), cache)
    assert got == want


@pytest.mark.llamacpp
def test_sentencepiece_vocab_in_llama_cpp(tmp_path):
    """tokenizer.model -> tokenizer.ggml.model 'llama': llama.cpp tokenizes like
    SentencePiece itself (BOS first), including byte-fallback pieces."""
    import sentencepiece as spm

    from .conftest import build_llama_dir, build_spm_model

    proto = build_spm_model()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    d = build_llama_dir(tmp_path / "spm", spm_model=proto)
    out = tmp_path / "spm.gguf"
    convert(d, out, "Q8_0")
    llm = _llama(out)
    assert llm.n_vocab() == sp.vocab_size() + 3
    for text in TEXTS + ["Zebra ünïcode ✓ bytes"]:
        want = [sp.bos_id()] + sp.encode(text)
        assert llm.tokenize(text.encode(), add_bos=True, special=False) == want, text
        assert llm.detokenize(want[1:]).decode().strip() == text.strip()
