"""embed: rows of a (possibly quantized) table."""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import Cost, OpSpec, out_bytes
from edgeformer.quant.qtypes import QTensor


def embed_ref(table: QTensor | np.ndarray, ids: np.ndarray) -> np.ndarray:
    """table: (V, D); ids: (T,) ints in [0, V). Returns (T, D) float32."""
    ids = np.asarray(ids, dtype=np.int64)
    if isinstance(table, QTensor):
        from edgeformer.quant import dequantize
        v, d = table.shape
        rb = table.qtype.row_bytes(d)
        rows = table.data.reshape(v, rb)[ids].reshape(-1)
        return dequantize(QTensor(np.ascontiguousarray(rows), table.qtype, (len(ids), d)))
    return np.asarray(table, dtype=np.float32)[ids]


def embed_cost(table, ids) -> Cost:
    v, d = table.shape
    t = int(np.size(ids)) if not hasattr(ids, "shape") else int(np.prod(ids.shape))
    row = table.nbytes / v
    return Cost(flops=t * d, bytes_read=t * row + t * 8, bytes_written=out_bytes((t, d)))


EMBED = OpSpec("embed", embed_ref, embed_cost, max_nmse={"default": 1e-12})
