"""`Engine`: generate / stream / chat over one decoder model, one tokenizer, one KV cache.

Generation is a generator of tokens with prefill split from decode (mlx-lm
`generate_step`, gpt-fast `prefill`/`decode_one_token`): the prompt is run in chunks of
`prefill_chunk` tokens, then one token at a time. The KV cache is the model's own
contiguous cache (`model.make_cache(n_ctx)`), kept between calls: a new prompt that
shares a prefix with what the cache holds (the usual case in a chat) only prefills the
new suffix.

An Engine runs one generation at a time (not thread-safe); starting a second stream
while one is suspended raises InputError.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from edgeformer.errors import EdgeformerError, InputError
from edgeformer.runtime.sampler import (SamplingParams, apply_processors, log_softmax, make_logits_processors,
                                        make_rng, make_sampler, top_logprobs, usable_logits)
from edgeformer.runtime.stops import StopMatcher

DEFAULT_N_CTX = 4096      # like llama.cpp's default context; the model's own maximum caps it
DEFAULT_PREFILL_CHUNK = 512   # llama.cpp's default n_batch: bounds attention-score memory


# ---- what the engine needs from the model and the tokenizer ----------------------------

class KVCache(Protocol):
    offset: int

    def truncate(self, n: int) -> None: ...


class DecoderModel(Protocol):
    config: Any   # DecoderConfig: vocab_size, max_seq_len

    def make_cache(self, max_seq_len: int) -> KVCache: ...

    def forward(self, tokens: np.ndarray, cache: KVCache, last_only: bool = False) -> np.ndarray: ...


class TextDecoder(Protocol):
    def add(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class TokenizerLike(Protocol):
    bos_id: int | None
    add_bos: bool

    def encode(self, text: str, add_bos: bool = True, parse_special: bool = False) -> list[int]: ...

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


# ---- the engine --------------------------------------------------------------------------

class TokenEmitter:
    """Turns sampled tokens into `TokenEvent`s: end-of-generation ids, stop strings cut
    across token boundaries, the token budget, UTF-8-safe text pieces, logprobs and the
    stats. One per generation; shared by plain and speculative decoding so both end
    exactly alike. `ctx[:n]` is prompt + emitted tokens (the penalties' context)."""

    def __init__(self, engine: "Engine", ids: list[int], budget: int, params: SamplingParams,
                 stats: GenerationStats, t0: float) -> None:
        self.stop_ids = engine._stop_token_ids(params)
        self.text_dec = engine.tokenizer.incremental_decoder()
        self.stopper = StopMatcher(params.stop)
        self.top_n = params.top_logprobs
        self.want_lp = bool(params.logprobs or params.top_logprobs)
        self.budget, self.stats, self.t0 = budget, stats, t0
        self.t_first = t0
        # prompt + generated (+ drafts in flight), one preallocated buffer
        self.ctx = np.zeros(len(ids) + budget, dtype=np.int64)
        self.ctx[:len(ids)] = ids
        self.n = len(ids)
        self.i = 0          # index of the next token to emit
        self.done = False

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


class Engine:
    """Generation over `model` (a Decoder) with `tokenizer`. `chat_template` (Jinja text,
    a `formats.chat_template.ChatTemplate`, or None) enables `chat`. `n_ctx`: context
    length in tokens, prompt + output (default min(model max_seq_len, 4096)); `load_s`
    is reported in the stats; `prefill_chunk`: prompt tokens per forward pass.
    `speculative`: a `runtime.speculative.SpeculativeConfig` (drafter + tokens per round)
    to decode by draft-and-verify; output is distributed exactly as without it."""

    def __init__(self, model: DecoderModel, tokenizer: TokenizerLike, chat_template: Any = None,
                 backend: Any = None, n_ctx: int | None = None, load_s: float = 0.0,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, speculative: Any = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.backend = backend
        self.load_s = load_s
        max_len = int(model.config.max_seq_len)
        if n_ctx is None:
            n_ctx = min(max_len, DEFAULT_N_CTX)
        if not isinstance(n_ctx, int) or n_ctx < 2:
            raise InputError(f"n_ctx must be an int >= 2, got {n_ctx!r}")
        if n_ctx > max_len:
            raise InputError(f"n_ctx={n_ctx} exceeds the model's maximum context of {max_len} tokens")
        if prefill_chunk < 1:
            raise InputError(f"prefill_chunk must be >= 1, got {prefill_chunk}")
        self.n_ctx = n_ctx
        self.prefill_chunk = prefill_chunk
        self.vocab_size = int(model.config.vocab_size)
        self._cache: KVCache | None = None
        self._cache_ids: list[int] = []       # exactly the tokens whose K/V the cache holds
        self._active: object | None = None    # the running stream, to refuse a second one
        self.speculative = speculative
        if speculative is not None:
            speculative.bind(self.vocab_size, n_ctx)   # InputError now for a mismatched draft

    # ---- prompts ----

    def encode(self, prompt: str | Sequence[int]) -> list[int]:
        """Prompt text -> ids (BOS added if the tokenizer's file asks for it; special-token
        text such as "<|im_start|>" becomes that token), or token ids checked against the
        vocabulary. InputError for an empty prompt or an id outside the vocabulary."""
        if isinstance(prompt, str):
            if not prompt:
                raise InputError("empty prompt")
            # special-token text is parsed, as llama.cpp does for a prompt: a raw prompt may
            # spell out a template by hand ("<|im_start|>user ...")
            ids = list(self.tokenizer.encode(prompt, add_bos=True, parse_special=True))
        else:
            ids = [int(t) for t in prompt]
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise InputError(f"prompt token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        if not ids:
            raise InputError("empty prompt (no tokens)")
        return ids

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The chat template applied to `messages` ([{"role", "content"}...])."""
        if self.chat_template is None:
            raise InputError("this model has no chat template (a base model?): use generate() with a plain "
                             "prompt, or load it with chat_template=NAME (chatml, gemma, llama3, auto)")
        if not messages:
            raise InputError("chat: no messages")
        for m in messages:
            if not isinstance(m, Mapping) or not isinstance(m.get("role"), str) or "content" not in m:
                raise InputError(f"chat: each message needs a 'role' and a 'content', got {m!r}")
        from edgeformer.formats.chat_template import render_chat
        return render_chat(self.chat_template, list(messages), add_generation_prompt=add_generation_prompt,
                           tokenizer=self.tokenizer)

    def _fit(self, ids: list[int], params: SamplingParams) -> tuple[list[int], int]:
        """(prompt ids, token budget) within n_ctx; InputError if the prompt does not fit
        and params.truncate is off. Truncation keeps BOS and the most recent tokens,
        leaving room for min(max_tokens, n_ctx // 2) new ones."""
        n, ctx = len(ids), self.n_ctx
        if n >= ctx:
            if not params.truncate:
                raise InputError(f"prompt is {n} tokens; the context holds {ctx} (prompt + output), "
                                 f"so at most {ctx - 1} prompt tokens fit")
            keep = ctx - min(params.max_tokens, ctx // 2)
            bos = self.tokenizer.bos_id
            head = ids[:1] if bos is not None and ids[0] == bos else []
            ids = head + ids[n - (keep - len(head)):]
        return ids, min(params.max_tokens, ctx - len(ids))

    # ---- generation ----

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> GenerationResult:
        """Complete `prompt` (text, or token ids used as given). Raises InputError on an
        empty prompt, one that does not fit the context (unless params.truncate), or
        token ids outside the vocabulary."""
        params = params or SamplingParams()
        ids = self.encode(prompt)
        ids, budget = self._fit(ids, params)
        return collect(self._run(ids, budget, params), ids, params.logprobs or params.top_logprobs > 0)

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None) -> Iterator[TokenEvent]:
        """Like generate(), one TokenEvent per sampled token. Input is validated here, before
        the first event, so errors surface at the call."""
        params = params or SamplingParams()
        ids, budget = self._fit(self.encode(prompt), params)
        return self._run(ids, budget, params)

    def chat(self, messages: Sequence[Mapping[str, Any]], params: SamplingParams | None = None) -> GenerationResult:
        """Render the chat template (add_generation_prompt=True) and generate the reply;
        stops on the tokenizer's EOS/EOT tokens."""
        params = params or SamplingParams()
        ids, budget = self._fit(self.encode_chat(messages), params)
        return collect(self._run(ids, budget, params), ids, params.logprobs or params.top_logprobs > 0)

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], params: SamplingParams | None = None
                    ) -> Iterator[TokenEvent]:
        """chat() as a stream of TokenEvents."""
        params = params or SamplingParams()
        ids, budget = self._fit(self.encode_chat(messages), params)
        return self._run(ids, budget, params)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of the rendered chat prompt. The template writes BOS itself when the
        model wants one, so encode() must not add a second."""
        self.render_chat(messages)  # validates the messages, raises on a missing template
        from edgeformer.formats.chat_template import ChatTemplate, encode_chat
        ct = self.chat_template
        if not isinstance(ct, ChatTemplate):
            ct = ChatTemplate.for_tokenizer(ct, self.tokenizer)
        # the template's turn markers become control tokens; the same text typed inside a
        # message stays plain text, so user content cannot forge a turn
        ids = encode_chat(self.tokenizer, ct, list(messages))
        if not ids:
            raise InputError("chat: the rendered prompt is empty")
        return ids

    def _cache_for(self) -> KVCache:
        if self._cache is None:
            self._cache = self.model.make_cache(self.n_ctx)
            self._cache_ids = []
        return self._cache

    def reset(self) -> None:
        """Forget the cached prefix (the next prompt is prefilled from scratch)."""
        if self._cache is not None:
            self._cache.truncate(0)
        self._cache_ids = []

    def _forward(self, ids: Sequence[int]) -> np.ndarray:
        """Run `ids` after what the cache holds; returns the last position's logits (vocab,)."""
        cache = self._cache_for()
        try:
            logits = self.model.forward(np.asarray(ids, dtype=np.int64), cache, last_only=True)
        except BaseException:
            # interrupted (Ctrl-C) or failed mid-batch: roll the cache back to the tokens it
            # held before, so the next call can still reuse them
            cache.truncate(len(self._cache_ids))
            raise
        self._cache_ids.extend(int(t) for t in ids)
        out = np.asarray(logits, dtype=np.float32)[-1]
        if not usable_logits(out):
            self.reset()
            raise EdgeformerError(f"the model produced NaN (or no finite) logits at position "
                                  f"{len(self._cache_ids) - 1}: broken weights or a numerical overflow")
        return out

    def _reuse_prefix(self, ids: list[int]) -> int:
        """Roll the cache back to the longest prefix it shares with `ids`, keeping at
        least the last token of `ids` to run; returns the kept length."""
        cache = self._cache_for()
        common = 0
        for a, b in zip(self._cache_ids, ids):
            if a != b:
                break
            common += 1
        common = min(common, len(ids) - 1)
        cache.truncate(common)
        del self._cache_ids[common:]
        return common

    def _prefill(self, ids: list[int]) -> tuple[np.ndarray, int]:
        """Bring the cache to `ids` (reusing the longest common prefix, but always
        running at least the last token to get its logits); returns (logits, reused)."""
        common = self._reuse_prefix(ids)
        logits = None
        for s in range(common, len(ids), self.prefill_chunk):
            logits = self._forward(ids[s:s + self.prefill_chunk])
        assert logits is not None
        return logits, common

    def _stop_token_ids(self, params: SamplingParams) -> set[int]:
        ids = set(params.stop_token_ids)
        if not params.ignore_eos:
            ids |= set(self.tokenizer.stop_ids())
        return ids

    def _run(self, ids: list[int], budget: int, params: SamplingParams) -> Iterator[TokenEvent]:
        params.check_vocab(self.vocab_size)
        self._check_idle()
        return self._loop(ids, budget, params)

    def _check_idle(self) -> None:
        if self._active is not None:
            raise InputError("another generation is running on this Engine; finish or close() it first")

    def _loop(self, ids: list[int], budget: int, params: SamplingParams) -> Iterator[TokenEvent]:
        # claimed when the generator starts: an unstarted stream has not touched the cache,
        # and an abandoned one is closed by the garbage collector, which runs `finally`
        self._check_idle()
        token = object()
        self._active = token
        try:
            yield from self._steps(ids, budget, params)
        finally:
            if self._active is token:
                self._active = None

    def _steps(self, ids: list[int], budget: int, params: SamplingParams) -> Iterator[TokenEvent]:
        if self.speculative is not None:
            from edgeformer.runtime.speculative import speculative_steps
            yield from speculative_steps(self, ids, budget, params)
            return
        t0 = time.perf_counter()
        stats = GenerationStats(load_s=self.load_s, prompt_tokens=len(ids))
        procs = make_logits_processors(params)
        sample = make_sampler(params)
        rng = make_rng(params.seed)
        em = TokenEmitter(self, ids, budget, params, stats, t0)

        logits, stats.cached_tokens = self._prefill(ids)
        em.t_first = time.perf_counter()
        stats.prefill_tokens = len(ids) - stats.cached_tokens
        stats.prefill_s = em.t_first - t0

        while True:
            proc = apply_processors(procs, em.ctx[:em.n], logits) if procs else logits
            tok = sample(proc, rng)
            yield em.emit(tok, logits)
            if em.done:
                return
            logits = self._forward([tok])
