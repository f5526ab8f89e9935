"""`Session`: one sequence on a decoder model, its KV cache and exactly the token ids whose
K/V the cache holds.

Plain decoding (`Engine`), speculative decoding (`speculative.py`) and a draft model
(`drafters.ModelDrafter`) each drive one: `prefill` brings it to a prompt, reusing the
longest prefix it already holds (the usual case in a chat) and running the rest in
chunks of `prefill_chunk` tokens; `forward` appends tokens and returns their logits;
`truncate` rolls back to a prefix (rejected drafts, a changed prompt).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import numpy as np


class KVCache(Protocol):
    @property
    def offset(self) -> int: ...

    def truncate(self, n: int) -> None: ...


C = TypeVar("C", bound=KVCache)


class DecoderModel(Protocol[C]):
    """`C` is the model's own cache type: its `forward` takes only caches it made."""
    config: Any   # DecoderConfig: vocab_size, max_seq_len

    def make_cache(self, max_seq_len: int) -> C: ...

    def forward(self, tokens: np.ndarray, cache: C, last_only: bool = False) -> np.ndarray: ...


class Session:
    """A sequence of up to `n_ctx` tokens on `model`; its cache is made on first use.
    Not thread-safe: one caller drives it at a time."""

    def __init__(self, model: DecoderModel, n_ctx: int, prefill_chunk: int) -> None:
        self.model, self.n_ctx, self.prefill_chunk = model, n_ctx, prefill_chunk
        self._cache: KVCache | None = None
        self._ids: list[int] = []       # exactly the tokens whose K/V the cache holds

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def cache(self) -> KVCache:
        """The model's KV cache for this sequence."""
        if self._cache is None:
            self._cache = self.model.make_cache(self.n_ctx)
        return self._cache

    @property
    def ids(self) -> list[int]:
        """The tokens the cache holds, in order (a copy)."""
        return list(self._ids)

    def forward(self, ids: Sequence[int] | np.ndarray, last_only: bool = True) -> np.ndarray:
        """Run `ids` after what the cache holds and append them. Returns float32 logits:
        (vocab,) after the last of them when `last_only`, else (len(ids), vocab). A
        forward that fails or is interrupted (Ctrl-C) leaves the session as it was."""
        cache = self.cache
        try:
            logits = self.model.forward(np.asarray(ids, dtype=np.int64), cache, last_only=last_only)
        except BaseException:
            cache.truncate(len(self._ids))
            raise
        self._ids.extend(int(t) for t in ids)
        out = np.asarray(logits, dtype=np.float32)
        return out[-1] if last_only else out

    def prefill(self, ids: Sequence[int] | np.ndarray, run_last: bool = True) -> tuple[np.ndarray | None, int]:
        """Bring the session to `ids` (non-empty): roll back to the longest prefix it
        shares with them, but never past the last token, then run the rest in chunks.
        Returns (logits after `ids`, reused prefix length). With `run_last` False the last
        token is left to the caller (logits None): speculative decoding runs it with the
        first drafts."""
        common = self._reuse_prefix(ids)
        end = len(ids) if run_last else len(ids) - 1
        logits = None
        for s in range(common, end, self.prefill_chunk):
            logits = self.forward(ids[s:min(s + self.prefill_chunk, end)])
        return logits, common

    def _reuse_prefix(self, ids: Sequence[int] | np.ndarray) -> int:
        held = np.asarray(self._ids[:len(ids)], dtype=np.int64)
        diff = np.flatnonzero(held != np.asarray(ids[:held.shape[0]], dtype=np.int64))
        common = int(diff[0]) if diff.size else held.shape[0]
        common = min(common, len(ids) - 1)
        self.truncate(common)
        return common

    def truncate(self, n: int) -> None:
        """Roll back to the first `n` tokens, forgetting the K/V after them."""
        if self._cache is not None:
            self._cache.truncate(n)
        del self._ids[n:]

    def reset(self) -> None:
        """Forget everything (the next prompt is prefilled from scratch)."""
        self.truncate(0)
