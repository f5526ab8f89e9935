"""Fused decode step (one token) for the decoder family, inside the cpu backend.

A decode step through the `Ops` facade makes ~16 Python-level op calls per block, each
~4 us of facade + wrapper + Numba dispatch: ~2 ms per token for a 30-block model, as
much as its weights take to stream. Here each block is two Numba calls:

  `_attn_in`:  rms_norm fused into the integer quantization of its output -> one GEMV over
               the joined q|k|v weight (+ bias; three when the parts' qtypes differ, as
               in llama.cpp's mixed Q4_K_M files) -> per-head q/k rms norm (Qwen3,
               Gemma 3) -> rope on q and k (the layer's rope: Gemma 3's sliding layers
               have their own base), in place;
  (Python: `cache.update_and_fetch`, so any cache with that contract works)
  `_attn_out`: attention of the one query over the cache (layer's window, soft-cap) ->
               quantize -> attn_out GEMV -> post-attention norm (Gemma 2/3), residual
               add -> ffn_norm fused into quantization -> GEMV over the joined gate|up
               weight (or two) -> glu -> quantize -> ffn_down GEMV -> post-FFN norm,
               residual add.

All scratch buffers are allocated once per model. The math is the unfused path's op by
op (same kernels' row dots, same quantization, same rope/attention formulas), so the
tracer, which prices the unfused op list (the decoder takes that path while an observer
is attached), prices this work; `tests/backends/cpu/test_cpu_block.py` checks the two
paths agree bit for bit (the rms_norm, rope, glu and attention rows are the op path's own
exact functions: `norm.rms_row`, `rope.cos_sin`/`rotate`, `activation.glu_row`,
`attention.attend_one`). Used only where every block's weights have a quantized kernel, row lengths
are multiples of 32 and no rope changes with the sequence length (`why_not_fused`).
"""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from numba import njit, prange

from edgeformer.backends.cpu.act_quant import quant_row
from edgeformer.backends.cpu.activation import ACTIVATION_IDS, glu_row
from edgeformer.backends.cpu.attention import attend_one
from edgeformer.backends.cpu.common import EXACT, JIT, specialise
from edgeformer.backends.cpu.kinds import EMPTY_SLOT, KINDS, slot
from edgeformer.backends.cpu.norm import rms_row
from edgeformer.backends.cpu.rope import cos_sin, rotate
from edgeformer.backends.cpu.repack import PackedWeight

_NOB = np.zeros(0, np.float32)
# Template globals of `_rows_kind`, bound per table row by `specialise`.
KIND, ROWDOT, OTHER = -1, None, None


@njit(**JIT)
def _rows_none(w, xq, xd, xs, out):
    """The end of the `_rows` chain: no kind matched (never reached for a fusable model)."""


def _rows_kind(w, xq, xd, xs, out):
    """out[r] = row r of weight slot `w` . activations (xq, xd, xs) if w is of kind KIND
    (ROWDOT; one loop per kind: a kind test or a non-inlined row-dot call per row measured
    2.7x slower), else OTHER's (the next kind's)."""
    kind, a, b, c, d, e, f = w
    if kind == KIND:
        for r in prange(out.shape[0]):
            out[r] = ROWDOT(a[r], b[r], c[r], d[r], e[r], f[r], xq, xd, xs)
    else:
        OTHER(w, xq, xd, xs, out)


def _chain():
    """One `_rows_kind` link per `kinds.KINDS` row (KIND its id), built from the last."""
    g = _rows_none
    for i, (q, k) in reversed(list(enumerate(KINDS.items()))):
        g = specialise(_rows_kind, f"_rows_{q.name.lower()}", dict(parallel=True, **JIT), KIND=i, ROWDOT=k.rowdot,
                       OTHER=g)
    return g


_rows = _chain()


@njit(**JIT)
def _gemv(w, xq, xd, xs, bias, out):
    """out[r] = row r of weight slot `w` . activations (xq, xd, xs) (+ bias[r])."""
    _rows(w, xq, xd, xs, out)
    if bias.shape[0]:
        for r in range(out.shape[0]):
            out[r] += bias[r]


@njit(**JIT)
def _norm_quant(x, w, eps, xn, xq, xd, xs):
    """xn = rms_norm(x) * w (`norm.rms_row`, as the op path), then its integer quantization."""
    rms_row(x, w, eps, xn)
    quant_row(xn, xq, xd, xs)


@njit(**JIT)
def _rms_inplace(v, o, n, w, eps):
    """v[o:o+n] = rms_norm(v[o:o+n]) * w in place (`norm.rms_row`, as the op path)."""
    seg = v[o:o + n]
    rms_row(seg, w, eps, seg)


@njit(**EXACT)
def _rope_heads(v, h0, nh, hd, pos, inv_freq, neox, mscale):
    """`rope._rope_rows` on heads h0..h0+nh of the flat row v (one token), in place; exact
    flags, as `_rope_rows`, so the bits are the op path's."""
    half = inv_freq.shape[0]
    cs = np.empty(half, np.float32)
    sn = np.empty(half, np.float32)
    cos_sin(np.float32(pos), inv_freq, mscale, cs, sn)
    for h in range(h0, h0 + nh):
        head = v[h * hd:(h + 1) * hd]
        rotate(head, head, cs, sn, neox)


@njit(**JIT)
def _attn_in(x, norm_w, eps, wq, wk, wv, bq, bk, bv, n0, n1, qn, kn, pos, inv_freq, neox, mscale, nh, nkv, hd,
             xn, xq, xd, xs, qkv):
    """qkv = rope(qk_norm(linear(rms_norm(x), w_qkv, b_qkv))) for one token (q and k normed
    per head when qn/kn are non-empty, then roped). The weight is wq alone (joined, n0 =
    n1 = len(qkv)) or wq | wk | wv writing qkv[:n0], qkv[n0:n1], qkv[n1:]."""
    _norm_quant(x, norm_w, eps, xn, xq, xd, xs)
    _gemv(wq, xq, xd, xs, bq, qkv[:n0])
    if n1 > n0:
        _gemv(wk, xq, xd, xs, bk, qkv[n0:n1])
    if qkv.shape[0] > n1:
        _gemv(wv, xq, xd, xs, bv, qkv[n1:])
    if qn.shape[0]:      # decoder: rms_norm over (T, H, head_dim) rows, before rope
        for h in range(nh):
            _rms_inplace(qkv, h * hd, hd, qn, eps)
        for h in range(nh, nh + nkv):
            _rms_inplace(qkv, h * hd, hd, kn, eps)
    _rope_heads(qkv, 0, nh + nkv, hd, pos, inv_freq, neox, mscale)


@njit(**JIT)
def _attend(q, k, v, kpos, pos, scale, window, softcap, out):
    """`attention.attend_one` for one query token: q (Hq*D,), k/v (S, Hkv, D) -> out
    (Hq*D,), causal by position, soft-capped when softcap > 0; the bits the op path's
    `attention` gives this token in any call (prefill, chunk, batch, decode)."""
    d = k.shape[2]
    hq = q.shape[0] // d
    attend_one(q.reshape((1, hq, d)), k, v, kpos, pos, scale, window, softcap, out.reshape((1, hq, v.shape[2])))


@njit(**JIT)
def _attn_out(x, q, k, v, kpos, pos, scale, window, softcap, wo, bo, pan, ffn_w, eps, wg, wu, bg, bu, split, act,
              wdn, bdn, pfn, att, aq, ad, as_, tmp, xn, xq, xd, xs, gu, h, hq, hd_, hs):
    """x += post_norm(attn_out(attention(q))); x += post_norm(ffn_down(glu(gate|up(rms_norm(x))))),
    one token. Post norms run where pan/pfn are non-empty; gate|up is wg alone (joined)
    or, with `split`, wg then wu."""
    _attend(q, k, v, kpos, pos, scale, window, softcap, att)
    quant_row(att, aq, ad, as_)
    _gemv(wo, aq, ad, as_, bo, tmp)
    d_ = x.shape[0]
    if pan.shape[0]:
        _rms_inplace(tmp, 0, d_, pan, eps)
    for i in range(d_):
        x[i] += tmp[i]
    _norm_quant(x, ffn_w, eps, xn, xq, xd, xs)
    f = h.shape[0]
    if split:
        _gemv(wg, xq, xd, xs, bg, gu[:f])
        _gemv(wu, xq, xd, xs, bu, gu[f:])
    else:
        _gemv(wg, xq, xd, xs, bg, gu)
    glu_row(gu, 0, gu, f, f, act, h)                # h = act(gate) * up, as the op path's glu
    quant_row(h, hq, hd_, hs)
    _gemv(wdn, hq, hd_, hs, bdn, tmp)
    if pfn.shape[0]:
        _rms_inplace(tmp, 0, d_, pfn, eps)
    for i in range(d_):
        x[i] += tmp[i]



class _Plan:
    """Per-model slots and scratch buffers for the fused step."""

    def __init__(self, model: Any) -> None:
        c = model.config
        nq, nkv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
        self.layers = []
        for L in model.layers:
            if L.wqkv is not None:
                n = nq + 2 * nkv       # one GEMV fills all of qkv
                qkv = (slot(L.wqkv.handle), EMPTY_SLOT, EMPTY_SLOT, _b(L.bqkv), _NOB, _NOB, n, n)
            else:
                qkv = (slot(L.wq.handle), slot(L.wk.handle), slot(L.wv.handle), _b(L.bq), _b(L.bk), _b(L.bv),
                       nq, nq + nkv)
            if L.w_gate is not None:
                gu = (slot(L.w_gate.handle), slot(L.w_up.handle), _b(L.b_gate), _b(L.b_up), True)
            else:
                gu = (slot(L.w_up.handle), EMPTY_SLOT, _b(L.b_up), _NOB, False)
            self.layers.append((L.attn_norm, qkv, _b(L.q_norm), _b(L.k_norm), slot(L.wo.handle), _b(L.bo),
                                _b(L.post_attn_norm), L.ffn_norm, gu, slot(L.w_down.handle), _b(L.b_down),
                                _b(L.post_ffn_norm), L.sliding))
        e = lambda n, dt=np.float32: np.zeros(n, dt)  # noqa: E731
        it = model.layers[0].wo.handle.act.dtype       # the activations' integer type
        self.xn, self.xq, self.xd, self.xs = e(c.dim), e(c.dim, it), e(c.dim // 32), e(c.dim // 32)
        self.qkv, self.att, self.tmp = e(nq + 2 * nkv), e(nq), e(c.dim)
        self.aq, self.ad, self.as_ = e(nq, it), e(nq // 32), e(nq // 32)
        self.gu, self.h = e(2 * c.ffn_dim), e(c.ffn_dim)
        self.hq, self.hd, self.hs = e(c.ffn_dim, it), e(c.ffn_dim // 32), e(c.ffn_dim // 32)
        self.act = ACTIVATION_IDS[c.activation]
        self.nq, self.nkv = nq, nkv


def _b(b: np.ndarray | None) -> np.ndarray:
    return _NOB if b is None else np.ascontiguousarray(b, dtype=np.float32)


def why_not_fused(model: Any) -> str | None:
    """None if `decode_layers` can run this model's blocks (what `Decoder._block` does for
    one token: q/k norm, post norms, soft-capped and windowed attention, a separate rope
    for sliding layers included), else the reason."""
    c = model.config
    if any(d % 32 for d in (c.dim, c.n_heads * c.head_dim, c.ffn_dim)):
        return "a row length that is not a multiple of 32"
    if c.activation not in ACTIVATION_IDS:
        return f"activation {c.activation}"
    for r in (model.rope_full, model.rope_sliding):
        s = getattr(r, "scaling", None)
        if s is not None and s.kind in ("dynamic", "longrope"):
            return "rope scaling that changes with the sequence length"
    acts = set()
    for L in model.layers:
        if (L.q_norm is None) != (L.k_norm is None):
            return "a q norm without a k norm"
        ws = [L.wqkv] if L.wqkv is not None else [L.wq, L.wk, L.wv]
        for w in ws + [L.wo, L.w_up, L.w_down] + ([L.w_gate] if L.w_gate is not None else []):
            if w is None:
                return "a missing q/k/v weight"
            if w.qtype not in KINDS or not isinstance(w.handle, PackedWeight):
                return f"{w.name} is {w.qtype.name} (no quantized fused kernel)"
            if w.handle.act is None:
                return "float32 activations (the fused step dots integer activations)"
            acts.add(w.handle.act.dtype)
    if len(acts) > 1:
        return "weights prepared for different activation types"
    return None


_PLANS: "weakref.WeakKeyDictionary[Any, _Plan | None]" = weakref.WeakKeyDictionary()


def decode_layers(model: Any, x: np.ndarray, pos: int, cache: Any, rope: tuple[np.ndarray, float]) -> np.ndarray | None:
    """Run every block of `model` (a models.decoder.Decoder) for one token: x (1, dim)
    float32 at position `pos`, keys/values appended to `cache` (update_and_fetch
    contract); `rope` is the full-attention layers' (inv_freq, mscale) for this step
    (sliding layers' comes from `model.rope_sliding`, as the decoder takes it). Returns
    the new x (1, dim), or None when the model cannot use the fused path (the caller then
    runs the op-by-op path)."""
    if model not in _PLANS:
        _PLANS[model] = _Plan(model) if why_not_fused(model) is None else None
    p = _PLANS[model]
    if p is None:
        return None
    c = model.config
    ropes = {False: (np.ascontiguousarray(rope[0], dtype=np.float32), np.float32(rope[1]))}
    if model.rope_sliding is model.rope_full:
        ropes[True] = ropes[False]
    else:
        r = model.rope_sliding.frequencies(pos + 1)
        ropes[True] = (np.ascontiguousarray(r[0], dtype=np.float32), np.float32(r[1]))
    xr = np.array(x[0], dtype=np.float32)               # residual stream, updated in place
    eps, scale = np.float32(c.norm_eps), np.float32(model.attn_scale)
    softcap = np.float32(c.attn_softcap or 0.0)
    full = np.int64(1 << 62)
    window = np.int64(c.sliding_window) if c.sliding_window else full
    nq, nkv, hd = p.nq, p.nkv, c.head_dim
    for i, (an, qkv, qn, kn, wo, bo, pan, fn, gu, wdn, bdn, pfn, sliding) in enumerate(p.layers):
        wq, wk, wv, bq, bk, bv, n0, n1 = qkv
        inv_freq, mscale = ropes[sliding]
        _attn_in(xr, an, eps, wq, wk, wv, bq, bk, bv, n0, n1, qn, kn, pos, inv_freq, c.rope_neox, mscale,
                 c.n_heads, c.n_kv_heads, hd, p.xn, p.xq, p.xd, p.xs, p.qkv)
        k = p.qkv[nq:nq + nkv].reshape(1, c.n_kv_heads, hd)
        v = p.qkv[nq + nkv:].reshape(1, c.n_kv_heads, hd)
        k_all, v_all, k_pos = cache.update_and_fetch(i, k, v)
        wg, wu, bg, bu, split = gu
        _attn_out(xr, p.qkv[:nq], _f32(k_all), _f32(v_all), np.asarray(k_pos, dtype=np.int64), pos, scale,
                  window if sliding else full, softcap, wo, bo, pan, fn, eps, wg, wu, bg, bu, split, p.act,
                  wdn, bdn, pfn,
                  p.att, p.aq, p.ad, p.as_, p.tmp, p.xn, p.xq, p.xd, p.xs, p.gu, p.h, p.hq, p.hd, p.hs)
    return xr.reshape(1, -1)


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=np.float32)
