"""Model definitions over backend ops. `Decoder` covers the decoder-LLM family
(Llama/Mistral/SmolLM, Qwen2/3, Gemma 1/2/3, Phi-3)."""
from __future__ import annotations

from edgeformer.models.cache import KVCache
from edgeformer.models.decoder import Decoder
from edgeformer.models.rope import Rope, make_rope

__all__ = ["Decoder", "KVCache", "Rope", "make_rope"]
