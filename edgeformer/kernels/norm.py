"""rms_norm and layer_norm over the last axis."""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import Cost, OpSpec, nbytes_of


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


RMS_NORM = OpSpec("rms_norm", rms_norm_ref, rms_norm_cost, max_nmse={"default": 1e-10})
LAYER_NORM = OpSpec("layer_norm", layer_norm_ref, layer_norm_cost, max_nmse={"default": 1e-10})
