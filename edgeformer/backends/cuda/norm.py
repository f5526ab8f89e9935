"""rms_norm and layer_norm over the last axis: one program per row, two passes over the
row in BD-wide slices (sum, then scale), so any width works.

The reference's order is kept: x / sqrt(mean + eps) (a correctly rounded sqrt and a
division, not rsqrt), then * w; layer_norm centres first and takes the variance of the
centred row, as `kernels/norm.py` does.
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from edgeformer.backends.cuda.device import as_f32, pow2


@triton.jit
def _rms_norm(x, w, y, D, eps, HAS_W: tl.constexpr, BD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * D
    acc = tl.zeros((BD,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        c = d0 + tl.arange(0, BD)
        v = tl.load(x + row + c, mask=c < D, other=0.0)
        acc += v * v
    r = tl.sqrt_rn(tl.sum(acc, axis=0) / D + eps)
    for d0 in range(0, D, BD):
        c = d0 + tl.arange(0, BD)
        m = c < D
        v = tl.load(x + row + c, mask=m, other=0.0) / r
        if HAS_W:
            v = v * tl.load(w + c, mask=m, other=0.0)
        tl.store(y + row + c, v, mask=m)


@triton.jit
def _layer_norm(x, w, b, y, D, eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr, BD: tl.constexpr):
    row = tl.program_id(0).to(tl.int64) * D
    acc = tl.zeros((BD,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        c = d0 + tl.arange(0, BD)
        acc += tl.load(x + row + c, mask=c < D, other=0.0)
    mu = tl.sum(acc, axis=0) / D
    acc = tl.zeros((BD,), dtype=tl.float32)
    for d0 in range(0, D, BD):
        c = d0 + tl.arange(0, BD)
        v = tl.where(c < D, tl.load(x + row + c, mask=c < D, other=0.0) - mu, 0.0)
        acc += v * v
    r = tl.sqrt_rn(tl.sum(acc, axis=0) / D + eps)
    for d0 in range(0, D, BD):
        c = d0 + tl.arange(0, BD)
        m = c < D
        v = (tl.load(x + row + c, mask=m, other=0.0) - mu) / r
        if HAS_W:
            v = v * tl.load(w + c, mask=m, other=0.0)
        if HAS_B:
            v = v + tl.load(b + c, mask=m, other=0.0)
        tl.store(y + row + c, v, mask=m)


def _block(d: int) -> int:
    return min(pow2(d, 16), 4096)


def rms_norm_t(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x (..., D) float32 contiguous; w (D,) or None -> same shape."""
    d = x.shape[-1]
    y = torch.empty_like(x)
    rows = x.numel() // d if d else 0
    if rows:
        _rms_norm[(rows,)](x, w if w is not None else x, y, d, float(eps), HAS_W=w is not None, BD=_block(d))
    return y


def rms_norm(x: Any, w: Any, eps: float, device: torch.device) -> torch.Tensor:
    return rms_norm_t(as_f32(x, device), None if w is None else as_f32(w, device), eps)


def layer_norm(x: Any, w: Any, b: Any, eps: float, device: torch.device) -> torch.Tensor:
    xt = as_f32(x, device)
    d = xt.shape[-1]
    y = torch.empty_like(xt)
    rows = xt.numel() // d if d else 0
    wt = None if w is None else as_f32(w, device)
    bt = None if b is None else as_f32(b, device)
    if rows:
        _layer_norm[(rows,)](xt, xt if wt is None else wt, xt if bt is None else bt, y, d, float(eps),
                             HAS_W=wt is not None, HAS_B=bt is not None, BD=_block(d))
    return y
