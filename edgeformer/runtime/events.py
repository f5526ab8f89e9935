"""The token stream a generation yields: `TokenEvent`s with their `GenerationStats`, folded
by `collect` into a `GenerationResult`, and `TokenEmitter`, which makes them.

Plain (`Engine`), speculative (`speculative.py`) and batched (`BatchEngine`) decoding all
emit through a `TokenEmitter`, so stop ids, stop strings, the token budget, UTF-8-safe text,
logprobs and stats end exactly alike in each.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgeformer.formats.tokenizer import TextDecoder
from edgeformer.quant.metrics import log_softmax
from edgeformer.runtime.sampler import SamplingParams, top_logprobs
from edgeformer.runtime.stops import StopMatcher


class TokenizerLike(Protocol):
    kind: str               # "bpe" | "spm" (edgeformer's own) | "hf" (tokenizers)
    bos_id: int | None
    add_bos: bool

    def encode(self, text: str, *, add_bos: bool = True, parse_special: bool = False) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def stop_ids(self) -> set[int]: ...

    def incremental_decoder(self) -> TextDecoder: ...


# ---- results -----------------------------------------------------------------------------

@dataclass
class GenerationStats:
    """Timings of one generation. ttft_s: call to first sampled token (tokenize + prefill
    + first sample). prefill: prompt tokens actually run (reused cache prefix excluded).
    decode: tokens after the first, each one forward pass (llama.cpp's "eval")."""

    load_s: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_tokens: int = 0
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    decode_tokens: int = 0
    decode_s: float = 0.0
    total_s: float = 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def summary(self) -> str:
        """Timing lines in llama.cpp's `llama_perf_context_print` layout."""
        def line(name: str, s: float, n: int) -> str:
            ms = s * 1e3
            rate = f" ({ms / n:8.2f} ms per token, {n / s if s > 0 else 0:8.2f} tokens per second)" if n else ""
            return f"{name:>12} = {ms:10.2f} ms / {n:5d} tokens{rate}"
        reused = f" ({self.cached_tokens} prompt tokens reused from the cache)" if self.cached_tokens else ""
        return "\n".join([
            f"{'load time':>12} = {self.load_s * 1e3:10.2f} ms",
            line("prompt eval", self.prefill_s, self.prefill_tokens) + reused,
            line("eval", self.decode_s, self.decode_tokens),
            f"{'ttft':>12} = {self.ttft_s * 1e3:10.2f} ms",
            f"{'total time':>12} = {self.total_s * 1e3:10.2f} ms / {self.prompt_tokens + self.decode_tokens + 1:5d} tokens",
        ])


@dataclass
class TokenLogprob:
    token_id: int
    logprob: float                                   # raw model distribution
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class TokenEvent:
    """One sampled token. `text` is what is safe to show now (may be "" while a stop string
    or a UTF-8 sequence is pending, or hold text of earlier tokens). The last event has
    `finish_reason` ("stop" | "length") and `stats`; if it was EOS/EOT or a stop token id,
    `is_stop_token` is True and the token is not part of the output."""

    token_id: int
    text: str
    index: int
    elapsed_s: float
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None
    is_stop_token: bool = False
    stats: GenerationStats | None = None


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]          # generated tokens, a terminating EOS/EOT/stop id excluded
    finish_reason: str            # "stop" | "length"
    prompt_token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    stats: GenerationStats


def collect(events: Iterator[TokenEvent], prompt_ids: list[int], want_logprobs: bool) -> GenerationResult:
    """Fold a token stream into a GenerationResult."""
    text, ids, lps = [], [], []
    last = None
    for ev in events:
        text.append(ev.text)
        if not ev.is_stop_token:
            ids.append(ev.token_id)
            if ev.logprob is not None:
                lps.append(ev.logprob)
        last = ev
    assert last is not None and last.finish_reason is not None and last.stats is not None
    return GenerationResult("".join(text), ids, last.finish_reason, prompt_ids,
                            lps if want_logprobs else None, last.stats)


# ---- the emitter -------------------------------------------------------------------------

class TokenEmitter:
    """Turns the sampled tokens of one generation of at most `budget` tokens after prompt
    `ids` into `TokenEvent`s, timed from its construction. `context` is prompt + emitted
    tokens (the penalties' context); `ctx` has room after it for drafts in flight."""

    def __init__(self, tokenizer: TokenizerLike, ids: Sequence[int], budget: int, params: SamplingParams,
                 load_s: float = 0.0) -> None:
        self.t0 = self.t_first = time.perf_counter()
        self.stats = GenerationStats(load_s=load_s, prompt_tokens=len(ids))
        self.stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(tokenizer.stop_ids()))
        self.text_dec = tokenizer.incremental_decoder()
        self.stopper = StopMatcher(params.stop)
        self.top_n = params.top_logprobs
        self.want_lp = bool(params.logprobs or params.top_logprobs)
        self.budget = budget
        # prompt + generated (+ drafts in flight), one preallocated buffer
        self.ctx = np.zeros(len(ids) + budget, dtype=np.int64)
        self.ctx[:len(ids)] = ids
        self.n = len(ids)
        self.i = 0          # index of the next token to emit
        self.done = False

    @property
    def context(self) -> np.ndarray:
        """Prompt + emitted tokens, int64 (a view)."""
        return self.ctx[:self.n]

    def prefilled(self, cached: int) -> None:
        """Record the prompt as run by now, `cached` of its tokens reused from a cache."""
        stats = self.stats
        stats.cached_tokens, stats.prefill_tokens = cached, stats.prompt_tokens - cached
        stats.prefill_s = time.perf_counter() - self.t0

    def emit(self, tok: int, logits: np.ndarray) -> TokenEvent:
        """The event for sampled token `tok` drawn from raw `logits`; sets `done` on the
        last one (finish_reason "stop" or "length")."""
        now = time.perf_counter()
        i, stats = self.i, self.stats
        if i == 0:
            self.t_first = now
            stats.ttft_s = now - self.t0
        lp = None
        if self.want_lp:
            lsm = log_softmax(logits)
            lp = TokenLogprob(tok, float(lsm[tok]), top_logprobs(lsm, self.top_n))

        def finish(reason: str, text: str, is_stop: bool) -> TokenEvent:
            end = time.perf_counter()
            stats.decode_tokens = i
            stats.decode_s = end - self.t_first
            stats.total_s = end - self.t0
            self.done = True
            return TokenEvent(tok, text, i, end - self.t0, lp, reason, is_stop, stats)

        stopper = self.stopper
        if tok in self.stop_ids:
            tail = stopper.feed(self.text_dec.flush())
            return finish("stop", tail.text if tail.stopped else tail.text + stopper.flush(), True)
        r = stopper.feed(self.text_dec.add(tok))
        if r.stopped:
            return finish("stop", r.text, False)
        self.ctx[self.n] = tok
        self.n += 1
        if i == self.budget - 1:
            tail = stopper.feed(self.text_dec.flush())
            text = r.text + tail.text + ("" if tail.stopped else stopper.flush())
            return finish("stop" if tail.stopped else "length", text, False)
        self.i += 1
        return TokenEvent(tok, r.text, i, now - self.t0, lp)

    def cancelled(self) -> TokenEvent:
        """The last event of a generation cancelled before its end."""
        self.done = True
        return TokenEvent(-1, "", self.i, time.perf_counter() - self.t0, finish_reason="cancelled",
                          is_stop_token=True, stats=self.stats)
