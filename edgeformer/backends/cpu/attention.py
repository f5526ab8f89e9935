"""attention: GQA scaled dot-product attention with causal-by-position masking, sliding
window and logit soft-capping; same semantics as `kernels.attention.attention_ref`.

One task per (query token, kv head): the G query heads sharing a kv head are processed
together, key-major, so each key/value row is read once per task for all G heads. Scores
of the visible keys go to a per-task scratch; softmax is exact (max, exp, sum) in float32:
one pass over the keys for scores, one for values. Decode (T=1) parallelises over kv heads.
"""
from __future__ import annotations

import numpy as np
from numba import prange

from edgeformer.backends.cpu.common import jit_pair


def _attn_rows(q, k, v, qp, kp, scale, causal, window, softcap, out):
    t_, hq, d = q.shape
    s_, hkv, dv = v.shape
    g_ = hq // hkv
    for task in prange(t_ * hkv):
        t = task // hkv
        h = task - t * hkv
        sc = np.empty((s_, g_), np.float32)      # scores, key-major: one key row serves G heads
        m = np.full(g_, -np.inf, np.float32)
        vis = np.empty(s_, np.bool_)
        for j in range(s_):
            diff = qp[t] - kp[j]
            vis[j] = (not causal or diff >= 0) and diff < window
            if not vis[j]:
                continue
            kr = k[j, h]
            for g in range(g_):
                qr = q[t, h * g_ + g]
                acc = np.float32(0.0)
                for i in range(d):
                    acc += qr[i] * kr[i]
                x = acc * scale
                if softcap > 0:
                    x = np.tanh(x / softcap) * softcap
                sc[j, g] = x
                m[g] = max(m[g], x)
        o = out[t, h * g_:(h + 1) * g_]          # (G, Dv)
        o[:] = 0.0
        den = np.zeros(g_, np.float32)
        for g in range(g_):
            if m[g] == -np.inf:                   # no visible key: zeros, as the reference
                m[g] = 0.0
        for j in range(s_):
            if not vis[j]:
                continue
            vr = v[j, h]
            for g in range(g_):
                p = np.exp(sc[j, g] - m[g])
                den[g] += p
                og = o[g]
                for i in range(dv):
                    og[i] += p * vr[i]
        for g in range(g_):
            if den[g] > 0:
                inv = np.float32(1.0) / den[g]
                og = o[g]
                for i in range(dv):
                    og[i] *= inv


_attn_ser, _attn_par = jit_pair(_attn_rows)
_NO_WINDOW = 1 << 62   # "no window": every diff is below it


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=np.float32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
              q_pos: np.ndarray | None = None, k_pos: np.ndarray | None = None, *,
              scale: float, causal: bool = True, window: int | None = None,
              softcap: float | None = None) -> np.ndarray:
    """q: (T, Hq, D); k: (S, Hkv, D); v: (S, Hkv, Dv) -> (T, Hq, Dv) float32.
    Contract of `kernels.attention.attention_ref` (positions default to the last T of S)."""
    t, hq, _ = q.shape
    s, hkv, dv = v.shape
    if q_pos is None:
        q_pos = np.arange(s - t, s)
    if k_pos is None:
        k_pos = np.arange(s)
    out = np.empty((t, hq, dv), np.float32)
    fn = _attn_par if t * hkv > 1 else _attn_ser
    fn(_f32(q), _f32(k), _f32(v), np.ascontiguousarray(q_pos, dtype=np.int64),
       np.ascontiguousarray(k_pos, dtype=np.int64), np.float32(scale), bool(causal),
       _NO_WINDOW if window is None else int(window), np.float32(softcap or 0.0), out)
    return out
