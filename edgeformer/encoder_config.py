"""Configs of the encoder models, beside `config.DecoderConfig`: the shared
transformer-encoder stack (`EncoderConfig`), BERT, the vision encoders (ViT, DINOv2,
CLIP, SigLIP) and Whisper. HF `config.json` keys are mapped here, in the `from_hf()`
class methods; the models that run them live in `models/`.

Like `config.py`, this module imports nothing above `errors`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from edgeformer.errors import ConfigError, FormatError, UnsupportedError

NORM_POSITIONS = ("pre", "post")
# "quick_gelu" (CLIP) = x * sigmoid(1.702 x), built from silu by models/encoder.py.
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "relu", "silu")

# HF `hidden_act` -> our activation name
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                  "gelu_fast": "gelu_tanh", "quick_gelu": "quick_gelu", "relu": "relu",
                  "silu": "silu", "swish": "silu"}


@dataclass(frozen=True)
class EncoderConfig:
    """Shape and variant of an encoder stack. Validated on construction (ConfigError)."""

    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    norm_eps: float
    norm_position: str = "pre"      # "pre" (ViT/DINOv2/CLIP/SigLIP) | "post" (BERT)
    act: str = "gelu"
    head_dim: int | None = None     # default dim // n_heads
    ffn_gated: bool = False         # SwiGLU ffn: down(silu(gate(x)) * up(x))
    layer_scale: bool = False       # DINOv2 ls1/ls2

    def __post_init__(self) -> None:
        for k in ("dim", "n_layers", "n_heads", "ffn_dim"):
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"encoder {k} must be a positive int, got {v!r}")
        if self.norm_position not in NORM_POSITIONS:
            raise ConfigError(f"unknown norm_position {self.norm_position!r}; supported: {', '.join(NORM_POSITIONS)}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.act!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ConfigError(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def hd(self) -> int:
        """Head dimension actually used."""
        return self.head_dim or self.dim // self.n_heads


def hf_activation(name: str) -> str:
    """Our activation name for an HF `hidden_act`; ConfigError names the supported ones."""
    if name not in HF_ACTIVATIONS:
        raise ConfigError(f"unsupported hidden_act {name!r}; supported: {', '.join(HF_ACTIVATIONS)}")
    return HF_ACTIVATIONS[name]


# ------------------------------------------------------------------ BERT

BERT_MODEL_TYPES = ("bert",)


@dataclass(frozen=True)
class BertConfig:
    encoder: EncoderConfig
    vocab_size: int
    max_positions: int
    type_vocab_size: int

    @classmethod
    def from_hf(cls, cfg: Mapping) -> "BertConfig":
        """From an HF `config.json` dict of a BERT model; ConfigError/UnsupportedError on
        missing keys or variants we do not implement (relative position embeddings)."""
        mt = cfg.get("model_type")
        if mt not in BERT_MODEL_TYPES:
            raise UnsupportedError(f"not a BERT config: model_type {mt!r}; supported: {', '.join(BERT_MODEL_TYPES)}")
        pet = cfg.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise UnsupportedError(f"BERT position_embedding_type {pet!r} is not supported (only 'absolute')")
        try:
            enc = EncoderConfig(dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
                                n_heads=cfg["num_attention_heads"], ffn_dim=cfg["intermediate_size"],
                                norm_eps=float(cfg.get("layer_norm_eps", 1e-12)), norm_position="post",
                                act=hf_activation(cfg.get("hidden_act", "gelu")))
            return cls(enc, int(cfg["vocab_size"]), int(cfg.get("max_position_embeddings", 512)),
                       int(cfg.get("type_vocab_size", 2)))
        except KeyError as e:
            raise ConfigError(f"BERT config lacks {e.args[0]!r}") from None


# ------------------------------------------------------------------ vision

VISION_FAMILIES = ("vit", "dinov2", "clip", "siglip")
_VISION_HF_TYPES = ("vit", "dinov2", "dinov2_with_registers", "clip_vision_model", "siglip_vision_model")
POOLINGS = ("dense_tanh", "cls", "cls_norm", "map", "none")


@dataclass(frozen=True)
class VisionConfig:
    family: str                   # one of VISION_FAMILIES
    encoder: EncoderConfig
    image_size: int               # trained square resolution
    patch_size: int
    n_channels: int = 3
    class_token: bool = True
    n_registers: int = 0
    pre_norm: bool = False        # CLIP pre_layrnorm
    post_norm_all: bool = True    # post_norm on every token (False: CLIP, pooled only)
    pooling: str = "cls"
    pos_interp_default: bool = False   # DINOv2 always interpolates; others only when asked
    pos_antialias: bool = False   # DINOv2-with-registers resamples with antialias=True

    def __post_init__(self) -> None:
        if self.family not in VISION_FAMILIES:
            raise ConfigError(f"unknown vision family {self.family!r}; supported: {', '.join(VISION_FAMILIES)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {self.pooling!r}; supported: {', '.join(POOLINGS)}")
        if self.patch_size <= 0 or self.image_size < self.patch_size:
            raise ConfigError(f"bad image_size {self.image_size} / patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        """Patches per side at the trained resolution."""
        return self.image_size // self.patch_size

    @property
    def n_positions(self) -> int:
        return self.grid ** 2 + (1 if self.class_token else 0)

    @classmethod
    def from_hf(cls, cfg: Mapping) -> "VisionConfig":
        """From an HF config dict: vit, dinov2, dinov2_with_registers, clip_vision_model /
        clip (its vision_config), siglip_vision_model / siglip (its vision_config)."""
        mt = cfg.get("model_type")
        if mt in ("clip", "siglip"):
            cfg = {**cfg.get("vision_config", {}), "model_type": f"{mt}_vision_model"}
            mt = cfg["model_type"]
        if mt not in _VISION_HF_TYPES:
            raise UnsupportedError(f"unknown vision model_type {mt!r}; supported: {', '.join(_VISION_HF_TYPES)}, clip, siglip")
        try:
            return _vision_from_hf(cfg, mt)
        except KeyError as e:
            raise ConfigError(f"{mt} config lacks {e.args[0]!r}") from None


def _vision_from_hf(cfg: Mapping, mt: str | None) -> VisionConfig:
    d, eps = int(cfg["hidden_size"]), float(cfg.get("layer_norm_eps", 1e-12 if mt == "vit" else 1e-6))

    def enc(ffn_dim: int, **kw) -> EncoderConfig:
        return EncoderConfig(dim=d, n_layers=int(cfg["num_hidden_layers"]), n_heads=int(cfg["num_attention_heads"]),
                             ffn_dim=ffn_dim, norm_eps=eps, act=hf_activation(cfg.get("hidden_act", "gelu")), **kw)

    vision = partial(VisionConfig, image_size=int(cfg["image_size"]), patch_size=int(cfg["patch_size"]),
                     n_channels=int(cfg.get("num_channels", 3)))
    if mt == "vit":
        if cfg.get("pooler_act", "tanh") != "tanh":
            raise UnsupportedError(f"ViT pooler_act {cfg.get('pooler_act')!r} (only tanh)")
        return vision("vit", enc(int(cfg["intermediate_size"])), pooling="dense_tanh")
    if mt in ("dinov2", "dinov2_with_registers"):
        hidden = int(d * cfg.get("mlp_ratio", 4))
        gated = bool(cfg.get("use_swiglu_ffn", False))
        if gated:   # transformers Dinov2SwiGLUFFN: 2/3 of the MLP width, rounded up to a multiple of 8
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return vision("dinov2", enc(hidden, ffn_gated=gated, layer_scale=True),
                      n_registers=int(cfg.get("num_register_tokens", 0)) if mt == "dinov2_with_registers" else 0,
                      pooling="cls", pos_interp_default=True, pos_antialias=mt == "dinov2_with_registers")
    if mt == "clip_vision_model":
        return vision("clip", enc(int(cfg["intermediate_size"])), pre_norm=True, post_norm_all=False,
                      pooling="cls_norm")
    if mt == "siglip_vision_model":
        return vision("siglip", enc(int(cfg["intermediate_size"])), class_token=False,
                      pooling="map" if cfg.get("vision_use_head", True) else "none")
    raise UnsupportedError(f"unknown vision model_type {mt!r}")


# ------------------------------------------------------------------ Whisper

NORM_EPS = 1e-5   # torch nn.LayerNorm default, used by every Whisper LayerNorm


@dataclass(frozen=True)
class WhisperConfig:
    n_mels: int
    n_audio_ctx: int         # encoder positions (1500 = 30 s)
    n_audio_layers: int
    n_audio_heads: int
    n_text_ctx: int          # decoder positions (448)
    n_text_layers: int
    n_text_heads: int
    dim: int                 # d_model, shared by encoder and decoder
    audio_ffn_dim: int
    text_ffn_dim: int
    vocab_size: int

    def __post_init__(self) -> None:
        for k, v in self.__dict__.items():
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"whisper {k} must be a positive int, got {v!r}")
        for h in (self.n_audio_heads, self.n_text_heads):
            if self.dim % h:
                raise ConfigError(f"whisper dim {self.dim} is not a multiple of {h} heads")

    @property
    def n_frames(self) -> int:
        """Mel frames per window: conv2 has stride 2."""
        return 2 * self.n_audio_ctx

    @property
    def is_multilingual(self) -> bool:
        """English-only models have 51864 tokens, multilingual ones 51865+ (OpenAI
        whisper `Whisper.is_multilingual`: n_vocab >= 51865)."""
        return self.vocab_size >= 51865

    def encoder(self) -> EncoderConfig:
        return EncoderConfig(dim=self.dim, n_layers=self.n_audio_layers, n_heads=self.n_audio_heads,
                             ffn_dim=self.audio_ffn_dim, norm_eps=NORM_EPS, norm_position="pre", act="gelu")

    @classmethod
    def from_hf(cls, cfg: Mapping) -> "WhisperConfig":
        """From an HF `config.json` dict (`model_type: whisper`)."""
        if cfg.get("model_type") != "whisper":
            raise ConfigError(f"not a Whisper config: model_type {cfg.get('model_type')!r}")
        act = cfg.get("activation_function", "gelu")
        if act != "gelu":
            raise ConfigError(f"Whisper activation_function {act!r} is not supported (only 'gelu')")
        try:
            return cls(n_mels=cfg["num_mel_bins"], n_audio_ctx=cfg["max_source_positions"],
                       n_audio_layers=cfg["encoder_layers"], n_audio_heads=cfg["encoder_attention_heads"],
                       n_text_ctx=cfg["max_target_positions"], n_text_layers=cfg["decoder_layers"],
                       n_text_heads=cfg["decoder_attention_heads"], dim=cfg["d_model"],
                       audio_ffn_dim=cfg["encoder_ffn_dim"], text_ffn_dim=cfg["decoder_ffn_dim"],
                       vocab_size=cfg["vocab_size"])
        except KeyError as e:
            raise ConfigError(f"Whisper config lacks {e.args[0]!r}") from None

    @classmethod
    def from_tensors(cls, t: Mapping[str, Any], n_audio_heads: int, n_text_heads: int,
                     origin: object = "<tensors>") -> "WhisperConfig":
        """Shapes read off our tensor names (a CTranslate2 file stores only head counts)."""
        def shape(name: str) -> tuple[int, ...]:
            if name not in t:
                raise FormatError(origin, f"missing tensor {name!r}")
            return tuple(t[name].shape)

        def count(prefix: str) -> int:
            return len({m.group(1) for k in t if (m := re.match(rf"{prefix}\.(\d+)\.", k))})

        dim, n_mels, _ = shape("enc.conv1.weight")
        return cls(n_mels=n_mels, n_audio_ctx=shape("enc.position_embd.weight")[0],
                   n_audio_layers=count("enc.blk"), n_audio_heads=n_audio_heads,
                   n_text_ctx=shape("dec.position_embd.weight")[0], n_text_layers=count("dec.blk"),
                   n_text_heads=n_text_heads, dim=dim, audio_ffn_dim=shape("enc.blk.0.ffn_up.weight")[0],
                   text_ffn_dim=shape("dec.blk.0.ffn_up.weight")[0], vocab_size=shape("dec.token_embd.weight")[0])
