"""linear: y = x @ W^T (+ b) with W any QTensor."""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import ROWS_T, Case, Cost, OpSpec, nbytes_of, out_bytes
from edgeformer.kernels.inputs import WEIGHT_QTYPES, plant, randn, random_qtensor, with_nan
from edgeformer.quant import dequantize
from edgeformer.quant.qtypes import QTensor, QType


def as_f32(w: QTensor | np.ndarray) -> np.ndarray:
    """Dequantized float32 view of a weight (an ndarray passes through)."""
    if isinstance(w, QTensor):
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


def linear_shape(x, w, bias=None) -> tuple[int, ...]:
    return tuple(x.shape[:-1]) + (w.shape[0],)


def linear_cases() -> list[Case]:
    """Every weight qtype on odd shapes (with and without bias, 3-D x), NaN/Inf in x and
    in W, and row invariance (odd N, K not a power of two)."""
    cases = []
    for qt in WEIGHT_QTYPES:
        b = qt.block_size
        if b == 1:
            shapes = [(1, 1, 33), (7, 45, 65), (33, 99, 64), (1, 65, 1025)]
        elif b == 32:
            shapes = [(1, 45, 96), (7, 65, 32), (33, 99, 160)]
        else:
            shapes = [(1, 45, 256), (7, 33, 512)]
        for i, (t, n, k) in enumerate(shapes):
            cases.append(Case("linear", f"{qt.name}_t{t}_n{n}_k{k}",
                              lambda r, t=t, n=n, k=k, qt=qt: ((randn(r, t, k), random_qtensor(qt, (n, k), r, 0.1)), {}),
                              dtype=qt.name, quick=i == 0 and qt in (QType.F32, QType.Q4_0, QType.Q4_K)))
        k = 2 * b if b > 1 else 33
        cases.append(Case("linear", f"{qt.name}_bias_3d_k{k}",
                          lambda r, k=k, qt=qt: ((randn(r, 2, 3, k), random_qtensor(qt, (17, k), r, 0.1), randn(r, 17)), {}),
                          dtype=qt.name))
    cases += [
        Case("linear", "nan_in_x_row", lambda r: ((plant(randn(r, 5, 64), (2, 7)), random_qtensor(QType.Q8_0, (9, 64), r)), {}),
             dtype="Q8_0", check="nonfinite", quick=True),
        Case("linear", "nan_in_x_row_Q4_K", lambda r: ((plant(randn(r, 3, 256), (1, 200)), random_qtensor(QType.Q4_K, (5, 256), r)), {}),
             dtype="Q4_K", check="nonfinite"),
        Case("linear", "inf_in_x_row", lambda r: ((plant(randn(r, 5, 33), (3, 0), np.inf), random_qtensor(QType.F32, (9, 33), r)), {}),
             dtype="F32", check="nonfinite"),
        Case("linear", "nan_in_w_row", lambda r: ((randn(r, 4, 33), with_nan(random_qtensor(QType.F32, (9, 33), r), 5)), {}),
             dtype="F32", check="nonfinite"),
    ]
    for qt in WEIGHT_QTYPES:
        k = {1: 65, 32: 96, 256: 512}[qt.block_size]
        cases.append(Case("linear", f"rows_{qt.name}_n33_k{k}",
                          lambda r, k=k, qt=qt: ((randn(r, max(ROWS_T), k), random_qtensor(qt, (33, k), r, 0.1)), {}),
                          dtype=qt.name, check="rows", quick=qt == QType.Q4_0))
    return cases


LINEAR = OpSpec("linear", linear_ref, linear_cost, linear_shape, linear_cases, op_class="matmul",
                max_nmse={"F32": 1e-9, "F16": 1e-6, "BF16": 1e-5, "default": 5e-4},
                doc="y = x @ W.T + b")
