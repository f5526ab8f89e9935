"""Drafters for speculative decoding: who proposes the next k tokens.

- `PromptLookupDrafter`: n-gram / prompt-lookup drafting (HF `prompt_lookup_num_tokens`,
  vLLM's `ngram` method): the last n tokens of prompt + output are searched for earlier
  in the sequence, and what followed that earlier occurrence is proposed. No model; the
  draft is deterministic (q = one-hot), so the verifier uses the one-hot accept rule.
- `ModelDrafter`: a smaller model with the same vocabulary, with its own KV cache (a
  `session.Session`), sampled autoregressively with the same logits processors as the
  target.

A drafter implements `bind(vocab_size, n_ctx)`, `propose(seq, k, picker) -> Draft` and
optionally `fork()` (a drafter for another sequence: with its own state, or itself when
it keeps none; `BatchEngine` forks one per running sequence). In `propose`, `seq` is
every token so far (prompt + emitted, int64) and `picker` (a `sampler.TokenPicker`)
turns draft logits into (token, q) under the generation's sampling settings. A drafter may return
fewer than k tokens (even none). It must not assume its proposals are accepted: the
next call's `seq` says what was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgeformer.errors import InputError
from edgeformer.runtime.session import Session


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
    a `models.decoder.Decoder`) with its own `Session`. Each proposal first brings the
    session to `seq` (keeping the longest common prefix with what it holds, so rejected
    draft positions are rolled back), then samples k tokens one by one.
    `prefill_chunk` bounds the tokens per forward while catching up on a prompt."""

    def __init__(self, model: Any, prefill_chunk: int = 512) -> None:
        if prefill_chunk < 1:
            raise InputError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.model = model
        self.prefill_chunk = prefill_chunk
        self.session: Session | None = None

    def bind(self, vocab_size: int, n_ctx: int) -> None:
        """Check the vocabulary and make the draft session (once). InputError if the
        draft's vocabulary size differs from the target's."""
        dv = int(self.model.config.vocab_size)
        if dv != vocab_size:
            raise InputError(f"draft model vocabulary ({dv} tokens) differs from the target's ({vocab_size}); "
                             f"speculative decoding needs the same tokenizer")
        if self.session is None:
            # a draft with a shorter context drafts only while the sequence fits it
            self.session = Session(self.model, min(n_ctx, int(self.model.config.max_seq_len)), self.prefill_chunk)

    def fork(self) -> ModelDrafter:
        """A drafter over the same model (weights shared) with a session of its own, for
        another sequence decoded alongside (the batch engine gives each one its own)."""
        return ModelDrafter(self.model, self.prefill_chunk)

    def propose(self, seq: np.ndarray, k: int, picker: Picker) -> Draft:
        """Up to k draft tokens after `seq`, drawn with `picker` (argmax when greedy, else
        from the processed, truncated draft distribution q, which is returned)."""
        if self.session is None:
            raise InputError("ModelDrafter.propose before bind()")
        session = self.session
        seq = np.asarray(seq, dtype=np.int64)
        # the session ends holding seq + the first k-1 drafts
        k = min(k, session.n_ctx - seq.shape[0] + 1)
        if k <= 0:
            return Draft([])
        logits, _ = session.prefill(seq)
        assert logits is not None
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
                logits = session.forward([tok])
        return Draft(toks, None if picker.greedy else qs)
