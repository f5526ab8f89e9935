"""attention: scaled dot-product attention with GQA, causal mask by position, sliding
window and logit soft-capping."""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import Cost, OpSpec, nbytes_of, out_bytes


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  q_pos: np.ndarray | None = None, k_pos: np.ndarray | None = None, *,
                  scale: float, causal: bool = True, window: int | None = None,
                  softcap: float | None = None) -> np.ndarray:
    """q: (T, Hq, D); k: (S, Hkv, D); v: (S, Hkv, Dv); Hq a multiple of Hkv (query head h
    reads kv head h // (Hq // Hkv)). q_pos: (T,), k_pos: (S,) absolute positions.

    Key j is visible to query i iff (not causal or k_pos[j] <= q_pos[i]) and
    (window is None or q_pos[i] - k_pos[j] < window). Scores are `scale * q.k`, then
    `softcap * tanh(s / softcap)` if softcap, then masked softmax (float32).
    A query with no visible key gets zeros. Returns (T, Hq, Dv) float32."""
    t, hq, d = q.shape
    s, hkv, dv = v.shape
    g = hq // hkv
    qf = q.astype(np.float32, copy=False).reshape(t, hkv, g, d)
    kf = k.astype(np.float32, copy=False)
    vf = v.astype(np.float32, copy=False)
    scores = np.einsum("thgd,shd->hgts", qf, kf) * np.float32(scale)   # (Hkv, G, T, S)
    if softcap:
        scores = np.tanh(scores / np.float32(softcap)) * np.float32(softcap)
    mask = np.ones((t, s), dtype=bool)
    if causal or window is not None:
        if q_pos is None or k_pos is None:
            q_pos = np.arange(s - t, s) if q_pos is None else q_pos
            k_pos = np.arange(s) if k_pos is None else k_pos
        diff = np.asarray(q_pos)[:, None].astype(np.int64) - np.asarray(k_pos)[None, :].astype(np.int64)
        if causal:
            mask &= diff >= 0
        if window is not None:
            mask &= diff < window
    scores = np.where(mask, scores, -np.inf)
    m = scores.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    p = np.exp(scores - m)
    denom = p.sum(axis=-1, keepdims=True)
    p = p / np.where(denom > 0, denom, 1.0)
    out = np.einsum("hgts,shd->thgd", p.astype(np.float32), vf)        # (T, Hkv, G, Dv)
    return out.reshape(t, hq, dv).astype(np.float32, copy=False)


def attention_cost(q, k, v, q_pos=None, k_pos=None, *, scale, causal=True, window=None, softcap=None) -> Cost:
    t, hq, d = q.shape
    s, _, dv = v.shape
    # dense pricing: every (query, key) pair computed, as the reference and flash kernels do
    # for the visible part; causal prefill halves the useful work (t*s/2 when t == s).
    pairs = t * s
    if causal and t > 1:
        pairs = t * s - t * (t - 1) / 2
    if window is not None:
        pairs = min(pairs, t * window)
    flops = 2.0 * hq * pairs * (d + dv) + 5.0 * hq * pairs
    return Cost(flops=flops, bytes_read=nbytes_of(q) + nbytes_of(k) + nbytes_of(v),
                bytes_written=out_bytes((t, hq, dv)))


ATTENTION = OpSpec("attention", attention_ref, attention_cost, max_nmse={"default": 1e-9})
