"""Tokenizers raise only edgeformer errors (issue 16): malformed vocabularies (written to
real GGUF / JSON files here and read back by the readers), and hostile text (lone
surrogates, long prompts, which must encode in linear time)."""
from __future__ import annotations

import json
import shutil

import pytest

from edgeformer.errors import FormatError, InputError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.gguf import GGUFFile, write_gguf
from edgeformer.formats.hf_vocab import bpe_tokenizer_metadata
from edgeformer.formats.tokenizer import Tokenizer
from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint, tokenizer_from_hf

SPM_TOKENS = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab", "\u2581ab"]


def _spm_md(tokens=SPM_TOKENS, types=None, **extra) -> dict:
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [float(-i) for i in range(len(tokens))],
            "tokenizer.ggml.token_type": types or [2, 3, 3] + [1] * (len(tokens) - 3), **extra}


def _read_back(tmp_path, md: dict) -> Tokenizer:
    """Write `md` as a tensor-less GGUF and build the tokenizer from what the reader gives."""
    path = tmp_path / "vocab.gguf"
    write_gguf(path, md, [])
    return Tokenizer.from_gguf_metadata(GGUFFile(path).metadata, source=path)


def test_invalid_utf8_token_reads_as_its_bytes(tmp_path):
    """A vocabulary token that is not valid UTF-8 in the file (it decodes with
    surrogateescape) gives back its raw bytes, as llama.cpp's pieces do; it used to raise
    UnicodeEncodeError while the tokenizer was built."""
    bad = b"\xff\xfe".decode("utf-8", "surrogateescape")
    ctrl = b"<\xc3(>".decode("utf-8", "surrogateescape")
    tok = _read_back(tmp_path, _spm_md(SPM_TOKENS + [bad, ctrl], [2, 3, 3] + [1] * 7 + [3]))
    assert tok.decode_bytes([9]) == b"\xff\xfe" and tok.decode([9]) == "\ufffd\ufffd"
    assert tok.decode_bytes([10], special=True) == b"<\xc3(>"
    assert tok.encode("ab a", add_special=False) == [8, 6]


def test_spm_without_byte_tokens_uses_unk(tmp_path):
    """A character with neither a token nor byte-fallback tokens is the unknown token (as
    SentencePiece does); it used to raise KeyError."""
    tok = _read_back(tmp_path, _spm_md())
    assert tok.encode("a\u00e9b", add_special=False) == [6, 0, 5]


@pytest.mark.parametrize("key,value,match", [
    ("tokenizer.ggml.tokens", [1, 2, 3], "tokens must be an array of strings"),
    ("tokenizer.ggml.token_type", ["x"] * 9, "token_type must be an array of numbers"),
    ("tokenizer.ggml.scores", ["x"] * 9, "scores must be an array of numbers"),
    ("tokenizer.ggml.scores", 5, "scores must be an array of numbers"),
    ("tokenizer.ggml.eos_token_id", "2", "eos_token_id = '2' is not an integer"),
    ("tokenizer.ggml.add_bos_token", [1, 0], "add_bos_token must be a boolean"),
    ("tokenizer.ggml.model", [1, 2], "model must be a string"),
    ("tokenizer.ggml.token_type", [2, 3, 3, 6, 1, 1, 1, 1, 1], "byte token 3 is '▁', not <0xNN>"),
])
def test_malformed_spm_metadata_is_a_format_error(tmp_path, key, value, match):
    with pytest.raises(FormatError, match=match):
        _read_back(tmp_path, {**_spm_md(), key: value})


def test_malformed_bpe_metadata_is_a_format_error(shipped, tmp_path):
    md = dict(shipped.tokenizer_metadata("smollm2-135m-instruct"))
    with pytest.raises(FormatError, match="merges must be an array of strings"):
        Tokenizer.from_gguf_metadata({**md, "tokenizer.ggml.merges": [1, 2]})
    with pytest.raises(FormatError, match="tokenizer.ggml.pre must be a string"):
        Tokenizer.from_gguf_metadata({**md, "tokenizer.ggml.pre": ["smollm"]})


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_lone_surrogates_are_input_errors(shipped, name):
    """Text that is not valid Unicode (a JSON "\\ud800" escape decodes to a lone
    surrogate) is refused naming where; it used to raise UnicodeEncodeError."""
    tok = shipped.tokenizer(name)
    for text in ("ok \ud800 no", "\udcff"):
        with pytest.raises(InputError, match="lone surrogate U\\+D[8C][0F]{2} at character"):
            tok.encode(text)


def test_hf_tokenizer_refuses_lone_surrogates(tiny_llama):
    tok = tokenizer_from_hf(tiny_llama / "tokenizer.json")
    with pytest.raises(InputError, match="lone surrogate"):
        tok.encode("a\ud83db")
    assert tok.encode("a b", add_special=False)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def test_deeply_nested_json_is_a_format_error(tiny_llama, tmp_path):
    """config.json, tokenizer_config.json and tokenizer.json nested 100,000 deep: a
    FormatError naming the file (json raised RecursionError)."""
    for name in ("config.json", "tokenizer_config.json", "tokenizer.json"):
        d = tmp_path / name.replace(".", "_")
        shutil.copytree(tiny_llama, d)
        (d / name).write_text(_deep(100_000))
        with pytest.raises(FormatError, match=name.replace(".", r"\.")):
            tokenizer_from_checkpoint(load_checkpoint(d, validate=False))
    with pytest.raises(FormatError, match="not a JSON object"):
        d = tmp_path / "list_config"
        shutil.copytree(tiny_llama, d)
        (d / "tokenizer_config.json").write_text(json.dumps([1, 2]))
        load_checkpoint(d, validate=False)


def test_convert_vocab_reads_bad_json_as_format_error(tiny_llama, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_llama, d)
    (d / "tokenizer.json").write_text(_deep(100_000))
    with pytest.raises(FormatError, match="tokenizer.json"):
        bpe_tokenizer_metadata(d, None)


@pytest.mark.llamacpp
@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma3-270m"])
def test_long_text_matches_llamacpp(shipped, name):
    """A 30 KB text (long enough for SentencePiece's piecewise encoding, with the one pair
    of Gemma's vocabulary that holds a space inside a token, ">▁") gives llama.cpp's ids,
    and for SentencePiece the same ids as encoding it whole."""
    import random
    tok, L = shipped.tokenizer(name), shipped.llamacpp(name)
    rng = random.Random(0)
    words = ["the", "quick", "a>", ">", "</", "x> </y", "", "\n\n", "中文", "😀", "é", "12345", "it's"]
    text = " ".join(rng.choice(words) for _ in range(6000))
    assert tok.encode(text) == L.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    if tok.kind == "spm":
        escaped = (" " + text).replace(" ", "\u2581")
        assert len(tok._model.chunks(escaped)) > 1000
        assert tok._model.encode(escaped) == tok._model._encode(escaped)


def test_decoding_non_integer_ids_is_an_input_error(shipped, tiny_llama):
    """A str, float, None or bool id (an API client's token-id prompt, say) is an
    InputError in decode and in the streaming decoder, for the GGUF and the HF
    tokenizers; it used to raise ValueError/TypeError from int() (or OverflowError in
    tokenizers' DecodeStream for -1)."""
    for tok in (shipped.tokenizer("smollm2-135m-instruct"), tokenizer_from_hf(tiny_llama / "tokenizer.json")):
        for bad in ("x", 1.5, None, True):
            with pytest.raises(InputError, match="must be integers"):
                tok.decode([1, bad])
            with pytest.raises(InputError, match="must be integers"):
                tok.incremental_decoder().add(bad)
        with pytest.raises(InputError, match="outside the vocabulary"):
            tok.incremental_decoder().add(-1)


def test_tokenizers_panic_is_a_format_error(tmp_path):
    """A tokenizer.json whose post-processor uses a special token it does not define makes
    the `tokenizers` library panic (pyo3's PanicException, a BaseException: it escapes
    `except Exception`) when the tokenizer is first used: a FormatError at load (found by
    bench/fuzz.py hf)."""
    from tokenizers import Tokenizer as TkTokenizer
    from tokenizers import models, pre_tokenizers, processors

    from edgeformer.formats.tokenizer_hf import HFTokenizer
    tk = TkTokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A", special_tokens=[("[CLS]", 7)])
    path = tmp_path / "tokenizer.json"
    tk.save(str(path))
    data = json.loads(path.read_text())
    data["post_processor"]["special_tokens"] = {}
    path.write_text(json.dumps(data))
    with pytest.raises(FormatError, match="cannot load tokenizer.json: PanicException"):
        HFTokenizer(path, {})
