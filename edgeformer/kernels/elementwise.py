"""add and mul, with numpy broadcasting (b may be a scalar or a trailing-dims vector)."""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import Cost, OpSpec, nbytes_of


def add_ref(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    return np.add(a, b, dtype=np.float32)


def mul_ref(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    return np.multiply(a, b, dtype=np.float32)


def _binary_cost(a, b) -> Cost:
    n = int(np.prod(a.shape))
    return Cost(flops=n, bytes_read=nbytes_of(a) + (nbytes_of(b) if hasattr(b, "nbytes") else 0),
                bytes_written=n * 4)


ADD = OpSpec("add", add_ref, _binary_cost, max_nmse={"default": 1e-12})
MUL = OpSpec("mul", mul_ref, _binary_cost, max_nmse={"default": 1e-12})
