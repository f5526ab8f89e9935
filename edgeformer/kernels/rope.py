"""rope: rotary position embedding on the first `2 * len(inv_freq)` dims of each head.

Every rope variant (linear, dynamic NTK, YaRN, llama3, longrope) reduces to an
`inv_freq` vector and an `mscale` (attention factor) that the model computes from its
config; the op itself only rotates.
"""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import Case, Cost, OpSpec, nbytes_of, out_bytes, same_shape
from edgeformer.kernels.inputs import plant, randn


def rope_ref(x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, *,
             neox: bool = True, mscale: float = 1.0) -> np.ndarray:
    """x: (T, H, D) float32; positions: (T,) ints; inv_freq: (R/2,) with R <= D even.

    neox=True (HF rotate_half, ggml NEOX): pairs are (i, i + R/2).
    neox=False (ggml NORM, GPT-J): pairs are (2i, 2i + 1).
    cos/sin are multiplied by `mscale`. Dims past R pass through."""
    x = x.astype(np.float32, copy=False)
    half = inv_freq.shape[0]
    r = 2 * half
    ang = np.asarray(positions).astype(np.float32)[:, None] * inv_freq.astype(np.float32)[None, :]  # (T, R/2)
    cos = (np.cos(ang) * mscale).astype(np.float32)[:, None, :]   # (T, 1, R/2)
    sin = (np.sin(ang) * mscale).astype(np.float32)[:, None, :]
    out = x.copy()
    if neox:
        x1, x2 = x[..., :half], x[..., half:r]
        out[..., :half] = x1 * cos - x2 * sin
        out[..., half:r] = x2 * cos + x1 * sin
    else:
        x1, x2 = x[..., 0:r:2], x[..., 1:r:2]
        out[..., 0:r:2] = x1 * cos - x2 * sin
        out[..., 1:r:2] = x2 * cos + x1 * sin
    return out


def rope_cost(x, positions, inv_freq, *, neox=True, mscale=1.0) -> Cost:
    """3 FLOPs per rotated element (2 mul + 1 add; cos/sin tables not counted); x,
    positions and inv_freq read once; the whole float32 x written (pass-through included)."""
    t, h, d = x.shape
    r = 2 * inv_freq.shape[0]
    return Cost(flops=3 * t * h * r,
                bytes_read=nbytes_of(x) + nbytes_of(positions) + nbytes_of(inv_freq),
                bytes_written=out_bytes((t, h, d)))


def _inv_freq(r: int, theta: float = 10000.0) -> np.ndarray:
    return (1.0 / theta ** (np.arange(0, r, 2, dtype=np.float64) / r)).astype(np.float32)


def rope_cases() -> list[Case]:
    """Both pair layouts; partial rotation, mscale, a head dim of 2, far positions, NaN."""
    # (T, H, D, R, neox, mscale, max position)
    spec = [(1, 1, 64, 64, True, 1.0, 10), (33, 3, 64, 64, True, 1.0, 5000), (7, 2, 128, 64, True, 1.23, 100),
            (33, 3, 64, 64, False, 1.0, 5000), (5, 4, 80, 40, False, 1.0, 50), (1, 5, 2, 2, True, 1.0, 3)]
    cases = []
    for i, (t, h, d, rr, neox, ms, pmax) in enumerate(spec):
        cases.append(Case("rope", f"t{t}_h{h}_d{d}_r{rr}_{'neox' if neox else 'norm'}_ms{ms}",
                          lambda r, t=t, h=h, d=d, rr=rr, neox=neox, ms=ms, pmax=pmax:
                          ((randn(r, t, h, d), np.sort(r.integers(0, pmax, t)), _inv_freq(rr)), {"neox": neox, "mscale": ms}),
                          quick=i in (1, 3)))
    for neox in (True, False):
        cases.append(Case("rope", f"nan_{'neox' if neox else 'norm'}",
                          lambda r, neox=neox: ((plant(randn(r, 4, 2, 64), (2, 1, 3)), np.arange(7, 11), _inv_freq(64)),
                                                {"neox": neox}), check="nonfinite", quick=True))
    return cases


ROPE = OpSpec("rope", rope_ref, rope_cost, same_shape, rope_cases, max_nmse={"default": 1e-10})
