"""`VLMEngine`: the Engine with images spliced into the prompt (LLaVA-style models from
`models/vlm.py`), and `load_vlm`."""
from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.errors import InputError
from edgeformer.models.vlm import LlavaModel, load_llava
from edgeformer.runtime.grammar import constrained
from edgeformer.runtime.engine import Engine
from edgeformer.runtime.events import GenerationResult, TokenEvent, collect


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    digest: bytes


class _SplicingModel:
    """The Engine's `session.DecoderModel` over a LlavaModel: runs token chunks, putting image rows
    at the absolute positions that `set_images` registered."""

    def __init__(self, vlm: LlavaModel) -> None:
        self.vlm = vlm
        self.config = vlm.decoder.config
        self._pos = np.zeros(0, dtype=np.int64)            # sorted absolute positions
        self._rows = np.zeros((0, self.config.dim), np.float32)

    def make_cache(self, max_seq_len: int | None = None) -> Any:
        return self.vlm.decoder.make_cache(max_seq_len)

    def set_images(self, spans: Sequence[_Span], features: Sequence[np.ndarray]) -> None:
        pos = [np.arange(s.start, s.end) for s in spans]
        self._pos = np.concatenate(pos) if pos else np.zeros(0, dtype=np.int64)
        self._rows = np.concatenate(list(features)) if features else np.zeros((0, self.config.dim), np.float32)

    def forward(self, tokens: np.ndarray, cache: Any, last_only: bool = False) -> np.ndarray:
        start, t = cache.offset, len(tokens)
        lo, hi = np.searchsorted(self._pos, [start, start + t])
        if lo == hi:
            return self.vlm.decoder.forward(tokens, cache, last_only)
        x = self.vlm.embed_tokens(tokens)
        x[self._pos[lo:hi] - start] = self._rows[lo:hi]
        return self.vlm.decoder.forward(tokens, cache, last_only, embeds=x)


class VLMEngine(Engine):
    """An Engine whose generate / stream / chat / chat_stream take `images=` (file paths,
    PIL images or uint8 arrays), one per `<image>` in the prompt. The KV-cache prefix is
    reused across calls only where the same images sit at the same positions."""

    def __init__(self, vlm: LlavaModel, tokenizer: Any, processor: Any, chat_template: Any = None,
                 backend: Any = None, n_ctx: int | None = None, load_s: float = 0.0, **kw: Any) -> None:
        splicer = _SplicingModel(vlm)
        super().__init__(splicer, tokenizer, chat_template, backend, n_ctx, load_s, **kw)
        self.vlm, self.processor, self._splicer = vlm, processor, splicer
        self._cache_spans: list[_Span] = []     # image spans the KV cache holds
        self._features: OrderedDict[bytes, np.ndarray] = OrderedDict()   # recent images' rows

    def image_features(self, image: Any) -> tuple[bytes, np.ndarray]:
        """(digest of the preprocessed pixels, projected rows) for one image; the rows of
        the last few images are kept, so a chat about one image encodes it once."""
        from edgeformer.models.image_processing import load_image
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        pixels = self.processor(image)
        key = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).digest()
        if key not in self._features:
            self._features[key] = self.vlm.image_features(pixels)
            while len(self._features) > 4:
                self._features.popitem(last=False)
        self._features.move_to_end(key)
        return key, self._features[key]

    def _prepare(self, ids: list[int], images: Sequence[Any], params: Any) -> tuple[list[int], int, list, list]:
        enc = [self.image_features(im) for im in images]
        feats = [f for _, f in enc]
        ids = self.vlm.expand_prompt(ids, feats)
        spans, pos = [], 0
        it = iter(enc)
        tok = self.vlm.config.image_token_id
        i = 0
        while i < len(ids):
            if ids[i] == tok and pos < len(enc):
                key, f = next(it)
                spans.append(_Span(i, i + len(f), key))
                pos += 1
                i += len(f)
            else:
                i += 1
        if images and len(ids) >= self.n_ctx:   # truncating would cut into the image tokens
            raise InputError(f"prompt with images is {len(ids)} tokens; the context holds {self.n_ctx}")
        ids, budget = self._fit(ids, params)
        return ids, budget, spans, feats

    def _run(self, ids: list[int], budget: int, params: Any, spans: Sequence[_Span] = (),
             feats: Sequence[np.ndarray] = ()) -> Iterator[TokenEvent]:
        params.check_vocab(self.vocab_size)
        picker = self._picker(params)
        self._check_idle()
        return self._image_loop(ids, budget, params, list(spans), list(feats), picker)

    def _image_loop(self, ids: list[int], budget: int, params: Any, spans: list[_Span],
                    feats: list[np.ndarray], picker: Any) -> Iterator[TokenEvent]:
        self._check_idle()
        # the cached prefix is valid only up to the first image span that differs
        old, new = set(self._cache_spans), set(spans)
        self.session.truncate(min([s.start for s in old ^ new], default=len(self.session)))
        self._splicer.set_images(spans, feats)
        self._cache_spans = spans
        yield from self._loop(ids, budget, params, picker)

    def generate(self, prompt: str | Sequence[int], params: Any = None,
                 images: Sequence[Any] = (), *, response_format: Mapping[str, Any] | None = None, grammar: Any = None) -> GenerationResult:
        """Engine.generate with images (one `<image>` token in the prompt per image)."""
        from edgeformer.runtime.sampler import SamplingParams
        params = constrained(params or SamplingParams(), response_format, grammar)
        ids, budget, spans, feats = self._prepare(self.encode(prompt), images, params)
        return collect(self._run(ids, budget, params, spans, feats), ids, params.logprobs or params.top_logprobs > 0)

    def stream(self, prompt: str | Sequence[int], params: Any = None,
               images: Sequence[Any] = (), *, response_format: Mapping[str, Any] | None = None, grammar: Any = None) -> Iterator[TokenEvent]:
        """Engine.stream with images."""
        from edgeformer.runtime.sampler import SamplingParams
        params = constrained(params or SamplingParams(), response_format, grammar)
        ids, budget, spans, feats = self._prepare(self.encode(prompt), images, params)
        return self._run(ids, budget, params, spans, feats)

    def encode_chat_images(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """The rendered chat prompt tokenized with special-token text parsed (so `<image>`
        in a message is the image token), as HF's processors tokenize it."""
        text = self.render_chat(messages)
        ids = list(self.tokenizer.encode(text, add_bos=False, parse_special=True))
        bos = getattr(self.tokenizer, "bos_id", None)
        if getattr(self.tokenizer, "add_bos", False) and bos is not None and ids[:1] != [bos]:
            ids.insert(0, bos)
        return ids

    def chat(self, messages: Sequence[Mapping[str, Any]], params: Any = None,
             images: Sequence[Any] = (), *, response_format: Mapping[str, Any] | None = None, grammar: Any = None) -> GenerationResult:
        """Engine.chat with images; `<image>` in a message marks where each image goes."""
        if not images:
            return super().chat(messages, params, response_format=response_format, grammar=grammar)
        from edgeformer.runtime.sampler import SamplingParams
        params = constrained(params or SamplingParams(), response_format, grammar)
        ids, budget, spans, feats = self._prepare(self.encode_chat_images(messages), images, params)
        return collect(self._run(ids, budget, params, spans, feats), ids, params.logprobs or params.top_logprobs > 0)

    def chat_stream(self, messages: Sequence[Mapping[str, Any]], params: Any = None,
                    images: Sequence[Any] = (), *, response_format: Mapping[str, Any] | None = None, grammar: Any = None) -> Iterator[TokenEvent]:
        """Engine.chat_stream with images."""
        if not images:
            return super().chat_stream(messages, params, response_format=response_format, grammar=grammar)
        from edgeformer.runtime.sampler import SamplingParams
        params = constrained(params or SamplingParams(), response_format, grammar)
        ids, budget, spans, feats = self._prepare(self.encode_chat_images(messages), images, params)
        return self._run(ids, budget, params, spans, feats)


# ---- loading -----------------------------------------------------------------------------

def load_vlm(path: str | os.PathLike, backend: Any = None, n_ctx: int | None = None,
             activations: str | None = None, chat_template: str | None = None) -> VLMEngine:
    """A VLMEngine for an HF LLaVA directory on `backend` (name, Backend instance, or None:
    the default backend).
    Errors as `load_llava`; FormatError if the directory has no tokenizer."""
    from edgeformer.backends import get_backend
    from edgeformer.formats.chat_template import ChatTemplate
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
    t0 = time.perf_counter()
    be = get_backend(backend, activations) if backend is None or isinstance(backend, str) else backend
    model, ckpt, proc = load_llava(path, be)
    tok = tokenizer_from_checkpoint(ckpt)
    template = ChatTemplate.for_tokenizer(ckpt.chat_template, tok, origin=str(path), override=chat_template)
    return VLMEngine(model, tok, proc, template, be, n_ctx=n_ctx, load_s=time.perf_counter() - t0)
