"""Other byte-level BPE pre-tokenizers (gpt2, llama3, qwen2, starcoder, default) and the
clean-up-spaces decoding, checked against llama.cpp on vocab-only GGUFs that reuse the
SmolLM2 vocabulary and merges with a different `tokenizer.ggml.pre`; the HF
`tokenizer.json` path; and the errors for bad tokenizer metadata."""
from __future__ import annotations

import ctypes
import random

import pytest

from edgeformer.errors import FormatError, InputError, UnsupportedError
from edgeformer.formats.tokenizer import Tokenizer
from edgeformer.formats.tokenizer_load import tokenizer_from_hf

TEXTS = [
    "", "Hello world", "Hello , world ! Is it ? Yes . Done", "I'm here, you're there; it's 'quoted' text",
    "He said ' hi ' and 's 'm 're 've 'll 'd 'S 'LL 'Re", "don 't won 't I 'm",
    "12 123 1234 12345 123456 1234567 3.14159 2024-01-01", "x1y22z333w4444",
    "   lead", "trail   ", "a \n b \n\n c\r\n\r\n d", "\t\tindent\n    code()\n", "  \n  \n",
    "emoji 😀 👍🏽 中文 日本語 café e\u0301", "nbsp\u00a0x\u3000y\u2028z", "<|im_start|>user<|im_end|>",
    "$100 + 5% = <x> ^ ~ | `code` @user #tag", "'''triple''' \"\"\"q\"\"\"", "ʼn ſ K Ǆ",
]
PRES = ("gpt-2", "llama-bpe", "qwen2", "starcoder", "default", "smollm")


def _write_vocab_gguf(path, md: dict, pre: str) -> None:
    """A tensor-less GGUF (the `gguf` package's writer) that llama.cpp loads vocab-only."""
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(md["tokenizer.ggml.tokens"])
    w.add_token_types(md["tokenizer.ggml.token_type"])
    w.add_token_merges(md["tokenizer.ggml.merges"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def variants(shipped, tmp_path_factory):
    """pre -> (edgeformer Tokenizer, llama_cpp.Llama) over the SmolLM2 vocabulary."""
    llama_cpp = pytest.importorskip("llama_cpp")
    md = dict(shipped.tokenizer_metadata("smollm2-135m-instruct"))
    md.pop("tokenizer.ggml.add_bos_token", None)   # let each pre-type's default show
    out = {}
    for pre in PRES:
        p = tmp_path_factory.mktemp("vocab") / f"{pre}.gguf"
        _write_vocab_gguf(p, md, pre)
        out[pre] = (Tokenizer.from_gguf_metadata({**md, "tokenizer.ggml.pre": pre}),
                    llama_cpp.Llama(str(p), vocab_only=True, verbose=False))
    yield out
    for _, llama in out.values():
        llama.close()


def _lc_detokenize(L, ids, special):
    import llama_cpp
    arr = (llama_cpp.llama_token * max(1, len(ids)))(*ids)
    size = 64 * len(ids) + 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(L._model.vocab, arr, len(ids), buf, size, False, special)
    return buf.raw[:n]


@pytest.mark.llamacpp
@pytest.mark.parametrize("pre", PRES)
def test_pretokenizer_matches_llamacpp(variants, pre):
    tok, L = variants[pre]
    assert tok.add_bos == (pre == "llama-bpe")   # llama.cpp's per-pre default
    for s in TEXTS:
        for add_special in (False, True):
            for parse_special in (False, True):
                assert tok.encode(s, add_special, parse_special) == \
                    L.tokenize(s.encode("utf-8"), add_bos=add_special, special=parse_special), (s, add_special)


@pytest.mark.llamacpp
@pytest.mark.parametrize("pre", PRES)
def test_decode_and_clean_spaces_match_llamacpp(variants, pre):
    tok, L = variants[pre]
    assert tok.clean_spaces == (pre not in ("smollm", "qwen2"))
    rng = random.Random(2)
    punct = [tok.token_to_id[t] for t in ("Ġ", ",", ".", "?", "!", "'", "s", "m", "re", "ve", "Ġ'", "t") if t in tok.token_to_id]
    seqs = [tok.encode(s, add_special=True) for s in TEXTS]
    seqs += [[rng.choice(punct) for _ in range(rng.randrange(1, 25))] for _ in range(60)]
    for ids in seqs:
        for special in (False, True):
            full = tok.decode_bytes(ids, special)
            assert full == _lc_detokenize(L, ids, special), ids
            dec = tok.incremental_decoder(special)
            streamed = "".join([dec.add(t) for t in ids] + [dec.flush()])
            assert streamed == full.decode("utf-8", errors="replace"), ids


@pytest.mark.llamacpp
def test_spm_space_prefix_matches_llamacpp(shipped, tmp_path):
    """SentencePiece with add_space_prefix (Llama-2 style; Gemma 3 itself has it off): the
    Gemma vocabulary rewritten with the flag on, against llama.cpp: encode (a space is
    prefixed to the text and after each special token), decode and streaming (the first
    piece's space is dropped)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import gguf
    md = shipped.tokenizer_metadata("gemma3-270m")
    p = tmp_path / "spm_prefix.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    for add, v in ((w.add_context_length, 2048), (w.add_embedding_length, 64), (w.add_block_count, 1),
                   (w.add_feed_forward_length, 128), (w.add_head_count, 2), (w.add_layer_norm_rms_eps, 1e-5)):
        add(v)
    w.add_tokenizer_model("llama")
    w.add_token_list(md["tokenizer.ggml.tokens"])
    w.add_token_scores(md["tokenizer.ggml.scores"])
    w.add_token_types(md["tokenizer.ggml.token_type"])
    w.add_bos_token_id(md["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(md["tokenizer.ggml.eos_token_id"])
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    keep = ("tokens", "scores", "token_type", "bos_token_id", "eos_token_id", "model")
    tok = Tokenizer.from_gguf_metadata({**{f"tokenizer.ggml.{k}": md[f"tokenizer.ggml.{k}"] for k in keep},
                                        "tokenizer.ggml.add_space_prefix": True})
    L = llama_cpp.Llama(str(p), vocab_only=True, verbose=False)
    try:
        assert tok.add_space_prefix and tok.add_bos   # SPM default: BOS on
        for s in TEXTS + ["<start_of_turn>user\nhi<end_of_turn>", " x"]:
            for add_special in (False, True):
                for parse_special in (False, True):
                    ids = tok.encode(s, add_special, parse_special)
                    assert ids == L.tokenize(s.encode("utf-8"), add_bos=add_special, special=parse_special), s
                    for special in (False, True):
                        full = tok.decode_bytes(ids, special)
                        assert full == _lc_detokenize(L, ids, special), (s, special)
                        dec = tok.incremental_decoder(special)
                        assert "".join([dec.add(t) for t in ids] + [dec.flush()]) == full.decode("utf-8", "replace")
    finally:
        L.close()


def test_hf_tokenizer_json(shipped, tmp_path):
    """Tokenizer.from_hf on a tokenizer.json written by transformers from the Gemma GGUF:
    the same ids as transformers and as the GGUF path, BOS per the post-processor,
    special-token text kept literal unless parse_special."""
    hf = shipped.hf_tokenizer("gemma3-270m")
    hf.save_pretrained(tmp_path)
    import json
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    tok = tokenizer_from_hf(tmp_path / "tokenizer.json", cfg)
    gg = shipped.tokenizer("gemma3-270m")
    assert tok.bos_id == gg.bos_id and tok.add_bos and tok.eos_id == gg.eos_id
    for s in TEXTS:
        assert tok.encode(s, parse_special=True) == hf.encode(s) == gg.encode(s, parse_special=True)
        ids = tok.encode(s, add_special=False)
        dec = tok.incremental_decoder()
        assert "".join([dec.add(t) for t in ids] + [dec.flush()]) == tok.decode(ids)
    sid = gg.token_to_id["<start_of_turn>"]
    assert sid not in tok.encode("a <start_of_turn> b") and sid in tok.encode("a <start_of_turn> b", parse_special=True)
    assert gg.token_to_id["<end_of_turn>"] in tok.stop_ids()


def test_bad_metadata_errors(shipped):
    md = dict(shipped.tokenizer_metadata("smollm2-135m-instruct"))
    with pytest.raises(UnsupportedError, match="pre-tokenizer 'nope'.*supported"):
        Tokenizer.from_gguf_metadata({**md, "tokenizer.ggml.pre": "nope"})
    with pytest.raises(UnsupportedError, match="tokenizer model 'bert'"):
        Tokenizer.from_gguf_metadata({**md, "tokenizer.ggml.model": "bert"})
    with pytest.raises(FormatError, match="tokenizer.ggml.tokens"):
        Tokenizer.from_gguf_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.tokens"})
    with pytest.raises(FormatError, match="merges"):
        Tokenizer.from_gguf_metadata({k: v for k, v in md.items() if k != "tokenizer.ggml.merges"})
    with pytest.raises(FormatError, match="eos_token_id"):
        Tokenizer.from_gguf_metadata({**md, "tokenizer.ggml.eos_token_id": 10**6})
    with pytest.raises(FormatError, match="token_type"):
        Tokenizer.from_gguf_metadata({**md, "tokenizer.ggml.token_type": [1, 1]})
    tok = shipped.tokenizer("smollm2-135m-instruct")
    with pytest.raises(InputError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])
    with pytest.raises(InputError, match="needs a str"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
