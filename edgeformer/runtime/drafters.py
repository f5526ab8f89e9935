"""Drafters for speculative decoding: who proposes the next k tokens.

- `PromptLookupDrafter`: n-gram / prompt-lookup drafting (HF `prompt_lookup_num_tokens`,
  vLLM's `ngram` method): the last n tokens of prompt + output are searched for earlier
  in the sequence, and what followed that earlier occurrence is proposed. No model; the
  draft is deterministic (q = one-hot), so the verifier uses the one-hot accept rule.
- `ModelDrafter`: a smaller model with the same vocabulary, with its own KV cache,
  sampled autoregressively with the same logits processors as the target.

A drafter implements `bind(vocab_size, n_ctx)`, `propose(seq, k, picker) -> Draft` and
optionally `fork()` (a drafter for another sequence: with its own state, or itself when
it keeps none; `BatchEngine` forks one per running sequence). In `propose`, `seq` is
every token so far (prompt + emitted, int64) and `picker` (a `speculative.TokenPicker`)
turns draft logits into (token, q) under the generation's sampling settings. A drafter may return
fewer than k tokens (even none). It must not assume its proposals are accepted: the
next call's `seq` says what was.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgeformer.errors import InputError


@dataclass
class Draft:
    """Proposed tokens and, for a sampled draft, q[j]: the (vocab,) float64 distribution
    token j was drawn from (after the same processors and truncation as the target).
    `q is None` means a deterministic draft (q = one-hot at each token)."""

    tokens: list[int]
    q: list[np.ndarray] | None = None


class Picker(Protocol):
    greedy: bool

    def pick(self, context: np.ndarray, logits: np.ndarray) -> tuple[int, np.ndarray | None]: ...


class Drafter(Protocol):
    def bind(self, vocab_size: int, n_ctx: int) -> None: ...

    def propose(self, seq: np.ndarray, k: int, picker: Picker) -> Draft: ...


# ---- prompt lookup ------------------------------------------------------------------------

def lookup_ngram(seq: np.ndarray, k: int, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    """Prompt-lookup proposal: for n = max_ngram down to min_ngram, find the most recent
    earlier occurrence of the last n tokens of `seq` (1-D ints) and return up to k tokens
    that followed it. The longest n that matches wins; [] when none matches or k <= 0.

    Most recent rather than first (HF takes the first): in an edit-and-rewrite task the
    output itself is the freshest copy of the text being repeated."""
    seq = np.asarray(seq)
    size = seq.shape[0]
    if k <= 0 or size < 2:
        return []
    # starts i with i + n <= size - 1, so at least one continuation token exists and the
    # suffix itself (i = size - n) is excluded
    head = seq[:size - 1]
    for n in range(min(max_ngram, size - 1), min_ngram - 1, -1):
        pattern = seq[size - n:]
        hits = np.flatnonzero((sliding_window_view(head, n) == pattern).all(axis=1))
        if hits.size:
            i = int(hits[-1])
            return [int(t) for t in seq[i + n:i + n + k]]
    return []


class PromptLookupDrafter:
    """n-gram drafting from the sequence itself. max_ngram >= min_ngram >= 1.
    Deterministic drafts: greedy decoding stays exact, sampling uses q = one-hot."""

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1) -> None:
        if not (isinstance(min_ngram, int) and isinstance(max_ngram, int) and 1 <= min_ngram <= max_ngram):
            raise InputError(f"prompt lookup needs 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram

    def bind(self, vocab_size: int, n_ctx: int) -> None:
        """Nothing to allocate; any vocabulary works."""

    def propose(self, seq: np.ndarray, k: int, picker: Picker) -> Draft:
        return Draft(lookup_ngram(seq, k, self.max_ngram, self.min_ngram))

    def fork(self) -> PromptLookupDrafter:
        """This drafter itself: it keeps no per-sequence state."""
        return self


# ---- draft model --------------------------------------------------------------------------

class ModelDrafter:
    """A draft model (any decoder with `config.vocab_size`, `make_cache`, `forward`, e.g.
    a `models.decoder.Decoder`) with its own KV cache. Each proposal first brings the
    cache to `seq` — keeping the longest common prefix with what it holds, so rejected
    draft positions are rolled back by `truncate` — then samples k tokens one by one.
    `prefill_chunk` bounds the tokens per forward while catching up on a prompt."""

    def __init__(self, model: Any, prefill_chunk: int = 512) -> None:
        if prefill_chunk < 1:
            raise InputError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.model = model
        self.prefill_chunk = prefill_chunk
        self._cache: Any = None
        self._ids: list[int] = []     # exactly the tokens whose K/V the draft cache holds

    def bind(self, vocab_size: int, n_ctx: int) -> None:
        """Check the vocabulary and allocate the draft cache (once). InputError if the
        draft's vocabulary size differs from the target's."""
        dv = int(self.model.config.vocab_size)
        if dv != vocab_size:
            raise InputError(f"draft model vocabulary ({dv} tokens) differs from the target's ({vocab_size}); "
                             f"speculative decoding needs the same tokenizer")
        if self._cache is None:
            # a draft with a shorter context drafts only while the sequence fits it
            self._cache = self.model.make_cache(min(n_ctx, int(self.model.config.max_seq_len)))
            self._ids = []

    def fork(self) -> ModelDrafter:
        """A drafter over the same model (weights shared) with a cache of its own, for
        another sequence decoded alongside (the batch engine gives each one its own)."""
        return ModelDrafter(self.model, self.prefill_chunk)

    @property
    def cached_ids(self) -> list[int]:
        """The tokens the draft cache holds (for tests and debugging)."""
        return list(self._ids)

    def _forward(self, toks: Sequence[int]) -> np.ndarray:
        try:
            logits = self.model.forward(np.asarray(toks, dtype=np.int64), self._cache, last_only=True)
        except BaseException:
            self._cache.truncate(len(self._ids))   # keep cache and _ids in step
            raise
        self._ids.extend(int(t) for t in toks)
        return np.asarray(logits, dtype=np.float32)[-1]

    def _sync(self, seq: np.ndarray) -> np.ndarray:
        """Bring the cache to seq[:-1] plus run seq's tail; returns logits after seq."""
        held = np.asarray(self._ids[:seq.shape[0]], dtype=np.int64)
        diff = np.flatnonzero(held != seq[:held.shape[0]])
        common = int(diff[0]) if diff.size else held.shape[0]
        common = min(common, seq.shape[0] - 1)   # always run >= 1 token to get logits
        self._cache.truncate(common)
        del self._ids[common:]
        logits = None
        for s in range(common, seq.shape[0], self.prefill_chunk):
            logits = self._forward(seq[s:s + self.prefill_chunk].tolist())
        assert logits is not None
        return logits

    def propose(self, seq: np.ndarray, k: int, picker: Picker) -> Draft:
        """Up to k draft tokens after `seq`, drawn with `picker` (argmax when greedy, else
        from the processed, truncated draft distribution q, which is returned)."""
        if self._cache is None:
            raise InputError("ModelDrafter.propose before bind()")
        seq = np.asarray(seq, dtype=np.int64)
        # the cache ends holding seq + the first k-1 drafts
        k = min(k, self._cache.max_seq_len - seq.shape[0] + 1)
        if k <= 0:
            return Draft([])
        logits = self._sync(seq)
        ctx = np.empty(seq.shape[0] + k, dtype=np.int64)
        ctx[:seq.shape[0]] = seq
        n = seq.shape[0]
        toks: list[int] = []
        qs: list[np.ndarray] = []
        for j in range(k):
            tok, q = picker.pick(ctx[:n + j], logits)
            toks.append(tok)
            if q is not None:
                qs.append(q)
            ctx[n + j] = tok
            if j < k - 1:
                logits = self._forward([tok])
        return Draft(toks, None if picker.greedy else qs)
