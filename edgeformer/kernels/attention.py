"""attention: scaled dot-product attention with GQA, causal mask by position, sliding
window and logit soft-capping."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from edgeformer.kernels.base import Case, Cost, OpSpec, nbytes_of, out_bytes
from edgeformer.kernels.inputs import plant, randn


def attention_mask(t: int, s: int, q_pos: np.ndarray | None, k_pos: np.ndarray | None,
                   causal: bool, window: int | None) -> np.ndarray:
    """(T, S) bool: True where key j is visible to query i (see `attention_ref`).
    Missing positions default to queries being the last T of the S keys."""
    mask = np.ones((t, s), dtype=bool)
    if causal or window is not None:
        qp = np.arange(s - t, s) if q_pos is None else np.asarray(q_pos)
        kp = np.arange(s) if k_pos is None else np.asarray(k_pos)
        diff = qp.astype(np.int64)[:, None] - kp.astype(np.int64)[None, :]   # (T, S)
        if causal:
            mask &= diff >= 0
        if window is not None:
            mask &= diff < window
    return mask


def attention_ref(q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  q_pos: np.ndarray | None = None, k_pos: np.ndarray | None = None, *,
                  scale: float, causal: bool = True, window: int | None = None,
                  softcap: float | None = None) -> np.ndarray:
    """q: (T, Hq, D); k: (S, Hkv, D); v: (S, Hkv, Dv); Hq a multiple of Hkv (query head h
    reads kv head h // (Hq // Hkv)). q_pos: (T,), k_pos: (S,) absolute positions
    (default: the queries are the last T of the S keys).

    Key j is visible to query i iff (not causal or k_pos[j] <= q_pos[i]) and
    (window is None or q_pos[i] - k_pos[j] < window). Scores are `scale * q.k`, then
    `softcap * tanh(s / softcap)` if softcap, then masked softmax (float32).
    A query with no visible key gets zeros. Keys a query cannot see never touch its
    output, even if they hold NaN/Inf. Returns (T, Hq, Dv) float32."""
    t, hq, d = q.shape
    s, hkv, dv = v.shape
    g = hq // hkv
    qh = q.astype(np.float32, copy=False).reshape(t, hkv, g, d).transpose(1, 2, 0, 3)  # (Hkv, G, T, D)
    kt = k.astype(np.float32, copy=False).transpose(1, 2, 0)[:, None]                 # (Hkv, 1, D, S)
    vh = v.astype(np.float32, copy=False).transpose(1, 0, 2)[:, None]                 # (Hkv, 1, S, Dv)
    scores = np.matmul(qh, kt) * np.float32(scale)                                     # (Hkv, G, T, S)
    if softcap:
        scores = np.tanh(scores / np.float32(softcap)) * np.float32(softcap)
    mask = attention_mask(t, s, q_pos, k_pos, causal, window)
    scores = np.where(mask, scores, np.float32(-np.inf))
    m = scores.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, np.float32(0.0))
    p = np.exp(scores - m)
    denom = p.sum(axis=-1, keepdims=True)
    p = (p / np.where(denom > 0, denom, np.float32(1.0))).astype(np.float32, copy=False)
    if np.isfinite(vh).all():
        out = np.matmul(p, vh)                                                         # (Hkv, G, T, Dv)
    else:
        # 0 * NaN is NaN: a dense p @ v would leak a masked key's NaN into every row,
        # so only the keys each query sees enter its sum.
        out = np.zeros((hkv, g, t, dv), dtype=np.float32)
        for i in range(t):
            vis = mask[i]
            out[:, :, i] = np.matmul(p[:, :, i, vis][:, :, None, :], vh[:, :, vis])[:, :, 0]
    return out.transpose(2, 0, 1, 3).reshape(t, hq, dv).astype(np.float32, copy=False)


def visible_pairs(t: int, s: int, causal: bool, window: int | None) -> int:
    """(query, key) pairs a causal/windowed attention computes when the T queries are the
    last T positions of the S keys (prefill and decode); from shapes only."""
    if not causal:
        return t * s if window is None else t * min(s, window)   # non-causal window: upper bound
    seen = np.arange(s - t + 1, s + 1, dtype=np.int64)            # keys visible to each query
    seen = np.clip(seen, 0, None)
    if window is not None:
        seen = np.minimum(seen, window)
    return int(seen.sum())


def attention_cost(q, k, v, q_pos=None, k_pos=None, *, scale, causal=True, window=None, softcap=None) -> Cost:
    """FLOPs of the visible (query, key) pairs per query head: q.k (2D), p.v (2Dv), and
    ~5 for scale/max/exp/sum/normalize (+3 with softcap). Bytes: q, k, v read once."""
    t, hq, d = q.shape
    s, _, dv = v.shape
    pairs = visible_pairs(t, s, causal, window)
    per_pair = 2 * (d + dv) + 5 + (3 if softcap else 0)
    return Cost(flops=float(hq * pairs * per_pair),
                bytes_read=nbytes_of(q) + nbytes_of(k) + nbytes_of(v),
                bytes_written=out_bytes(attention_shape(q, k, v)))


def attention_shape(q, k, v, *args, **attrs) -> tuple[int, ...]:
    return tuple(q.shape[:2]) + (v.shape[2],)


def _attn(t: int, s: int, hq: int, hkv: int, d: int, dv: int | None = None, *, pos: str = "default",
          nan: tuple[str, tuple] | None = None, **attrs: Any) -> Callable:
    """Builder of an attention case; pos: "default" (queries are the last T keys),
    "offset" (explicit positions from 100), "early" (some queries precede every key)."""
    def build(r: np.random.Generator) -> tuple[tuple, dict]:
        q, k, v = randn(r, t, hq, d), randn(r, s, hkv, d), randn(r, s, hkv, dv or d)
        if nan is not None:
            which, idx = nan
            q, k, v = [(plant(a, idx) if w == which else a) for a, w in ((q, "q"), (k, "k"), (v, "v"))]
        qp = kp = None
        if pos == "offset":
            kp = np.arange(100, 100 + s)
            qp = kp[s - t:]
        elif pos == "early":
            kp = np.arange(10, 10 + s)
            qp = np.arange(5, 5 + t)
        return (q, k, v, qp, kp), {"scale": 1.0 / np.sqrt(d), **attrs}
    return build


def attention_cases() -> list[Case]:
    """Decode and prefill, GQA, offsets, window, softcap, Dv != D, fully masked rows, and
    NaN in q, k, v (one a window hides)."""
    # batch/chunk invariance (a query alone vs with others, prefill whole vs in chunks) is
    # not checked here yet: it needs a "rows"-style check of its own
    a = "attention"
    return [
        Case(a, "single_token", _attn(1, 1, 2, 1, 64), quick=True),
        Case(a, "prefill_t33_gqa1", _attn(33, 33, 3, 3, 64)),
        Case(a, "prefill_t33_gqa7", _attn(33, 33, 7, 1, 32), quick=True),
        Case(a, "decode_s1500_gqa2", _attn(1, 1500, 4, 2, 64)),
        Case(a, "chunk_t5_s45_offset", _attn(5, 45, 4, 2, 64, pos="offset")),
        Case(a, "window8_offset", _attn(33, 45, 4, 2, 64, pos="offset", window=8), quick=True),
        Case(a, "softcap50", _attn(17, 17, 2, 1, 64, softcap=50.0)),
        Case(a, "noncausal_dv48", _attn(9, 13, 6, 2, 64, 48, causal=False)),
        Case(a, "fully_masked_rows", _attn(10, 10, 2, 2, 32, pos="early")),
        Case(a, "nan_q_row", _attn(8, 8, 4, 2, 32, nan=("q", (3, 1, 5))), check="nonfinite", quick=True),
        Case(a, "nan_k_mid", _attn(8, 8, 4, 2, 32, nan=("k", (4, 0, 2))), check="nonfinite"),
        Case(a, "nan_v_mid", _attn(8, 8, 4, 2, 32, nan=("v", (4, 1, 7))), check="nonfinite"),
        Case(a, "nan_k_outside_window", _attn(12, 12, 2, 1, 32, window=4, nan=("k", (1, 0, 0))), check="nonfinite"),
    ]


ATTENTION = OpSpec("attention", attention_ref, attention_cost, attention_shape, attention_cases,
                   op_class="attention", max_nmse={"default": 1e-9})
