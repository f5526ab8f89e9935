"""`HFTokenizer`: the `Tokenizer` interface over an HF `tokenizer.json`, run by the
`tokenizers` library (normalizers, pre-tokenizers, added tokens and post-processor as HF
defines them)."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from edgeformer.errors import FormatError, InputError
from edgeformer.formats.tokenizer import EOG_TEXTS, EOT_TEXTS, Tokenizer, check_text, token_ids


def _token_str(v: Any) -> str | None:
    # tokenizer_config values are a string or an AddedToken dict {"content": ...}
    if isinstance(v, Mapping):
        v = v.get("content")
    return v if isinstance(v, str) else None


@contextlib.contextmanager
def _library_errors(error: Callable[[str], Exception]) -> Iterator[None]:
    """What `tokenizers` raises as `error(text)`: its bare Exceptions, and the Rust panics
    pyo3 raises as PanicException, a BaseException (a tokenizer.json whose post-processor
    names a token the vocabulary lacks panics at load)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
        if isinstance(e, Exception) and type(e).__module__.startswith("edgeformer"):
            raise
        raise error(f"{type(e).__name__}: {str(e)[:200]}") from None


class HFTokenizer(Tokenizer):
    """`Tokenizer` over `tokenizers.Tokenizer`. BOS/EOS come from `tokenizer_config`
    (`bos_token`, `eos_token`, ...); whether encode adds BOS is whatever the file's
    post-processor does."""

    kind = "hf"

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        with _library_errors(lambda why: FormatError(path, f"cannot load tokenizer.json: {why}")):
            self._load(path, config)

    def _load(self, path: Path, config: dict[str, Any]) -> None:
        from tokenizers import Tokenizer as TkTokenizer
        self._tk = TkTokenizer.from_file(str(path))
        # encode sets a flag on the shared tokenizer: one call at a time (the server
        # tokenizes on worker threads)
        self._encode_lock = threading.Lock()
        tk = self._tk
        self.config = config
        self.vocab_size = tk.get_vocab_size(with_added_tokens=True)
        self.tokens = [tk.id_to_token(i) or "" for i in range(self.vocab_size)]
        self.token_to_id = tk.get_vocab(with_added_tokens=True)
        added = tk.get_added_tokens_decoder()
        self._special_ids = frozenset(i for i, t in added.items() if t.special)

        def tid(key: str) -> int | None:
            s = _token_str(config.get(key))
            return tk.token_to_id(s) if s is not None else None

        self.bos_id, self.eos_id = tid("bos_token"), tid("eos_token")
        self.unk_id, self.pad_id = tid("unk_token"), tid("pad_token")
        self.eot_id = next((self.token_to_id[t] for t in EOT_TEXTS if t in self.token_to_id), None)
        eog = {self.token_to_id[t] for t in EOG_TEXTS if t in self.token_to_id}
        eog.update(t for t in (self.eos_id, self.eot_id) if t is not None)
        self.eog_ids = frozenset(eog)
        with_sp = tk.encode("a", add_special_tokens=True).ids
        plain = tk.encode("a", add_special_tokens=False).ids
        self.add_bos = bool(self.bos_id is not None and with_sp[:1] == [self.bos_id] != plain[:1])
        self.add_eos = bool(self.eos_id is not None and with_sp[-1:] == [self.eos_id] != plain[-1:])

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False,
               *, add_bos: bool | None = None) -> list[int]:
        """As `Tokenizer.encode`: with parse_special=False the text of special added
        tokens is tokenized as plain text (non-special added tokens still match)."""
        if add_bos is not None:
            add_special = add_bos
        check_text(text)
        with self._encode_lock, _library_errors(lambda why: InputError(f"tokenizer.json cannot encode this text: {why}")):
            self._tk.encode_special_tokens = not parse_special
            return list(self._tk.encode(text, add_special_tokens=add_special).ids)

    def piece(self, tid: int, special: bool = True) -> bytes:
        """Text of one token alone, UTF-8 (a partial byte sequence decodes to U+FFFD)."""
        if not 0 <= tid < self.vocab_size:
            raise InputError(f"token id {tid} is outside the vocabulary (size {self.vocab_size})")
        return self._tk.decode([tid], skip_special_tokens=not special).encode("utf-8")

    def decode(self, ids: Iterable[int], special: bool = False) -> str:
        """Text of `ids` by the file's decoder; special tokens shown only if `special`."""
        ids = token_ids(ids)
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InputError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        return self._tk.decode(ids, skip_special_tokens=not special)

    def decode_bytes(self, ids: Iterable[int], special: bool = False) -> bytes:
        return self.decode(ids, special).encode("utf-8")

    def incremental_decoder(self, special: bool = False) -> "HFIncrementalDecoder":
        return HFIncrementalDecoder(self, special)

    def is_control(self, tid: int) -> bool:
        return tid in self._special_ids

    def control_texts(self) -> list[str]:
        """Texts of the special added tokens, longest first."""
        return sorted((self.tokens[i] for i in self._special_ids), key=len, reverse=True)


class HFIncrementalDecoder:
    """Streaming decode through `tokenizers.decoders.DecodeStream`."""

    def __init__(self, tok: HFTokenizer, special: bool = False) -> None:
        from tokenizers.decoders import DecodeStream
        self.tok, self.special = tok, special
        self._stream = DecodeStream(skip_special_tokens=not special)
        self._ids: list[int] = []
        self._emitted: list[str] = []

    def add(self, tid: int) -> str:
        """Feed one token; the text that became final (possibly "")."""
        tid = token_ids([tid])[0]
        if not 0 <= tid < self.tok.vocab_size:
            raise InputError(f"token id {tid} is outside the vocabulary (size {self.tok.vocab_size})")
        self._ids.append(tid)
        out = self._stream.step(self.tok._tk, tid) or ""
        self._emitted.append(out)
        return out

    def flush(self) -> str:
        """End of stream: whatever the full decode has beyond what was emitted (e.g. the
        U+FFFD of a character cut off at the end)."""
        full, done = self.tok.decode(self._ids, self.special), "".join(self._emitted)
        return full[len(done):] if full.startswith(done) else ""
