"""Bidirectional transformer-encoder blocks over backend ops, shared by BERT (post-LN)
and the vision encoders ViT / DINOv2 / CLIP / SigLIP (pre-LN).

One block, its variants as config fields (no copied files):

    pre-LN  (ViT, DINOv2, CLIP, SigLIP):  x = x + ls1 * attn(attn_norm(x))
                                          x = x + ls2 * ffn(ffn_norm(x))
    post-LN (BERT):                       x = attn_norm(x + attn(x))
                                          x = ffn_norm(x + ffn(x))

`ls1`/`ls2` are DINOv2's layer scale (absent elsewhere); `ffn` is up -> act -> down, or
SwiGLU (DINOv2-giant) when `ffn_gated`. Tensors per layer use GGUF-style names:
`blk.{i}.attn_q|attn_k|attn_v|attn_output|ffn_up|ffn_gate|ffn_down.{weight,bias}`,
`blk.{i}.attn_norm|ffn_norm.{weight,bias}`, `blk.{i}.ls1|ls2` (vectors).
A sequence is processed alone as (T, dim); batching is the caller's loop, so no padding
mask is needed.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np

from edgeformer.backends.base import Backend, Ops, Weight
from edgeformer.encoder_config import EncoderConfig
from edgeformer.errors import FormatError
from edgeformer.quant.qtypes import QTensor

_QUICK_GELU_ALPHA = 1.702   # transformers activations.QuickGELUActivation: quick_gelu = silu(1.702 x) / 1.702



def as_qtensor(a: np.ndarray | QTensor) -> QTensor:
    """A float array as an F32 QTensor (QTensors pass through)."""
    if isinstance(a, QTensor):
        return a
    return QTensor.from_array(np.ascontiguousarray(a, dtype=np.float32))


class TensorSource:
    """Named tensors of one model with the loaders models need: `linear`, `vector`,
    `array`, `has`. A missing tensor raises FormatError naming `origin` (the file)."""

    def __init__(self, tensors: Mapping[str, np.ndarray | QTensor], backend: Backend, origin: object = "<tensors>") -> None:
        self.tensors = tensors
        self.backend = backend
        self.origin = origin

    def has(self, name: str) -> bool:
        return name in self.tensors

    def _get(self, name: str) -> QTensor:
        if name not in self.tensors:
            raise FormatError(self.origin, f"missing tensor {name!r}")
        return as_qtensor(self.tensors[name])

    def linear(self, name: str, shape: tuple[int, int] | None = None) -> Weight:
        """`{name}.weight` prepared by the backend; FormatError on a shape mismatch."""
        qt = self._get(f"{name}.weight")
        if shape is not None and tuple(qt.shape) != tuple(shape):
            raise FormatError(self.origin, f"{name}.weight has shape {list(qt.shape)}, expected {list(shape)}")
        return self.backend.prepare_weight(qt, f"{name}.weight")

    @overload
    def vector(self, name: str, n: int | None = None, optional: Literal[False] = False) -> np.ndarray: ...
    @overload
    def vector(self, name: str, n: int | None = None, *, optional: bool) -> np.ndarray | None: ...

    def vector(self, name: str, n: int | None = None, optional: bool = False) -> np.ndarray | None:
        """A float32 vector (norm weight, bias, layer scale); None if optional and absent."""
        if optional and name not in self.tensors:
            return None
        v = self.backend.prepare_vector(self._get(name)).reshape(-1)
        if n is not None and v.size != n:
            raise FormatError(self.origin, f"{name} has {v.size} elements, expected {n}")
        return v

    def array(self, name: str) -> np.ndarray:
        """Dequantized float32 array in its stored shape."""
        qt = self._get(name)
        return self.backend.prepare_vector(qt).reshape(qt.shape)


@dataclass
class Linear:
    w: Weight
    b: np.ndarray | None


@dataclass
class Norm:
    w: np.ndarray
    b: np.ndarray | None


@dataclass
class EncoderLayer:
    attn_norm: Norm
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    ffn_norm: Norm
    up: Linear
    down: Linear
    gate: Linear | None = None
    ls1: np.ndarray | None = None
    ls2: np.ndarray | None = None


def load_linear(src: TensorSource, name: str, n_out: int, n_in: int, bias: bool | None = None) -> Linear:
    """`{name}.weight` (n_out, n_in) and `{name}.bias` (required if bias is True, optional
    if None, ignored if False)."""
    w = src.linear(name, (n_out, n_in))
    b = None
    if bias is not False:
        b = src.vector(f"{name}.bias", n_out, optional=bias is None)
    return Linear(w, b)


def load_norm(src: TensorSource, name: str, dim: int) -> Norm:
    return Norm(src.vector(f"{name}.weight", dim), src.vector(f"{name}.bias", dim, optional=True))


def load_encoder_layers(cfg: EncoderConfig, src: TensorSource, prefix: str = "blk") -> list[EncoderLayer]:
    """The `cfg.n_layers` layers `{prefix}.{i}.*` from `src` (see the module docstring)."""
    d, hd, h, f = cfg.dim, cfg.hd, cfg.n_heads, cfg.ffn_dim
    layers = []
    for i in range(cfg.n_layers):
        p = f"{prefix}.{i}"
        layers.append(EncoderLayer(
            attn_norm=load_norm(src, f"{p}.attn_norm", d),
            q=load_linear(src, f"{p}.attn_q", h * hd, d),
            k=load_linear(src, f"{p}.attn_k", h * hd, d),
            v=load_linear(src, f"{p}.attn_v", h * hd, d),
            o=load_linear(src, f"{p}.attn_output", d, h * hd),
            ffn_norm=load_norm(src, f"{p}.ffn_norm", d),
            up=load_linear(src, f"{p}.ffn_up", f, d),
            down=load_linear(src, f"{p}.ffn_down", d, f),
            gate=load_linear(src, f"{p}.ffn_gate", f, d) if cfg.ffn_gated else None,
            ls1=src.vector(f"{p}.ls1", d) if cfg.layer_scale else None,
            ls2=src.vector(f"{p}.ls2", d) if cfg.layer_scale else None,
        ))
    return layers


def norm(ops: Ops, x: np.ndarray, n: Norm, eps: float, name: str, layer: int | None = None) -> np.ndarray:
    return ops.layer_norm(x, n.w, n.b, eps, name=name, layer=layer)


def linear(ops: Ops, x: np.ndarray, lin: Linear, name: str, layer: int | None = None) -> np.ndarray:
    return ops.linear(x, lin.w, lin.b, name=name, layer=layer)


def act(ops: Ops, x: np.ndarray, kind: str, name: str, layer: int | None = None) -> np.ndarray:
    """Activation `kind` (see ACTIVATIONS) through the op facade."""
    if kind == "quick_gelu":
        y = ops.activation(ops.mul(x, _QUICK_GELU_ALPHA, name=f"{name}_in", layer=layer), "silu", name=name, layer=layer)
        return ops.mul(y, 1.0 / _QUICK_GELU_ALPHA, name=f"{name}_out", layer=layer)
    return ops.activation(x, kind, name=name, layer=layer)


def self_attention(ops: Ops, x: np.ndarray, kv: np.ndarray, q: Linear, k: Linear, v: Linear, o: Linear,
                   n_heads: int, head_dim: int, layer: int | None = None) -> np.ndarray:
    """Bidirectional multi-head attention of queries from x (T, D) over keys/values from
    kv (S, D); returns (T, D_out) after the output projection."""
    t, s = x.shape[0], kv.shape[0]
    qh = linear(ops, x, q, "attn_q", layer).reshape(t, n_heads, head_dim)     # (T, H, hd)
    kh = linear(ops, kv, k, "attn_k", layer).reshape(s, n_heads, head_dim)    # (S, H, hd)
    vh = linear(ops, kv, v, "attn_v", layer).reshape(s, n_heads, head_dim)    # (S, H, hd)
    a = ops.attention(qh, kh, vh, scale=head_dim ** -0.5, causal=False, name="attn", layer=layer)
    return linear(ops, a.reshape(t, n_heads * head_dim), o, "attn_output", layer)


def mlp(ops: Ops, x: np.ndarray, up: Linear, down: Linear, gate: Linear | None, kind: str,
        layer: int | None = None) -> np.ndarray:
    """down(act(up(x))), or SwiGLU down(silu(gate(x)) * up(x)) when there is a gate."""
    u = linear(ops, x, up, "ffn_up", layer)
    if gate is not None:
        hidden = ops.glu(linear(ops, x, gate, "ffn_gate", layer), u, "silu", name="ffn_glu", layer=layer)
    else:
        hidden = act(ops, u, kind, "ffn_act", layer)
    return linear(ops, hidden, down, "ffn_down", layer)


def encoder_layer(ops: Ops, cfg: EncoderConfig, lyr: EncoderLayer, x: np.ndarray, il: int) -> np.ndarray:
    """One block on x (T, dim) -> (T, dim); see the module docstring for both variants."""
    eps = cfg.norm_eps
    if cfg.norm_position == "pre":
        h = norm(ops, x, lyr.attn_norm, eps, "attn_norm", il)
        h = self_attention(ops, h, h, lyr.q, lyr.k, lyr.v, lyr.o, cfg.n_heads, cfg.hd, il)
        if lyr.ls1 is not None:
            h = ops.mul(h, lyr.ls1, name="ls1", layer=il)
        x = ops.add(x, h, name="attn_residual", layer=il)
        h = mlp(ops, norm(ops, x, lyr.ffn_norm, eps, "ffn_norm", il), lyr.up, lyr.down, lyr.gate, cfg.act, il)
        if lyr.ls2 is not None:
            h = ops.mul(h, lyr.ls2, name="ls2", layer=il)
        return ops.add(x, h, name="ffn_residual", layer=il)
    h = self_attention(ops, x, x, lyr.q, lyr.k, lyr.v, lyr.o, cfg.n_heads, cfg.hd, il)
    x = norm(ops, ops.add(x, h, name="attn_residual", layer=il), lyr.attn_norm, eps, "attn_norm", il)
    h = mlp(ops, x, lyr.up, lyr.down, lyr.gate, cfg.act, il)
    return norm(ops, ops.add(x, h, name="ffn_residual", layer=il), lyr.ffn_norm, eps, "ffn_norm", il)


def encoder_forward(ops: Ops, cfg: EncoderConfig, layers: list[EncoderLayer], x: np.ndarray) -> np.ndarray:
    """All layers on x (T, dim) float32 -> (T, dim) float32."""
    for il, lyr in enumerate(layers):
        x = encoder_layer(ops, cfg, lyr, x, il)
    return x
