"""`Tokenizer`: text <-> token ids for GGUF vocabularies (byte-level BPE and
SentencePiece-style) and for HF `tokenizer.json` files (through the `tokenizers` library).

GGUF semantics are llama.cpp's (`src/llama-vocab.cpp`), which defines them:
- special-token text in the input is cut out first (`tokenizer_st_partition`): control and
  unknown tokens only with `parse_special=True`, user-defined tokens always (as HF
  tokenizers do with added tokens); longest token text first;
- each remaining fragment is tokenized on its own (`tokenizer_bpe.py`, `tokenizer_spm.py`);
- decoding maps a token to its bytes (`token_to_piece`); control tokens render only when
  asked; SentencePiece vocabularies drop the leading space of the first piece; some BPE
  pre-tokenizers clean up spaces before punctuation (`clean_spaces`).
"""
from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Mapping
from enum import IntFlag
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgeformer.errors import FormatError, InputError, UnsupportedError
from edgeformer.formats.tokenizer_bpe import BPEModel, byte_decoder, pre_tokenizer
from edgeformer.formats.tokenizer_spm import SPACE_ESCAPE, SPMModel


class TokenAttr(IntFlag):
    """llama.cpp `llama_token_attr`, from GGUF `tokenizer.ggml.token_type`."""
    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5


# GGUF token_type value -> attribute (llama.cpp `llama_token_type`)
_TYPE_TO_ATTR = {0: TokenAttr.UNDEFINED, 1: TokenAttr.NORMAL, 2: TokenAttr.UNKNOWN, 3: TokenAttr.CONTROL,
                 4: TokenAttr.USER_DEFINED, 5: TokenAttr.UNUSED, 6: TokenAttr.BYTE}
_SPECIAL = TokenAttr.CONTROL | TokenAttr.UNKNOWN
# Texts llama.cpp recognises as end-of-turn / end-of-generation (llama-vocab.cpp `load`)
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
             "<EOT>", "_<EOT>", "<｜end▁of▁sentence｜>", "<end_of_utterance>")
EOG_TEXTS = frozenset(EOT_TEXTS + ("<|eom_id|>", "<|return|>", "<|call|>", "</s>", "[EOS]"))
_CLEAN_1 = re.compile(rb" (?=[?!.,])")
_CLEAN_2 = re.compile(rb" ' ")
_CLEAN_3 = re.compile(rb" (?='(?:s|m|re|ve))")


def clean_spaces(b: bytes) -> bytes:
    """llama.cpp `detokenize` clean-up (clean_up_tokenization_spaces): drop a space before
    ?!., ; " ' " -> "'"; drop the space before 's 'm 're 've."""
    return _CLEAN_3.sub(b"", _CLEAN_2.sub(b"'", _CLEAN_1.sub(b"", b)))


class TextDecoder(Protocol):
    """A streaming decoder (`Tokenizer.incremental_decoder`): the outputs of `add` and
    `flush` concatenate to the decoded text, and each is valid text."""

    def add(self, tid: int) -> str: ...

    def flush(self) -> str: ...


class Tokenizer:
    """One vocabulary. Build with `from_gguf_metadata`, or
    `tokenizer_load.tokenizer_from_checkpoint` / `tokenizer_from_hf` (which may give an HFTokenizer).

    Attributes: `kind` ("bpe" | "spm" | "hf"), `vocab_size`, `bos_id` / `eos_id` / `eot_id`
    / `unk_id` / `pad_id` (int or None), `eog_ids` (every id that ends generation),
    `add_bos` / `add_eos` (what `encode(add_special=True)` adds, per the file)."""

    kind: str
    vocab_size: int
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    eog_ids: frozenset[int] = frozenset()
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = False
    clean_spaces: bool = False
    tokens: list[str]                 # the vocabulary strings, by id
    token_to_id: dict[str, int]
    attrs: list[TokenAttr]            # by id
    _model: BPEModel | SPMModel
    _eom_id: int | None

    # ---- construction ----

    @classmethod
    def from_gguf_metadata(cls, md: Mapping[str, Any], source: str | Path = "<gguf>") -> "Tokenizer":
        """From GGUF key/values as plain Python values (`tokenizer.ggml.*`). Raises
        FormatError for missing/inconsistent keys, UnsupportedError for a tokenizer model
        or pre-tokenizer this does not implement."""
        self = cls.__new__(cls)
        model = md.get("tokenizer.ggml.model")
        tokens = md.get("tokenizer.ggml.tokens")
        if model is None or tokens is None:
            raise FormatError(source, "no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens missing)")
        if not isinstance(model, str):
            raise FormatError(source, f"tokenizer.ggml.model must be a string, got {type(model).__name__}")
        tokens = _strings(tokens, "tokens", source)
        n = len(tokens)
        tokens = [t if t else f"[EMPTY_{i}]" for i, t in enumerate(tokens)]
        types = _numbers(md.get("tokenizer.ggml.token_type"), "token_type", n, int, source)
        scores = _numbers(md.get("tokenizer.ggml.scores"), "scores", n, float, source)
        self.tokens = tokens
        self.vocab_size = n
        self.attrs = ([_TYPE_TO_ATTR.get(t, TokenAttr.UNDEFINED) for t in types]
                      if types is not None else [TokenAttr.NORMAL] * n)
        self.token_to_id = {t: i for i, t in enumerate(tokens)}
        # per-model defaults below are llama.cpp's (`llama_vocab::impl::load`); file keys override
        if model == "gpt2":
            merges = md.get("tokenizer.ggml.merges")
            if merges is None:
                raise FormatError(source, "BPE vocabulary without tokenizer.ggml.merges")
            merges = _strings(merges, "merges", source)
            pre = md.get("tokenizer.ggml.pre")
            if pre is not None and not isinstance(pre, str):
                raise FormatError(source, f"tokenizer.ggml.pre must be a string, got {type(pre).__name__}")
            pre = pre_tokenizer(pre)
            self.kind, self._model = "bpe", BPEModel(self.token_to_id, merges, pre)
            self.add_space_prefix, self.clean_spaces = False, pre.clean_spaces
            self.add_bos, self.bos_id, self.eos_id = bool(pre.add_bos), 11, 11
            self.unk_id = None
        elif model == "llama":
            self.kind, self._model = "spm", SPMModel(self.token_to_id, scores or [0.0] * n)
            self.add_space_prefix, self.clean_spaces = True, False
            self.add_bos, self.bos_id, self.eos_id, self.unk_id = True, 1, 2, 0
        else:
            raise UnsupportedError(f"{source}: tokenizer model {model!r} is not supported "
                                   "(supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)")
        self.add_space_prefix = _flag(md, "add_space_prefix", self.add_space_prefix, source)
        self._read_special_ids(md, source)
        if isinstance(self._model, SPMModel):
            self._model.unk_id = self.unk_id
        self._detect_special_tokens()
        self._build_caches(source)
        return self

    def _read_special_ids(self, md: Mapping[str, Any], source: str | Path) -> None:
        n = self.vocab_size
        defaults = {"bos": self.bos_id, "eos": self.eos_id, "unknown": self.unk_id}
        ids: dict[str, int | None] = {}
        for name in ("bos", "eos", "eot", "eom", "unknown", "padding"):
            tid = defaults.get(name)
            if tid is not None and tid >= n:
                tid = None
            v = md.get(f"tokenizer.ggml.{name}_token_id")
            if v is not None:
                if not isinstance(v, (int, np.integer)):
                    raise FormatError(source, f"tokenizer.ggml.{name}_token_id = {v!r} is not an integer")
                if not 0 <= int(v) < n:
                    raise FormatError(source, f"tokenizer.ggml.{name}_token_id = {v} outside the vocabulary ({n})")
                tid = int(v)
            ids[name] = tid
        self.bos_id, self.eos_id, self.eot_id = ids["bos"], ids["eos"], ids["eot"]
        self.unk_id, self.pad_id, self._eom_id = ids["unknown"], ids["padding"], ids["eom"]
        self.add_bos = _flag(md, "add_bos_token", self.add_bos, source)
        self.add_eos = _flag(md, "add_eos_token", self.add_eos, source)
        if self.add_bos and self.bos_id is None:
            raise FormatError(source, "tokenizer.ggml.add_bos_token is set but there is no BOS token")

    def _detect_special_tokens(self) -> None:
        """llama.cpp's text-based fix-ups: EOT by known texts (first in EOT_TEXTS order:
        llama.cpp takes whichever its hash map yields first), control attribute forced on
        end-of-generation texts, "unused" control tokens marked unused, the EOG set."""
        t2i, attrs = self.token_to_id, self.attrs
        if self.eot_id is None:
            self.eot_id = next((t2i[t] for t in EOT_TEXTS if t in t2i), None)
        eog = {t2i[t] for t in EOG_TEXTS if t in t2i}
        for tid in (self.eot_id, self._eom_id, *eog):
            if tid is not None:
                attrs[tid] |= TokenAttr.CONTROL
        for i, a in enumerate(attrs):
            if a & TokenAttr.CONTROL and "unused" in self.tokens[i]:
                attrs[i] = a | TokenAttr.UNUSED
        eog.update(t for t in (self.eos_id, self.eot_id, self._eom_id) if t is not None)
        self.eog_ids = frozenset(eog)

    def _build_caches(self, source: str | Path) -> None:
        # special tokens, longest text first (ties by id; llama.cpp's std::sort leaves them
        # unordered, which matters only for equal-length overlapping texts)
        specials = [i for i, a in enumerate(self.attrs)
                    if a & (TokenAttr.CONTROL | TokenAttr.USER_DEFINED | TokenAttr.UNKNOWN)]
        specials.sort(key=lambda i: (-len(self.tokens[i]), i))
        self._specials = [(self.tokens[i], i) for i in specials]
        self._user_specials = [(t, i) for t, i in self._specials if not self.attrs[i] & _SPECIAL]
        for i, a in enumerate(self.attrs):
            if a == TokenAttr.BYTE and not _BYTE_TOKEN.fullmatch(self.tokens[i]):
                raise FormatError(source, f"byte token {i} is {self.tokens[i][:40]!r}, not <0xNN>")
        self._pieces: list[bytes] = [self._piece_uncached(i) for i in range(self.vocab_size)]

    # ---- encoding ----

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False,
               *, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`. `add_special`: add BOS/EOS as the file says (`add_bos`,
        `add_eos`). `parse_special`: text of control tokens (e.g. "<|im_start|>") becomes
        that token; otherwise it is tokenized as plain text, so user input cannot inject
        control tokens. User-defined tokens are matched either way. `add_bos` is an alias
        of `add_special` (the engine's name). Raises InputError for a non-str."""
        if add_bos is not None:
            add_special = add_bos
        check_text(text)
        out: list[int] = []
        if add_special and self.add_bos:
            out.append(self.bos_id)  # type: ignore[arg-type]
        prev_special = True   # SentencePiece: a space prefix starts the text and follows specials
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.kind == "spm":
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                out.extend(self._model.encode(frag.replace(" ", SPACE_ESCAPE)))
            else:
                out.extend(self._model.encode(frag))
            prev_special = False
        if add_special and self.add_eos and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """`tokenizer_st_partition`: for each special token (longest text first), split every
        raw fragment at each of its occurrences."""
        frags: list[str | int] = [text] if text else []
        specials = self._specials if parse_special else self._user_specials
        for tok, tid in specials:
            if tok not in text:   # exact shortcut: fragments are substrings of text
                continue
            out: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or tok not in f:
                    out.append(f)
                    continue
                parts = f.split(tok)
                for k, p in enumerate(parts):
                    if k:
                        out.append(tid)
                    if p:
                        out.append(p)
            frags = out
        return frags

    # ---- decoding ----

    def token_text(self, tid: int) -> str:
        """The vocabulary string of a token (byte-level / ▁-escaped as stored)."""
        return self.tokens[tid]

    def piece(self, tid: int, special: bool = True) -> bytes:
        """The bytes token `tid` contributes to decoded text (`token_to_piece`); control and
        unknown tokens give b"" unless `special`. Raises InputError for an id outside the
        vocabulary."""
        if not 0 <= tid < self.vocab_size:
            raise InputError(f"token id {tid} is outside the vocabulary (size {self.vocab_size})")
        if not special and self.attrs[tid] & _SPECIAL:
            return b""
        return self._pieces[tid]

    def _piece_uncached(self, tid: int) -> bytes:
        # a token that is not valid UTF-8 in the file reads with surrogateescape: its bytes
        # come back as they were (llama.cpp's pieces are raw bytes)
        a, text = self.attrs[tid], self.tokens[tid]
        if a & (_SPECIAL | TokenAttr.USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if a & TokenAttr.NORMAL:
            if self.kind == "spm":
                return text.replace(SPACE_ESCAPE, " ").encode("utf-8", "surrogateescape")
            dec = byte_decoder()
            try:
                return bytes(dec[c] for c in text)
            except KeyError:   # not a byte-level string; llama.cpp writes a marker
                return f"[UNK_BYTE_{text}]".encode("utf-8", "surrogateescape")
        if a & TokenAttr.BYTE:
            return bytes([int(text[3:5], 16)])
        return b""

    def decode_bytes(self, ids: Iterable[int], special: bool = False) -> bytes:
        """llama.cpp `detokenize(remove_special=False, unparse_special=special)` as bytes."""
        parts = [self.piece(t, special) for t in token_ids(ids)]
        if parts and self.add_space_prefix and parts[0][:1] == b" ":
            parts[0] = parts[0][1:]
        b = b"".join(parts)
        return clean_spaces(b) if self.clean_spaces else b

    def decode(self, ids: Iterable[int], special: bool = False) -> str:
        """Text of `ids`; control tokens (BOS, <|im_end|>...) are rendered only if
        `special`. Invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD."""
        return self.decode_bytes(ids, special).decode("utf-8", errors="replace")

    def incremental_decoder(self, special: bool = False) -> TextDecoder:
        """A streaming decoder: `add(id) -> str` and `flush() -> str`, whose outputs
        concatenate to `decode(all ids, special)` and are each valid text."""
        return IncrementalDecoder(self, special)

    # ---- token classes ----

    def stop_ids(self) -> set[int]:
        """The end-of-generation ids (engine interface)."""
        return set(self.eog_ids)

    def is_control(self, tid: int) -> bool:
        """Whether `tid` is a control/unknown token (not rendered by default)."""
        return bool(self.attrs[tid] & _SPECIAL)

    def control_texts(self) -> list[str]:
        """Texts of the control/unknown tokens (those only `parse_special=True` matches),
        longest first."""
        return [t for t, i in self._specials if self.attrs[i] & _SPECIAL]

    def __repr__(self) -> str:
        return (f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, bos={self.bos_id}, "
                f"eos={self.eos_id}, eot={self.eot_id}, add_bos={self.add_bos})")


_BYTE_TOKEN = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def check_text(text: object) -> None:
    """InputError unless `text` is a str that is valid Unicode (no lone surrogates: JSON
    `"\\ud800"` escapes and surrogateescape'd bytes decode to them, and UTF-8 cannot hold
    them)."""
    if not isinstance(text, str):
        raise InputError(f"encode() needs a str, got {type(text).__name__}")
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"text is not valid Unicode: a lone surrogate U+{ord(text[e.start]):04X} "
                         f"at character {e.start}") from None


def token_ids(ids: Iterable[Any]) -> list[int]:
    """`ids` as ints; InputError for anything that is not an integer (a str, float, None)."""
    out = list(ids)
    if not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in out):
        bad = next(t for t in out if not isinstance(t, (int, np.integer)) or isinstance(t, bool))
        raise InputError(f"token ids must be integers, got {type(bad).__name__} {str(bad)[:20]!r}")
    return [int(t) for t in out]


def _strings(value: Any, key: str, source: str | Path) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(t, str) for t in value):
        raise FormatError(source, f"tokenizer.ggml.{key} must be an array of strings")
    return list(value)


def _flag(md: Mapping[str, Any], key: str, default: bool, source: str | Path) -> bool:
    v = md.get(f"tokenizer.ggml.{key}", default)
    if not isinstance(v, (bool, int, np.bool_, np.integer)):
        raise FormatError(source, f"tokenizer.ggml.{key} must be a boolean, got {type(v).__name__}")
    return bool(v)


def _numbers(value: Any, key: str, n: int, kind: type, source: str | Path) -> list[Any] | None:
    """The first n entries of an array of numbers, as `kind` (None when absent)."""
    if value is None:
        return None
    try:
        out = [kind(x) for x in value[:n]]
    except (TypeError, ValueError, OverflowError, KeyError, IndexError):
        raise FormatError(source, f"tokenizer.ggml.{key} must be an array of numbers") from None
    if len(out) < n:
        raise FormatError(source, f"tokenizer.ggml.{key} has {len(out)} entries for {n} tokens")
    return out


class IncrementalDecoder:
    """Streaming detokenization. Holds back (a) the bytes of a multi-byte UTF-8 character
    split across tokens and (b) with `clean_spaces`, the last few bytes whose clean-up
    depends on what follows, so every emitted string is final and valid."""

    _HOLD = 4   # the clean-up patterns look at most 3 bytes past a space

    def __init__(self, tok: Tokenizer, special: bool = False) -> None:
        self.tok, self.special = tok, special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._pending = b""    # raw bytes not yet cleaned (clean_spaces only)
        self._context = b""    # the last raw bytes already emitted, for the safe-cut test

    def add(self, tid: int) -> str:
        """Feed one token; return the text that became final (possibly "")."""
        b = self.tok.piece(token_ids([tid])[0], self.special)
        if self._first:
            self._first = False
            if self.tok.add_space_prefix and b[:1] == b" ":
                b = b[1:]
        if not self.tok.clean_spaces:
            return self._utf8.decode(b)
        self._pending += b
        cut = self._safe_cut()
        if cut <= 0:
            return ""
        head, self._pending = self._pending[:cut], self._pending[cut:]
        self._context = (self._context + head)[-3:]
        return self._utf8.decode(clean_spaces(head))

    def _safe_cut(self) -> int:
        # a cut at w is safe when the 3 bytes before it and the byte at it hold no space or
        # apostrophe: no clean-up match (<= 4 bytes, starting with a space) can span it
        raw = self._context + self._pending
        off = len(self._context)
        for w in range(len(raw) - 1, off, -1):
            window = raw[max(0, w - 3):w + 1]
            if b" " not in window and b"'" not in window:
                return w - off
        return 0

    def flush(self) -> str:
        """End of stream: everything still held back."""
        out = clean_spaces(self._pending) if self.tok.clean_spaces else b""
        self._pending = b""
        return self._utf8.decode(out, final=True)

