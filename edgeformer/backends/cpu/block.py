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

from edgeformer.backends.blocks import Attention, DecoderStack
from edgeformer.backends.cpu.act_quant import quant_row, to_lanes
from edgeformer.backends.cpu.activation import ACTIVATION_IDS, glu_row
from edgeformer.backends.cpu.attention import attend_one
from edgeformer.backends.cpu.common import EXACT, JIT, specialise
from edgeformer.backends.cpu.kinds import EMPTY_SLOT, KINDS, slot
from edgeformer.backends.cpu.norm import rms_row
from edgeformer.backends.cpu.rope import cos_sin, rotate

_NOB = np.zeros(0, np.float32)
# Template globals of `_rows_kind`, bound per table row by `specialise`.
KIND, ROWDOT, OTHER, XL = -1, None, None, None


@njit(**JIT)
def _same(xq):
    return xq


@njit(**JIT)
def _rows_none(w, xq, xd, xs, out):
    """The end of the `_rows` chain: no kind matched (never reached for a fusable model)."""


def _rows_kind(w, xq, xd, xs, out):
    """out[r] = row r of weight slot `w` . activations (xq, xd, xs) if w is of kind KIND
    (ROWDOT; one loop per kind: a kind test or a non-inlined row-dot call per row measured
    2.7x slower), else OTHER's (the next kind's). XL puts xq in the layout ROWDOT takes."""
    kind, a, b, c, d, e, f = w
    if kind == KIND:
        xl = XL(xq)
        for r in prange(out.shape[0]):
            out[r] = ROWDOT(a[r], b[r], c[r], d[r], e[r], f[r], xl, xd, xs)
    else:
        OTHER(w, xq, xd, xs, out)


def _chain():
    """One `_rows_kind` link per `kinds.KINDS` row (KIND its id), built from the last."""
    g = _rows_none
    for i, (q, k) in reversed(list(enumerate(KINDS.items()))):
        g = specialise(_rows_kind, f"_rows_{q.name.lower()}", dict(parallel=True, **JIT), KIND=i, ROWDOT=k.rowdot,
                       OTHER=g, XL=to_lanes if k.lanes else _same)
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
    """Per-stack slots and scratch buffers for the fused step."""

    def __init__(self, stack: DecoderStack) -> None:
        a0 = stack.blocks[0].attention
        nq, nkv = a0.n_heads * a0.head_dim, a0.n_kv_heads * a0.head_dim
        self.layers = []
        for B in stack.blocks:
            if len(B.qkv) == 1:
                n = nq + 2 * nkv       # one GEMV fills all of qkv
                qkv = (slot(B.qkv[0].weight.handle), EMPTY_SLOT, EMPTY_SLOT, _b(B.qkv[0].bias), _NOB, _NOB, n, n)
            else:
                q, k, v = B.qkv
                qkv = (slot(q.weight.handle), slot(k.weight.handle), slot(v.weight.handle), _b(q.bias), _b(k.bias),
                       _b(v.bias), nq, nq + nkv)
            if len(B.gate_up) == 2:
                g, u = B.gate_up
                gu = (slot(g.weight.handle), slot(u.weight.handle), _b(g.bias), _b(u.bias), True)
            else:
                gu = (slot(B.gate_up[0].weight.handle), EMPTY_SLOT, _b(B.gate_up[0].bias), _NOB, False)
            self.layers.append((B.attn_norm, qkv, _b(B.q_norm), _b(B.k_norm), slot(B.out.weight.handle),
                                _b(B.out.bias), _b(B.post_attn_norm), B.ffn_norm, gu, slot(B.down.weight.handle),
                                _b(B.down.bias), _b(B.post_ffn_norm), _attention_args(B.attention)))
        e = lambda n, dt=np.float32: np.zeros(n, dt)  # noqa: E731
        it = stack.blocks[0].out.weight.handle.act.dtype       # the activations' integer type
        d, f = stack.dim, stack.ffn_dim
        self.xn, self.xq, self.xd, self.xs = e(d), e(d, it), e(d // 32), e(d // 32)
        self.qkv, self.att, self.tmp = e(nq + 2 * nkv), e(nq), e(d)
        self.aq, self.ad, self.as_ = e(nq, it), e(nq // 32), e(nq // 32)
        self.gu, self.h = e(2 * f), e(f)
        self.hq, self.hd, self.hs = e(f, it), e(f // 32), e(f // 32)
        self.act = ACTIVATION_IDS[stack.activation]
        self.nq, self.nkv = nq, nkv


def _attention_args(a: Attention) -> tuple:
    """A block's attention as the kernels take it: (rope key, neox, Hq, Hkv, D, scale,
    window (1 << 62: none), softcap (0: none)), converted once per plan."""
    return (a.rope, a.neox, a.n_heads, a.n_kv_heads, a.head_dim, np.float32(a.scale),
            np.int64(a.window) if a.window else np.int64(1 << 62), np.float32(a.softcap or 0.0))


def _b(b: np.ndarray | None) -> np.ndarray:
    return _NOB if b is None else np.ascontiguousarray(b, dtype=np.float32)


def why_not_fused(stack: DecoderStack, int_activations: bool = True) -> str | None:
    """None if `decode_step` can run `stack` (every block what `blocks.py` describes: q/k
    norm, post norms, soft-capped and windowed attention, a separate rope for sliding
    layers included) with weights of these qtypes and integer activations
    (`int_activations`; the "f32" setting has none), else the reason."""
    if not stack.blocks:
        return "no blocks"
    if not int_activations:
        return "float32 activations (the fused step dots integer activations)"
    a0 = stack.blocks[0].attention
    if any(d % 32 for d in (stack.dim, a0.n_heads * a0.head_dim, stack.ffn_dim)):
        return "a row length that is not a multiple of 32"
    if stack.activation not in ACTIVATION_IDS:
        return f"activation {stack.activation}"
    if stack.rope_varies:
        return "rope scaling that changes with the sequence length"
    for B in stack.blocks:
        a = B.attention
        if (a.n_heads, a.n_kv_heads, a.head_dim, a.neox) != (a0.n_heads, a0.n_kv_heads, a0.head_dim, a0.neox):
            return "blocks of different attention shapes"
        if (B.q_norm is None) != (B.k_norm is None):
            return "a q norm without a k norm"
        if len(B.qkv) not in (1, 3) or len(B.gate_up) not in (1, 2):
            return "projections other than q|k|v (or q, k, v) and gate|up (or gate, up)"
        for pr in B.projections():
            if pr.weight.qtype not in KINDS:
                return f"{pr.weight.name} is {pr.weight.qtype.name} (no quantized fused kernel)"
    return None


_PLANS: "weakref.WeakKeyDictionary[DecoderStack, _Plan | None]" = weakref.WeakKeyDictionary()


def decode_step(stack: DecoderStack, x: np.ndarray, pos: int, cache: Any,
                ropes: dict[str, tuple[np.ndarray, float]], int_activations: bool = True) -> np.ndarray | None:
    """Run every block of `stack` for one token: x (1, dim) float32 at position `pos`,
    keys/values appended to `cache` (update_and_fetch contract); `ropes` "full" and
    "sliding" -> (inv_freq, mscale) for this step. Returns the new x (1, dim), or None when
    the stack is not covered (`why_not_fused`; the caller then runs the op-by-op path)."""
    if stack not in _PLANS:
        _PLANS[stack] = _Plan(stack) if why_not_fused(stack, int_activations) is None else None
    p = _PLANS[stack]
    if p is None:
        return None
    rs = {k: (np.ascontiguousarray(r[0], dtype=np.float32), np.float32(r[1])) for k, r in ropes.items()}
    xr = np.array(x[0], dtype=np.float32)               # residual stream, updated in place
    eps = np.float32(stack.norm_eps)
    nq, nkv = p.nq, p.nkv
    for i, (an, qkv, qn, kn, wo, bo, pan, fn, gu, wdn, bdn, pfn, att) in enumerate(p.layers):
        wq, wk, wv, bq, bk, bv, n0, n1 = qkv
        rope, neox, nh, nkh, hd, scale, window, softcap = att
        inv_freq, mscale = rs[rope]
        _attn_in(xr, an, eps, wq, wk, wv, bq, bk, bv, n0, n1, qn, kn, pos, inv_freq, neox, mscale,
                 nh, nkh, hd, p.xn, p.xq, p.xd, p.xs, p.qkv)
        k = p.qkv[nq:nq + nkv].reshape(1, nkh, hd)
        v = p.qkv[nq + nkv:].reshape(1, nkh, hd)
        k_all, v_all, k_pos = cache.update_and_fetch(i, k, v)
        wg, wu, bg, bu, split = gu
        _attn_out(xr, p.qkv[:nq], _f32(k_all), _f32(v_all), np.asarray(k_pos, dtype=np.int64), pos, scale,
                  window, softcap, wo, bo, pan, fn, eps, wg, wu, bg, bu, split, p.act, wdn, bdn, pfn,
                  p.att, p.aq, p.ad, p.as_, p.tmp, p.xn, p.xq, p.xd, p.xs, p.gu, p.h, p.hq, p.hd, p.hs)
    return xr.reshape(1, -1)


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=np.float32)
