"""add and mul, with numpy broadcasting (b may be a scalar or a trailing-dims vector)."""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import Case, Cost, OpSpec, nbytes_of
from edgeformer.kernels.inputs import plant, randn


def add_ref(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    return np.add(a, b, dtype=np.float32)


def mul_ref(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    return np.multiply(a, b, dtype=np.float32)


def _binary_cost(a, b) -> Cost:
    n = int(np.prod(a.shape))
    return Cost(flops=n, bytes_read=nbytes_of(a) + (nbytes_of(b) if hasattr(b, "nbytes") else 0),
                bytes_written=n * 4)


def _binary_shape(a, b) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(np.shape(a), np.shape(b)))


def _binary_cases(op: str) -> list[Case]:
    """Same shapes, a trailing-dims vector, a scalar, and a NaN in the broadcast vector."""
    return [
        Case(op, "same_45x65", lambda r: ((randn(r, 45, 65), randn(r, 45, 65)), {}), quick=True),
        Case(op, "row_vector", lambda r: ((randn(r, 2, 3, 33), randn(r, 33)), {})),
        Case(op, "scalar", lambda r: ((randn(r, 1, 1025), 0.37), {})),
        Case(op, "nan_in_vector", lambda r: ((randn(r, 4, 33), plant(randn(r, 33), (6,))), {}),
             check="nonfinite", quick=True),
    ]


ADD = OpSpec("add", add_ref, _binary_cost, _binary_shape, lambda: _binary_cases("add"), max_nmse={"default": 1e-12})
MUL = OpSpec("mul", mul_ref, _binary_cost, _binary_shape, lambda: _binary_cases("mul"), max_nmse={"default": 1e-12})
