"""The Python entry point: `edgeformer.load(path_or_name) -> Engine`.

    import edgeformer
    eng = edgeformer.load()                       # the default shipped model
    print(eng.chat([{"role": "user", "content": "Hi"}]).text)
"""
from __future__ import annotations

import os
import time
from typing import Any

from edgeformer.runtime.engine import Engine


def load(path_or_name: str | os.PathLike | None = None, backend: Any = None,
         n_ctx: int | None = None, activations: str | None = None,
         chat_template: str | None = None) -> Engine:
    """Load a decoder model (GGUF file, HF directory, LLaVA directory, or a shipped model's
    name; None = the default shipped model) on `backend` (a name such as "numpy" / "cpu", a
    Backend instance, or None: the default, `backends.base.default_backend_name()`) and
    return an Engine with an `n_ctx`-token context (default min(model max, 4096)). Raises
    FormatError / UnsupportedError / ConfigError for a bad or unsupported file,
    UnsupportedError for an unknown backend. `activations`: the cpu backend's activation
    setting ("auto" = int16, "int8", "f32"; backends.get_backend). `chat_template`: None =
    the file's template (a file without one runs as plain continuation, `chat()` refuses);
    a built-in name ("chatml", "gemma", "llama3"), "auto" (the vocabulary's family) or a
    Jinja file overrides it (`ChatTemplate.for_tokenizer`)."""
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.formats.chat_template import ChatTemplate
    from edgeformer.formats.tokenizer import Tokenizer
    from edgeformer.models.decoder import Decoder
    from edgeformer.models.shipped import default_model, resolve_model

    t0 = time.perf_counter()
    path = default_model() if path_or_name is None else resolve_model(path_or_name)
    from edgeformer.models.vlm import is_vlm_dir
    if is_vlm_dir(path):  # LLaVA-style directory: an Engine that also takes images=
        from edgeformer.runtime.vlm_engine import load_vlm
        return load_vlm(path, backend=backend, n_ctx=n_ctx, activations=activations, chat_template=chat_template)
    be = get_backend(backend, activations) if backend is None or isinstance(backend, str) else backend
    ckpt = load_checkpoint(path)
    model = Decoder(ckpt, be)
    tokenizer = Tokenizer.from_checkpoint(ckpt)
    template = ChatTemplate.for_tokenizer(ckpt.chat_template, tokenizer, origin=str(path), override=chat_template)
    return Engine(model, tokenizer, template, be, n_ctx=n_ctx, load_s=time.perf_counter() - t0)
