"""LLaVA-style vision-language models: a vision tower (CLIP or SigLIP, `models/vision.py`),
a projector (linear -> act -> linear) and any decoder of the decoder family.

    features  hidden states of the tower at `vision_feature_layer` (an index into HF's
              `hidden_states`: 0 = the embeddings entering the first block, -1 = the last
              block's output before any post-norm; a list concatenates several on the
              feature axis); strategy "default" drops the first token (CLS), "full" keeps all
    project   mm.2(act(mm.0(features))) -> (N, text dim)
    splice    each `<image>` token of the prompt is expanded to N copies (as HF's
              LlavaProcessor does); those positions take the projected rows instead of
              their token embeddings (HF LlavaModel's masked_scatter) and the decoder runs
              on the embeddings (`Decoder.forward(..., embeds=)`).

Only the blocks up to the deepest selected layer run (llama.cpp's clip does the same).
Projector tensors use llama.cpp clip names `mm.0.*`, `mm.2.*`. `VLMEngine` adds
`images=` to the Engine's generate / stream / chat; a prompt must hold one `<image>` per
image (InputError otherwise, the check HF's model makes; we do not prepend one).
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend, Ops
from edgeformer.config import DecoderConfig
from edgeformer.encoder_config import VisionConfig, hf_activation
from edgeformer.errors import ConfigError, FormatError, InputError, UnsupportedError
from edgeformer.formats.tensor_map import vision_tensors_from_hf
from edgeformer.models.encoder import Linear, TensorSource, act, encoder_layer, load_linear
from edgeformer.models.vision import VisionEncoder
from edgeformer.quant.qtypes import QTensor

STRATEGIES = ("default", "full")
_VISION_PREFIXES = ("model.vision_tower.", "vision_tower.")
_PROJ_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")
_PROJ_NAMES = {"linear_1": "mm.0", "linear_2": "mm.2"}


@dataclass(frozen=True)
class VLMConfig:
    vision: VisionConfig
    text: DecoderConfig
    image_token_id: int
    feature_layers: tuple[int, ...]     # HF hidden_states indices, as given (negatives allowed)
    select_strategy: str = "default"    # "default" drops the first (CLS) token, "full" keeps it
    projector_act: str = "gelu"         # our activation name (encoder.ACTIVATIONS)
    projector_bias: bool = True

    def __post_init__(self) -> None:
        if self.select_strategy not in STRATEGIES:
            raise ConfigError(f"unknown vision_feature_select_strategy {self.select_strategy!r}; "
                              f"supported: {', '.join(STRATEGIES)}")
        n = self.vision.encoder.n_layers
        if not self.feature_layers or any(not -(n + 1) <= k <= n for k in self.feature_layers):
            raise ConfigError(f"vision_feature_layer {list(self.feature_layers)} out of range for a "
                              f"{n}-layer vision tower (indices -{n + 1}..{n})")
        if not 0 <= self.image_token_id < self.text.vocab_size:
            raise ConfigError(f"image_token_index {self.image_token_id} outside the text vocabulary "
                              f"({self.text.vocab_size})")

    @property
    def layer_indices(self) -> tuple[int, ...]:
        """feature_layers as non-negative indices into [embeddings, block 1 .. block n]."""
        n = self.vision.encoder.n_layers
        return tuple(k if k >= 0 else n + 1 + k for k in self.feature_layers)

    @property
    def n_image_tokens(self) -> int:
        """Feature rows per image at the trained resolution."""
        v = self.vision
        return v.grid ** 2 + (1 if v.class_token else 0) - (1 if self.select_strategy == "default" else 0)

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any]) -> "VLMConfig":
        """From an HF LlavaConfig dict (`model_type` "llava"). UnsupportedError for other
        model types or a tower other than CLIP / SigLIP; ConfigError for bad values."""
        if cfg.get("model_type") != "llava":
            raise UnsupportedError(f"unsupported vision-language model_type {cfg.get('model_type')!r}; "
                                   "supported: llava")
        vc, tc = cfg.get("vision_config"), cfg.get("text_config")
        if not isinstance(vc, dict) or not isinstance(tc, dict):
            raise ConfigError("llava config needs vision_config and text_config objects")
        if vc.get("model_type", "clip_vision_model") not in ("clip_vision_model", "siglip_vision_model"):
            raise UnsupportedError(f"llava vision tower {vc.get('model_type')!r}; supported: clip_vision_model, "
                                   "siglip_vision_model")
        vision = VisionConfig.from_hf({"model_type": "clip_vision_model", **vc})
        # LlavaConfig.__post_init__: a tied text config ties the whole model, and vice versa
        text = DecoderConfig.from_hf({**tc, "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", False)
                                                                         or tc.get("tie_word_embeddings", False))})
        layers = cfg.get("vision_feature_layer", -2)
        layers = (layers,) if isinstance(layers, int) else tuple(int(k) for k in layers)
        tok = cfg.get("image_token_index", cfg.get("image_token_id", 32000))
        return cls(vision, text, int(tok), layers, cfg.get("vision_feature_select_strategy", "default"),
                   hf_activation(cfg.get("projector_hidden_act", "gelu")),
                   bool(cfg.get("multimodal_projector_bias", True)))


def split_llava_tensors(hf: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """HF LLaVA state (transformers 4 or 5 names; values of any kind, passed through) ->
    (vision tower tensors with HF names below the tower, projector tensors as
    `mm.0.*`/`mm.2.*`, text tensors with their HF names). UnsupportedError for an unknown
    projector tensor."""
    vision, proj, text = {}, {}, {}
    for name, v in hf.items():
        vp = next((p for p in _VISION_PREFIXES if name.startswith(p)), None)
        pp = next((p for p in _PROJ_PREFIXES if name.startswith(p)), None)
        if vp:
            vision[name[len(vp):]] = v
        elif pp:
            mod, _, kind = name[len(pp):].partition(".")
            if mod not in _PROJ_NAMES or kind not in ("weight", "bias"):
                raise UnsupportedError(f"unknown projector tensor {name!r}")
            proj[f"{_PROJ_NAMES[mod]}.{kind}"] = v
        else:
            text[name] = v
    return vision, proj, text


class LlavaModel:
    """Vision tower + projector + decoder. `image_features(pixels)` -> (N, dim) rows;
    `forward(tokens, cache, features)` runs a prompt whose image tokens are expanded."""

    def __init__(self, config: VLMConfig, vision: VisionEncoder, decoder: Any,
                 projector: Mapping[str, np.ndarray | QTensor], backend: Backend, origin: object = "<tensors>") -> None:
        c = config
        if decoder.config.dim != c.text.dim or decoder.config.vocab_size != c.text.vocab_size:
            raise ConfigError("the decoder does not match the VLM's text config")
        self.config, self.vision, self.decoder, self.backend = c, vision, decoder, backend
        self.ops = Ops(backend)
        src = TensorSource(projector, backend, origin)
        d_in = c.vision.encoder.dim * len(c.feature_layers)
        self.mm0: Linear = load_linear(src, "mm.0", c.text.dim, d_in, bias=c.projector_bias)
        self.mm2: Linear = load_linear(src, "mm.2", c.text.dim, c.text.dim, bias=c.projector_bias)

    def vision_hidden_states(self, pixels: np.ndarray) -> list[np.ndarray]:
        """HF `hidden_states` of the tower for one (C, H, W) image, up to the deepest
        selected layer: [embeddings (after CLIP's pre-norm), block 1 out, ...]."""
        enc, ops = self.vision, self.vision.ops
        x = enc.embed(pixels)     # InputError for a grid other than the trained one
        if enc.pre_norm is not None:
            x = ops.layer_norm(x, enc.pre_norm.w, enc.pre_norm.b, enc.config.encoder.norm_eps, name="pre_norm")
        hs = [x]
        for il, lyr in enumerate(enc.layers[:max(self.config.layer_indices)]):
            x = encoder_layer(ops, enc.config.encoder, lyr, x, il)
            hs.append(x)
        return hs

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """One preprocessed image (C, H, W) float32 -> projected rows (N, text dim), as HF
        `LlavaModel.get_image_features`."""
        c, ops = self.config, self.ops
        hs = self.vision_hidden_states(pixels)
        drop = 1 if c.select_strategy == "default" else 0
        feats = [hs[k][drop:] for k in c.layer_indices]
        x = feats[0] if len(feats) == 1 else np.concatenate(feats, axis=-1)        # (N, D * n_layers)
        x = ops.linear(np.ascontiguousarray(x), self.mm0.w, self.mm0.b, name="mm_0")
        x = act(ops, x, c.projector_act, "mm_act")
        return ops.linear(x, self.mm2.w, self.mm2.b, name="mm_2")

    def embed_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """(T,) ids -> (T, dim) input embeddings as HF's embedding lookup (Gemma's scale
        included). InputError for ids outside the vocabulary."""
        dec, t = self.decoder, np.asarray(tokens)
        if t.ndim != 1 or t.size == 0 or not np.issubdtype(t.dtype, np.integer):
            raise InputError(f"tokens must be a non-empty 1-D int array, got {t.dtype}{list(t.shape)}")
        if t.min() < 0 or t.max() >= self.config.text.vocab_size:
            raise InputError(f"token ids must be in [0, {self.config.text.vocab_size}), got [{t.min()}, {t.max()}]")
        x = dec.ops.embed(dec.tok_embd, t, name="token_embd")
        if self.config.text.embed_scale is not None:
            x = dec.ops.mul(x, np.float32(self.config.text.embed_scale), name="inp_scaled")
        return x

    def expand_prompt(self, ids: Sequence[int], features: Sequence[np.ndarray]) -> list[int]:
        """Each image token of `ids` repeated to its image's feature count (HF
        LlavaProcessor). InputError unless there is exactly one image token per image."""
        tok = self.config.image_token_id
        n = sum(1 for t in ids if t == tok)
        if n != len(features):
            raise InputError(f"the prompt has {n} image token(s) for {len(features)} image(s): put one image "
                             f"token (id {tok}, usually written <image>) where each image goes")
        out: list[int] = []
        it = iter(features)
        for t in ids:
            out.extend([t] * len(next(it)) if t == tok else [t])
        return out

    def forward(self, tokens: np.ndarray, cache: Any, features: Sequence[np.ndarray] = (),
                last_only: bool = False) -> np.ndarray:
        """A prompt with expanded image tokens (one per feature row, in order) -> logits,
        as HF LlavaForConditionalGeneration. InputError if the counts differ."""
        tokens = np.asarray(tokens)
        mask = tokens == self.config.image_token_id
        rows = np.concatenate(list(features), axis=0) if len(features) else np.zeros((0, self.config.text.dim))
        if int(mask.sum()) != rows.shape[0]:
            raise InputError(f"image features and image tokens do not match: {int(mask.sum())} tokens, "
                             f"{rows.shape[0]} feature rows")
        if not mask.any():
            return self.decoder.forward(tokens, cache, last_only)
        x = self.embed_tokens(tokens)
        x[mask] = rows
        return self.decoder.forward(tokens, cache, last_only, embeds=x)


# ---- engine ------------------------------------------------------------------------------

def is_vlm_dir(path: str | os.PathLike) -> bool:
    """Whether `path` is an HF directory of a vision-language model we load here."""
    p = Path(path) / "config.json"
    if not p.is_file():
        return False
    from edgeformer.formats.hf import read_json
    cfg = read_json(p)
    return isinstance(cfg, dict) and cfg.get("model_type") == "llava"


def load_llava(path: str | os.PathLike, backend: Backend) -> tuple[LlavaModel, Any, Any]:
    """(LlavaModel, text Checkpoint, image processor) from an HF LlavaForConditionalGeneration
    directory (config.json, safetensors, optional preprocessor_config.json). FormatError /
    ConfigError / UnsupportedError for a directory we cannot use."""
    from edgeformer.formats.checkpoint import Checkpoint, LazyTensors, TokenizerSpec
    from edgeformer.formats.hf import hf_chat_template, open_shards, read_json, tensor_loader
    from edgeformer.formats.tensor_map import hf_to_gguf_name
    from edgeformer.models.decoder import Decoder

    d = Path(path)
    if not (d / "config.json").is_file():
        raise FormatError(d, "not an HF model directory (no config.json)")
    hf_cfg = read_json(d / "config.json")
    try:
        config = VLMConfig.from_hf(hf_cfg)
    except (UnsupportedError, ConfigError) as e:
        raise type(e)(f"{d / 'config.json'}: {e}") from None
    shards = open_shards(d)
    # memmap views (zero-copy); the text tensors stay lazy below
    vis, proj, text = split_llava_tensors({k: (f, k) for k, f in shards.items()})
    loaders, infos = {}, {}
    for hf_name, (st, _) in text.items():
        g = hf_to_gguf_name(config.text.arch, hf_name)
        if g is None:
            continue
        if g in loaders:
            raise FormatError(d, f"two tensors map to {g!r} (one is {hf_name!r})")
        loaders[g] = tensor_loader(config.text, st, hf_name, g)
        infos[g] = (st.tensors[hf_name].qtype, st.tensors[hf_name].shape)
    tok_cfg = read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    tok_json = d / "tokenizer.json"
    ckpt = Checkpoint(path=d, format="hf", config=config.text, tensors=LazyTensors(loaders, infos), metadata=hf_cfg,
                      tokenizer=TokenizerSpec(tokenizer_json=tok_json if tok_json.is_file() else None,
                                              tokenizer_config=tok_cfg),
                      chat_template=hf_chat_template(d, tok_cfg),
                      file_bytes=sum(st.file_bytes for st in {id(s): s for s in shards.values()}.values()))
    vision = VisionEncoder(config.vision, vision_tensors_from_hf({k: f.qtensor(n) for k, (f, n) in vis.items()}, d),
                           backend, d)
    model = LlavaModel(config, vision, Decoder(ckpt, backend), {k: f.qtensor(n) for k, (f, n) in proj.items()},
                       backend, d)
    return model, ckpt, llava_processor(d, config.vision)


def llava_processor(d: Path, vision: VisionConfig) -> Any:
    """The image processor of `preprocessor_config.json`, else CLIP's (SigLIP's) defaults
    at the tower's resolution. A config asking for pad-to-square gets it applied first."""
    from edgeformer.formats.hf import read_json
    from edgeformer.models.image_processing import PRESETS, ImageProcessor
    pp = d / "preprocessor_config.json"
    if pp.is_file():
        cfg = read_json(pp)
        proc = ImageProcessor.from_hf(cfg)
        if cfg.get("do_pad"):
            mean = cfg.get("image_mean") if cfg.get("do_normalize", True) else None
            return PadToSquare(proc, tuple(int(m * 255) for m in mean) if mean else (0, 0, 0))
        return proc
    s = vision.image_size
    if vision.family == "siglip":
        return replace(PRESETS["siglip"], size={"height": s, "width": s})
    return replace(PRESETS["clip"], size={"shortest_edge": s}, crop=(s, s))


@dataclass(frozen=True)
class PadToSquare:
    """LlavaImageProcessor `do_pad`: pad the RGB image to a square of its longer side,
    centered, with `color` (int(mean * 255) per channel), then run `processor`."""

    processor: Any
    color: tuple[int, ...]

    def __call__(self, image: Any) -> np.ndarray:
        from edgeformer.models.image_processing import MAX_PIXELS, to_rgb
        x = np.array(to_rgb(image))                                 # (H, W, 3) uint8
        h, w, _ = x.shape
        if h != w:
            m = max(h, w)
            if m * m > MAX_PIXELS:    # a thin strip pads to the square of its long side
                raise InputError(f"image of {w} x {h} pixels would pad to {m} x {m}, over the limit of "
                                 f"{MAX_PIXELS} pixels")
            out = np.empty((m, m, 3), np.uint8)
            out[:] = np.asarray(self.color[:3], np.uint8)
            top, left = (m - h) // 2, (m - w) // 2
            out[top:top + h, left:left + w] = x
            x = out
        return self.processor(x)
