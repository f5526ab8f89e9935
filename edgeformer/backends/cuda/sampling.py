"""Picking the next token on the device, from a (vocab,) logits tensor, with
`runtime.sampler`'s semantics (that module sits above backends; the tests hold the two
together):

- `greedy`: argmax, the lowest id on ties (numpy's), in two Triton passes (per-block
  max and its first index, then the first block holding the overall max). Logits are
  expected NaN-free (`sampler.check_logits` runs before anything samples).
- `candidates` / `sample`: temperature, then top-k, top-p (shortest prefix of the
  decreasing-probability order whose mass reaches top_p), min-p (p >= min_p * p_max),
  each on the distribution the previous one left, renormalized; NaN counts as -inf;
  ties ordered by lower id. Done with torch's sort/top-k/cumsum on the device in
  float64, then an inverse-CDF draw with the caller's uniform number (so a seeded numpy
  Generator on the host gives reproducible draws).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from edgeformer.backends.cuda.device import cdiv, pow2

BLOCK = 4096


@triton.jit
def _block_argmax(x, vmax, imax, V, B: tl.constexpr):
    i = tl.program_id(0) * B + tl.arange(0, B)
    v = tl.load(x + i, mask=i < V, other=float("-inf"))
    m = tl.max(v, axis=0)
    # the first index holding the block's max (an all -inf block reports its first element)
    first = tl.min(tl.where(v == m, i, V), axis=0)
    tl.store(vmax + tl.program_id(0), m)
    tl.store(imax + tl.program_id(0), tl.minimum(first, V - 1))


@triton.jit
def _final_argmax(vmax, imax, out, NB, B: tl.constexpr):
    b = tl.arange(0, B)
    v = tl.load(vmax + b, mask=b < NB, other=float("-inf"))
    m = tl.max(v, axis=0)
    first = tl.min(tl.where((v == m) & (b < NB), b, NB), axis=0)
    tl.store(out, tl.load(imax + first))


def greedy(logits: torch.Tensor) -> int:
    """argmax of (vocab,) float32 logits on their device, the lowest id on ties."""
    x = logits.reshape(-1).to(torch.float32).contiguous()
    v = x.numel()
    if v == 0:
        raise ValueError("greedy: empty logits")
    nb = cdiv(v, BLOCK)
    vmax = torch.empty(nb, dtype=torch.float32, device=x.device)
    imax = torch.empty(nb, dtype=torch.int32, device=x.device)
    out = torch.empty(1, dtype=torch.int32, device=x.device)
    _block_argmax[(nb,)](x, vmax, imax, v, B=BLOCK)
    _final_argmax[(1,)](vmax, imax, out, nb, B=pow2(nb, 2))
    return int(out.item())


def _sorted_desc(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """`ids` ordered by decreasing x, ties by lower id (a stable sort of id-sorted ids)."""
    ids = torch.sort(ids).values
    return ids[torch.sort(-x[ids], stable=True).indices]


def candidates(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
               min_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids int64, probs float64) that sampling may emit, in decreasing probability (ties
    by lower id), probs summing to 1: `runtime.sampler.candidates` on the device.
    temperature > 0. ValueError if no logit is finite."""
    x = logits.reshape(-1).to(torch.float64) / temperature
    x = torch.where(torch.isnan(x), torch.tensor(float("-inf"), dtype=x.dtype, device=x.device), x)
    if not torch.isfinite(x.max()):
        raise ValueError("sampling: every logit is -inf or NaN")
    if top_k and top_k < x.numel():
        ids = _sorted_desc(x, torch.topk(x, top_k).indices)
    else:
        ids = _sorted_desc(x, torch.nonzero(torch.isfinite(x)).reshape(-1))
    ids = ids[torch.isfinite(x[ids])]
    p = torch.softmax(x[ids], dim=0)
    if top_p < 1.0:
        # shortest prefix whose mass reaches top_p (float slack as the host sampler)
        cum = torch.cumsum(p, dim=0)
        keep = int(torch.searchsorted(cum, torch.tensor([top_p - 1e-12], dtype=cum.dtype, device=cum.device)).item()) + 1
        ids, p = ids[:keep], p[:keep]
    if min_p > 0.0:
        keep = int((p >= min_p * p[0]).sum().item())
        ids, p = ids[:keep], p[:keep]
    return ids, p / p.sum()


def sample(logits: torch.Tensor, u: float, temperature: float, top_k: int = 0, top_p: float = 1.0,
           min_p: float = 0.0) -> int:
    """A token drawn from `candidates(...)` by inverse CDF at the uniform number u in [0, 1)."""
    ids, p = candidates(logits, temperature, top_k, top_p, min_p)
    cum = torch.cumsum(p, dim=0)
    j = int(torch.searchsorted(cum, torch.tensor([u], dtype=cum.dtype, device=cum.device), right=True).item())
    return int(ids[min(j, ids.numel() - 1)].item())
