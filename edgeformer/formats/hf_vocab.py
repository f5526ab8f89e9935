"""GGUF `tokenizer.*` metadata from an HF `tokenizer.json`, the way llama.cpp's
`convert_hf_to_gguf.py` writes it (`TextModel.get_vocab_base` + `gguf.SpecialVocab`).

Supported: SentencePiece `tokenizer.model` (`tokenizer.ggml.model = "llama"`, as llama.cpp's
`_set_vocab_sentencepiece`: Llama 2, Mistral, Gemma, Phi-3), taken first when present as
llama.cpp's LlamaModel does; else byte-level BPE `tokenizer.json`
(`tokenizer.ggml.model = "gpt2"`: GPT-2, Llama 3, Qwen2, SmolLM...). llama.cpp picks `tokenizer.ggml.pre` by hashing the tokenization of a
probe text; we read the pre-tokenizer's own definition from tokenizer.json instead and
map the known regexes to llama.cpp's names, falling back to "default" with a warning.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.errors import FormatError, UnsupportedError
from edgeformer.extras import require
from edgeformer.formats.hf import read_json_object

# gguf.TokenType values (llama.cpp `enum llama_token_type`)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Split regexes in tokenizer.json -> llama.cpp pre-tokenizer name (llama-vocab.cpp).
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLIT_PRE = {_LLAMA3_RE: "llama-bpe", _QWEN2_RE: "qwen2"}


def looks_special(token: str) -> bool:
    """llama.cpp `TextModel.does_token_look_special`: added tokens that ought to be
    control tokens even when not marked special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<\uff5c") and token.endswith("\uff5c>"))  # DeepSeek
            or (token.startswith("<unused") and token.endswith(">")))    # Gemma


def detect_pre(tok_json: dict[str, Any]) -> str:
    """llama.cpp `tokenizer.ggml.pre` name for a byte-level BPE pre-tokenizer."""
    pre = tok_json.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in items]
    if kinds == ["ByteLevel"] and items[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and items[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"]:
        pattern = (items[0].get("pattern") or {}).get("Regex")
        if pattern in _SPLIT_PRE:
            return _SPLIT_PRE[pattern]
    warnings.warn(f"unrecognized BPE pre-tokenizer {kinds}; writing tokenizer.ggml.pre='default'",
                  stacklevel=2)
    return "default"


def gguf_tokenizer_metadata(d: Path, vocab_size: int | None) -> dict[str, Any]:
    """`tokenizer.*` GGUF metadata for the HF model directory `d`: SentencePiece when
    `tokenizer.model` exists, else byte-level BPE from `tokenizer.json` (see below)."""
    if (d / "tokenizer.model").is_file():
        return spm_tokenizer_metadata(d, vocab_size)
    return bpe_tokenizer_metadata(d, vocab_size)


def spm_tokenizer_metadata(d: Path, vocab_size: int | None) -> dict[str, Any]:
    """llama.cpp `_set_vocab_sentencepiece`: pieces, scores and types from
    `tokenizer.model`, then added tokens from `added_tokens.json` and
    tokenizer_config.json `added_tokens_decoder`; ids past the model are `[PAD{i}]`."""
    import gguf
    spm = require("sentencepiece", "convert", "converting a SentencePiece tokenizer (tokenizer.model)")

    path = d / "tokenizer.model"
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise FormatError(path, f"cannot load SentencePiece model: {e}") from None
    n = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]" for i in range(n)]
    scores = [-10000.0] * n
    types = [UNUSED] * n
    for i in range(min(n, sp.vocab_size())):
        tokens[i], scores[i] = sp.IdToPiece(i), sp.GetScore(i)
        types[i] = (UNKNOWN if sp.IsUnknown(i) else CONTROL if sp.IsControl(i)
                    else UNUSED if sp.IsUnused(i) else BYTE if sp.IsByte(i) else NORMAL)
    added = d / "added_tokens.json"
    for text, i in (read_json_object(added) if added.is_file() else {}).items():
        if not isinstance(i, int):
            raise FormatError(added, f"the id of {text[:40]!r} is not an integer")
        if 0 <= i < n:
            tokens[i], scores[i], types[i] = text, -1000.0, USER_DEFINED
    cfg = d / "tokenizer_config.json"
    decoder = read_json_object(cfg).get("added_tokens_decoder", {}) if cfg.is_file() else {}
    for key, data in _added_tokens(decoder, cfg):
        i, text = int(key), data["content"]
        if not 0 <= i < n:
            continue
        if data.get("special") or looks_special(text):
            types[i] = CONTROL
        else:
            text = text.replace("\u2581", " ")  # pre-normalize user-defined spaces
            types[i] = USER_DEFINED
        tokens[i], scores[i] = text, -1000.0
    K = gguf.Keys.Tokenizer
    md: dict[str, Any] = {K.MODEL: "llama", K.PRE: "default", K.LIST: tokens,
                          K.SCORES: np.array(scores, dtype=np.float32),
                          K.TOKEN_TYPE: np.array(types, dtype=np.int32)}
    md.update(_special_vocab_md(d, n, load_merges=False))
    return md


def _added_tokens(decoder: Any, path: Path) -> list[tuple[str, dict[str, Any]]]:
    """tokenizer_config.json `added_tokens_decoder` items, checked: {"<id>": {"content": str, ...}}."""
    ok = isinstance(decoder, dict) and all(
        isinstance(k, str) and k.isdigit() and isinstance(v, dict) and isinstance(v.get("content"), str)
        for k, v in decoder.items())
    if not ok:
        raise FormatError(path, 'added_tokens_decoder must map "<id>" to {"content": "...", ...}')
    return list(decoder.items())


def bpe_tokenizer_metadata(d: Path, vocab_size: int | None) -> dict[str, Any]:
    """`tokenizer.*` GGUF metadata for the HF model directory `d` (ordered as llama.cpp
    writes it); arrays are typed numpy arrays (token_type int32). `vocab_size` is the
    model's embedding rows: ids without a token become `[PAD{i}]` UNUSED entries.
    Raises FormatError for an unreadable tokenizer.json, UnsupportedError for a
    non byte-level-BPE vocabulary."""
    import gguf
    from tokenizers import Tokenizer

    path = d / "tokenizer.json"
    tok_json = read_json_object(path)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception
        raise FormatError(path, f"cannot load tokenizer: {e}") from None
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise UnsupportedError(f"{path}: only byte-level BPE tokenizers can be converted so far "
                               f"(model type {model.get('type')!r}, byte_fallback={model.get('byte_fallback')})")
    vocab = tok.get_vocab(with_added_tokens=True)            # token -> id
    reverse = {i: t for t, i in vocab.items()}
    added = tok.get_added_tokens_decoder()                   # id -> AddedToken
    n = vocab_size or len(vocab)
    if max(vocab.values()) >= n:
        raise FormatError(path, f"token id {max(vocab.values())} is outside the model's vocab_size {n}")
    tokens, types = [], []
    for i in range(n):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        token = reverse[i]
        if i in added:
            a = added[i]
            if not a.normalized:  # llama.cpp assumes added tokens are pre-normalized
                token = tok.decode(tok.encode(token, add_special_tokens=False).ids,
                                   skip_special_tokens=False)
            if a.special or looks_special(token):
                types.append(CONTROL)
            else:
                token = token.replace("\u2581", " ")   # pre-normalize user-defined spaces
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(token)

    K = gguf.Keys.Tokenizer
    md: dict[str, Any] = {K.MODEL: "gpt2", K.PRE: detect_pre(tok_json), K.LIST: tokens,
                          K.TOKEN_TYPE: np.array(types, dtype=np.int32)}
    md.update(_special_vocab_md(d, n, load_merges=True))
    return md


def _special_vocab_md(d: Path, n: int, load_merges: bool) -> dict[str, Any]:
    """Merges, special token ids, add_*_token flags and chat template, from llama.cpp's
    own `gguf.SpecialVocab` (tokenizer.json, tokenizer_config.json, config.json)."""
    import gguf

    K = gguf.Keys.Tokenizer
    md: dict[str, Any] = {}
    sv = gguf.SpecialVocab(d, load_merges=load_merges, n_vocab=n)
    if sv.merges:
        md[K.MERGES] = list(sv.merges)
    for typ, tid in sv.special_token_ids.items():
        key = getattr(K, f"{typ.upper()}_ID", None)
        if key is not None:
            md[key] = int(tid)
    for typ, value in sv.add_special_token.items():
        key = getattr(K, f"ADD_{typ.upper()}", None)
        if key is not None:
            md[key] = bool(value)
    md.update(_chat_template_md(sv.chat_template))
    return md


def _chat_template_md(tmpl: Any) -> dict[str, Any]:
    """gguf.GGUFWriter.add_chat_template: a list of named templates becomes
    tokenizer.chat_template (the "default") + tokenizer.chat_template.{name}."""
    import gguf
    from string import ascii_letters, digits

    K = gguf.Keys.Tokenizer
    if tmpl is None:
        return {}
    if isinstance(tmpl, str):
        return {K.CHAT_TEMPLATE: tmpl}
    md, names, default = {}, [], None
    for choice in tmpl:
        name = "".join(c if c in ascii_letters + digits else "_" for c in choice.get("name", ""))
        t = choice.get("template")
        if name and t is not None:
            if name == "default":
                default = t
            else:
                names.append(name)
                md[K.CHAT_TEMPLATE_N.format(name=name)] = t
    if names:
        md[K.CHAT_TEMPLATES] = names
    if default is not None:
        md[K.CHAT_TEMPLATE] = default
    return md
