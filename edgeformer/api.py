"""The Python entry point: `edgeformer.load(path_or_name) -> Engine`.

    import edgeformer
    eng = edgeformer.load()                       # the default shipped model
    print(eng.chat([{"role": "user", "content": "Hi"}]).text)

    fast = edgeformer.load(lookup=4)              # speculative decoding, same output
    fast = edgeformer.load("big.gguf", draft="small.gguf", draft_n=4)
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from edgeformer.errors import InputError
from edgeformer.runtime.engine import Engine


def load(path_or_name: str | os.PathLike | None = None, backend: Any = None,
         n_ctx: int | None = None, activations: str | None = None,
         chat_template: str | None = None, *, lookup: int | None = None, draft: Any = None,
         draft_n: int | None = None, speculative: Any = None) -> Engine:
    """Load a decoder model (GGUF file, HF directory, LLaVA directory, or a shipped model's
    name; None = the default shipped model) on `backend` (a name such as "numpy" / "cpu", a
    Backend instance, or None: the default, `backends.base.default_backend_name()`) and
    return an Engine with an `n_ctx`-token context (default min(model max, 4096)). Raises
    FormatError / UnsupportedError / ConfigError for a bad or unsupported file,
    UnsupportedError for an unknown backend. `activations`: the cpu backend's activation
    setting ("auto" = int16, "int8", "f32"; backends.get_backend). `chat_template`: None =
    the file's template (a file without one runs as plain continuation, `chat()` refuses);
    a built-in name ("chatml", "gemma", "llama3"), "auto" (the vocabulary's family) or a
    Jinja file overrides it (`ChatTemplate.for_tokenizer`).

    Speculative decoding (the CLI's `--lookup N` / `--draft MODEL --draft-n N`), at most
    one of:
    - `lookup=N`: prompt-lookup drafting, N tokens proposed per round from n-gram matches
      in prompt + output (no draft model);
    - `draft=MODEL`: a draft model with the target's vocabulary, proposing `draft_n`
      tokens per round (default 4): a path or shipped name (loaded on the target's
      backend), an Engine from `load()`, or a decoder model;
    - `speculative=`: a `runtime.speculative.SpeculativeConfig` (any drafter).
    The Engine's `speculative` attribute holds the config (`last_stats`: acceptance of the
    latest generation); a server built on the Engine (`serve.create_app`) speculates too.
    Greedy output is plain decoding's token for token; sampled output keeps the target's
    distribution (not the same draws as plain sampling with the seed). Bad counts,
    conflicting options, a missing draft file or a vision-language model raise InputError
    before anything is loaded; a draft with another vocabulary raises InputError."""
    spec_for = _speculative_options(lookup, draft, draft_n, speculative)
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.chat_template import ChatTemplate
    from edgeformer.formats.tokenizer_load import tokenizer_from_checkpoint
    from edgeformer.models.decoder import Decoder
    from edgeformer.models.shipped import default_model, resolve_model

    t0 = time.perf_counter()
    path = default_model() if path_or_name is None else resolve_model(path_or_name)
    from edgeformer.models.vlm import is_vlm_dir
    if is_vlm_dir(path):  # LLaVA-style directory: an Engine that also takes images=
        if spec_for is not None:
            raise InputError("speculative decoding (lookup= / draft= / speculative=) is not supported for "
                             "vision-language models")
        from edgeformer.runtime.vlm_engine import load_vlm
        return load_vlm(path, backend=backend, n_ctx=n_ctx, activations=activations, chat_template=chat_template)
    be = get_backend(backend, activations) if backend is None or isinstance(backend, str) else backend
    ckpt = load_checkpoint(path)
    model = Decoder(ckpt, be)
    from edgeformer.runtime.warmup import warm_up
    warm_up(model, path)          # compiling/loading kernels counts as load time, not prefill
    tokenizer = tokenizer_from_checkpoint(ckpt)
    template = ChatTemplate.for_tokenizer(ckpt.chat_template, tokenizer, origin=str(path), override=chat_template)
    engine = Engine(model, tokenizer, template, be, n_ctx=n_ctx, load_s=time.perf_counter() - t0)
    if spec_for is not None:
        engine.speculative = spec_for(be)   # InputError for a draft with another vocabulary
        engine.load_s = time.perf_counter() - t0
    return engine


def _count(name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise InputError(f"{name} must be an int >= 1, got {v!r}")
    return v


def _speculative_options(lookup: Any, draft: Any, draft_n: Any, speculative: Any) -> Callable[[Any], Any] | None:
    """Check load()'s speculative options without loading anything; returns None (off) or
    a function of the target's backend giving the SpeculativeConfig."""
    given = [n for n, v in (("lookup", lookup), ("draft", draft), ("speculative", speculative)) if v is not None]
    if len(given) > 1:
        raise InputError(f"load(): give at most one of lookup=, draft=, speculative= (got {', '.join(given)})")
    if draft_n is not None and draft is None:
        raise InputError("load(): draft_n= needs draft=")
    from edgeformer.runtime.speculative import SpeculativeConfig
    if lookup is not None:
        n = _count("lookup", lookup)
        return lambda be: SpeculativeConfig.prompt_lookup(n)
    if speculative is not None:
        if not isinstance(speculative, SpeculativeConfig):
            raise InputError(f"speculative= must be a SpeculativeConfig, got {type(speculative).__name__}")
        return lambda be: speculative
    if draft is None:
        return None
    k = 4 if draft_n is None else _count("draft_n", draft_n)
    if isinstance(draft, (str, os.PathLike)):
        from edgeformer.models.shipped import resolve_model
        from edgeformer.models.vlm import is_vlm_dir
        if is_vlm_dir(resolve_model(draft)):        # InputError now for a missing file
            raise InputError(f"draft {str(draft)!r} is a vision-language model; a draft must be a text decoder")
        return lambda be: SpeculativeConfig.draft_model(load(draft, backend=be).model, k)
    model = draft.model if isinstance(draft, Engine) else draft
    if not all(hasattr(model, a) for a in ("config", "make_cache", "forward")):
        raise InputError(f"draft= must be a model path or name, an Engine or a decoder model, "
                         f"got {type(draft).__name__}")
    return lambda be: SpeculativeConfig.draft_model(model, k)
