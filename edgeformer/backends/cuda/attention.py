"""attention (`kernels/attention.py`'s contract: GQA, causal by positions, sliding window,
soft-capping) as two Triton kernels:

- `_flash` (prefill, T > 1): a (BM queries, one query head) tile per program, keys in
  BN-wide blocks, online softmax (running max m, sum l, unnormalized output acc);
- `_decode_split` + `_decode_merge` (one query token): split-K flash decoding over a
  PAGED cache read in place. Program (kv head, split) takes every query head of its GQA
  group (padded to 16 rows for tl.dot) over its key range; the merge rescales the
  splits' partial (m, l, acc) by exp(m_split - m_max). Pages are `runtime.kv_cache`'s
  layout, (pages, page_size, Hkv, D) in f32, f16, bf16 (raw bits) or int8 with a float32
  scale per token and head; key j of the table sits in page table[j // page_size],
  slot j % page_size, at position pos0 + j. A contiguous cache is one page.

Scores and p @ v use IEEE float32 dots (attention's bound, NMSE 1e-9, leaves no room
for TF32). What the reference guarantees about NaN/Inf is kept explicitly, since the
online softmax would otherwise spread or drop it: a visible score that is NaN or +inf
(after the soft-cap) makes the query head's whole row NaN, as the reference's softmax
does; a non-finite value in a visible key's v makes that output element NaN and touches
nothing else (v is zeroed inside the dot and the hit counted by a second dot, only in
key blocks that hold one); keys a query cannot see never touch it. A query with no
visible key gets zeros.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from edgeformer.backends.cuda.device import as_f32, as_int, cdiv, pow2
from edgeformer.backends.cuda.elementwise import tanh

# page storage kinds (`_load_kv`), by the torch dtype of the pages
KV_KINDS = {torch.float32: 0, torch.float16: 1, torch.int16: 2, torch.int8: 3}
# split-K decoding aims at this many programs (a few per SM on current GPUs)
TARGET_PROGRAMS = 256


@triton.jit
def _load_kv(base, scales, off, soff, d, DIM, mask, KV: tl.constexpr):
    """(BN, BD) float32 rows of a page store: row j at element offset off[j] (scale at
    soff[j] for int8), columns d < DIM; 0 where masked."""
    m = mask[:, None] & (d < DIM)[None, :]
    ptr = base + off[:, None] + d[None, :]
    if KV == 0:
        x = tl.load(ptr, mask=m, other=0.0)
    elif KV == 1:
        x = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
    elif KV == 2:
        bits = tl.load(ptr, mask=m, other=0)
        x = (bits.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        x = tl.load(ptr, mask=m, other=0).to(tl.float32) * tl.load(scales + soff, mask=mask, other=0.0)[:, None]
    return x


@triton.jit
def _scores(qt, kt, scale, softcap, HAS_CAP: tl.constexpr):
    s = tl.dot(qt, tl.trans(kt), input_precision="ieee") * scale
    if HAS_CAP:
        s = tanh(s / softcap) * softcap
    return s


@triton.jit
def _visible(vis, qp, kp, window, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr):
    diff = qp[:, None] - kp[None, :]
    if CAUSAL:
        vis = vis & (diff >= 0)
    if HAS_WINDOW:
        vis = vis & (diff < window)
    return vis


@triton.jit
def _online_step(s, vis, vt, m_i, l_i, acc, bad_row, bad_v):
    """One key block of the online softmax: scores s (R, BN) of which `vis` count, values
    vt (BN, BDV). Returns the updated (m, l, acc, bad_row, bad_v)."""
    ok = vis & (s == s) & (s != float("inf"))
    bad_row = bad_row | (tl.max((vis & ~ok).to(tl.int32), axis=1) > 0)
    s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m_i - m_use)
    p = tl.exp(s - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    fin = (vt == vt) & (tl.abs(vt) != float("inf"))
    acc = acc * alpha[:, None] + tl.dot(p, tl.where(fin, vt, 0.0), input_precision="ieee")
    if tl.sum((~fin).to(tl.int32)) > 0:
        bad_v += tl.dot(vis.to(tl.float32), (~fin).to(tl.float32), input_precision="ieee")
    return m_new, l_i, acc, bad_row, bad_v


@triton.jit
def _finish(acc, l_i, bad_row, bad_v):
    out = tl.where(l_i[:, None] > 0, acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)
    return tl.where(bad_row[:, None] | (bad_v > 0), float("nan"), out)


@triton.jit
def _flash(q, k, v, qpos, kpos, o, T, S, HQ, HKV, scale, window, softcap,
           CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CAP: tl.constexpr,
           D: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
           BD: tl.constexpr, BDV: tl.constexpr):
    h = tl.program_id(1)
    kvh = h // (HQ // HKV)
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    mmask = rm < T
    d = tl.arange(0, BD)
    dv = tl.arange(0, BDV)
    qt = tl.load(q + (rm[:, None].to(tl.int64) * HQ + h) * D + d[None, :], mask=mmask[:, None] & (d < D)[None, :],
                 other=0.0)
    qp = tl.load(qpos + rm, mask=mmask, other=0)
    m_i = tl.full((BM,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BM,), dtype=tl.float32)
    acc = tl.zeros((BM, BDV), dtype=tl.float32)
    bad_v = tl.zeros((BM, BDV), dtype=tl.float32)
    bad_row = tl.zeros((BM,), dtype=tl.int1)
    for n0 in range(0, S, BN):
        rn = n0 + tl.arange(0, BN)
        nmask = rn < S
        row = rn.to(tl.int64) * HKV + kvh
        kt = _load_kv(k, k, row * D, row, d, D, nmask, 0)
        s = _scores(qt, kt, scale, softcap, HAS_CAP)
        kp = tl.load(kpos + rn, mask=nmask, other=0)
        vis = _visible(mmask[:, None] & nmask[None, :], qp, kp, window, CAUSAL, HAS_WINDOW)
        vt = _load_kv(v, v, row * DV, row, dv, DV, nmask, 0)
        m_i, l_i, acc, bad_row, bad_v = _online_step(s, vis, vt, m_i, l_i, acc, bad_row, bad_v)
    out = _finish(acc, l_i, bad_row, bad_v)
    tl.store(o + (rm[:, None].to(tl.int64) * HQ + h) * DV + dv[None, :], out, mask=mmask[:, None] & (dv < DV)[None, :])


@triton.jit
def _decode_split(q, kp, vp, ksc, vsc, table, pm, pl, po, pos0, qpos, lo, hi, per_split, meta,
                  sk_page, sk_slot, sv_page, sv_slot, ss_page, ss_slot, page_size,
                  HKV, NS, scale, window, softcap, KV: tl.constexpr,
                  CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_CAP: tl.constexpr,
                  DYN: tl.constexpr, G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BG: tl.constexpr,
                  BN: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr):
    kvh = tl.program_id(0)
    sp = tl.program_id(1)
    if DYN:     # the query's position and the key count from device memory (`meta`)
        qpos = tl.load(meta)
        hi = tl.load(meta + 1)
        if CAUSAL:
            hi = tl.minimum(hi, qpos - pos0 + 1)
        hi = tl.maximum(hi, 0)
        lo = hi * 0
        if HAS_WINDOW:
            lo = tl.minimum(hi, tl.maximum(lo, qpos - window + 1 - pos0))
    g = tl.arange(0, BG)
    gmask = g < G
    heads = kvh * G + g
    d = tl.arange(0, BD)
    dv = tl.arange(0, BDV)
    qt = tl.load(q + heads[:, None] * D + d[None, :], mask=gmask[:, None] & (d < D)[None, :], other=0.0)
    qp = tl.zeros((BG,), dtype=tl.int64) + qpos
    m_i = tl.full((BG,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BG,), dtype=tl.float32)
    acc = tl.zeros((BG, BDV), dtype=tl.float32)
    bad_v = tl.zeros((BG, BDV), dtype=tl.float32)
    bad_row = tl.zeros((BG,), dtype=tl.int1)
    start = lo + sp * per_split
    end = tl.minimum(start + per_split, hi)
    for n0 in range(start, end, BN):
        j = n0 + tl.arange(0, BN)
        jmask = j < end
        page = tl.load(table + j // page_size, mask=jmask, other=0).to(tl.int64)
        slot = (j % page_size).to(tl.int64)
        kt = _load_kv(kp, ksc, page * sk_page + slot * sk_slot + kvh * D, page * ss_page + slot * ss_slot + kvh, d, D,
                      jmask, KV)
        s = _scores(qt, kt, scale, softcap, HAS_CAP)
        vis = _visible(gmask[:, None] & jmask[None, :], qp, pos0 + j.to(tl.int64), window, CAUSAL, HAS_WINDOW)
        vt = _load_kv(vp, vsc, page * sv_page + slot * sv_slot + kvh * DV, page * ss_page + slot * ss_slot + kvh, dv,
                      DV, jmask, KV)
        m_i, l_i, acc, bad_row, bad_v = _online_step(s, vis, vt, m_i, l_i, acc, bad_row, bad_v)
    acc = tl.where(bad_row[:, None] | (bad_v > 0), float("nan"), acc)
    part = heads * NS + sp
    tl.store(pm + part, m_i, mask=gmask)
    tl.store(pl + part, l_i, mask=gmask)
    tl.store(po + part[:, None] * DV + dv[None, :], acc, mask=gmask[:, None] & (dv < DV)[None, :])


@triton.jit
def _decode_merge(pm, pl, po, o, NS, DV: tl.constexpr, BS: tl.constexpr, BDV: tl.constexpr):
    h = tl.program_id(0)
    s = tl.arange(0, BS)
    smask = s < NS
    dv = tl.arange(0, BDV)
    m = tl.load(pm + h * NS + s, mask=smask, other=float("-inf"))
    mx = tl.max(m, axis=0)
    w = tl.exp(m - tl.where(mx == float("-inf"), 0.0, mx))
    total = tl.sum(tl.load(pl + h * NS + s, mask=smask, other=0.0) * w, axis=0)
    acc = tl.load(po + (h * NS + s[:, None]) * DV + dv[None, :], mask=smask[:, None] & (dv < DV)[None, :], other=0.0)
    num = tl.sum(acc * w[:, None], axis=0)
    # num * 0 keeps a NaN a split flagged even where no key counted (total 0)
    out = tl.where(total > 0, num / tl.where(total > 0, total, 1.0), num * 0.0)
    tl.store(o + h * DV + dv, out, mask=dv < DV)


def flash_t(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
            scale: float, causal: bool, window: int | None, softcap: float | None) -> torch.Tensor:
    """q (T, Hq, D), k (S, Hkv, D), v (S, Hkv, Dv) float32 contiguous; positions int64."""
    t, hq, d = q.shape
    s, hkv, dv = v.shape
    o = torch.empty((t, hq, dv), dtype=torch.float32, device=q.device)
    if o.numel() == 0:
        return o
    bm = 16 if t <= 16 else 64
    _flash[(cdiv(t, bm), hq)](q, k, v, q_pos, k_pos, o, t, s, hq, hkv, float(scale), int(window or 0),
                              float(softcap or 1.0), CAUSAL=bool(causal), HAS_WINDOW=window is not None,
                              HAS_CAP=bool(softcap), D=d, DV=dv, BM=bm, BN=32, BD=pow2(d, 16), BDV=pow2(dv, 16),
                              num_warps=4)
    return o


def paged_decode_t(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, table: torch.Tensor,
                   pos0: int, n_keys: int, q_pos: int, *, scale: float, causal: bool = True,
                   window: int | None = None, softcap: float | None = None, k_scale: torch.Tensor | None = None,
                   v_scale: torch.Tensor | None = None, splits: int | None = None,
                   meta: torch.Tensor | None = None) -> torch.Tensor:
    """Attention of one query token q (Hq, D) float32 over the first `n_keys` slots of the
    pages `table` (int64 page ids) lists, in order: key j in page table[j // page_size] at
    position pos0 + j. k_pages (P, page_size, Hkv, D), v_pages (P, page_size, Hkv, Dv) of
    one KV_KINDS dtype (int16: bf16 bits; int8 with k_scale/v_scale (P, page_size, Hkv)
    float32). `splits` forces the number of key ranges (default: enough to fill the GPU).
    Returns (Hq, Dv) float32: `attention_ref` of q at q_pos over those keys.

    With `meta`, an int64 device tensor [q_pos, n_keys], the kernels read the query's
    position and the key count from it, and the launch depends only on `n_keys` (here
    the most keys there can be): the same launch serves every step, so a CUDA graph can
    replay it (`block.py`); q_pos is then ignored."""
    hq, d = q.shape
    _, page_size, hkv, dv = v_pages.shape
    kind = KV_KINDS[k_pages.dtype]
    if kind == 3 and (k_scale is None or v_scale is None):
        raise ValueError("int8 pages need k_scale and v_scale")
    lo, hi = 0, n_keys
    if meta is None:
        if causal:                  # keys past the query are masked anyway: do not visit them
            hi = max(0, min(hi, q_pos - pos0 + 1))
        if window is not None:
            lo = min(hi, max(0, q_pos - window + 1 - pos0))
    bn = 32
    n = hi - lo
    ns = splits or max(1, min(cdiv(n, bn), TARGET_PROGRAMS // hkv))
    per = cdiv(cdiv(max(n, 1), ns), bn) * bn
    ns = max(1, cdiv(n, per))
    g = hq // hkv
    dev = q.device
    pm = torch.empty((hq, ns), dtype=torch.float32, device=dev)
    pl = torch.empty_like(pm)
    po = torch.empty((hq, ns, dv), dtype=torch.float32, device=dev)
    ks = k_scale if k_scale is not None else pm
    vs = v_scale if v_scale is not None else pm
    ss = (k_scale.stride(0), k_scale.stride(1)) if k_scale is not None else (0, 0)
    dyn = meta is not None
    _decode_split[(hkv, ns)](q, k_pages, v_pages, ks, vs, table, pm, pl, po, int(pos0), 0 if dyn else int(q_pos),
                             lo, hi, per, meta if dyn else table, k_pages.stride(0), k_pages.stride(1), v_pages.stride(0), v_pages.stride(1), *ss,
                             page_size, hkv, ns, float(scale), int(window or 0), float(softcap or 1.0), KV=kind,
                             CAUSAL=bool(causal), HAS_WINDOW=window is not None, HAS_CAP=bool(softcap), DYN=dyn,
                             G=g, D=d, DV=dv, BG=pow2(g, 16), BN=bn, BD=pow2(d, 16), BDV=pow2(dv, 16), num_warps=4)
    o = torch.empty((hq, dv), dtype=torch.float32, device=dev)
    _decode_merge[(hq,)](pm, pl, po, o, ns, DV=dv, BS=pow2(ns, 2), BDV=pow2(dv, 16), num_warps=4)
    return o


def _contiguous_from(k_pos: Any, s: int) -> int | None:
    """k_pos[0] if the S key positions are k_pos[0] + arange(S) (a cache's keys), else None."""
    if k_pos is None:
        return 0
    kp = np.asarray(k_pos.cpu() if isinstance(k_pos, torch.Tensor) else k_pos, dtype=np.int64)
    if s == 0 or np.array_equal(kp, kp[0] + np.arange(s)):
        return int(kp[0]) if s else 0
    return None


def attention(q: Any, k: Any, v: Any, q_pos: Any = None, k_pos: Any = None, *, scale: float, causal: bool = True,
              window: int | None = None, softcap: float | None = None, device: torch.device) -> torch.Tensor:
    """The `attention` op (`kernels/attention.py` contract). One query over keys at
    consecutive positions (decode) takes the split-K kernel with the cache as one page;
    everything else the flash kernel."""
    qt, kt, vt = as_f32(q, device), as_f32(k, device), as_f32(v, device)
    t, s = qt.shape[0], kt.shape[0]
    qp = np.arange(s - t, s) if q_pos is None else q_pos
    pos0 = _contiguous_from(k_pos, s) if t == 1 else None
    if pos0 is not None and s > 0:
        q0 = int(np.asarray(qp.cpu() if isinstance(qp, torch.Tensor) else qp).reshape(-1)[0])
        table = torch.zeros(1, dtype=torch.int64, device=device)
        o = paged_decode_t(qt[0], kt.unsqueeze(0), vt.unsqueeze(0), table, pos0, s, q0, scale=scale, causal=causal,
                           window=window, softcap=softcap)
        return o.unsqueeze(0)
    kp = np.arange(s) if k_pos is None else k_pos
    return flash_t(qt, kt, vt, as_int(qp, device), as_int(kp, device), scale, causal, window, softcap)


def upload_pages(k: np.ndarray, v: np.ndarray, dtype: str, device: torch.device,
                 k_scale: np.ndarray | None = None, v_scale: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """A page store's arrays (`runtime.kv_cache.BlockPool`: k, v and, for int8, the scales;
    `dtype` its storage name f32/f16/bf16/int8) as `paged_decode_t` takes them."""
    if dtype == "bf16":
        k, v = k.view(np.int16), v.view(np.int16)
    out = {"k_pages": torch.from_numpy(np.ascontiguousarray(k)).to(device),
           "v_pages": torch.from_numpy(np.ascontiguousarray(v)).to(device)}
    if dtype == "int8":
        out["k_scale"] = torch.from_numpy(np.ascontiguousarray(k_scale)).to(device)
        out["v_scale"] = torch.from_numpy(np.ascontiguousarray(v_scale)).to(device)
    return out
