"""rms_norm and layer_norm over the last axis (float32), one row per prange iteration.

Rows are independent, so the kernel is a plain row loop; small inputs (decode: one row)
run serially because starting the thread pool costs more than the row."""
from __future__ import annotations

import numpy as np
from numba import prange

from edgeformer.backends.cpu.common import PARALLEL_MIN, jit_pair

_NONE = np.zeros(0, np.float32)


def _rms_rows(x, w, eps, out):
    for r in prange(x.shape[0]):
        xr = x[r]
        ss = np.float32(0.0)
        for i in range(xr.shape[0]):
            ss += xr[i] * xr[i]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(xr.shape[0]) + eps)
        if w.shape[0]:
            for i in range(xr.shape[0]):
                out[r, i] = xr[i] * inv * w[i]
        else:
            for i in range(xr.shape[0]):
                out[r, i] = xr[i] * inv


def _ln_rows(x, w, b, eps, out):
    for r in prange(x.shape[0]):
        xr = x[r]
        n = np.float32(xr.shape[0])
        mu = np.float32(0.0)
        for i in range(xr.shape[0]):
            mu += xr[i]
        mu /= n
        var = np.float32(0.0)
        for i in range(xr.shape[0]):
            c = xr[i] - mu
            var += c * c
        inv = np.float32(1.0) / np.sqrt(var / n + eps)
        for i in range(xr.shape[0]):
            y = (xr[i] - mu) * inv
            if w.shape[0]:
                y *= w[i]
            if b.shape[0]:
                y += b[i]
            out[r, i] = y


_rms_ser, _rms_par = jit_pair(_rms_rows)
_ln_ser, _ln_par = jit_pair(_ln_rows)


def _rows(x: np.ndarray) -> np.ndarray:
    x2 = x.reshape(-1, x.shape[-1])
    if x2.dtype != np.float32 or not x2.flags.c_contiguous:
        x2 = np.ascontiguousarray(x2, dtype=np.float32)
    return x2


def _vec(w: np.ndarray | None, d: int) -> np.ndarray:
    if w is None:
        return _NONE
    if np.shape(w) != (d,):   # the kernels index w unchecked
        raise ValueError(f"norm weight/bias of shape {np.shape(w)} for rows of {d}")
    return np.ascontiguousarray(w, dtype=np.float32)


def rms_norm(x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * w over the last axis; same contract as `rms_norm_ref`."""
    x2 = _rows(x)
    out = np.empty_like(x2)
    (_rms_par if x2.size >= PARALLEL_MIN else _rms_ser)(x2, _vec(w, x2.shape[1]), np.float32(eps), out)
    return out.reshape(x.shape)


def layer_norm(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * w + b over the last axis; contract of `layer_norm_ref`."""
    x2 = _rows(x)
    out = np.empty_like(x2)
    d = x2.shape[1]
    (_ln_par if x2.size >= PARALLEL_MIN else _ln_ser)(x2, _vec(w, d), _vec(b, d), np.float32(eps), out)
    return out.reshape(x.shape)
