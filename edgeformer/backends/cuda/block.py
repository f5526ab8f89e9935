"""Fused decode step (one token) inside the cuda backend, from a `blocks.DecoderStack`.

The residual stream stays on the device across all blocks: per block, the op path's own
tensor-level kernels (`norm.rms_norm_t`, `linear.linear_t`, `rope.rope_t`,
`attention.paged_decode_t`, `elementwise.glu_t`, torch adds) in the op path's order, so
the step's bits are the op path's (`tests/backends/cuda` checks logits equal). What
still crosses to the host is the cache: the caller's cache keeps the `update_and_fetch`
contract (a host `KVCache` or a paged `BlockTable`), so each block downloads the
token's k/v (2 * Hkv * D floats), appends them there and uploads the visible keys and
values for attention. That upload grows with the context, and it is also why the step
is not captured as a CUDA graph: a host call sits between every two blocks. A
device-resident cache (pages on the device, which `attention.paged_decode_t` already
reads in place) would remove both; the cache contract has no device side yet.

Every family the description covers is fused (q/k norms, post norms, GQA, windows,
soft-caps, two ropes, joined or separate projections, any qtype: one without a kernel
was dequantized to F32 at load); `cuda.why_not_fused` names what is not.
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

from edgeformer.backends.blocks import Block, DecoderStack
from edgeformer.backends.cuda.attention import paged_decode_t
from edgeformer.backends.cuda.device import as_f32, host
from edgeformer.backends.cuda.elementwise import glu_t
from edgeformer.backends.cuda.linear import linear_t
from edgeformer.backends.cuda.norm import rms_norm_t
from edgeformer.backends.cuda.rope import cos_sin, rope_t


class _Plan:
    """A stack's norm weights and biases on the device, once per model."""

    def __init__(self, stack: DecoderStack, device: torch.device) -> None:
        def dev(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else as_f32(a, device)
        self.blocks = [dict(attn_norm=dev(B.attn_norm), q_norm=dev(B.q_norm), k_norm=dev(B.k_norm),
                            post_attn=dev(B.post_attn_norm), ffn_norm=dev(B.ffn_norm), post_ffn=dev(B.post_ffn_norm),
                            qkv=[dev(p.bias) for p in B.qkv], out=dev(B.out.bias),
                            gate_up=[dev(p.bias) for p in B.gate_up], down=dev(B.down.bias))
                       for B in stack.blocks]


_PLANS: "weakref.WeakKeyDictionary[DecoderStack, _Plan]" = weakref.WeakKeyDictionary()


def _attention(B: Block, q: torch.Tensor, k_all: np.ndarray, v_all: np.ndarray, k_pos: np.ndarray, pos: int,
               device: torch.device) -> torch.Tensor:
    """The one query's attention over the cache's visible keys (consecutive positions,
    as both caches return them): the op path's decode kernel, the keys as one page."""
    a = B.attention
    s = k_all.shape[0]
    kt, vt = as_f32(k_all, device), as_f32(v_all, device)
    table = torch.zeros(1, dtype=torch.int64, device=device)
    pos0 = int(k_pos[0]) if s else 0
    return paged_decode_t(q.reshape(a.n_heads, a.head_dim), kt.unsqueeze(0), vt.unsqueeze(0), table, pos0, s, pos,
                          scale=a.scale, causal=True, window=a.window, softcap=a.softcap)


def _block(i: int, B: Block, P: dict, x: torch.Tensor, pos: int, cache: Any,
           ropes: dict[str, tuple[torch.Tensor, torch.Tensor]], stack: DecoderStack) -> torch.Tensor:
    a, eps, dev = B.attention, stack.norm_eps, x.device
    nq, nkv = a.n_heads * a.head_dim, a.n_kv_heads * a.head_dim
    h = rms_norm_t(x, P["attn_norm"], eps)
    if len(B.qkv) == 1:
        qkv = linear_t(h, B.qkv[0].weight.handle, P["qkv"][0])
        q, k, v = qkv[:, :nq], qkv[:, nq:nq + nkv], qkv[:, nq + nkv:]
    else:
        q, k, v = (linear_t(h, p.weight.handle, b) for p, b in zip(B.qkv, P["qkv"]))
    q = q.reshape(1, a.n_heads, a.head_dim).contiguous()
    k = k.reshape(1, a.n_kv_heads, a.head_dim).contiguous()
    if P["q_norm"] is not None:
        q, k = rms_norm_t(q, P["q_norm"], eps), rms_norm_t(k, P["k_norm"], eps)
    cos, sin = ropes[a.rope]
    q, k = rope_t(q, cos, sin, a.neox), rope_t(k, cos, sin, a.neox)
    kv = host(torch.cat([k.reshape(-1), v.reshape(-1)]))     # one transfer (and wait) for both
    k_all, v_all, k_pos = cache.update_and_fetch(i, kv[:nkv].reshape(1, a.n_kv_heads, a.head_dim),
                                                 kv[nkv:].reshape(1, a.n_kv_heads, -1))
    att = _attention(B, q, k_all, v_all, np.asarray(k_pos), pos, dev)
    o = linear_t(att.reshape(1, nq), B.out.weight.handle, P["out"])
    if P["post_attn"] is not None:
        o = rms_norm_t(o, P["post_attn"], eps)
    x = torch.add(x, o)
    h = rms_norm_t(x, P["ffn_norm"], eps)
    f = stack.ffn_dim
    if len(B.gate_up) == 1:
        gu = linear_t(h, B.gate_up[0].weight.handle, P["gate_up"][0])
        gate, up = gu[:, :f].contiguous(), gu[:, f:].contiguous()
    else:
        gate, up = (linear_t(h, p.weight.handle, b) for p, b in zip(B.gate_up, P["gate_up"]))
    h = linear_t(glu_t(gate, up, stack.activation), B.down.weight.handle, P["down"])
    if P["post_ffn"] is not None:
        h = rms_norm_t(h, P["post_ffn"], eps)
    return torch.add(x, h)


def decode_step(stack: DecoderStack, x: np.ndarray, pos: int, cache: Any,
                ropes: dict[str, tuple[np.ndarray, float]], device: torch.device) -> np.ndarray | None:
    """Every block of `stack` for one token (`Backend.decode_step` contract), for a stack
    `cuda.why_not_fused` accepts."""
    if stack not in _PLANS:
        _PLANS[stack] = _Plan(stack, device)
    plan = _PLANS[stack]
    xt = as_f32(x, device).reshape(1, stack.dim)
    # this step's cos/sin tables, once for every layer of each rope
    rs = {}
    for key, (inv_freq, mscale) in ropes.items():
        c, s = cos_sin(np.array([pos]), inv_freq, mscale)
        rs[key] = (as_f32(c, device), as_f32(s, device))
    for i, (B, P) in enumerate(zip(stack.blocks, plan.blocks)):
        xt = _block(i, B, P, xt, pos, cache, rs, stack)
    return host(xt)
