"""A row-invariant `linear` over any backend, for `Decoder.forward_batch` (BatchEngine) and
the conformance suite's "rows" cases.

Batch invariance needs every output row of a linear to be computed the same way however
many rows are in the batch. numpy's `matmul` does not give that: OpenBLAS picks gemv for
one row and gemm kernels with M-dependent blocking otherwise, and the rounding differs
(checked: row 0 of x[:M] @ W.T differs from M=1 for every M > 1 we tried). A gemm on a
FIXED number of rows gives the same bits for a row whatever the other rows hold and
wherever it sits in the block (checked the same way, and by the tests), so
`row_invariant_linear` pads the rows to a multiple of `ROW_BLOCK` and runs one `linear`
per block of exactly ROW_BLOCK rows. The price: one decode row costs a ROW_BLOCK-row gemm
(the weights are still read once per block).

The cpu (Numba) backend's linear kernels compute each (row, output) dot product in a
fixed order independent of the row count (`row_invariant_rows` is unbounded there), so
they run unpadded and unchunked.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from edgeformer.backends.base import Ops

ROW_BLOCK = 8


def row_invariant_linear(ops: Ops, row_block: int = ROW_BLOCK) -> Callable[..., np.ndarray]:
    """A `linear(x, w, b, name=, layer=)` over `ops` whose output rows do not depend on the
    other rows of x: `ops.linear` itself on row-invariant backends, else fixed blocks of
    `row_block` rows (zero-padded)."""
    chunk = ops.backend.row_invariant_rows
    if chunk:     # the backend's rows are invariant in calls of up to `chunk` rows
        def chunked(x: np.ndarray, w, b=None, *, name: str | None = None, layer: int | None = None) -> np.ndarray:
            if x.shape[0] <= chunk:
                return ops.linear(x, w, b, name=name, layer=layer)
            return np.concatenate([ops.linear(x[i:i + chunk], w, b, name=name, layer=layer)
                                   for i in range(0, x.shape[0], chunk)])
        return chunked

    def linear(x: np.ndarray, w, b=None, *, name: str | None = None, layer: int | None = None) -> np.ndarray:
        m = x.shape[0]
        pad = -m % row_block
        if pad:
            x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], dtype=x.dtype)])
        outs = [ops.linear(x[i:i + row_block], w, b, name=name, layer=layer) for i in range(0, m + pad, row_block)]
        out = outs[0] if len(outs) == 1 else np.concatenate(outs)
        return out[:m]
    return linear
