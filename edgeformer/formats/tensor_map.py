"""HF tensor names -> GGUF tensor names, and the per-family tensor transforms llama.cpp's
`convert_hf_to_gguf.py` applies, done once here so every Checkpoint is in the GGUF
convention:

- llama arch (Llama, Mistral, SmolLM): q and k rows (and biases) permuted per head from
  HF's rotate-half layout to interleaved pairs (`LlamaModel.permute`), so ggml's "NORM"
  rope applies (`rope_neox=False`);
- Gemma 1/2/3: +1 folded into every RMSNorm weight (HF computes x * (1 + w));
- Phi-3 keeps fused `attn_qkv` and fused gate|up in `ffn_up`.

Names follow gguf-py `tensor_mapping.py` (`TensorNameMap`) for these architectures.
"""
from __future__ import annotations

import math
import re

import numpy as np

from edgeformer.errors import UnsupportedError

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
    Raises UnsupportedError for a name the architecture does not have."""
    name = hf_name
    for old, new in _TEXT_PREFIXES:
        if name.startswith(old):
            name = new + name[len(old):]
    if name.startswith(_SKIP_PREFIXES) or name.endswith("rotary_emb.inv_freq"):
        return None
    if name == "lm_head.weight" and arch in ("gemma", "gemma2"):
        return None
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _LAYER_RE.match(name)
    if m:
        table = _LAYER_POST_NORMS if arch in ("gemma2", "gemma3") else _LAYER
        g = table.get(m.group(2))
        if g is not None:
            return f"blk.{m.group(1)}.{g}.{m.group(3)}"
    raise UnsupportedError(f"{arch}: no GGUF name for HF tensor {hf_name!r}")


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf `LlamaModel.permute`: within each head, rows (2, D/2) ->
    (D/2, 2), turning rotate-half pairs (i, i + D/2) into adjacent pairs (2i, 2i + 1)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def transform_hf_tensor(config, gguf_name: str, a: np.ndarray) -> np.ndarray:
    """The tensor as the GGUF convention stores it (row-major, last dim contiguous).
    Norm weights that get +1 come back as float32 (the +1 would round in f16/bf16)."""
    if config.arch == "llama":
        if re.search(r"\.attn_q\.(weight|bias)$", gguf_name):
            return np.ascontiguousarray(permute_rows(a, config.n_heads))
        if re.search(r"\.attn_k\.(weight|bias)$", gguf_name):
            return np.ascontiguousarray(permute_rows(a, config.n_kv_heads))
    if config.arch.startswith("gemma") and gguf_name.endswith("norm.weight"):
        return a.astype(np.float32) + np.float32(1.0)
    return a


def extra_gguf_tensors(config) -> dict[str, np.ndarray]:
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
