"""A tiny deterministic stand-in model and a byte-level tokenizer, to test the Engine's
mechanics (prefill chunks, cache reuse, stops, budgets) apart from any real decoder.

The model's next-token logits depend on the whole history (the last token, the position
and a running sum of all tokens), so a cache that is reused or truncated wrongly changes
the output."""
from __future__ import annotations

import codecs
from dataclasses import dataclass

import numpy as np

BOS, EOS, EOT = 256, 257, 258
VOCAB = 260


@dataclass(frozen=True)
class FakeConfig:
    vocab_size: int = VOCAB
    max_seq_len: int = 512


class FakeCache:
    def __init__(self, max_seq_len: int) -> None:
        self.max_seq_len = max_seq_len
        self.tokens: list[int] = []

    @property
    def offset(self) -> int:
        return len(self.tokens)

    def truncate(self, n: int) -> None:
        del self.tokens[n:]


class FakeModel:
    """logits(t) = table[token_t] + pos_table[t % 17] + mix[(sum of tokens 0..t) % 13]."""

    def __init__(self, seed: int = 0, vocab: int = VOCAB, max_seq_len: int = 512, scale: float = 3.0) -> None:
        rng = np.random.default_rng(seed)
        self.config = FakeConfig(vocab, max_seq_len)
        self.table = (rng.standard_normal((vocab, vocab)) * scale).astype(np.float32)
        self.pos = (rng.standard_normal((17, vocab)) * scale).astype(np.float32)
        self.mix = (rng.standard_normal((13, vocab)) * scale).astype(np.float32)
        self.calls: list[int] = []          # tokens per forward call

    def make_cache(self, max_seq_len: int) -> FakeCache:
        return FakeCache(max_seq_len)

    def forward(self, tokens: np.ndarray, cache: FakeCache, last_only: bool = False) -> np.ndarray:
        tokens = np.asarray(tokens)
        assert tokens.ndim == 1 and tokens.size >= 1
        assert cache.offset + tokens.size <= cache.max_seq_len, "cache overflow"
        self.calls.append(int(tokens.size))
        rows = []
        for t in tokens:
            cache.tokens.append(int(t))
            p = len(cache.tokens) - 1
            rows.append(self.table[t] + self.pos[p % 17] + self.mix[sum(cache.tokens) % 13])
        out = np.stack(rows)
        return out[-1:] if last_only else out

    def reference_logits(self, ids: list[int]) -> np.ndarray:
        """Logits after the full sequence `ids`, computed from scratch."""
        c = FakeCache(len(ids))
        return self.forward(np.array(ids), c, last_only=True)[-1]


class ByteDecoder:
    def __init__(self) -> None:
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token_id: int) -> str:
        return self._dec.decode(bytes([token_id])) if token_id < 256 else ""

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


class ByteTokenizer:
    """One token per UTF-8 byte; BOS/EOS/EOT specials above 255."""

    bos_id, eos_id, eot_id = BOS, EOS, EOT
    add_bos = True

    def encode(self, text: str, add_bos: bool = True, parse_special: bool = False,
               add_special: bool | None = None) -> list[int]:
        if add_special is not None:
            add_bos = add_special
        return ([BOS] if add_bos else []) + list(text.encode("utf-8"))

    def control_texts(self) -> list[str]:
        return []   # no special token has a text form the template could write

    def decode(self, ids: list[int]) -> str:
        return bytes(t for t in ids if t < 256).decode("utf-8", errors="replace")

    def stop_ids(self) -> set[int]:
        return {EOS, EOT}

    def token_text(self, tid: int) -> str:
        return {BOS: "<s>", EOS: "</s>", EOT: "<eot>"}.get(tid) or bytes([tid]).decode("latin-1")

    def incremental_decoder(self) -> ByteDecoder:
        return ByteDecoder()


class ScriptedModel:
    """Emits a fixed token sequence: the logits after `offset` tokens put all the mass on
    `by_offset[offset]` (default: byte ' ')."""

    def __init__(self, prompt_len: int, script: list[int], max_seq_len: int = 512) -> None:
        self.config = FakeConfig(VOCAB, max_seq_len)
        self.by_offset = {prompt_len + i: t for i, t in enumerate(script)}

    def make_cache(self, max_seq_len: int) -> FakeCache:
        return FakeCache(max_seq_len)

    def forward(self, tokens: np.ndarray, cache: FakeCache, last_only: bool = False) -> np.ndarray:
        rows = []
        for t in np.asarray(tokens):
            cache.tokens.append(int(t))
            row = np.zeros(VOCAB, dtype=np.float32)
            row[self.by_offset.get(len(cache.tokens), ord(" "))] = 50.0
            rows.append(row)
        out = np.stack(rows)
        return out[-1:] if last_only else out
