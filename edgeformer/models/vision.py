"""Vision transformer encoders: ViT, DINOv2 (with or without registers), CLIP vision,
SigLIP vision, all on the shared pre-LN block of `models/encoder.py`.

    patches   the stride-P patch conv as a reshape + linear: (C, H, W) -> (N, C*P*P) @ W^T
    tokens    [class] + patches (ViT/DINOv2/CLIP), patches only (SigLIP); + positions,
              bicubic-interpolated when the patch grid differs from the trained one;
              DINOv2 register tokens go right after [class], after positions are added
    pre_norm  CLIP's `pre_layrnorm`; post_norm over all tokens (ViT/DINOv2/SigLIP) or only
              on the pooled [class] token (CLIP)
    pooling   "dense_tanh" (ViT pooler), "cls" (DINOv2), "cls_norm" (CLIP), "map" (SigLIP
              attention-pooling head), "none"

Tensor names (GGUF style): `patch_embd.{weight,bias}` (weight (D, C*P*P)), `class_embd`
(D,), `register_embd` (R, D), `position_embd` (N, D), `pre_norm.*`, `post_norm.*`,
`pooler.*`, `blk.{i}.*` (encoder.py), SigLIP head `head.probe` (D,),
`head.attn_{q,k,v,output}.*`, `head.norm.*`, `head.ffn_{up,down}.*`.
HF names map in through `formats.tensor_map.vision_tensors_from_hf` (old checkpoint and
transformers-5 names); the config is `encoder_config.VisionConfig`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend, Ops
from edgeformer.encoder_config import EncoderConfig, VisionConfig
from edgeformer.errors import FormatError, InputError
from edgeformer.formats.tensor_map import vision_tensors_from_hf
from edgeformer.models.encoder import (Linear, Norm, TensorSource, encoder_forward, load_encoder_layers, load_linear,
                                       load_norm, mlp, self_attention)
from edgeformer.quant.qtypes import QTensor


# ---- position-embedding resampling (torch F.interpolate, bicubic, align_corners=False) ---
def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def bicubic_matrix(n_in: int, n_out: int, antialias: bool = False) -> np.ndarray:
    """(n_out, n_in) float64 weights of one axis of torch's bicubic resize with
    align_corners=False: A=-0.75 and clamped border taps (upsample_bicubic2d), or with
    antialias the separable PIL-style filter with A=-0.5, support widened by the
    downscale factor and weights renormalized (_upsample_bicubic2d_aa)."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        if antialias:
            support = 2.0 * scale if scale >= 1.0 else 2.0
            inv = 1.0 / scale if scale >= 1.0 else 1.0
            center = scale * (i + 0.5)
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), n_in)
            j = np.arange(lo, hi)
            w = _cubic((j - center + 0.5) * inv, -0.5)
            m[i, lo:hi] = w / w.sum()
        else:
            src = scale * (i + 0.5) - 0.5
            x0 = math.floor(src)
            t = src - x0
            w = _cubic(np.array([t + 1, t, 1 - t, 2 - t]), -0.75)
            for k in range(4):
                m[i, min(max(x0 - 1 + k, 0), n_in - 1)] += w[k]
    return m


def resample_grid(pos: np.ndarray, grid: int, out_h: int, out_w: int, antialias: bool = False) -> np.ndarray:
    """Patch position embeddings (grid*grid, D) on a square grid -> (out_h*out_w, D)."""
    d = pos.shape[-1]
    g = pos.reshape(grid, grid, d).astype(np.float64)                     # (gh, gw, D)
    wy, wx = bicubic_matrix(grid, out_h, antialias), bicubic_matrix(grid, out_w, antialias)
    out = np.einsum("yh,hwd,xw->yxd", wy, g, wx)                          # (out_h, out_w, D)
    return out.reshape(out_h * out_w, d).astype(np.float32)


@dataclass
class VisionOutput:
    last_hidden_state: np.ndarray     # (T, D) as transformers' last_hidden_state
    pooled: np.ndarray | None         # (D,) as transformers' pooler_output


class VisionEncoder:
    """A vision encoder on a backend; `forward(pixels)` for one (C, H, W) float32 image."""

    def __init__(self, config: VisionConfig, tensors: Mapping[str, np.ndarray | QTensor], backend: Backend,
                 origin: object = "<tensors>") -> None:
        c, e = config, config.encoder
        self.config, self.backend, self.ops = config, backend, Ops(backend)
        src = TensorSource(tensors, backend, origin)
        d, p = e.dim, c.patch_size
        self.patch = load_linear(src, "patch_embd", d, c.n_channels * p * p)
        self.class_embd = src.array("class_embd").reshape(1, d) if c.class_token else None
        self.registers = src.array("register_embd").reshape(c.n_registers, d) if c.n_registers else None
        self.pos = src.array("position_embd")
        if self.pos.shape != (c.n_positions, d):
            raise FormatError(origin, f"position_embd has shape {list(self.pos.shape)}, expected {[c.n_positions, d]}")
        self._pos_cache: dict[tuple[int, int], np.ndarray] = {}
        self.pre_norm = load_norm(src, "pre_norm", d) if c.pre_norm else None
        self.post_norm = load_norm(src, "post_norm", d)
        self.layers = load_encoder_layers(e, src)
        self.pooler = load_linear(src, "pooler", d, d, bias=True) if c.pooling == "dense_tanh" and src.has("pooler.weight") else None
        self.head = _load_head(src, e) if c.pooling == "map" else None

    def positions(self, gh: int, gw: int, interpolate: bool) -> np.ndarray:
        """(n_class + gh*gw, D) position embeddings for a gh x gw patch grid."""
        c = self.config
        if (gh, gw) == (c.grid, c.grid):
            return self.pos
        if not interpolate:
            raise InputError(f"image gives a {gh}x{gw} patch grid, the {c.family} model was trained on "
                             f"{c.grid}x{c.grid} ({c.image_size}px); resize it or allow position interpolation")
        if (gh, gw) not in self._pos_cache:
            n_cls = 1 if c.class_token else 0
            patch = resample_grid(self.pos[n_cls:], c.grid, gh, gw, c.pos_antialias)
            self._pos_cache[(gh, gw)] = np.concatenate([self.pos[:n_cls], patch], axis=0)
        return self._pos_cache[(gh, gw)]

    def embed(self, pixels: np.ndarray, interpolate: bool | None = None) -> np.ndarray:
        """(C, H, W) float32 pixels -> (T, D) token embeddings entering the encoder."""
        c = self.config
        pixels = np.asarray(pixels, dtype=np.float32)
        if pixels.ndim != 3 or pixels.shape[0] != c.n_channels:
            raise InputError(f"pixels must be ({c.n_channels}, H, W), got {list(pixels.shape)}")
        p = c.patch_size
        gh, gw = pixels.shape[1] // p, pixels.shape[2] // p
        if gh == 0 or gw == 0:
            raise InputError(f"image {pixels.shape[1]}x{pixels.shape[2]} is smaller than one {p}x{p} patch")
        # a stride-P conv is a linear map of each patch: (C, gh, P, gw, P) -> (gh, gw, C, P, P)
        patches = pixels[:, :gh * p, :gw * p].reshape(c.n_channels, gh, p, gw, p).transpose(1, 3, 0, 2, 4)
        x = self.ops.linear(patches.reshape(gh * gw, -1), self.patch.w, self.patch.b, name="patch_embd")
        if self.class_embd is not None:
            x = np.concatenate([self.class_embd, x], axis=0)                  # (1 + N, D)
        x = self.ops.add(x, self.positions(gh, gw, c.pos_interp_default if interpolate is None else interpolate),
                         name="position_embd")
        if self.registers is not None:
            x = np.concatenate([x[:1], self.registers, x[1:]], axis=0)        # (1 + R + N, D)
        return x

    def forward(self, pixels: np.ndarray, interpolate: bool | None = None) -> VisionOutput:
        """One image (C, H, W) float32, preprocessed as the model expects -> VisionOutput
        equal to transformers' (last_hidden_state[0], pooler_output[0]). `interpolate`
        allows a patch grid other than the trained one (default: DINOv2 yes, others no)."""
        c, ops, eps = self.config, self.ops, self.config.encoder.norm_eps
        x = self.embed(pixels, interpolate)
        if self.pre_norm is not None:
            x = ops.layer_norm(x, self.pre_norm.w, self.pre_norm.b, eps, name="pre_norm")
        x = encoder_forward(ops, c.encoder, self.layers, x)
        if c.post_norm_all:
            x = ops.layer_norm(x, self.post_norm.w, self.post_norm.b, eps, name="post_norm")
        return VisionOutput(x, self._pool(x))

    def _pool(self, x: np.ndarray) -> np.ndarray | None:
        c, ops = self.config, self.ops
        if c.pooling == "cls":
            return x[0].copy()
        if c.pooling == "cls_norm":
            return ops.layer_norm(x[:1], self.post_norm.w, self.post_norm.b, c.encoder.norm_eps, name="post_norm")[0]
        if c.pooling == "dense_tanh" and self.pooler is not None:
            y = ops.linear(x[:1], self.pooler.w, self.pooler.b, name="pooler")
            return ops.softcap(y, 1.0, name="pooler_tanh")[0]                # softcap with cap 1 is tanh
        if c.pooling == "map" and self.head is not None:
            return _map_head(ops, c.encoder, self.head, x)
        return None


@dataclass
class _Head:
    probe: np.ndarray
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    norm: Norm
    up: Linear
    down: Linear


def _load_head(src: TensorSource, e: EncoderConfig) -> _Head:
    d = e.dim
    probe = src.array("head.probe").reshape(1, d)
    q, k, v, o = (load_linear(src, f"head.attn_{n}", d, d, bias=True) for n in ("q", "k", "v", "output"))
    return _Head(probe, q, k, v, o, load_norm(src, "head.norm", d),
                 load_linear(src, "head.ffn_up", e.ffn_dim, d, bias=True),
                 load_linear(src, "head.ffn_down", d, e.ffn_dim, bias=True))


def _map_head(ops: Ops, e: EncoderConfig, h: _Head, x: np.ndarray) -> np.ndarray:
    """SigLIP multihead attention pooling: a learned probe attends over all tokens, then
    a residual MLP on its LayerNorm -> (D,)."""
    a = self_attention(ops, h.probe, x, h.q, h.k, h.v, h.o, e.n_heads, e.dim // e.n_heads, layer=None)
    n = ops.layer_norm(a, h.norm.w, h.norm.b, e.norm_eps, name="head_norm")
    return ops.add(a, mlp(ops, n, h.up, h.down, None, e.act), name="head_residual")[0]


def load_vision(path: str | os.PathLike, backend: Backend) -> tuple[VisionEncoder, Any]:
    """(encoder, image processor) from an HF model directory: config.json, safetensors
    weights, and preprocessor_config.json (else the family's transformers defaults).
    FormatError/ConfigError/UnsupportedError for a directory we cannot use."""
    from edgeformer.formats.hf import open_shards, read_json
    from edgeformer.models.image_processing import PRESETS, ImageProcessor

    d = Path(path)
    if not (d / "config.json").is_file():
        raise FormatError(d, "not an HF model directory (no config.json)")
    config = VisionConfig.from_hf(read_json(d / "config.json"))
    files = open_shards(d)
    tensors = vision_tensors_from_hf({k: f.qtensor(k) for k, f in files.items()}, origin=d)
    pp = d / "preprocessor_config.json"
    proc = ImageProcessor.from_hf(read_json(pp)) if pp.is_file() else PRESETS[config.family]
    return VisionEncoder(config, tensors, backend, d), proc


def encode_image(encoder: VisionEncoder, processor: Any, image: Any) -> VisionOutput:
    """An image file path, PIL image or uint8 array -> VisionOutput. InputError for a
    file that is not a readable image."""
    from edgeformer.models.image_processing import load_image
    if isinstance(image, (str, os.PathLike)):
        image = load_image(image)
    return encoder.forward(processor(image))
