"""CPU attention's blocked kernel (every T) vs `attention_ref` and torch SDPA on awkward
shapes: T and S not multiples of the blocks, GQA/MQA, windows, soft-cap, queries that see
no key, unsorted key positions, head dims that are not multiples of 16; and its batch
invariance: a query's bits do not depend on the call it is in."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.backends.cpu import attention as cpu_attn
from edgeformer.kernels import OPS
from edgeformer.kernels.attention import attention_ref

MAX_NMSE = OPS["attention"].max_nmse["default"]
rng = np.random.default_rng(7)


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum((a.astype(np.float64) - ref) ** 2) / max(np.sum(ref.astype(np.float64) ** 2), 1e-30))


def _qkv(t: int, s: int, hq: int, hkv: int, d: int, dv: int) -> tuple[np.ndarray, ...]:
    return (rng.standard_normal((t, hq, d), dtype=np.float32), rng.standard_normal((s, hkv, d), dtype=np.float32),
            rng.standard_normal((s, hkv, dv), dtype=np.float32))


CASES = [  # t, s, hq, hkv, d, dv, causal, window, softcap, positions
    (18, 18, 2, 2, 16, 16, False, None, None, None),        # a short sentence
    (65, 65, 9, 3, 64, 64, True, None, None, None),         # T = BQ + 1, GQA 3 (SmolLM2 heads)
    (130, 200, 3, 1, 40, 80, True, 70, None, None),         # chunk after a cache, MQA, window, Dv % 32 == 16
    (100, 129, 6, 2, 24, 20, False, None, None, None),      # bidirectional, D and Dv not multiples of 16
    (257, 257, 4, 4, 32, 32, False, None, 30.0, None),      # ViT-like length, soft-cap
    (33, 45, 8, 2, 32, 32, True, 5, 30.0, "offset"),        # window 5, soft-cap, positions from 100
    (20, 30, 4, 2, 32, 48, True, 4, None, "early"),         # queries before every key: zero rows
    (70, 140, 4, 4, 64, 64, True, None, None, "shuffled"),  # unsorted key positions: no range skipping
    (19, 130, 4, 4, 128, 128, False, 33, 20.0, "offset"),   # non-causal window, hd 128
]


def _positions(kind: str | None, t: int, s: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    if kind == "offset":
        kp = np.arange(100, 100 + s)
        return kp[s - t:], kp
    if kind == "early":
        return np.arange(5, 5 + t), np.arange(10, 10 + s)
    if kind == "shuffled":
        return np.arange(s - t, s), rng.permutation(s)
    return None, None


@pytest.mark.parametrize("case", CASES, ids=str)
def test_blocked_matches_reference(case: tuple) -> None:
    t, s, hq, hkv, d, dv, causal, window, softcap, pos = case
    q, k, v = _qkv(t, s, hq, hkv, d, dv)
    qp, kp = _positions(pos, t, s)
    kw = dict(scale=d ** -0.5, causal=causal, window=window, softcap=softcap)
    got = cpu_attn.attention(q, k, v, qp, kp, **kw)
    ref = attention_ref(q, k, v, qp, kp, **kw)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert nmse(got, ref) <= MAX_NMSE
    if pos == "early":                          # a query that sees no key gets zeros
        assert not got[:5].any()


@pytest.mark.parametrize("t,s,hq,hkv,causal", [(1500, 1500, 2, 2, False), (77, 77, 6, 2, True)])
def test_blocked_matches_torch_sdpa(t: int, s: int, hq: int, hkv: int, causal: bool) -> None:
    torch = pytest.importorskip("torch")
    q, k, v = _qkv(t, s, hq, hkv, 64, 64)
    got = cpu_attn.attention(q, k, v, scale=0.125, causal=causal)
    g = hq // hkv
    tq, tk, tv = (torch.from_numpy(a).transpose(0, 1) for a in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(
        tq, tk.repeat_interleave(g, 0), tv.repeat_interleave(g, 0), is_causal=causal, scale=0.125)
    assert nmse(got, ref.transpose(0, 1).double().numpy()) <= MAX_NMSE


def test_blocked_matches_exact_kernel_and_keeps_masked_nan_out() -> None:
    q, k, v = _qkv(40, 40, 4, 2, 32, 32)
    kw = dict(scale=32 ** -0.5, causal=True, window=6, softcap=None)
    exact = np.empty((40, 4, 32), np.float32)
    cpu_attn._attn_ser(q, k, v, np.arange(40), np.arange(40), np.float32(kw["scale"]), True, 6, np.float32(0), exact)
    assert nmse(cpu_attn.attention(q, k, v, **kw), exact) <= MAX_NMSE
    v[3, 1, 5] = np.nan                         # key 3 is out of every window from query 9 on
    got = cpu_attn.attention(q, k, v, **kw)
    assert np.isfinite(got[9:]).all() and np.isnan(got[3:9, 2:, 5]).all()
    assert nmse(got[9:], attention_ref(q, k, v, **kw)[9:]) <= MAX_NMSE


# ---------------------------------------------------------------- batch invariance

INV_CASES = [  # t, s, hq, hkv, d, dv, window, softcap
    (150, 150, 9, 3, 64, 64, None, None),       # SmolLM2 heads; S not a multiple of the key block
    (97, 211, 8, 2, 32, 48, 40, 30.0),          # a chunk after a cache, window, soft-cap, Dv % 32 == 16
    (70, 70, 4, 1, 40, 24, 17, None),           # MQA, D and Dv not multiples of 16
]


@pytest.mark.parametrize("case", INV_CASES, ids=str)
def test_a_query_gets_the_same_bits_in_any_call(case: tuple) -> None:
    """Query i's output must not depend on T, on the other queries, on its place in the
    call, nor on keys it cannot see: alone over the keys up to it (a decode step, op path
    and the fused step's `attend_one`), in chunked prefills (each chunk sees the keys up to
    its end), shuffled among the others, with fewer queries per task, and with its
    window's evicted keys missing (a paged cache's sliding layers)."""
    t, s, hq, hkv, d, dv, window, softcap = case
    q, k, v = _qkv(t, s, hq, hkv, d, dv)
    qp = np.arange(s - t, s)
    kw = dict(scale=d ** -0.5, causal=True, window=window, softcap=softcap)
    full = cpu_attn.attention(q, k, v, qp, None, **kw)
    assert nmse(full, attention_ref(q, k, v, qp, None, **kw)) <= MAX_NMSE
    win = cpu_attn._NO_WINDOW if window is None else window
    for i in range(t):
        n = s - t + i + 1
        alone = cpu_attn.attention(q[i:i + 1], k[:n], v[:n], qp[i:i + 1], None, **kw)
        np.testing.assert_array_equal(alone, full[i:i + 1], err_msg=f"query {i} alone")
        fused = np.empty((1, hq, dv), np.float32)
        cpu_attn.attend_one(q[i:i + 1], k[:n], v[:n], np.arange(n), qp[i], np.float32(kw["scale"]), win,
                            np.float32(softcap or 0.0), fused)
        np.testing.assert_array_equal(fused, alone, err_msg=f"query {i} in the fused step")
    for chunk in (1, 7, 16, 33, 64):
        parts = [cpu_attn.attention(q[a:a + chunk], k[:s - t + a + chunk], v[:s - t + a + chunk],
                                    qp[a:a + chunk], None, **kw) for a in range(0, t, chunk)]
        np.testing.assert_array_equal(np.concatenate(parts), full, err_msg=f"chunks of {chunk}")
    perm = rng.permutation(t)
    np.testing.assert_array_equal(cpu_attn.attention(q[perm], k, v, qp[perm], None, **kw), full[perm])
    for bq in (1, 5, 16, 64):                   # rows per task (halved by the thread count)
        out = np.empty_like(full)
        cpu_attn._blocked_ser(q, cpu_attn._pad16(k), cpu_attn._pad16(v), *cpu_attn._NO_PAGES, qp, np.arange(s),
                              np.float32(kw["scale"]), True, win, np.float32(softcap or 0.0), bq, out)
        np.testing.assert_array_equal(out, full, err_msg=f"{bq} queries per task")
    if window is not None:                      # keys before `lo` left every window of the last queries
        lo = s - t // 2 - window + 1
        got = cpu_attn.attention(q[-(t // 2):], k[lo:], v[lo:], qp[-(t // 2):], np.arange(lo, s), **kw)
        np.testing.assert_array_equal(got, full[-(t // 2):])


def test_thread_count_does_not_change_bits() -> None:
    import numba
    q, k, v = _qkv(200, 300, 6, 2, 64, 64)
    kw = dict(scale=0.125, causal=True, window=None, softcap=None)
    n = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = cpu_attn.attention(q, k, v, **kw)
    finally:
        numba.set_num_threads(n)
    np.testing.assert_array_equal(cpu_attn.attention(q, k, v, **kw), one)
