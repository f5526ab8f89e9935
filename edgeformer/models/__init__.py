"""Model definitions over backend ops. `Decoder` covers the decoder-LLM family
(Llama/Mistral/SmolLM, Qwen2/3, Gemma 1/2/3, Phi-3); `load_model` picks the class for a
checkpoint's architecture."""
from __future__ import annotations

from edgeformer.backends.base import Backend
from edgeformer.config import GGUF_ARCHS, DecoderConfig
from edgeformer.errors import UnsupportedError
from edgeformer.formats.checkpoint import Checkpoint
from edgeformer.models.cache import KVCache
from edgeformer.models.decoder import Decoder
from edgeformer.models.rope import Rope, make_rope

# architecture -> model class; one entry per family module, as mlx-lm's MODEL_REMAPPING.
MODELS: dict[str, type] = {arch: Decoder for arch in GGUF_ARCHS}


def load_model(ckpt: Checkpoint, backend: Backend) -> Decoder:
    """The model for `ckpt` on `backend`; UnsupportedError names the known architectures."""
    if not isinstance(ckpt.config, DecoderConfig) or ckpt.arch not in MODELS:
        raise UnsupportedError(f"no model for architecture {getattr(ckpt.config, 'arch', None)!r}; "
                               f"supported: {', '.join(MODELS)}")
    return MODELS[ckpt.arch](ckpt, backend)


__all__ = ["Decoder", "KVCache", "Rope", "make_rope", "load_model", "MODELS"]
