"""`Engine`: generate / stream / chat over one decoder model, one tokenizer, one sequence.

Generation is a generator of tokens with prefill split from decode (mlx-lm
`generate_step`, gpt-fast `prefill`/`decode_one_token`): the prompt is run in chunks of
`prefill_chunk` tokens, then one token at a time. The sequence is a `session.Session` over
the model's own contiguous cache (`model.make_cache(n_ctx)`), kept between calls: a new
prompt that shares a prefix with what the cache holds (the usual case in a chat) only
prefills the new suffix.

An Engine runs one generation at a time (not thread-safe); starting a second stream
while one is suspended raises InputError.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from edgeformer.errors import EdgeformerError, InputError, brief
from edgeformer.runtime.events import GenerationResult, TokenEmitter, TokenEvent, TokenizerLike, collect
from edgeformer.runtime.grammar import Grammar, constrained
from edgeformer.runtime.memory import check_fits, kv_bytes
from edgeformer.runtime.sampler import SamplingParams, TokenPicker, make_rng
from edgeformer.runtime.session import DecoderModel, Session
from edgeformer.runtime.speculative import SpeculativeConfig, speculative_steps

DEFAULT_N_CTX = 4096      # like llama.cpp's default context; the model's own maximum caps it
DEFAULT_PREFILL_CHUNK = 512   # llama.cpp's default n_batch: bounds attention-score memory


class Engine:
    """Generation over `model` (a Decoder) with `tokenizer`. `chat_template` (Jinja text,
    a `formats.chat_template.ChatTemplate`, or None) enables `chat`. `n_ctx`: context
    length in tokens, prompt + output (default min(model max_seq_len, 4096)); `load_s`
    is reported in the stats; `prefill_chunk`: prompt tokens per forward pass.
    `speculative`: a `runtime.speculative.SpeculativeConfig` (drafter + tokens per round)
    to decode by draft-and-verify; output is distributed exactly as without it.
    `session`: the sequence the engine's generations run on."""

    def __init__(self, model: DecoderModel, tokenizer: TokenizerLike, chat_template: Any = None,
                 backend: Any = None, n_ctx: int | None = None, load_s: float = 0.0,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, speculative: SpeculativeConfig | None = None) -> None:
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
        # the session's KV cache (float32, grown on demand) may reach n_ctx positions
        check_fits(kv_bytes(model.config, n_ctx), f"a context of n_ctx={n_ctx} tokens (its float32 KV cache)")
        self.n_ctx = n_ctx
        self.vocab_size = int(model.config.vocab_size)
        self.session = Session(model, n_ctx, prefill_chunk)
        self._active: object | None = None    # the running stream, to refuse a second one
        self.speculative = speculative

    @property
    def speculative(self) -> SpeculativeConfig | None:
        """The speculative-decoding config (None: plain decoding)."""
        return self._speculative

    @speculative.setter
    def speculative(self, config: SpeculativeConfig | None) -> None:
        """Turn speculative decoding on with `config` (None: off). InputError if its
        drafter does not fit the model (e.g. another vocabulary size)."""
        if config is not None:
            config.bind(self.vocab_size, self.n_ctx)
        self._speculative = config

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
                raise InputError(f"chat: each message needs a 'role' and a 'content', got {brief(m)}")
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

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                 response_format: Mapping[str, Any] | None = None, grammar: Grammar | None = None
                 ) -> GenerationResult:
        """Complete `prompt` (text, or token ids used as given). `response_format` (OpenAI's:
        {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}})
        or `grammar` (a `runtime.grammar.Grammar`: regex, Lark, GBNF, JSON Schema) constrain
        the output (params.grammar otherwise). Raises InputError on an empty prompt, one
        that does not fit the context (unless params.truncate), token ids outside the
        vocabulary, or a grammar that does not compile or admits no output."""
        params = constrained(params or SamplingParams(), response_format, grammar)
        ids = self.encode(prompt)
        ids, budget = self._fit(ids, params)
        return collect(self._run(ids, budget, params), ids, params.logprobs or params.top_logprobs > 0)

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
               response_format: Mapping[str, Any] | None = None, grammar: Grammar | None = None
               ) -> Iterator[TokenEvent]:
        """Like generate(), one TokenEvent per sampled token. Input is validated here, before
        the first event, so errors surface at the call."""
        params = constrained(params or SamplingParams(), response_format, grammar)
        ids, budget = self._fit(self.encode(prompt), params)
        return self._run(ids, budget, params)

    def chat(self, messages: Sequence[Mapping[str, Any]], params: SamplingParams | None = None, *,
             response_format: Mapping[str, Any] | None = None, grammar: Grammar | None = None) -> GenerationResult:
        """Render the chat template (add_generation_prompt=True) and generate the reply;
        stops on the tokenizer's EOS/EOT tokens."""
        params = constrained(params or SamplingParams(), response_format, grammar)
        ids, budget = self._fit(self.encode_chat(messages), params)
        return collect(self._run(ids, budget, params), ids, params.logprobs or params.top_logprobs > 0)

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], params: SamplingParams | None = None, *,
                    response_format: Mapping[str, Any] | None = None, grammar: Grammar | None = None
                    ) -> Iterator[TokenEvent]:
        """chat() as a stream of TokenEvents."""
        params = constrained(params or SamplingParams(), response_format, grammar)
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

    def reset(self) -> None:
        """Forget the cached prefix (the next prompt is prefilled from scratch)."""
        self.session.reset()

    def _run(self, ids: list[int], budget: int, params: SamplingParams) -> Iterator[TokenEvent]:
        params.check_vocab(self.vocab_size)
        picker = self._picker(params)
        self._check_idle()
        return self._loop(ids, budget, params, picker)

    def _picker(self, params: SamplingParams) -> TokenPicker:
        """The generation's TokenPicker, made at the call: a grammar (compiled once per
        tokenizer and schema) that does not compile fails here, not at the first event."""
        return TokenPicker(params, self.vocab_size, make_rng(params.seed), self.tokenizer)

    def _check_idle(self) -> None:
        if self._active is not None:
            raise InputError("another generation is running on this Engine; finish or close() it first")

    def _loop(self, ids: list[int], budget: int, params: SamplingParams, picker: TokenPicker
              ) -> Iterator[TokenEvent]:
        # claimed when the generator starts: an unstarted stream has not touched the cache,
        # and an abandoned one is closed by the garbage collector, which runs `finally`
        self._check_idle()
        token = object()
        self._active = token
        try:
            yield from self._steps(ids, budget, params, picker)
        finally:
            if self._active is token:
                self._active = None

    def _steps(self, ids: list[int], budget: int, params: SamplingParams, picker: TokenPicker
               ) -> Iterator[TokenEvent]:
        em = TokenEmitter(self.tokenizer, ids, budget, params, self.load_s)
        try:
            # drafts are not masked by the grammar: a constrained generation decodes plainly
            if self.speculative is None or picker.constraint is not None:
                yield from self._decode(ids, em, picker)
            else:
                yield from speculative_steps(self.speculative, self.session, ids, em, picker)
        except EdgeformerError:
            self.session.reset()    # NaN logits: the cache may hold broken K/V
            raise

    def _decode(self, ids: list[int], em: TokenEmitter, picker: TokenPicker) -> Iterator[TokenEvent]:
        logits, cached = self.session.prefill(ids)
        assert logits is not None
        em.prefilled(cached)
        while True:
            tok = picker.next_token(em.context, logits)
            yield em.emit(tok, logits)
            if em.done:
                return
            logits = self.session.forward([tok])
