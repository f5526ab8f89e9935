"""A model-neutral description of a decoder's blocks: what a backend's fused decode step
(`Backend.decode_step`) and its `why_not_fused` read, instead of a model's own fields.

A `DecoderStack` is built once by the model (`models.decoder.Decoder.describe`) from its
prepared weights. Every block is pre-norm attention then a gated FFN (GLU), each with an
optional post-norm (Gemma 2/3) and a residual add:

    h = rms_norm(x, attn_norm); q, k, v = qkv projections of h (+ biases)
    q, k = rms_norm per head (q_norm / k_norm, Qwen3, Gemma 3); rope(q), rope(k)
    a = attention(q, cached k/v: GQA, window, softcap); a = out(a); a = rms_norm(a, post_attn_norm)
    x = x + a
    h = rms_norm(x, ffn_norm); h = act(gate(h)) * up(h); h = down(h); h = rms_norm(h, post_ffn_norm)
    x = x + h

Projections are `Proj(weight, bias)` with the backend's prepared `Weight` (its qtype and
handle): `qkv` is one projection onto q|k|v joined, or three (q, k, v); `gate_up` one onto
[gate | up], or two. A block's `attention.rope` names which of the step's two ropes
rotates it ("full", or "sliding" for Gemma's local layers); the step receives both as
(inv_freq, mscale) for its position. Descriptions compare by identity (`eq=False`), so a
backend may key per-model plans on them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeformer.backends.base import Weight


@dataclass(frozen=True, eq=False)
class Proj:
    """y = x @ weight.T (+ bias)."""

    weight: Weight
    bias: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Attention:
    """One block's attention: grouped-query (n_heads queries over n_kv_heads cached heads),
    scores scaled by `scale`, keys within `window` positions (None: all), logits soft-capped
    at `softcap` (None: not), rotated by the step's `rope` ("full" / "sliding") in NeoX
    (half-split) or interleaved order."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    scale: float
    window: int | None
    softcap: float | None
    rope: str
    neox: bool


@dataclass(frozen=True, eq=False)
class Block:
    """One pre-norm transformer block (module docstring); None where the family has no such part."""

    attn_norm: np.ndarray
    qkv: tuple[Proj, ...]                  # (q|k|v,) or (q, k, v)
    q_norm: np.ndarray | None
    k_norm: np.ndarray | None
    out: Proj
    post_attn_norm: np.ndarray | None
    ffn_norm: np.ndarray
    gate_up: tuple[Proj, ...]              # ([gate | up],) or (gate, up)
    down: Proj
    post_ffn_norm: np.ndarray | None
    attention: Attention

    def projections(self) -> tuple[Proj, ...]:
        return self.qkv + (self.out,) + self.gate_up + (self.down,)


@dataclass(frozen=True, eq=False)
class DecoderStack:
    """A decoder's blocks for a fused step: model width `dim`, FFN width `ffn_dim`, the
    FFN's gate activation (a `kernels.activation` name), every norm's epsilon, and whether
    the rope frequencies change with the sequence length (dynamic NTK, longrope)."""

    dim: int
    ffn_dim: int
    activation: str
    norm_eps: float
    rope_varies: bool
    blocks: tuple[Block, ...]
