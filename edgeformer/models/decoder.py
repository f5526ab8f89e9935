"""The decoder-only transformer family: Llama (Llama 3, SmolLM), Mistral, Qwen2, Qwen3,
Gemma 1/2/3, Phi-3. One forward pass; family differences are `DecoderConfig` fields.

Every op goes through `Ops` with llama.cpp's debug names (`attn_norm`, `Qcur`, `kqv_out`,
`ffn_inp`, `ffn_out`, `l_out`, `result_norm`, `result_output`), so the tracer and the
profiler see exactly what runs. Prefill and decode are the same code path. Tensors are
in the GGUF convention (see `formats/checkpoint.py`), whether read from GGUF or HF.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend, Ops, Weight
from edgeformer.backends.blocks import Attention, Block, DecoderStack, Proj
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
        self.layers = [self._fuse(self._layer(i)) for i in range(c.n_layers)]
        self.rope_full: Rope = make_rope(c, ckpt.tensors, sliding=False, path=ckpt.path)
        self.rope_sliding: Rope = (make_rope(c, ckpt.tensors, sliding=True, path=ckpt.path)
                                   if c.rope_local_theta is not None else self.rope_full)
        self.attn_scale = c.attn_scale if c.attn_scale is not None else c.head_dim ** -0.5
        del self._tensors      # prepared; do not pin the lazy mapping
        self.stack = self.describe()

    def describe(self) -> DecoderStack:
        """The blocks as a backend's fused step reads them (`backends/blocks.py`), built
        from the prepared layers (`self.stack` holds the one built at load)."""
        c = self.config
        rope_varies = any(getattr(r.scaling, "kind", None) in ("dynamic", "longrope")
                          for r in (self.rope_full, self.rope_sliding))

        def block(L: Layer) -> Block:
            qkv = ((Proj(L.wqkv, L.bqkv),) if L.wqkv is not None
                   else (Proj(L.wq, L.bq), Proj(L.wk, L.bk), Proj(L.wv, L.bv)))          # type: ignore[arg-type]
            gate_up = (Proj(L.w_up, L.b_up),) if L.w_gate is None else (Proj(L.w_gate, L.b_gate), Proj(L.w_up, L.b_up))
            att = Attention(c.n_heads, c.n_kv_heads, c.head_dim, self.attn_scale,
                            c.sliding_window if L.sliding else None, c.attn_softcap,
                            "sliding" if L.sliding else "full", c.rope_neox)
            return Block(L.attn_norm, qkv, L.q_norm, L.k_norm, Proj(L.wo, L.bo), L.post_attn_norm, L.ffn_norm,
                         gate_up, Proj(L.w_down, L.b_down), L.post_ffn_norm, att)
        return DecoderStack(c.dim, c.ffn_dim, c.activation, c.norm_eps, rope_varies,
                            tuple(block(L) for L in self.layers))

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

    def _fuse(self, L: Layer) -> Layer:
        """Fusion hook: a backend that `joins_weights` (the cpu backend) joins q|k|v and
        gate|up into one weight each, in place of the parts (no extra memory), so a step
        makes 2 fewer linear calls per block; the forward pass already handles joined
        weights (Phi-3's layout). The tracer prices the joined weight: same bytes."""
        if not self.backend.joins_weights:
            return L
        concat = self.backend.concat_weights
        nq = self.config.n_heads * self.config.head_dim
        nkv = self.config.n_kv_heads * self.config.head_dim
        if L.wqkv is None and L.wq is not None and L.wk is not None and L.wv is not None:
            w = concat([L.wq, L.wk, L.wv], L.wq.name.replace("attn_q", "attn_qkv"))
            if w is not None:
                L.bqkv = _cat_bias((L.bq, L.bk, L.bv), (nq, nkv, nkv))
                L.wqkv, L.wq, L.wk, L.wv, L.bq, L.bk, L.bv = w, None, None, None, None, None, None
        if L.w_gate is not None:
            w = concat([L.w_gate, L.w_up], L.w_up.name)
            if w is not None:
                f = self.config.ffn_dim
                L.w_up, L.b_up = w, _cat_bias((L.b_gate, L.b_up), (f, f))
                L.w_gate = L.b_gate = None
        return L

    # ------------------------------------------------------------------ running

    def make_cache(self, max_seq_len: int | None = None) -> Any:
        """A KVCache for one sequence of up to `max_seq_len` positions (default: the
        model's context, capped at DEFAULT_CACHE_LEN), in device memory on a backend with
        a `device_cache`. Longer than the context is an error."""
        c = self.config
        if max_seq_len is None:
            max_seq_len = min(c.max_seq_len, DEFAULT_CACHE_LEN)
        if max_seq_len > c.max_seq_len:
            raise InputError(f"max_seq_len {max_seq_len} exceeds the model context of {c.max_seq_len}")
        if self.backend.device_cache:
            return self.backend.make_cache(c.n_layers, c.n_kv_heads, c.head_dim, max_seq_len)
        return KVCache(c.n_layers, c.n_kv_heads, c.head_dim, max_seq_len)

    def forward(self, tokens: np.ndarray | None, cache: KVCache, last_only: bool = False,
                embeds: np.ndarray | None = None) -> np.ndarray:
        """tokens: (T,) ints in [0, vocab_size), T >= 1, at positions cache.offset + arange(T).
        Appends their keys/values to `cache`. Returns float32 logits (T, vocab_size), or
        (1, vocab_size) for the last token with `last_only`. InputError on bad tokens or
        when the cache has no room; the cache is then unchanged.
        `embeds` (T, dim) float32, if given, replaces the token-embedding lookup (tokens are
        then ignored and may be None), as HF `inputs_embeds`: Gemma's embed scale is not
        applied to them, since HF scales inside its embedding lookup (vision-language
        models splice image features in this way)."""
        return self._forward_segments([(tokens, cache)], last_only, self.ops.linear, embeds, fused=True)[0]

    def forward_batch(self, seqs: Sequence[tuple[np.ndarray, Any]], last_only: bool = True,
                      linear: Callable[..., np.ndarray] | None = None) -> list[np.ndarray]:
        """Several sequences in one pass: seqs is [(tokens (T_i,), cache_i)], each cache with
        the `forward` contract (offset, check_room, update_and_fetch). Every linear, norm and
        activation runs once on all sequences' rows concatenated (each weight is read once
        per step for the whole batch); attention runs per sequence on its own cache.
        `linear(x, w, b, name=, layer=)` replaces `ops.linear` (e.g. a row-invariant one).
        Returns one logits array per sequence, as `forward` would."""
        return self._forward_segments(list(seqs), last_only, linear or self.ops.linear)

    def _check_tokens(self, tokens: np.ndarray | None) -> np.ndarray:
        c = self.config
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or tokens.size == 0 or not np.issubdtype(tokens.dtype, np.integer):
            raise InputError(f"tokens must be a non-empty 1-D int array, got {tokens.dtype}{list(tokens.shape)}")
        if tokens.min() < 0 or tokens.max() >= c.vocab_size:
            raise InputError(f"token ids must be in [0, {c.vocab_size}), got [{tokens.min()}, {tokens.max()}]")
        return tokens

    def _check_embeds(self, embeds: np.ndarray) -> np.ndarray:
        e = np.asarray(embeds)
        if e.ndim != 2 or e.shape[0] == 0 or e.shape[1] != self.config.dim or not np.issubdtype(e.dtype, np.floating):
            raise InputError(f"embeds must be a float (T, {self.config.dim}) array with T >= 1, "
                             f"got {e.dtype}{list(e.shape)}")
        return np.ascontiguousarray(e, dtype=np.float32)

    def _forward_segments(self, seqs: list[tuple[np.ndarray | None, Any]], last_only: bool,
                          linear: Callable[..., np.ndarray], embeds: np.ndarray | None = None,
                          fused: bool = False) -> list[np.ndarray]:
        c, ops = self.config, self.ops
        if not seqs:
            raise InputError("forward_batch: no sequences")
        # with `embeds` (one sequence only, from `forward`) its rows stand in for the tokens
        toks = [self._check_tokens(t) for t, _ in seqs] if embeds is None else [self._check_embeds(embeds)]
        for t, (_, cache) in zip(toks, seqs):
            cache.check_room(t.shape[0])
        segs = []          # (row start, row end, positions, cache, {sliding: rope})
        row = 0
        for t, (_, cache) in zip(toks, seqs):
            start, n = cache.offset, t.shape[0]
            ropes = {False: self.rope_full.frequencies(start + n), True: self.rope_sliding.frequencies(start + n)}
            segs.append((row, row + n, np.arange(start, start + n), cache, ropes))
            row += n
        if embeds is None:
            tokens = toks[0] if len(toks) == 1 else np.concatenate(toks)
            x = ops.embed(self.tok_embd, tokens, name="token_embd")
            if c.embed_scale is not None:
                x = ops.mul(x, np.float32(c.embed_scale), name="inp_scaled")
        else:
            x = toks[0]                                                          # (T, dim)
        y = None
        # fusion hook: a backend's one-token step over all blocks (cpu: two Numba calls per
        # block). Not while an observer (tracer, profiler) watches: they see the op-by-op
        # path, which computes the same ops
        if fused and self.backend.fused_decode and not ops.observers and embeds is None and x.shape[0] == 1:
            ropes = segs[0][4]
            y = self.backend.decode_step(self.stack, x, int(segs[0][2][0]), segs[0][3],
                                         {"full": ropes[False], "sliding": ropes[True]})
        if y is not None:
            x = y
        else:
            # one K/V write and one attention call per layer for all sequences, where the
            # caches can join (a paged cache whose pages the backend reads in place)
            join = getattr(segs[0][3], "join", None) if self.backend.paged_attention and not ops.observers \
                else None
            kvb = join([s[3] for s in segs], [b - a for a, b, *_ in segs]) if join is not None else None
            for i, layer in enumerate(self.layers):
                x = self._block(i, layer, x, segs, linear, kvb)
        if last_only:
            x = x[[b - 1 for _, b, *_ in segs]]                                  # (n_seqs, dim)
        x = ops.rms_norm(x, self.output_norm, c.norm_eps, name="result_norm")
        logits = linear(x, self.output, None, name="result_output")
        if c.final_softcap:
            logits = ops.softcap(logits, c.final_softcap, name="result_softcap")
        self.backend.after_forward()
        if last_only:
            return [logits[j:j + 1] for j in range(len(segs))]
        return [logits[a:b] for a, b, *_ in segs]

    def _rope(self, x: np.ndarray, segs: list, sliding: bool, name: str, layer: int) -> np.ndarray:
        """Rope over all rows; per segment only when their frequencies differ (dynamic
        NTK and longrope depend on each sequence's length)."""
        c, ops = self.config, self.ops
        first = segs[0][4][sliding]
        if all(s[4][sliding] is first for s in segs):
            pos = segs[0][2] if len(segs) == 1 else np.concatenate([s[2] for s in segs])
            return ops.rope(x, pos, first[0], neox=c.rope_neox, mscale=first[1], name=name, layer=layer)
        return np.concatenate([ops.rope(x[a:b], p, r[sliding][0], neox=c.rope_neox, mscale=r[sliding][1],
                                        name=name, layer=layer) for a, b, p, _, r in segs])

    def _block(self, i: int, L: Layer, x: np.ndarray, segs: list, linear: Callable[..., np.ndarray],
               kvb: Any = None) -> np.ndarray:
        c, ops = self.config, self.ops
        t = x.shape[0]
        h = ops.rms_norm(x, L.attn_norm, c.norm_eps, name="attn_norm", layer=i)
        nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        if L.wqkv is not None:
            qkv = linear(h, L.wqkv, L.bqkv, name="attn_qkv", layer=i)           # (T, nq + 2 nkv)
            # contiguous copies: kernels may assume row-major operands
            q, k, v = (np.ascontiguousarray(qkv[:, a:b]) for a, b in ((0, nq), (nq, nq + nkv), (nq + nkv, None)))
        else:
            q = linear(h, L.wq, L.bq, name="attn_q", layer=i)
            k = linear(h, L.wk, L.bk, name="attn_k", layer=i)
            v = linear(h, L.wv, L.bv, name="attn_v", layer=i)
        q = q.reshape(t, c.n_heads, c.head_dim)                                  # (T, Hq, D)
        k = k.reshape(t, c.n_kv_heads, c.head_dim)                               # (T, Hkv, D)
        v = v.reshape(t, c.n_kv_heads, c.head_dim)
        if L.q_norm is not None:
            q = ops.rms_norm(q, L.q_norm, c.norm_eps, name="Qcur_normed", layer=i)
            k = ops.rms_norm(k, L.k_norm, c.norm_eps, name="Kcur_normed", layer=i)
        q = self._rope(q, segs, L.sliding, "Qcur", i)
        k = self._rope(k, segs, L.sliding, "Kcur", i)
        window = c.sliding_window if L.sliding else None
        if kvb is not None:                     # all sequences at once (`KVBatch`)
            k_all, v_all = kvb.update_and_fetch(i, k, v)
            a = ops.attention(q, k_all, v_all, kvb.positions, None, scale=self.attn_scale, causal=True,
                              window=window, softcap=c.attn_softcap, name="kqv_out", layer=i)
        else:
            outs = []
            for a0, b0, pos, cache, _ in segs:      # attention: each sequence on its own cache
                k_all, v_all, k_pos = cache.update_and_fetch(i, k[a0:b0], v[a0:b0])
                outs.append(ops.attention(q[a0:b0], k_all, v_all, pos, k_pos, scale=self.attn_scale, causal=True,
                                          window=window, softcap=c.attn_softcap, name="kqv_out", layer=i))
            a = outs[0] if len(outs) == 1 else np.concatenate(outs)                 # (T, Hq, D)
        a = linear(a.reshape(t, nq), L.wo, L.bo, name="attn_out", layer=i)
        if L.post_attn_norm is not None:
            a = ops.rms_norm(a, L.post_attn_norm, c.norm_eps, name="attn_post_norm", layer=i)
        x = ops.add(x, a, name="ffn_inp", layer=i)

        h = ops.rms_norm(x, L.ffn_norm, c.norm_eps, name="ffn_norm", layer=i)
        if L.w_gate is None:   # Phi-3: ffn_up holds [gate | up]
            gu = linear(h, L.w_up, L.b_up, name="ffn_up", layer=i)              # (T, 2 F)
            gate, up = gu[:, :c.ffn_dim], gu[:, c.ffn_dim:]        # views: glu reads them in place
        else:
            gate = linear(h, L.w_gate, L.b_gate, name="ffn_gate", layer=i)
            up = linear(h, L.w_up, L.b_up, name="ffn_up", layer=i)
        h = ops.glu(gate, up, c.activation, name="ffn_act", layer=i)
        h = linear(h, L.w_down, L.b_down, name="ffn_out", layer=i)
        if L.post_ffn_norm is not None:
            h = ops.rms_norm(h, L.post_ffn_norm, c.norm_eps, name="ffn_post_norm", layer=i)
        return ops.add(x, h, name="l_out", layer=i)


def _cat_bias(bs: tuple[np.ndarray | None, ...], sizes: tuple[int, ...]) -> np.ndarray | None:
    """Biases of joined weights (zeros for a part without one); None if no part has one."""
    if all(b is None for b in bs):
        return None
    return np.concatenate([np.zeros(n, np.float32) if b is None else b for b, n in zip(bs, sizes)])
