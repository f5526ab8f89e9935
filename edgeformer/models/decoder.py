"""The decoder-only transformer family: Llama (Llama 3, SmolLM), Mistral, Qwen2, Qwen3,
Gemma 1/2/3, Phi-3. One forward pass; family differences are `DecoderConfig` fields.

Every op goes through `Ops` with llama.cpp's debug names (`attn_norm`, `Qcur`, `kqv_out`,
`ffn_inp`, `ffn_out`, `l_out`, `result_norm`, `result_output`), so the tracer and the
profiler see exactly what runs. Prefill and decode are the same code path. Tensors are
in the GGUF convention (see `formats/checkpoint.py`), whether read from GGUF or HF.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend, Ops, Weight
from edgeformer.config import DecoderConfig
from edgeformer.errors import FormatError, InputError
from edgeformer.formats.checkpoint import Checkpoint
from edgeformer.models.cache import KVCache
from edgeformer.models.rope import Rope, make_rope

# KV storage is grown on demand, but `make_cache()` without a length caps it here so a
# 128k-context model does not promise 128k positions by default.
DEFAULT_CACHE_LEN = 4096


@dataclass
class Layer:
    """One block's prepared weights (None where the family has no such tensor)."""

    attn_norm: np.ndarray
    wq: Weight | None
    wk: Weight | None
    wv: Weight | None
    wqkv: Weight | None
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    bqkv: np.ndarray | None
    wo: Weight
    bo: np.ndarray | None
    q_norm: np.ndarray | None
    k_norm: np.ndarray | None
    post_attn_norm: np.ndarray | None
    ffn_norm: np.ndarray
    w_gate: Weight | None
    b_gate: np.ndarray | None
    w_up: Weight
    b_up: np.ndarray | None
    w_down: Weight
    b_down: np.ndarray | None
    post_ffn_norm: np.ndarray | None
    sliding: bool


class Decoder:
    """A decoder LLM over a backend. `forward` takes token ids, appends their keys/values
    to a `KVCache`, and returns float32 logits."""

    def __init__(self, ckpt: Checkpoint, backend: Backend) -> None:
        self.config: DecoderConfig = ckpt.config
        self.backend = backend
        self.ops = Ops(backend)
        self._path = ckpt.path
        self._tensors = ckpt.tensors
        c = self.config
        self.tok_embd = self._weight("token_embd.weight", (c.vocab_size, c.dim))
        self.output = (self._weight("output.weight", (c.vocab_size, c.dim))
                       if "output.weight" in ckpt.tensors else self.tok_embd)
        self.output_norm = self._vector("output_norm.weight", c.dim)
        self.layers = [self._layer(i) for i in range(c.n_layers)]
        self.rope_full: Rope = make_rope(c, ckpt.tensors, sliding=False, path=ckpt.path)
        self.rope_sliding: Rope = (make_rope(c, ckpt.tensors, sliding=True, path=ckpt.path)
                                   if c.rope_local_theta is not None else self.rope_full)
        self.attn_scale = c.attn_scale if c.attn_scale is not None else c.head_dim ** -0.5
        self._tensors = None   # prepared; do not pin the lazy mapping

    # ------------------------------------------------------------------ loading

    def _get(self, name: str, shape: tuple[int, ...]) -> Any:
        if name not in self._tensors:
            raise FormatError(self._path, f"missing tensor {name} (arch {self.config.arch})")
        qt = self._tensors[name]
        if tuple(qt.shape) != tuple(shape):
            raise FormatError(self._path, f"{name} has shape {tuple(qt.shape)}, expected {tuple(shape)}")
        return qt

    def _weight(self, name: str, shape: tuple[int, ...]) -> Weight:
        return self.backend.prepare_weight(self._get(name, shape), name)

    def _vector(self, name: str, n: int) -> np.ndarray:
        return self.backend.prepare_vector(self._get(name, (n,)))

    def _opt_vector(self, name: str, n: int) -> np.ndarray | None:
        return self._vector(name, n) if name in self._tensors else None

    def _layer(self, i: int) -> Layer:
        c, p = self.config, f"blk.{i}."
        nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        fused_qkv = c.fused_qkv
        w = lambda n, shape: self._weight(p + n + ".weight", shape)  # noqa: E731
        b = lambda n, size: self._opt_vector(p + n + ".bias", size)  # noqa: E731
        post = c.post_norms
        return Layer(
            attn_norm=self._vector(p + "attn_norm.weight", c.dim),
            wq=None if fused_qkv else w("attn_q", (nq, c.dim)),
            wk=None if fused_qkv else w("attn_k", (nkv, c.dim)),
            wv=None if fused_qkv else w("attn_v", (nkv, c.dim)),
            wqkv=w("attn_qkv", (nq + 2 * nkv, c.dim)) if fused_qkv else None,
            bq=None if fused_qkv else b("attn_q", nq), bk=None if fused_qkv else b("attn_k", nkv),
            bv=None if fused_qkv else b("attn_v", nkv),
            bqkv=b("attn_qkv", nq + 2 * nkv) if fused_qkv else None,
            wo=w("attn_output", (c.dim, nq)), bo=b("attn_output", c.dim),
            q_norm=self._vector(p + "attn_q_norm.weight", c.head_dim) if c.qk_norm else None,
            k_norm=self._vector(p + "attn_k_norm.weight", c.head_dim) if c.qk_norm else None,
            post_attn_norm=self._vector(p + "post_attention_norm.weight", c.dim) if post else None,
            ffn_norm=self._vector(p + "ffn_norm.weight", c.dim),
            w_gate=None if c.fused_gate_up else w("ffn_gate", (c.ffn_dim, c.dim)),
            b_gate=None if c.fused_gate_up else b("ffn_gate", c.ffn_dim),
            w_up=w("ffn_up", ((2 if c.fused_gate_up else 1) * c.ffn_dim, c.dim)),
            b_up=b("ffn_up", (2 if c.fused_gate_up else 1) * c.ffn_dim),
            w_down=w("ffn_down", (c.dim, c.ffn_dim)), b_down=b("ffn_down", c.dim),
            post_ffn_norm=self._vector(p + "post_ffw_norm.weight", c.dim) if post else None,
            sliding=c.is_sliding(i),
        )

    # ------------------------------------------------------------------ running

    def make_cache(self, max_seq_len: int | None = None) -> KVCache:
        """A KVCache for one sequence of up to `max_seq_len` positions (default: the
        model's context, capped at DEFAULT_CACHE_LEN). Longer than the context is an error."""
        c = self.config
        if max_seq_len is None:
            max_seq_len = min(c.max_seq_len, DEFAULT_CACHE_LEN)
        if max_seq_len > c.max_seq_len:
            raise InputError(f"max_seq_len {max_seq_len} exceeds the model context of {c.max_seq_len}")
        return KVCache(c.n_layers, c.n_kv_heads, c.head_dim, max_seq_len)

    def forward(self, tokens: np.ndarray, cache: KVCache, last_only: bool = False) -> np.ndarray:
        """tokens: (T,) ints in [0, vocab_size), T >= 1, at positions cache.offset + arange(T).
        Appends their keys/values to `cache`. Returns float32 logits (T, vocab_size), or
        (1, vocab_size) for the last token with `last_only`. InputError on bad tokens or
        when the cache has no room; the cache is then unchanged."""
        c, ops = self.config, self.ops
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.size == 0 or not np.issubdtype(tokens.dtype, np.integer):
            raise InputError(f"tokens must be a non-empty 1-D int array, got {tokens.dtype}{list(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= c.vocab_size:
            raise InputError(f"token ids must be in [0, {c.vocab_size}), got [{tokens.min()}, {tokens.max()}]")
        t = tokens.shape[0]
        cache.check_room(t)
        start = cache.offset
        pos = np.arange(start, start + t)
        ropes = {False: self.rope_full.frequencies(start + t), True: self.rope_sliding.frequencies(start + t)}

        x = ops.embed(self.tok_embd, tokens, name="token_embd")
        if c.embed_scale is not None:
            x = ops.mul(x, np.float32(c.embed_scale), name="inp_scaled")
        for i, layer in enumerate(self.layers):
            x = self._block(i, layer, x, pos, cache, ropes[layer.sliding])
        if last_only:
            x = x[-1:]
        x = ops.rms_norm(x, self.output_norm, c.norm_eps, name="result_norm")
        logits = ops.linear(x, self.output, None, name="result_output")
        if c.final_softcap:
            logits = ops.softcap(logits, c.final_softcap, name="result_softcap")
        return logits

    def _block(self, i: int, L: Layer, x: np.ndarray, pos: np.ndarray, cache: KVCache,
               rope: tuple[np.ndarray, float]) -> np.ndarray:
        c, ops = self.config, self.ops
        t = x.shape[0]
        h = ops.rms_norm(x, L.attn_norm, c.norm_eps, name="attn_norm", layer=i)
        nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        if L.wqkv is not None:
            qkv = ops.linear(h, L.wqkv, L.bqkv, name="attn_qkv", layer=i)       # (T, nq + 2 nkv)
            # contiguous copies: kernels may assume row-major operands
            q, k, v = (np.ascontiguousarray(qkv[:, a:b]) for a, b in ((0, nq), (nq, nq + nkv), (nq + nkv, None)))
        else:
            q = ops.linear(h, L.wq, L.bq, name="attn_q", layer=i)
            k = ops.linear(h, L.wk, L.bk, name="attn_k", layer=i)
            v = ops.linear(h, L.wv, L.bv, name="attn_v", layer=i)
        q = q.reshape(t, c.n_heads, c.head_dim)                                  # (T, Hq, D)
        k = k.reshape(t, c.n_kv_heads, c.head_dim)                               # (T, Hkv, D)
        v = v.reshape(t, c.n_kv_heads, c.head_dim)
        if L.q_norm is not None:
            q = ops.rms_norm(q, L.q_norm, c.norm_eps, name="Qcur_normed", layer=i)
            k = ops.rms_norm(k, L.k_norm, c.norm_eps, name="Kcur_normed", layer=i)
        inv_freq, mscale = rope
        q = ops.rope(q, pos, inv_freq, neox=c.rope_neox, mscale=mscale, name="Qcur", layer=i)
        k = ops.rope(k, pos, inv_freq, neox=c.rope_neox, mscale=mscale, name="Kcur", layer=i)
        k_all, v_all, k_pos = cache.update_and_fetch(i, k, v)
        a = ops.attention(q, k_all, v_all, pos, k_pos, scale=self.attn_scale, causal=True,
                          window=c.sliding_window if L.sliding else None, softcap=c.attn_softcap,
                          name="kqv_out", layer=i)                               # (T, Hq, D)
        a = ops.linear(a.reshape(t, nq), L.wo, L.bo, name="attn_out", layer=i)
        if L.post_attn_norm is not None:
            a = ops.rms_norm(a, L.post_attn_norm, c.norm_eps, name="attn_post_norm", layer=i)
        x = ops.add(x, a, name="ffn_inp", layer=i)

        h = ops.rms_norm(x, L.ffn_norm, c.norm_eps, name="ffn_norm", layer=i)
        if L.w_gate is None:   # Phi-3: ffn_up holds [gate | up]
            gu = ops.linear(h, L.w_up, L.b_up, name="ffn_up", layer=i)          # (T, 2 F)
            gate, up = np.ascontiguousarray(gu[:, :c.ffn_dim]), np.ascontiguousarray(gu[:, c.ffn_dim:])
        else:
            gate = ops.linear(h, L.w_gate, L.b_gate, name="ffn_gate", layer=i)
            up = ops.linear(h, L.w_up, L.b_up, name="ffn_up", layer=i)
        h = ops.glu(gate, up, c.activation, name="ffn_act", layer=i)
        h = ops.linear(h, L.w_down, L.b_down, name="ffn_out", layer=i)
        if L.post_ffn_norm is not None:
            h = ops.rms_norm(h, L.post_ffn_norm, c.norm_eps, name="ffn_post_norm", layer=i)
        return ops.add(x, h, name="l_out", layer=i)

