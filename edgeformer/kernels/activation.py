"""activation, glu (gated activation), softmax, softcap."""
from __future__ import annotations

import math

import numpy as np

from edgeformer.kernels.base import Cost, OpSpec, nbytes_of

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf
    return np.vectorize(erf, otypes=[np.float64])(x)


def activation_ref(x: np.ndarray, kind: str) -> np.ndarray:
    """Elementwise silu | gelu (exact, erf) | gelu_tanh | relu, float32."""
    x = x.astype(np.float32, copy=False)
    if kind == "silu":
        return (x / (1.0 + np.exp(-x))).astype(np.float32)
    if kind == "gelu":
        xd = x.astype(np.float64)
        return (0.5 * xd * (1.0 + _erf(xd / math.sqrt(2.0)))).astype(np.float32)
    if kind == "gelu_tanh":
        return (0.5 * x * (1.0 + np.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))).astype(np.float32)
    if kind == "relu":
        return np.maximum(x, 0).astype(np.float32)
    raise ValueError(f"unknown activation {kind!r}")


def activation_cost(x, kind) -> Cost:
    n = int(np.prod(x.shape))
    return Cost(flops=8 * n, bytes_read=nbytes_of(x), bytes_written=n * 4)


def glu_ref(gate: np.ndarray, up: np.ndarray, kind: str) -> np.ndarray:
    """act(gate) * up (SwiGLU / GeGLU)."""
    return (activation_ref(gate, kind) * up).astype(np.float32, copy=False)


def glu_cost(gate, up, kind) -> Cost:
    n = int(np.prod(gate.shape))
    return Cost(flops=9 * n, bytes_read=nbytes_of(gate) + nbytes_of(up), bytes_written=n * 4)


def softmax_ref(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, float32."""
    x = x.astype(np.float32, copy=False)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def softmax_cost(x) -> Cost:
    n = int(np.prod(x.shape))
    return Cost(flops=4 * n, bytes_read=nbytes_of(x), bytes_written=n * 4)


def softcap_ref(x: np.ndarray, cap: float) -> np.ndarray:
    """cap * tanh(x / cap)."""
    return (np.tanh(x.astype(np.float32) / np.float32(cap)) * np.float32(cap)).astype(np.float32)


def softcap_cost(x, cap) -> Cost:
    n = int(np.prod(x.shape))
    return Cost(flops=3 * n, bytes_read=nbytes_of(x), bytes_written=n * 4)


ACTIVATION = OpSpec("activation", activation_ref, activation_cost, max_nmse={"default": 1e-10})
GLU = OpSpec("glu", glu_ref, glu_cost, max_nmse={"default": 1e-10})
SOFTMAX = OpSpec("softmax", softmax_ref, softmax_cost, max_nmse={"default": 1e-10})
SOFTCAP = OpSpec("softcap", softcap_ref, softcap_cost, max_nmse={"default": 1e-10})
