"""Architecture configs. One frozen dataclass per model family; a family difference is a
field, not a copied file. HF (`config.json`) and GGUF (`{arch}.*` metadata) keys are
mapped only here, in `from_hf()` / `from_gguf()` / `to_gguf()`.

This module is a leaf: formats, models, perf and codesign all import it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgeformer.errors import ConfigError, UnsupportedError


@dataclass(frozen=True)
class RopeScaling:
    """Rope scaling as HF `rope_scaling` describes it; `kind` is one of
    default, linear, dynamic, yarn, llama3, longrope."""

    kind: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    # llama3
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    # yarn
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    # longrope
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder-only transformer, covering Llama/Mistral/Qwen2/Qwen3/Gemma1-3/Phi-3/SmolLM.

    Dimension glossary (used everywhere): n_layers, n_heads, n_kv_heads, head_dim, dim,
    ffn_dim, vocab_size, max_seq_len.
    """

    arch: str                      # GGUF general.architecture: llama, qwen2, qwen3, gemma, gemma2, gemma3, phi3
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    ffn_dim: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rope_local_theta: float | None = None      # Gemma 3: rope base of sliding layers
    rope_neox: bool = True                     # False: ggml "NORM" (interleaved pairs), llama-arch GGUF layout
    partial_rotary_factor: float = 1.0
    tie_embeddings: bool = False
    attn_bias: bool = False                    # bias on q/k/v (Qwen2)
    qk_norm: bool = False                      # RMS norm on q and k per head (Qwen3, Gemma 3)
    activation: str = "silu"                   # silu | gelu | gelu_tanh (gated MLP)
    embed_scale: float | None = None           # Gemma: sqrt(dim)
    attn_softcap: float | None = None          # Gemma 2
    final_softcap: float | None = None         # Gemma 2
    attn_scale: float | None = None            # None: head_dim ** -0.5 (query_pre_attn_scalar folds in here)
    sliding_window: int | None = None
    layer_types: tuple[str, ...] = ()          # per layer "full" | "sliding"; () means all full
    post_norms: bool = False                   # Gemma 2/3 post-attention and post-FFN norms
    fused_qkv: bool = False                    # Phi-3 attn_qkv
    fused_gate_up: bool = False                # Phi-3 ffn_up holds gate and up
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "max_seq_len"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{self.arch}: {name} must be a positive int, got {v!r}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"{self.arch}: n_heads={self.n_heads} not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.activation not in ("silu", "gelu", "gelu_tanh"):
            raise UnsupportedError(f"{self.arch}: unsupported activation {self.activation!r}")
        if self.layer_types and len(self.layer_types) != self.n_layers:
            raise ConfigError(f"{self.arch}: layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")

    def is_sliding(self, layer: int) -> bool:
        return bool(self.layer_types) and self.layer_types[layer] == "sliding"

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "DecoderConfig":
        """From a parsed HF `config.json`. Raises UnsupportedError on an unknown
        `model_type` or rope scaling type, ConfigError on missing/invalid keys."""
        raise NotImplementedError

    @classmethod
    def from_gguf(cls, md: dict[str, Any]) -> "DecoderConfig":
        """From GGUF metadata (`general.architecture`, `{arch}.block_count`, ...)."""
        raise NotImplementedError

    def to_gguf(self) -> dict[str, Any]:
        """GGUF metadata keys/values as llama.cpp's `convert_hf_to_gguf.py` writes them."""
        raise NotImplementedError
