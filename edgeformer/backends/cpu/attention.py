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

from edgeformer.backends.cpu.common import PARALLEL_MIN, jit_pair
from edgeformer.backends.cpu.simd import fast_exp


def _attn_rows(q, k, v, qp, kp, scale, causal, window, softcap, out):
    t_, hq, d = q.shape
    s_, hkv, dv = v.shape
    g_ = hq // hkv
    ksorted = True                               # cache positions ascend: visible keys are one range
    for j in range(1, s_):
        if kp[j] < kp[j - 1]:
            ksorted = False
    for task in prange(t_ * hkv):
        t = task // hkv
        h = task - t * hkv
        # keys outside [j0, j1) are masked for sure (causal prefill: half of them)
        j0, j1 = 0, s_
        if ksorted:
            if causal:
                j1 = np.searchsorted(kp, qp[t], side="right")
            if window < (1 << 61):
                j0 = np.searchsorted(kp, qp[t] - window, side="right")
        sc = np.empty((g_, s_), np.float32)      # scores, then probabilities
        m = np.full(g_, -np.inf, np.float32)
        vis = np.zeros(s_, np.bool_)
        for g in range(g_):
            sc[g, :j0] = -np.inf
            sc[g, j1:] = -np.inf
        for j in range(j0, j1):                  # key-major: one key row serves all G heads
            diff = qp[t] - kp[j]
            vis[j] = (not causal or diff >= 0) and diff < window
            if not vis[j]:
                for g in range(g_):
                    sc[g, j] = -np.inf
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
                sc[g, j] = x
                m[g] = max(m[g], x)
        den = np.zeros(g_, np.float32)
        for g in range(g_):                      # contiguous over keys: vectorised exp
            mg = m[g] if m[g] != -np.inf else np.float32(0.0)
            row = sc[g]
            for j in range(j0, j1):
                e = fast_exp(row[j] - mg)
                row[j] = e
                den[g] += e
        o = out[t, h * g_:(h + 1) * g_]          # (G, Dv)
        o[:] = 0.0
        for j in range(j0, j1):
            if not vis[j]:                       # never touch masked values (NaN-safe)
                continue
            vr = v[j, h]
            for g in range(g_):
                p = sc[g, j]
                og = o[g]
                for i in range(dv):
                    og[i] += p * vr[i]
        for g in range(g_):
            if den[g] > 0:                       # else no visible key: zeros, as the reference
                inv = np.float32(1.0) / den[g]
                og = o[g]
                for i in range(dv):
                    og[i] *= inv


_attn_ser, _attn_par = jit_pair(_attn_rows)
_NO_WINDOW = 1 << 62   # "no window": every diff is below it


def _i64(a: np.ndarray) -> np.ndarray:
    return a if isinstance(a, np.ndarray) and a.dtype == np.int64 and a.flags.c_contiguous \
        else np.ascontiguousarray(a, dtype=np.int64)


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=np.float32)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray,
              q_pos: np.ndarray | None = None, k_pos: np.ndarray | None = None, *,
              scale: float, causal: bool = True, window: int | None = None,
              softcap: float | None = None) -> np.ndarray:
    """q: (T, Hq, D); k: (S, Hkv, D); v: (S, Hkv, Dv) -> (T, Hq, Dv) float32.
    Contract of `kernels.attention.attention_ref` (positions default to the last T of S)."""
    t, hq, d = q.shape
    s, hkv, dv = v.shape
    if k.shape != (s, hkv, d) or hq % hkv or (q_pos is not None and np.shape(q_pos) != (t,)) \
            or (k_pos is not None and np.shape(k_pos) != (s,)):
        raise ValueError(f"attention: q {q.shape}, k {k.shape}, v {v.shape} (positions "
                         f"{np.shape(q_pos)}, {np.shape(k_pos)}) are inconsistent")
    if q_pos is None:
        q_pos = np.arange(s - t, s)
    if k_pos is None:
        k_pos = np.arange(s)
    out = np.empty((t, hq, dv), np.float32)
    # decode-sized work (one token, a short cache) runs serially: waking the thread pool
    # (~10-30 us with OMP_WAIT_POLICY=PASSIVE) costs more than the few heads' dot products
    fn = _attn_par if t * hkv > 1 and t * hq * s * d >= PARALLEL_MIN else _attn_ser
    fn(_f32(q), _f32(k), _f32(v), _i64(q_pos), _i64(k_pos), np.float32(scale), bool(causal),
       _NO_WINDOW if window is None else int(window), np.float32(softcap or 0.0), out)
    return out

