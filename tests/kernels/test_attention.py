"""attention reference against torch: F.scaled_dot_product_attention (enable_gqa) where it
applies, and explicit torch math (HF `repeat_kv`-style GQA, gemma-2 softcap) otherwise."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeformer.kernels import OPS
from edgeformer.kernels.attention import attention_ref
from support.kernel_testutil import assert_f32_close, randn, rng_for, t64


def torch_mask(t, s, q_pos, k_pos, causal, window):
    qp = torch.arange(s - t, s) if q_pos is None else torch.as_tensor(q_pos)
    kp = torch.arange(s) if k_pos is None else torch.as_tensor(k_pos)
    ok = torch.ones(t, s, dtype=torch.bool)
    if causal:
        ok &= kp[None, :] <= qp[:, None]
    if window is not None:
        ok &= (qp[:, None] - kp[None, :]) < window
    return ok


def torch_attention(q, k, v, q_pos=None, k_pos=None, *, scale, causal=True, window=None, softcap=None):
    """float64 torch attention; (T, H, D) layouts as in the reference."""
    t, hq, _ = q.shape
    s, hkv, _ = k.shape
    ok = torch_mask(t, s, q_pos, k_pos, causal, window)
    qt, kt, vt = (t64(a).permute(1, 0, 2)[None] for a in (q, k, v))      # (1, H, T|S, D)
    if softcap is None and ok.any(-1).all():
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=ok, scale=scale, enable_gqa=True)
    else:
        rep = hq // hkv                                                    # HF repeat_kv
        kt, vt = kt.repeat_interleave(rep, dim=1), vt.repeat_interleave(rep, dim=1)
        w = qt @ kt.transpose(-1, -2) * scale
        if softcap is not None:
            w = softcap * torch.tanh(w / softcap)
        w = w.masked_fill(~ok, -math.inf).softmax(-1).nan_to_num(0.0)     # no visible key -> 0
        out = w @ vt
    return out[0].permute(1, 0, 2)                                         # (T, Hq, Dv)


# (T, S, Hq, Hkv, D, Dv, positions, attrs)
CASES = {
    "single_token": (1, 1, 2, 1, 64, 64, "default", {}),
    "prefill_33_gqa1": (33, 33, 3, 3, 64, 64, "default", {}),
    "prefill_33_gqa2": (33, 33, 4, 2, 64, 64, "default", {}),
    "prefill_33_gqa7": (33, 33, 7, 1, 32, 32, "default", {}),
    "decode_1500_gqa2": (1, 1500, 4, 2, 64, 64, "default", {}),
    "prefill_long_1025": (64, 1025, 2, 1, 64, 64, "default", {}),
    "chunk_offset_positions": (5, 45, 4, 2, 64, 64, "offset", {}),
    "window_8_offset": (33, 45, 4, 2, 64, 64, "offset", {"window": 8}),
    "window_1_decode": (1, 1500, 7, 1, 64, 64, "default", {"window": 1}),
    "window_over_context": (1, 1500, 4, 2, 32, 32, "offset", {"window": 512}),
    "softcap_50": (17, 17, 2, 1, 64, 64, "default", {"softcap": 50.0}),
    "softcap_window": (33, 45, 4, 2, 64, 64, "offset", {"softcap": 30.0, "window": 16}),
    "noncausal_dv48": (9, 13, 6, 2, 64, 48, "default", {"causal": False}),
    "fully_masked_rows": (10, 10, 2, 2, 32, 32, "early", {}),
}


def make(name):
    t, s, hq, hkv, d, dv, pos, attrs = CASES[name]
    r = rng_for("attn", name)
    q, k, v = randn(r, t, hq, d), randn(r, s, hkv, d), randn(r, s, hkv, dv)
    if attrs.get("softcap"):
        q *= 4.0                       # scores big enough that the cap bends them
    qp = kp = None
    if pos == "offset":                # the T queries are the last T of S keys at position 100+
        kp = np.arange(100, 100 + s)
        qp = kp[s - t:]
    elif pos == "early":               # queries at 5..14 see keys from 10 on: 5 rows see nothing
        kp, qp = np.arange(10, 10 + s), np.arange(5, 5 + t)
    return q, k, v, qp, kp, {"scale": 1.0 / math.sqrt(d), **attrs}


@pytest.mark.parametrize("name", list(CASES))
def test_attention_matches_torch(name):
    q, k, v, qp, kp, attrs = make(name)
    got = attention_ref(q, k, v, qp, kp, **attrs)
    # float32 softmax over up to 1500 keys and a dot over D terms: within 1e-5 relative
    assert_f32_close(got, torch_attention(q, k, v, qp, kp, **attrs), atol_rel=2e-6)


def test_fully_masked_rows_are_zero():
    q, k, v, qp, kp, attrs = make("fully_masked_rows")
    got = attention_ref(q, k, v, qp, kp, **attrs)
    assert (got[:5] == 0).all() and np.abs(got[5:]).sum(-1).min() > 0


def test_default_positions_mean_last_t_keys():
    q, k, v, _, _, attrs = make("chunk_offset_positions")
    s, t = k.shape[0], q.shape[0]
    np.testing.assert_array_equal(attention_ref(q, k, v, **attrs),
                                  attention_ref(q, k, v, np.arange(s - t, s) + 7, np.arange(s) + 7, **attrs))


def test_nan_in_query_row_stays_in_its_head():
    q, k, v, _, _, attrs = make("prefill_33_gqa2")
    q[3, 1, 5] = np.nan
    got = attention_ref(q, k, v, **attrs)
    bad = ~np.isfinite(got)
    assert bad[3, 1].all() and bad.sum() == got.shape[-1]


@pytest.mark.parametrize("which", ["k", "v"])
def test_nan_at_a_key_reaches_only_queries_that_see_it(which):
    q, k, v, _, _, attrs = make("window_8_offset")
    j = 30                                    # key position 130; queries at 112..144, window 8
    (k if which == "k" else v)[j, 0, 2] = np.nan
    got = attention_ref(q, k, v, np.arange(112, 145), np.arange(100, 145), **attrs)
    qpos = np.arange(112, 145)
    sees = (qpos >= 130) & (qpos - 130 < 8)   # queries 130..137
    rows_bad = ~np.isfinite(got).all(axis=-1)   # (T, Hq)
    assert rows_bad[sees][:, :2].all()         # kv head 0 serves query heads 0, 1
    assert not rows_bad[~sees].any() and not rows_bad[:, 2:].any()


def test_attention_cost_by_hand():
    q = np.zeros((4, 2, 8), np.float32)
    k = np.zeros((4, 1, 8), np.float32)
    v = np.zeros((4, 1, 6), np.float32)
    per_pair = 2 * 8 + 2 * 6 + 5             # q.k, p.v, softmax bookkeeping
    c = OPS["attention"].cost(q, k, v, scale=1.0)
    assert c.flops == 2 * 10 * per_pair        # causal 4x4: 1+2+3+4 pairs, 2 query heads
    assert (c.bytes_read, c.bytes_written) == (4 * 2 * 8 * 4 + 4 * 8 * 4 + 4 * 6 * 4, 4 * 2 * 6 * 4)
    assert OPS["attention"].cost(q, k, v, scale=1.0, window=2).flops == 2 * (1 + 2 + 2 + 2) * per_pair
    assert OPS["attention"].cost(q, k, v, scale=1.0, causal=False).flops == 2 * 16 * per_pair
    assert OPS["attention"].cost(q, k, v, scale=1.0, softcap=30.0).flops == 2 * 10 * (per_pair + 3)
    c = OPS["attention"].cost(q[:1], k, v, scale=1.0)   # decode: one query sees all 4 keys
    assert c.flops == 2 * 4 * per_pair
