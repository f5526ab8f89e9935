"""Shared helpers of tests/kernels: float64 torch references and float32 tolerances.

Tolerance policy (float32 references vs. torch in float64 on the same float32 inputs):
`assert_f32_close` uses rtol=1e-5 (~85 float32 ulps) and atol = 1e-6 * max|expected|,
which covers rounding of reductions over up to a few thousand terms (error grows like
sqrt(n) * 6e-8) while still catching any formula error (eps placement, a missing scale,
a wrong pair layout), which shows up at 1e-3 or more.
"""
from __future__ import annotations

import numpy as np
import torch

RTOL = 1e-5
ATOL_REL = 1e-6


def t64(a: np.ndarray | None) -> torch.Tensor | None:
    """float64 torch copy of a numpy array (None passes through)."""
    return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))


def assert_f32_close(actual: np.ndarray, expected: torch.Tensor | np.ndarray, *, rtol: float = RTOL,
                     atol_rel: float = ATOL_REL) -> None:
    """`actual` is a float32 array of `expected`'s shape and within the tolerance above;
    NaNs must coincide."""
    exp = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert isinstance(actual, np.ndarray) and actual.dtype == np.float32, (type(actual), getattr(actual, "dtype", None))
    assert actual.shape == exp.shape, (actual.shape, exp.shape)
    fin = np.isfinite(exp)
    scale = float(np.abs(exp[fin]).max()) if fin.any() else 0.0
    np.testing.assert_allclose(actual, exp, rtol=rtol, atol=atol_rel * scale, equal_nan=True)


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded from the test's parameters, so each case is reproducible."""
    import zlib
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def gguf_f32(qt) -> np.ndarray:
    """A QTensor decoded by the `gguf` package (never by our dequantizer), float32."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize
    return dequantize(qt.data, GGMLQuantizationType(int(qt.qtype))).reshape(qt.shape).astype(np.float32)
