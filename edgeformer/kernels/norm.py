"""rms_norm and layer_norm over the last axis."""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import Case, Cost, OpSpec, nbytes_of, same_shape
from edgeformer.kernels.inputs import plant, randn


def rms_norm_ref(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis, in float32. w: (D,) or None."""
    x = x.astype(np.float32, copy=False)
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps))
    return (y * w if w is not None else y).astype(np.float32, copy=False)


def rms_norm_cost(x, w, eps) -> Cost:
    n = int(np.prod(x.shape))
    return Cost(flops=4 * n, bytes_read=nbytes_of(x) + nbytes_of(w), bytes_written=n * 4)


def layer_norm_ref(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * w + b over the last axis, in float32."""
    x = x.astype(np.float32, copy=False)
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    y = xc / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + np.float32(eps))
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return y.astype(np.float32, copy=False)


def layer_norm_cost(x, w, b, eps) -> Cost:
    n = int(np.prod(x.shape))
    return Cost(flops=7 * n, bytes_read=nbytes_of(x) + nbytes_of(w) + nbytes_of(b), bytes_written=n * 4)


_SHAPES = [(1, 1), (1, 33), (45, 65), (64, 99), (3, 1025), (2, 3, 33)]


def rms_norm_cases() -> list[Case]:
    """Awkward shapes, no weight at large scale, eps dominating, a NaN row."""
    cases = [Case("rms_norm", "x".join(map(str, s)), lambda r, s=s: ((randn(r, *s), randn(r, s[-1]), 1e-6), {}),
                  quick=i == 2) for i, s in enumerate(_SHAPES)]
    return cases + [
        Case("rms_norm", "no_weight_large", lambda r: ((randn(r, 5, 99, scale=1e3), None, 1e-6), {})),
        Case("rms_norm", "tiny_eps_dominates", lambda r: ((randn(r, 5, 64, scale=1e-4), randn(r, 64), 1e-5), {})),
        Case("rms_norm", "nan_row", lambda r: ((plant(randn(r, 6, 65), (4, 9)), randn(r, 65), 1e-6), {}),
             check="nonfinite", quick=True),
    ]


def layer_norm_cases() -> list[Case]:
    """Awkward shapes off a non-zero mean, no affine, weight only, a NaN row."""
    cases = [Case("layer_norm", "x".join(map(str, s)),
                  lambda r, s=s: ((randn(r, *s) + 3, randn(r, s[-1]), randn(r, s[-1]), 1e-5), {}),
                  quick=i == 2) for i, s in enumerate(_SHAPES)]
    return cases + [
        Case("layer_norm", "no_affine_offset", lambda r: ((randn(r, 7, 129) + 100, None, None, 1e-5), {})),
        Case("layer_norm", "weight_only", lambda r: ((randn(r, 7, 33), randn(r, 33), None, 1e-6), {})),
        Case("layer_norm", "nan_row", lambda r: ((plant(randn(r, 6, 65), (1, 64)), randn(r, 65), randn(r, 65), 1e-5), {}),
             check="nonfinite", quick=True),
    ]


RMS_NORM = OpSpec("rms_norm", rms_norm_ref, rms_norm_cost, same_shape, rms_norm_cases, max_nmse={"default": 1e-10})
LAYER_NORM = OpSpec("layer_norm", layer_norm_ref, layer_norm_cost, same_shape, layer_norm_cases,
                    max_nmse={"default": 1e-10})
