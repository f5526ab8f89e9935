"""Decoder configs. `DecoderConfig` covers every decoder family; a family difference is a
field, not a copied file. HF (`config.json`) and GGUF (`{arch}.*` metadata) keys are
mapped only here, in `from_hf()` / `from_gguf()` / `to_gguf()`, and what a family fixes
that neither states (transformers' and llama.cpp's per-family defaults and rules) is one
`Family` row in `FAMILIES`. The encoder models' configs are in `encoder_config.py`.

This module is a leaf: formats, models, perf and codesign all import it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from edgeformer.errors import ConfigError, UnsupportedError, brief

# transformers' modeling_rope_utils.ROPE_INIT_FUNCTIONS keys we implement (+ "default").
ROPE_KINDS = ("default", "linear", "dynamic", "yarn", "llama3", "longrope")


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
    truncate: bool = True
    # longrope
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ROPE_KINDS:
            raise UnsupportedError(f"unsupported rope scaling type {brief(self.kind)}; supported: {', '.join(ROPE_KINDS)}")
        if self.kind in ("linear", "dynamic", "yarn", "llama3") and not self.factor:
            raise ConfigError(f"rope scaling {self.kind!r} needs a factor")
        if self.kind == "llama3" and (self.low_freq_factor is None or self.high_freq_factor is None
                                      or self.original_max_position_embeddings is None):
            raise ConfigError("llama3 rope scaling needs low_freq_factor, high_freq_factor and "
                              "original_max_position_embeddings")
        if self.kind in ("yarn", "longrope") and self.original_max_position_embeddings is None:
            raise ConfigError(f"{self.kind} rope scaling needs original_max_position_embeddings")


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
    rope_dim: int | None = None                # rotated dims per head; None: head_dim * partial_rotary_factor
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in LIMITS:
            bounded(self.arch, name, getattr(self, name))
        for name in ("norm_eps", "rope_theta", "partial_rotary_factor", "rope_local_theta", "embed_scale",
                     "attn_softcap", "final_softcap", "attn_scale"):
            v = getattr(self, name)
            if v is None and name not in ("norm_eps", "rope_theta", "partial_rotary_factor"):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{self.arch}: {name} must be a finite number > 0, got {brief(v)}")
        if self.norm_eps >= 1 or self.partial_rotary_factor > 1:
            raise ConfigError(f"{self.arch}: norm_eps {self.norm_eps} must be < 1 and partial_rotary_factor "
                              f"{self.partial_rotary_factor} at most 1")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window <= 0):
            raise ConfigError(f"{self.arch}: sliding_window must be a positive int or None, got {brief(self.sliding_window)}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(f"{self.arch}: n_heads={self.n_heads} not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.activation not in ("silu", "gelu", "gelu_tanh"):
            raise UnsupportedError(f"{self.arch}: unsupported activation {brief(self.activation)}")
        if self.layer_types and len(self.layer_types) != self.n_layers:
            raise ConfigError(f"{self.arch}: layer_types has {len(self.layer_types)} entries for {self.n_layers} layers")
        if any(t not in ("full", "sliding") for t in self.layer_types):
            raise ConfigError(f"{self.arch}: layer_types entries must be 'full' or 'sliding', got {self.layer_types}")
        if "sliding" in self.layer_types and not self.sliding_window:
            raise ConfigError(f"{self.arch}: sliding layers need a positive sliding_window")
        r = self.rotary_dim
        if r <= 0 or r % 2 or r > self.head_dim:
            raise ConfigError(f"{self.arch}: rotary dims {r} must be even and in (0, head_dim={self.head_dim}]")

    @property
    def rotary_dim(self) -> int:
        """Dims of each head that rope rotates (HF: int(head_dim * partial_rotary_factor))."""
        return self.rope_dim if self.rope_dim is not None else int(self.head_dim * self.partial_rotary_factor)

    def is_sliding(self, layer: int) -> bool:
        """Whether `layer` attends within `sliding_window` only."""
        return bool(self.layer_types) and self.layer_types[layer] == "sliding"

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> "DecoderConfig":
        """From a parsed HF `config.json`. Reads both the transformers-5 `rope_parameters`
        layout and the older `rope_theta` + `rope_scaling` keys, with transformers'
        per-family defaults for absent keys. Raises UnsupportedError on an unknown
        `model_type` or rope scaling type, ConfigError on missing/invalid keys."""
        try:
            return _from_hf(cls, cfg)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:   # e.g. "hidden_size": "big"
            raise ConfigError(f"HF config ({brief(cfg.get('model_type'))}) has a bad value: {brief(str(e))}") from None

    @classmethod
    def from_gguf(cls, md: dict[str, Any], tensor_names: Iterable[str] | None = None) -> "DecoderConfig":
        """From GGUF metadata (`general.architecture`, `{arch}.block_count`, ...), with
        llama.cpp's `llama_model::load_hparams` defaults (Gemma 2/3 sliding patterns and
        attention scale, Gemma 3 local rope base). Rope data llama.cpp keeps in tensors
        (`rope_freqs` for llama3, `rope_factors_long/short` for longrope) is not here:
        `models.rope` reads it from the checkpoint. GGUF says "tied" by having no
        `output.weight`: pass the file's `tensor_names` to set `tie_embeddings`; without
        them it is True only for Gemma 1/2 (which llama.cpp always ties)."""
        try:
            c = _from_gguf(cls, md)
        except (TypeError, ValueError, ZeroDivisionError, OverflowError) as e:   # e.g. a string block_count
            raise ConfigError(f"GGUF metadata has a bad value: {brief(str(e))}") from None
        tied = (GGUF_ARCHS[c.arch].always_tied if tensor_names is None
                else "output.weight" not in set(tensor_names))
        return replace(c, tie_embeddings=tied)

    def to_gguf(self) -> dict[str, Any]:
        """GGUF metadata keys/values as llama.cpp's `convert_hf_to_gguf.py` writes them
        (ints are written as uint32, floats as float32, lists as arrays). Also writes
        keys llama.cpp ignores for an arch but `from_gguf` reads back (`attention.scale`,
        `attention.sliding_window_pattern`), so a round trip keeps the config. Tensors
        llama.cpp derives from the config (`rope_freqs`, `rope_factors_*`) come from
        `formats.tensor_map.extra_gguf_tensors`. Raises UnsupportedError for what GGUF
        cannot express (dynamic NTK rope)."""
        return _to_gguf(self)


# ------------------------------------------------------------------ decoder families

@dataclass(frozen=True)
class Family:
    """What a decoder family fixes that its config.json or GGUF metadata leaves unsaid:
    transformers' per-family config defaults and llama.cpp's `load_hparams` and
    `convert_hf_to_gguf.py` rules. One row per family in `FAMILIES`; HF model types
    (`HF_MODEL_TYPES`) and GGUF architectures (`GGUF_ARCHS`) both lead to it, and the HF
    and GGUF mappings and `formats.tensor_map` read it instead of testing names."""

    arch: str                                  # GGUF general.architecture
    hf_model_types: tuple[str, ...]
    activation: str = "silu"                   # gated-MLP activation when the config names none
    rope_neox: bool = True                     # False: ggml "NORM" rope, HF q/k rows permuted (llama arch)
    attn_bias: bool = False                    # bias on q/k/v (Qwen2)
    qk_norm: bool = False                      # RMS norm on q and k per head
    embed_scale: bool = False                  # embeddings scaled by sqrt(dim) (Gemma)
    norm_plus_one: bool = False                # HF norms compute x * (1 + w): +1 folded into weights (Gemma)
    post_norms: bool = False                   # post-attention and post-FFN norms (Gemma 2/3)
    fused: bool = False                        # fused attn_qkv, gate|up in ffn_up (Phi-3)
    tied: bool = False                         # HF tie_word_embeddings default
    always_tied: bool = False                  # llama.cpp ties: no output.weight, HF lm_head dropped
    softcaps: tuple[float | None, float | None] = (None, None)   # (attention, final) defaults
    sliding_pattern: int | None = None         # with a window, every n-th layer is full
    local_rope: bool = False                   # sliding layers have their own rope base (Gemma 3)
    longrope: bool = False                     # Phi-3: HF su/yarn and untyped GGUF scaling mean longrope
    query_pre_attn_scalar: bool = False        # HF attention scale is query_pre_attn_scalar ** -0.5
    hf_defaults: dict[str, Any] = field(default_factory=dict)   # transformers' defaults for absent keys
    hf_activation_key: str = "hidden_act"
    hf_gelu_is_tanh: bool = False              # GemmaConfig.__post_init__ forces the tanh GELU
    hf_window: str = "set"                     # when an HF window slides: "set", "use_sliding_window", "never"
    hf_window_default: int | None = None       # HF sliding_window when the key is absent
    hf_multimodal_type: str | None = None      # model_type whose text_config holds the text model
    gguf_window_default: int = 0               # llama.cpp n_swa when the key is absent
    gguf_27b_layers: int | None = None         # llama.cpp scales attention by (dim / n_heads) ** -0.5 here
    gguf_window_zero: bool = False             # the converter writes sliding_window 0 for "none"


_GEMMA: dict[str, Any] = dict(activation="gelu_tanh", embed_scale=True, norm_plus_one=True, tied=True)
# Gemma 3 configs (the text_config of gemma-3-4b and up) leave out keys that have
# Gemma3TextConfig defaults; transformers fills them, so must we.
_GEMMA3_DEFAULTS = {"vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216,
                    "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
                    "head_dim": 256, "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6,
                    "query_pre_attn_scalar": 256}

# family -> traits; llama.cpp converts Mistral and SmolLM (model_type llama) as llama.
FAMILIES: dict[str, Family] = {
    "llama": Family("llama", ("llama",), rope_neox=False, hf_window="never"),
    "mistral": Family("llama", ("mistral",), rope_neox=False),
    "qwen2": Family("qwen2", ("qwen2",), attn_bias=True, hf_window="use_sliding_window"),
    "qwen3": Family("qwen3", ("qwen3",), qk_norm=True, hf_window="use_sliding_window",
                    hf_defaults={"head_dim": 128}),
    "gemma": Family("gemma", ("gemma",), always_tied=True, hf_gelu_is_tanh=True,
                    hf_defaults={"head_dim": 256}, **_GEMMA),
    "gemma2": Family("gemma2", ("gemma2",), post_norms=True, always_tied=True, softcaps=(50.0, 30.0),
                     sliding_pattern=2, query_pre_attn_scalar=True, hf_activation_key="hidden_activation",
                     hf_window_default=4096, gguf_window_default=4096, gguf_27b_layers=46,
                     hf_defaults={"head_dim": 256, "query_pre_attn_scalar": 256}, **_GEMMA),
    "gemma3": Family("gemma3", ("gemma3", "gemma3_text"), qk_norm=True, post_norms=True, sliding_pattern=6,
                     local_rope=True, query_pre_attn_scalar=True, hf_activation_key="hidden_activation",
                     hf_window_default=4096, hf_multimodal_type="gemma3", gguf_27b_layers=62,
                     hf_defaults=_GEMMA3_DEFAULTS, **_GEMMA),
    "phi3": Family("phi3", ("phi3",), fused=True, longrope=True, gguf_window_zero=True,
                   hf_defaults={"max_position_embeddings": 4096, "rms_norm_eps": 1e-5}),
}
# transformers' defaults of every family (LlamaConfig's), under each family's own
_HF_DEFAULTS = {"max_position_embeddings": 2048, "rms_norm_eps": 1e-6}

HF_MODEL_TYPES: dict[str, Family] = {mt: f for f in FAMILIES.values() for mt in f.hf_model_types}
GGUF_ARCHS: dict[str, Family] = {f.arch: FAMILIES[f.arch] for f in FAMILIES.values()}


def gguf_family(arch: Any) -> Family:
    """The family of a GGUF architecture; UnsupportedError names the supported ones."""
    if not isinstance(arch, str) or arch not in GGUF_ARCHS:
        raise UnsupportedError(f"unsupported GGUF architecture {brief(arch)}; supported: {', '.join(GGUF_ARCHS)}")
    return GGUF_ARCHS[arch]


def sliding_pattern(n_layers: int, every: int | None) -> tuple[str, ...]:
    """Layer types when every `every`-th layer is full and the rest slide (all slide for
    None): llama_hparams::set_swa_pattern, layer il slides iff il % n < n - 1."""
    if not every:
        return ("sliding",) * n_layers
    return tuple("sliding" if i % every < every - 1 else "full" for i in range(n_layers))


# ------------------------------------------------------------------ HF config.json

_HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh",
                   "gelu_new": "gelu_tanh"}
_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def _need(cfg: dict[str, Any], key: str, mt: str) -> Any:
    v = cfg.get(key)
    if v is None:
        raise ConfigError(f"HF config ({mt}) lacks {key!r}")
    return v


def _hf_rope_dicts(cfg: dict[str, Any], fam: Family) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(global rope params, sliding-layer rope params or None), each a flat dict with
    rope_type / rope_theta like transformers' standardized `rope_parameters`."""
    rp = cfg.get("rope_parameters")
    legacy = cfg.get("rope_scaling")
    if fam.local_rope:
        if isinstance(rp, dict) and ("full_attention" in rp or "sliding_attention" in rp):
            full, slide = dict(rp.get("full_attention") or {}), dict(rp.get("sliding_attention") or {})
        else:   # Gemma3TextConfig.convert_rope_params_to_dict: rope_scaling applies to global layers
            full, slide = dict(legacy or rp or {}), {}
        full.setdefault("rope_theta", cfg.get("rope_theta", 1_000_000.0))
        slide.setdefault("rope_theta", cfg.get("rope_local_base_freq", 10_000.0))
        return full, slide
    d = dict(rp or legacy or {})
    d.setdefault("rope_theta", cfg.get("rope_theta", 10_000.0))
    return d, None


def _hf_rope_scaling(d: dict[str, Any], cfg: dict[str, Any], fam: Family, mt: str) -> RopeScaling | None:
    kind = d.get("rope_type", d.get("type", "default")) or "default"
    if fam.longrope and kind in ("su", "yarn"):
        kind = "longrope"   # Phi3Config.convert_rope_params_to_dict renames these
    if kind == "default":
        return None
    if kind not in ROPE_KINDS:
        raise UnsupportedError(f"{mt}: unsupported rope scaling type {brief(kind)}; supported: {', '.join(ROPE_KINDS)}")
    max_pos = cfg.get("max_position_embeddings")
    orig = None
    if kind in ("llama3", "yarn", "longrope"):
        # RotaryEmbeddingConfigMixin.standardize_rope_params: a top-level
        # original_max_position_embeddings (Phi-3 always has one, default 4096) wins.
        top = cfg.get("original_max_position_embeddings", 4096 if fam.longrope else None)
        orig = top if top is not None else d.get("original_max_position_embeddings", max_pos)
        if orig is None:
            raise ConfigError(f"{mt}: rope {kind} needs original_max_position_embeddings")
    factor = d.get("factor")
    if factor is None and kind in ("yarn", "longrope"):
        if max_pos is None:
            raise ConfigError(f"{mt}: rope {kind} without a factor needs max_position_embeddings")
        factor = max_pos / orig    # as _compute_yarn/longrope_parameters do
    tup = lambda v: tuple(float(x) for x in v) if v is not None else None  # noqa: E731
    return RopeScaling(
        kind=kind, factor=float(factor) if factor is not None else 0.0,
        original_max_position_embeddings=int(orig) if orig is not None else None,
        low_freq_factor=d.get("low_freq_factor"), high_freq_factor=d.get("high_freq_factor"),
        beta_fast=d.get("beta_fast"), beta_slow=d.get("beta_slow"), mscale=d.get("mscale"),
        mscale_all_dim=d.get("mscale_all_dim"), attention_factor=d.get("attention_factor"),
        truncate=bool(d.get("truncate", True)),
        short_factor=tup(d.get("short_factor")), long_factor=tup(d.get("long_factor")))


def _hf_layer_types(cfg: dict[str, Any], fam: Family, mt: str, n_layers: int) -> tuple[tuple[str, ...], int | None]:
    if fam.hf_window == "never" or (fam.hf_window == "use_sliding_window" and not cfg.get("use_sliding_window", False)):
        return (), None     # LlamaConfig has no window; Qwen2Config.__post_init__ drops it
    window = cfg.get("sliding_window", fam.hf_window_default)
    if not window:
        return (), None
    lt = cfg.get("layer_types")
    if lt is not None:
        try:
            types = tuple(_LAYER_TYPES[t] for t in lt)
        except KeyError as e:
            raise UnsupportedError(f"{mt}: unsupported layer type {brief(e.args[0])}; "
                                   f"supported: {', '.join(_LAYER_TYPES)}") from None
    elif fam.hf_window == "use_sliding_window":
        mwl = cfg.get("max_window_layers", 28)
        types = tuple("sliding" if i >= mwl else "full" for i in range(n_layers))
    else:
        every = fam.sliding_pattern   # Gemma 3 configs may state their own
        if every:
            every = cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or every
        types = sliding_pattern(n_layers, every)
    return (types if "sliding" in types else ()), (int(window) if "sliding" in types else None)


def _hf_activation(cfg: dict[str, Any], fam: Family, mt: str) -> str:
    act = cfg.get(fam.hf_activation_key)
    if not act:
        return fam.activation
    if fam.hf_gelu_is_tanh and act == "gelu":
        act = "gelu_pytorch_tanh"
    if act not in _HF_ACTIVATIONS:
        raise UnsupportedError(f"{mt}: unsupported activation {brief(act)}; supported: {', '.join(_HF_ACTIVATIONS)}")
    return _HF_ACTIVATIONS[act]


def _from_hf(cls: type[DecoderConfig], cfg: dict[str, Any]) -> DecoderConfig:
    mt = cfg.get("model_type")
    if not isinstance(mt, str) or mt not in HF_MODEL_TYPES:
        raise UnsupportedError(f"unsupported HF model_type {brief(mt)}; supported: {', '.join(HF_MODEL_TYPES)}")
    fam = HF_MODEL_TYPES[mt]
    top = cfg
    if mt == fam.hf_multimodal_type and isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": mt}
    defaults = {**_HF_DEFAULTS, **fam.hf_defaults}
    cfg = {**defaults, **{k: v for k, v in cfg.items() if v is not None or k not in defaults}}
    if cfg.get("use_bidirectional_attention"):
        raise UnsupportedError(f"{mt}: bidirectional attention is not supported")
    dim = bounded(mt, "dim", int(_need(cfg, "hidden_size", mt)))
    n_heads = bounded(mt, "n_heads", int(_need(cfg, "num_attention_heads", mt)))
    n_layers = bounded(mt, "n_layers", int(_need(cfg, "num_hidden_layers", mt)))
    head_dim = cfg.get("head_dim") or dim // n_heads
    rope, rope_local = _hf_rope_dicts(cfg, fam)
    if rope_local is not None and rope_local.get("rope_type", "default") != "default":
        raise UnsupportedError(f"{mt}: rope scaling on sliding layers is not supported")
    partial = float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0)) or 1.0)
    layer_types, window = _hf_layer_types(cfg, fam, mt, n_layers)
    attn_cap = cfg.get("attn_logit_softcapping", fam.softcaps[0])
    final_cap = cfg.get("final_logit_softcapping", fam.softcaps[1])
    return cls(
        arch=fam.arch, vocab_size=int(_need(cfg, "vocab_size", mt)), dim=dim, n_layers=n_layers,
        n_heads=n_heads, n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads), head_dim=int(head_dim),
        ffn_dim=int(_need(cfg, "intermediate_size", mt)), max_seq_len=int(cfg["max_position_embeddings"]),
        norm_eps=float(cfg["rms_norm_eps"]),
        rope_theta=float(rope["rope_theta"]), rope_scaling=_hf_rope_scaling(rope, cfg, fam, mt),
        rope_local_theta=float(rope_local["rope_theta"]) if rope_local is not None else None,
        rope_neox=fam.rope_neox, partial_rotary_factor=partial,
        tie_embeddings=bool(top.get("tie_word_embeddings", cfg.get("tie_word_embeddings", fam.tied))),
        attn_bias=fam.attn_bias or bool(cfg.get("attention_bias", False)),
        qk_norm=fam.qk_norm, activation=_hf_activation(cfg, fam, mt),
        embed_scale=float(dim) ** 0.5 if fam.embed_scale else None,
        attn_softcap=float(attn_cap) if attn_cap else None,
        final_softcap=float(final_cap) if final_cap else None,
        attn_scale=float(cfg["query_pre_attn_scalar"]) ** -0.5 if fam.query_pre_attn_scalar else None,
        sliding_window=window, layer_types=layer_types, post_norms=fam.post_norms,
        fused_qkv=fam.fused, fused_gate_up=fam.fused,
        rope_dim=int(head_dim * partial),
        extra={"hf_model_type": mt, "mlp_bias": bool(cfg.get("mlp_bias", False))},
    )


# ------------------------------------------------------------------ GGUF metadata

_MISSING = object()

# Sane upper bounds, far above the largest open models (dim 16384, 126 layers, 128 heads,
# FFN 53248, vocabulary 262144, context 10M): a header claiming more is refused before any
# per-layer or per-token work (a block_count of 3,000,000 built a 3.6 GB list before).
LIMITS = {"vocab_size": 1 << 22, "dim": 1 << 16, "n_layers": 1024, "n_heads": 1024, "n_kv_heads": 1024,
          "head_dim": 4096, "ffn_dim": 1 << 20, "max_seq_len": 1 << 24}


def bounded(arch: str, name: str, v: Any) -> int:
    """`v` if it is an int in [1, LIMITS[name]], else ConfigError naming the field."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= LIMITS[name]:
        raise ConfigError(f"{arch}: {name} must be an int in [1, {LIMITS[name]}], got {brief(v)}")
    return v


def _gguf_scalar(md: dict[str, Any], key: str, default: Any = _MISSING) -> Any:
    v = md.get(key, default)
    if v is _MISSING:
        raise ConfigError(f"GGUF metadata lacks {key!r}")
    if isinstance(v, (list, tuple)):
        if len(set(v)) != 1:
            raise UnsupportedError(f"per-layer values for {key!r} are not supported: {brief(list(v))}")
        v = v[0]
    return v


def _gguf_rope_scaling(fam: Family, md: dict[str, Any], ctx: int) -> RopeScaling | None:
    arch = fam.arch
    k = f"{arch}.rope.scaling."
    kind = md.get(k + "type")
    if kind is None and fam.longrope and k + "attn_factor" in md:
        kind = "longrope"   # Phi-3 converter writes attn_factor + factor tensors, no type
    if kind in (None, "none"):
        return None
    factor = md.get(k + "factor")
    orig = md.get(k + "original_context_length")
    if kind == "linear":
        return RopeScaling(kind="linear", factor=float(factor or 1.0))
    if kind == "yarn":
        return RopeScaling(kind="yarn", factor=float(factor or 1.0), original_max_position_embeddings=int(orig or ctx),
                           beta_fast=md.get(k + "yarn_beta_fast"), beta_slow=md.get(k + "yarn_beta_slow"),
                           attention_factor=md.get(k + "yarn_attn_factor"))
    if kind == "longrope":
        orig = int(orig or ctx)
        return RopeScaling(kind="longrope", factor=ctx / orig, original_max_position_embeddings=orig,
                           attention_factor=md.get(k + "attn_factor"))
    raise UnsupportedError(f"{arch}: unsupported GGUF rope scaling type {brief(kind)}; supported: none, linear, yarn, longrope")


def _gguf_layer_types(md: dict[str, Any], fam: Family, n_layers: int) -> tuple[tuple[str, ...], int | None]:
    """(layer types, window) as llama.cpp's load_hparams sets them: a family's default
    window and pattern (Gemma 2 slides every other layer, window 4096 unless set; Gemma 3
    5 of 6 layers when a window is set), else every layer slides when a window is set."""
    window = int(_gguf_scalar(md, f"{fam.arch}.attention.sliding_window", fam.gguf_window_default)) or None
    if not window:
        return (), None
    pattern = md.get(f"{fam.arch}.attention.sliding_window_pattern", fam.sliding_pattern)
    if isinstance(pattern, (list, tuple)):
        types = tuple("sliding" if p else "full" for p in pattern)
    else:
        types = sliding_pattern(n_layers, int(pattern) if pattern else None)
    return (types, window) if "sliding" in types else ((), None)


def _from_gguf(cls: type[DecoderConfig], md: dict[str, Any]) -> DecoderConfig:
    fam = gguf_family(md.get("general.architecture"))
    arch = fam.arch
    g = lambda key, default=_MISSING: _gguf_scalar(md, f"{arch}.{key}", default)  # noqa: E731
    dim = bounded(arch, "dim", int(g("embedding_length")))
    n_layers = bounded(arch, "n_layers", int(g("block_count")))
    n_heads = bounded(arch, "n_heads", int(g("attention.head_count")))
    head_dim = int(g("attention.key_length", dim // n_heads))
    ctx = bounded(arch, "max_seq_len", int(g("context_length")))
    vocab = g("vocab_size", None) or len(md.get("tokenizer.ggml.tokens") or ())
    if not vocab:
        raise ConfigError(f"GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens")
    layer_types, window = _gguf_layer_types(md, fam, n_layers)
    attn_scale = g("attention.scale", None)
    if attn_scale is None and n_layers == fam.gguf_27b_layers:
        attn_scale = float(dim // n_heads) ** -0.5    # llama.cpp: 27B models scale by n_embd / n_head
    attn_cap, final_cap = g("attn_logit_softcapping", fam.softcaps[0]), g("final_logit_softcapping", fam.softcaps[1])
    return cls(
        arch=arch, vocab_size=int(vocab), dim=dim, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=int(g("attention.head_count_kv", n_heads)), head_dim=head_dim,
        ffn_dim=int(g("feed_forward_length")), max_seq_len=ctx,
        norm_eps=float(g("attention.layer_norm_rms_epsilon")),
        rope_theta=float(g("rope.freq_base", 10000.0)), rope_scaling=_gguf_rope_scaling(fam, md, ctx),
        rope_local_theta=float(g("rope.freq_base_swa", 10000.0)) if fam.local_rope and window else None,
        rope_neox=fam.rope_neox, rope_dim=int(g("rope.dimension_count", head_dim)),
        partial_rotary_factor=int(g("rope.dimension_count", head_dim)) / head_dim,
        attn_bias=fam.attn_bias, qk_norm=fam.qk_norm, activation=fam.activation,
        embed_scale=float(dim) ** 0.5 if fam.embed_scale else None,
        attn_softcap=float(attn_cap) if attn_cap else None, final_softcap=float(final_cap) if final_cap else None,
        attn_scale=float(attn_scale) if attn_scale is not None else None,
        sliding_window=window, layer_types=layer_types, post_norms=fam.post_norms,
        fused_qkv=fam.fused, fused_gate_up=fam.fused,
    )


def _to_gguf(c: DecoderConfig) -> dict[str, Any]:
    a = c.arch
    md: dict[str, Any] = {
        "general.architecture": a,
        f"{a}.vocab_size": c.vocab_size,
        f"{a}.context_length": c.max_seq_len,
        f"{a}.embedding_length": c.dim,
        f"{a}.block_count": c.n_layers,
        f"{a}.feed_forward_length": c.ffn_dim,
        f"{a}.attention.head_count": c.n_heads,
        f"{a}.attention.head_count_kv": c.n_kv_heads,
        f"{a}.attention.key_length": c.head_dim,
        f"{a}.attention.value_length": c.head_dim,
        f"{a}.attention.layer_norm_rms_epsilon": float(c.norm_eps),
        f"{a}.rope.freq_base": float(c.rope_theta),
        f"{a}.rope.dimension_count": c.rotary_dim,
    }
    if c.rope_local_theta is not None:
        md[f"{a}.rope.freq_base_swa"] = float(c.rope_local_theta)
    if c.sliding_window:
        md[f"{a}.attention.sliding_window"] = int(c.sliding_window)
        md[f"{a}.attention.sliding_window_pattern"] = [c.is_sliding(i) for i in range(c.n_layers)]
    elif gguf_family(a).gguf_window_zero:
        md[f"{a}.attention.sliding_window"] = 0
    if c.attn_softcap:
        md[f"{a}.attn_logit_softcapping"] = float(c.attn_softcap)
    if c.final_softcap:
        md[f"{a}.final_logit_softcapping"] = float(c.final_softcap)
    if c.attn_scale is not None:
        md[f"{a}.attention.scale"] = float(c.attn_scale)
    md.update(_gguf_rope_keys(c))
    return md


def _gguf_rope_keys(c: DecoderConfig) -> dict[str, Any]:
    s, k = c.rope_scaling, f"{c.arch}.rope.scaling."
    if s is None or s.kind == "default" or s.kind == "llama3":
        return {}   # llama3 travels as the rope_freqs tensor, like the converter writes it
    if s.kind == "linear":
        return {k + "type": "linear", k + "factor": float(s.factor)}
    orig = s.original_max_position_embeddings
    if s.kind == "yarn":
        assert orig is not None   # RopeScaling requires it for yarn
        if s.mscale or s.mscale_all_dim or not s.truncate:
            raise UnsupportedError(f"{c.arch}: yarn mscale/mscale_all_dim/truncate=False have no GGUF form")
        out = {k + "type": "yarn", k + "factor": float(s.factor),
               k + "original_context_length": int(orig)}
        # as the converter: only what the HF config states explicitly
        for key, v in (("yarn_beta_fast", s.beta_fast), ("yarn_beta_slow", s.beta_slow),
                       ("yarn_attn_factor", s.attention_factor)):
            if v is not None:
                out[k + key] = float(v)
        return out
    if s.kind == "longrope":
        assert orig is not None   # RopeScaling requires it for longrope
        return {k + "type": "longrope", k + "original_context_length": int(orig),
                k + "attn_factor": float(longrope_attention_factor(s))}
    raise UnsupportedError(f"{c.arch}: rope scaling {brief(s.kind)} has no GGUF form (llama.cpp has no dynamic NTK)")


def longrope_attention_factor(s: RopeScaling) -> float:
    """cos/sin scale of longrope: the configured one, else transformers'
    `_compute_longrope_parameters` default sqrt(1 + ln(factor) / ln(original_max))."""
    if s.attention_factor is not None:
        return float(s.attention_factor)
    if s.factor <= 1.0:
        return 1.0
    assert s.original_max_position_embeddings is not None   # RopeScaling requires it for longrope
    return math.sqrt(1 + math.log(s.factor) / math.log(s.original_max_position_embeddings))
