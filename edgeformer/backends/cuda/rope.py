"""rope: rotate the first R = 2 * len(inv_freq) dims of each head, NeoX (pairs i, i + R/2)
or interleaved (pairs 2i, 2i + 1), cos/sin scaled by mscale; dims past R pass through.

The (T, R/2) cos and sin tables are computed on the host by the reference's own numpy
expressions (`cos_sin`), so they are its bits: a GPU's fast sin/cos lose accuracy at
the large angles far positions give (position x inv_freq reaches thousands of
radians), and Triton's interpreter, which the tests run, would not show it. The tables
are T * R floats; the fused step builds them once per step for every layer.

One program per (token, head): each element gathers its pair partner, so one load and
one store cover the rotated and the passed-through dims alike.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from edgeformer.backends.cuda.device import as_f32, pow2


@triton.jit
def _rope(x, cos, sin, y, H, D, HALF, NEOX: tl.constexpr, BD: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)
    base = (t * H + tl.program_id(1)) * D
    d = tl.arange(0, BD)
    inside = d < D
    rot = d < 2 * HALF
    if NEOX:
        i = tl.where(d < HALF, d, d - HALF)
        partner = tl.where(d < HALF, d + HALF, d - HALF)
        first = d < HALF
    else:
        i = d // 2
        partner = tl.where(d % 2 == 0, d + 1, d - 1)
        first = d % 2 == 0
    v = tl.load(x + base + d, mask=inside, other=0.0)
    u = tl.load(x + base + partner, mask=inside & rot, other=0.0)
    c = tl.load(cos + t * HALF + i, mask=rot, other=0.0)
    s = tl.load(sin + t * HALF + i, mask=rot, other=0.0)
    out = tl.where(first, v * c - u * s, v * c + u * s)
    tl.store(y + base + d, tl.where(rot, out, v), mask=inside)


def cos_sin(positions: Any, inv_freq: Any, mscale: float) -> tuple[np.ndarray, np.ndarray]:
    """(T, R/2) float32 cos and sin tables, mscale applied: `kernels.rope.rope_ref`'s
    expressions, so the same bits."""
    pos = np.asarray(positions.cpu() if isinstance(positions, torch.Tensor) else positions)
    inv = np.asarray(inv_freq.cpu() if isinstance(inv_freq, torch.Tensor) else inv_freq)
    ang = pos.astype(np.float32)[:, None] * inv.astype(np.float32)[None, :]
    return (np.cos(ang) * mscale).astype(np.float32), (np.sin(ang) * mscale).astype(np.float32)


def rope_t(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """x (T, H, D) float32 contiguous; cos, sin (T, R/2) float32 (`cos_sin`), one device."""
    t, h, d = x.shape
    y = torch.empty_like(x)
    if x.numel():
        _rope[(t, h)](x, cos, sin, y, h, d, cos.shape[1], NEOX=bool(neox), BD=pow2(d, 16))
    return y


def rope(x: Any, positions: Any, inv_freq: Any, *, neox: bool = True, mscale: float = 1.0,
         device: torch.device) -> torch.Tensor:
    c, s = cos_sin(positions, inv_freq, mscale)
    return rope_t(as_f32(x, device), as_f32(c, device), as_f32(s, device), neox)
