"""CPU attention's blocked (flash) prefill kernel vs `attention_ref` and torch SDPA on
awkward shapes: T and S not multiples of the blocks, GQA/MQA, windows, soft-cap, queries
that see no key, unsorted key positions, head dims that are not multiples of 16."""
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
    assert t >= cpu_attn.FLASH_MIN_T and t * s >= cpu_attn.FLASH_MIN_PAIRS   # the blocked kernel runs
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
