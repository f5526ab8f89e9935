"""HF tensor names -> GGUF tensor names, and the per-family tensor transforms llama.cpp's
`convert_hf_to_gguf.py` applies, done once here so every Checkpoint is in the GGUF
convention:

- llama arch (Llama, Mistral, SmolLM): q and k rows (and biases) permuted per head from
  HF's rotate-half layout to interleaved pairs (`LlamaModel.permute`), so ggml's "NORM"
  rope applies (`rope_neox=False`);
- Gemma 1/2/3: +1 folded into every RMSNorm weight (HF computes x * (1 + w));
- Phi-3 keeps fused `attn_qkv` and fused gate|up in `ffn_up`.

Vision encoders (ViT, DINOv2, CLIP, SigLIP) map into `models/vision.py`'s names through
`vision_tensors_from_hf`.

Which family does what is `config.FAMILIES`. Names follow gguf-py `tensor_mapping.py`
(`TensorNameMap`) for these architectures.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping

import numpy as np

from edgeformer.config import DecoderConfig, gguf_family
from edgeformer.errors import FormatError, UnsupportedError, brief
from edgeformer.quant.dequant import dequantize
from edgeformer.quant.qtypes import QTensor

_GLOBAL = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}

# HF module path inside `model.layers.{i}.` -> GGUF name inside `blk.{i}.`
_LAYER = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.qkv_proj": "attn_qkv",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "post_attention_layernorm": "ffn_norm",     # llama-style: the norm before the MLP
    "pre_feedforward_layernorm": "ffn_norm",
    "post_feedforward_layernorm": "post_ffw_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "mlp.gate_up_proj": "ffn_up",
}
# Gemma 2/3 have four norms per layer: HF's post_attention_layernorm really is post-attention.
_LAYER_POST_NORMS = {**_LAYER, "post_attention_layernorm": "post_attention_norm"}

# Prefixes of multimodal checkpoints whose text model we read (Gemma 3 conditional
# generation in transformers 4.x and 5.x layouts).
_TEXT_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                  ("language_model.lm_head.", "lm_head."))
_SKIP_PREFIXES = ("model.vision_tower.", "vision_tower.", "model.multi_modal_projector.",
                  "multi_modal_projector.", "vision_model.")
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def hf_to_gguf_name(arch: str, hf_name: str) -> str | None:
    """GGUF name for an HF tensor name, or None for tensors to skip (rotary inv_freq
    buffers, vision towers, and `lm_head` of Gemma 1/2, which llama.cpp always ties).
    Raises UnsupportedError for an unknown architecture or a name it does not have."""
    fam = gguf_family(arch)
    name = hf_name
    for old, new in _TEXT_PREFIXES:
        if name.startswith(old):
            name = new + name[len(old):]
    if name.startswith(_SKIP_PREFIXES) or name.endswith("rotary_emb.inv_freq"):
        return None
    if name == "lm_head.weight" and fam.always_tied:
        return None
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _LAYER_RE.match(name)
    if m:
        table = _LAYER_POST_NORMS if fam.post_norms else _LAYER
        g = table.get(m.group(2))
        if g is not None:
            return f"blk.{m.group(1)}.{g}.{m.group(3)}"
    raise UnsupportedError(f"{arch}: no GGUF name for HF tensor {brief(hf_name)}")


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf `LlamaModel.permute`: within each head, rows (2, D/2) ->
    (D/2, 2), turning rotate-half pairs (i, i + D/2) into adjacent pairs (2i, 2i + 1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def transform_hf_tensor(config: DecoderConfig, gguf_name: str, a: np.ndarray) -> np.ndarray:
    """The tensor as the GGUF convention stores it (row-major, last dim contiguous).
    Norm weights that get +1 come back as float32 (the +1 would round in f16/bf16)."""
    if not config.rope_neox:
        if re.search(r"\.attn_q\.(weight|bias)$", gguf_name):
            return np.ascontiguousarray(permute_rows(a, config.n_heads))
        if re.search(r"\.attn_k\.(weight|bias)$", gguf_name):
            return np.ascontiguousarray(permute_rows(a, config.n_kv_heads))
    if gguf_family(config.arch).norm_plus_one and gguf_name.endswith("norm.weight"):
        return a.astype(np.float32) + np.float32(1.0)
    return a


def extra_gguf_tensors(config: DecoderConfig) -> dict[str, np.ndarray]:
    """Tensors llama.cpp's converter derives from the config (`generate_extra_tensors`):
    llama3 rope as `rope_freqs.weight` (divisors of each inverse frequency), longrope as
    `rope_factors_long/short.weight`. Float32, GGUF names."""
    s = config.rope_scaling
    if s is None:
        return {}
    if s.kind == "llama3":
        return {"rope_freqs.weight": _llama3_freq_factors(config.rope_theta, config.rotary_dim, s)}
    if s.kind == "longrope" and s.long_factor is not None and s.short_factor is not None:
        return {"rope_factors_long.weight": np.asarray(s.long_factor, dtype=np.float32),
                "rope_factors_short.weight": np.asarray(s.short_factor, dtype=np.float32)}
    return {}


def _llama3_freq_factors(theta: float, dim: int, s) -> np.ndarray:
    """convert_hf_to_gguf `LlamaModel.generate_extra_tensors`: 1 for short wavelengths,
    `factor` for long ones, 1 / ((1 - smooth) / factor + smooth) in between."""
    freqs = 1.0 / (np.float32(theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    old = s.original_max_position_embeddings
    lo, hi, factor = s.low_freq_factor, s.high_freq_factor, s.factor
    wavelen = 2 * math.pi / freqs.astype(np.float64)
    smooth = (old / wavelen - lo) / (hi - lo)
    out = np.where(wavelen < old / hi, 1.0,
                   np.where(wavelen > old / lo, factor, 1 / ((1 - smooth) / factor + smooth)))
    return out.astype(np.float32)


# ------------------------------------------------------------------ vision encoders
# HF ViT / DINOv2 / CLIP / SigLIP names -> the names of models/vision.py
_VISION_PREFIXES = ("vision_model.", "vit.", "dinov2.", "dinov2_with_registers.", "model.vision_tower.", "backbone.")
_VISION_LAYER_RE = re.compile(r"(?:encoder\.layer|encoder\.layers|layers)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
_VISION_LAYER = {
    # ViT / DINOv2 checkpoints, and transformers-5 in-memory names
    "attention.attention.query": "attn_q", "attention.attention.key": "attn_k", "attention.attention.value": "attn_v",
    "attention.output.dense": "attn_output", "attention.q_proj": "attn_q", "attention.k_proj": "attn_k",
    "attention.v_proj": "attn_v", "attention.o_proj": "attn_output",
    "layernorm_before": "attn_norm", "layernorm_after": "ffn_norm", "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down", "norm1": "attn_norm", "norm2": "ffn_norm", "layer_scale1": "ls1",
    "layer_scale2": "ls2", "mlp.fc1": "ffn_up", "mlp.fc2": "ffn_down", "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "mlp.weights_out": "ffn_down",
    # CLIP / SigLIP
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_output", "layer_norm1": "attn_norm", "layer_norm2": "ffn_norm",
}
_VISION_GLOBAL = {
    "embeddings.patch_embeddings.projection.weight": "patch_embd.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embd.bias",
    "embeddings.patch_embedding.weight": "patch_embd.weight",
    "embeddings.patch_embedding.bias": "patch_embd.bias",
    "embeddings.cls_token": "class_embd", "embeddings.class_embedding": "class_embd",
    "embeddings.register_tokens": "register_embd",
    "embeddings.position_embeddings": "position_embd", "embeddings.position_embedding.weight": "position_embd",
    "pre_layrnorm.weight": "pre_norm.weight", "pre_layrnorm.bias": "pre_norm.bias",
    "layernorm.weight": "post_norm.weight", "layernorm.bias": "post_norm.bias",
    "post_layernorm.weight": "post_norm.weight", "post_layernorm.bias": "post_norm.bias",
    "pooler.dense.weight": "pooler.weight", "pooler.dense.bias": "pooler.bias",
    "head.probe": "head.probe", "head.attention.out_proj.weight": "head.attn_output.weight",
    "head.attention.out_proj.bias": "head.attn_output.bias", "head.layernorm.weight": "head.norm.weight",
    "head.layernorm.bias": "head.norm.bias", "head.mlp.fc1.weight": "head.ffn_up.weight",
    "head.mlp.fc1.bias": "head.ffn_up.bias", "head.mlp.fc2.weight": "head.ffn_down.weight",
    "head.mlp.fc2.bias": "head.ffn_down.bias",
}
_VISION_SKIP = ("embeddings.position_ids", "embeddings.mask_token", "classifier.")
# tensors stored with leading batch dims of 1: (1, 1, D) -> (D,), (1, N, D) -> (N, D)
_VISION_SQUEEZE = {"class_embd": 1, "register_embd": 2, "position_embd": 2, "head.probe": 1}


def _f32(a: np.ndarray | QTensor) -> np.ndarray:
    return dequantize(a) if isinstance(a, QTensor) else np.asarray(a, dtype=np.float32)


def vision_tensors_from_hf(hf: Mapping[str, np.ndarray | QTensor], origin: object = "<tensors>") -> dict[str, np.ndarray]:
    """HF vision-encoder state (any of the families, old or new names) -> our names and
    layouts: patch weight flattened to (D, C*P*P), leading 1-dims dropped, SigLIP's
    packed `in_proj` and DINOv2's fused `weights_in` split. UnsupportedError for an
    unknown tensor name, FormatError for a known one of the wrong rank."""
    out: dict[str, np.ndarray] = {}
    for hf_name, v in hf.items():
        name = hf_name
        for p in _VISION_PREFIXES:
            if name.startswith(p):
                name = name[len(p):]
        if name.startswith(_VISION_SKIP):
            continue
        a = _f32(v)
        if name in ("head.attention.in_proj_weight", "head.attention.in_proj_bias"):
            kind = "weight" if name.endswith("weight") else "bias"
            for part, x in zip(("q", "k", "v"), np.split(a, 3, axis=0)):
                out[f"head.attn_{part}.{kind}"] = x
            continue
        m = _VISION_LAYER_RE.match(name)
        if m:
            i, mod, kind = m.groups()
            if mod == "mlp.weights_in":   # original DINOv2 SwiGLU: [gate; up] stacked on dim 0
                gate, up = np.split(a, 2, axis=0)
                out[f"blk.{i}.ffn_gate.{kind}"], out[f"blk.{i}.ffn_up.{kind}"] = gate, up
                continue
            if mod not in _VISION_LAYER:
                raise UnsupportedError(f"{origin}: unknown vision tensor {brief(hf_name)}")
            ours = _VISION_LAYER[mod]
            out[f"blk.{i}.{ours}" if kind == "lambda1" else f"blk.{i}.{ours}.{kind}"] = a
            continue
        if name not in _VISION_GLOBAL:
            raise UnsupportedError(f"{origin}: unknown vision tensor {brief(hf_name)}")
        ours = _VISION_GLOBAL[name]
        if ours in _VISION_SQUEEZE:
            keep = _VISION_SQUEEZE[ours]
            if a.ndim < keep or any(s != 1 for s in a.shape[:a.ndim - keep]):
                raise FormatError(origin, f"{hf_name} has shape {list(a.shape)}, expected {keep} non-batch dims")
            a = a.reshape(a.shape[a.ndim - keep:])
        if ours == "patch_embd.weight":
            if a.ndim != 4:
                raise FormatError(origin, f"{hf_name} has shape {list(a.shape)}, expected (D, C, P, P)")
            a = a.reshape(a.shape[0], -1)   # conv (D, C, P, P) -> linear (D, C*P*P), same element order
        out[ours] = a
    return out
