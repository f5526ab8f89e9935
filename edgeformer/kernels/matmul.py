"""linear: y = x @ W^T (+ b) with W any QTensor."""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import Cost, OpSpec, nbytes_of, out_bytes
from edgeformer.quant.qtypes import QTensor


def as_f32(w: QTensor | np.ndarray) -> np.ndarray:
    """Dequantized float32 view of a weight (an ndarray passes through)."""
    if isinstance(w, QTensor):
        from edgeformer.quant import dequantize
        return dequantize(w)
    return np.asarray(w, dtype=np.float32)


def linear_ref(x: np.ndarray, w: QTensor | np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """x: (..., K) float32; w: (N, K) QTensor or float array; bias: (N,) or None.
    Returns (..., N) float32, accumulated in float32 after dequantizing W."""
    y = np.matmul(x.astype(np.float32, copy=False), as_f32(w).T)
    if bias is not None:
        y += bias
    return y.astype(np.float32, copy=False)


def linear_cost(x, w, bias=None) -> Cost:
    n, k = w.shape
    t = int(np.prod(x.shape[:-1]))
    return Cost(flops=2.0 * t * n * k + (t * n if bias is not None else 0),
                bytes_read=nbytes_of(x) + nbytes_of(w) + nbytes_of(bias),
                bytes_written=out_bytes((t, n)))


LINEAR = OpSpec("linear", linear_ref, linear_cost,
                max_nmse={"F32": 1e-9, "F16": 1e-6, "BF16": 1e-5, "default": 5e-4},
                doc="y = x @ W.T + b")
