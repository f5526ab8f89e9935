"""Fused decode step (one token) inside the cuda backend, from a `blocks.DecoderStack`.

The residual stream stays on the device across all blocks: per block, the op path's own
tensor-level kernels (`norm.rms_norm_t`, `linear.linear_t`, `rope.rope_t`,
`attention.paged_decode_t`, `elementwise.glu_t`, torch adds) in the op path's order.
Where the keys live decides the rest:

- a `DeviceKVCache` (`cache.py`, what `CudaBackend.make_cache` and so `Decoder.make_cache`
  give): each block writes the token's k/v into the layer's device tensors and attends
  over them in place. Every input of the step sits in fixed device buffers (the residual
  row, this step's cos/sin tables, [position, key count] for the attention kernels), so
  the launches do not depend on the step: on a GPU the step is captured as a CUDA graph
  on its second run at a cache capacity and replayed after that (one launch instead of
  ~10 per block). A grown cache (capacity doubled) captures anew.
- any other cache keeping the `update_and_fetch` contract (a host `KVCache`, the
  runtime's paged `BlockTable`): each block downloads the token's k/v (2 * Hkv * D
  floats), appends them there and uploads the visible keys and values, so the step has
  a host call between every two blocks and runs eagerly. Its logits are the op path's
  bits (`tests/backends/cuda`).

Every family the description covers is fused (q/k norms, post norms, GQA, windows,
soft-caps, two ropes, joined or separate projections, any qtype: one without a kernel
was dequantized to F32 at load); `cuda.why_not_fused` names what is not.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from edgeformer.backends.blocks import Block, DecoderStack
from edgeformer.backends.cuda.attention import paged_decode_t
from edgeformer.backends.cuda.cache import DeviceKVCache
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


# attend(layer, block, q (1, Hq, D), k (1, Hkv, D), v (1, Hkv, D)) -> (Hq, D): stores the
# token's k/v in the cache and attends over what it holds
Attend = Callable[[int, Block, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _host_attend(cache: Any, pos: int, device: torch.device) -> Attend:
    """Attention through a host cache's `update_and_fetch`."""
    def attend(i: int, B: Block, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a = B.attention
        nkv = a.n_kv_heads * a.head_dim
        kv = host(torch.cat([k.reshape(-1), v.reshape(-1)]))     # one transfer (and wait) for both
        k_all, v_all, k_pos = cache.update_and_fetch(i, kv[:nkv].reshape(1, a.n_kv_heads, a.head_dim),
                                                     kv[nkv:].reshape(1, a.n_kv_heads, -1))
        return _attention(B, q, k_all, v_all, np.asarray(k_pos), pos, device)
    return attend


def _block(i: int, B: Block, P: dict, x: torch.Tensor, ropes: dict[str, tuple[torch.Tensor, torch.Tensor]],
           stack: DecoderStack, attend: Attend) -> torch.Tensor:
    a, eps = B.attention, stack.norm_eps
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
    att = attend(i, B, q, k, v.reshape(1, a.n_kv_heads, -1))
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


def _rope_tables(ropes: dict[str, tuple[np.ndarray, float]], pos: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """This step's host cos/sin tables per rope ("full", "sliding"), once for every layer."""
    return {key: cos_sin(np.array([pos]), inv_freq, mscale) for key, (inv_freq, mscale) in ropes.items()}


class _DeviceStep:
    """The step over a `DeviceKVCache` at one capacity: fixed input buffers, the body that
    reads only them, and on a GPU the body's CUDA graph."""

    def __init__(self, stack: DecoderStack, plan: _Plan, cache: DeviceKVCache, ropes: dict, graphs: bool) -> None:
        dev = cache.device
        self.stack, self.plan, self.cache, self.graphs = stack, plan, cache, graphs
        self.capacity = cache.capacity
        self.x = torch.zeros((1, stack.dim), dtype=torch.float32, device=dev)
        self.rope = {key: (torch.zeros((1, len(inv)), dtype=torch.float32, device=dev),
                           torch.zeros((1, len(inv)), dtype=torch.float32, device=dev))
                     for key, (inv, _) in ropes.items()}
        self.meta = torch.zeros(2, dtype=torch.int64, device=dev)      # [position, key count]
        self.table = torch.zeros(1, dtype=torch.int64, device=dev)     # the layer's keys are one page
        self.runs = 0
        self.graph: Any = None
        self.out: torch.Tensor | None = None

    def attend(self, i: int, B: Block, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        a, c = B.attention, self.cache
        c.write_t(i, k, v, self.meta[:1])       # the slot is the position: the cache starts at 0
        return paged_decode_t(q.reshape(a.n_heads, a.head_dim), c.keys[i].unsqueeze(0), c.values[i].unsqueeze(0),
                              self.table, 0, self.capacity, 0, scale=a.scale, causal=True, window=a.window,
                              softcap=a.softcap, meta=self.meta)

    def body(self) -> torch.Tensor:
        x = self.x
        for i, (B, P) in enumerate(zip(self.stack.blocks, self.plan.blocks)):
            x = _block(i, B, P, x, self.rope, self.stack, self.attend)
        return x

    def run(self, x: np.ndarray, pos: int, ropes: dict[str, tuple[np.ndarray, float]]) -> torch.Tensor:
        self.x.copy_(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(1, -1)))
        for key, (c, s) in _rope_tables(ropes, pos).items():
            self.rope[key][0].copy_(torch.from_numpy(c))
            self.rope[key][1].copy_(torch.from_numpy(s))
        self.meta.copy_(torch.tensor([pos, pos + 1], dtype=torch.int64))
        if self.graph is not None:
            self.graph.replay()
        elif self.graphs and self.runs > 0:
            # the first run compiled every kernel (no compiling under capture); capture
            # records the launches without running them, so replay once now
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.body()
            self.graph.replay()
        else:
            self.out = self.body()
        self.runs += 1
        self.cache.advance(pos + 1)
        assert self.out is not None
        return self.out


# a device cache's step, per cache (a cache serves one model)
_STEPS: "weakref.WeakKeyDictionary[DeviceKVCache, _DeviceStep]" = weakref.WeakKeyDictionary()


def decode_step(stack: DecoderStack, x: np.ndarray, pos: int, cache: Any,
                ropes: dict[str, tuple[np.ndarray, float]], device: torch.device, graphs: bool = False) -> np.ndarray:
    """Every block of `stack` for one token (`Backend.decode_step` contract), for a stack
    `cuda.why_not_fused` accepts. `graphs`: capture and replay CUDA graphs (a
    `DeviceKVCache` on a GPU)."""
    if stack not in _PLANS:
        _PLANS[stack] = _Plan(stack, device)
    plan = _PLANS[stack]
    if isinstance(cache, DeviceKVCache) and pos == cache.offset:
        cache.reserve(pos + 1)
        step = _STEPS.get(cache)
        if step is None or step.stack is not stack or step.capacity != cache.capacity:
            step = _STEPS[cache] = _DeviceStep(stack, plan, cache, ropes, graphs)
        return host(step.run(x, pos, ropes))
    xt = as_f32(x, device).reshape(1, stack.dim)
    rs = {key: (as_f32(c, device), as_f32(s, device)) for key, (c, s) in _rope_tables(ropes, pos).items()}
    attend = _host_attend(cache, pos, device)
    for i, (B, P) in enumerate(zip(stack.blocks, plan.blocks)):
        xt = _block(i, B, P, xt, rs, stack, attend)
    return host(xt)
