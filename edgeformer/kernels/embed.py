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
    """Only the T gathered rows of the table are read (plus the ids); one FLOP per
    output element for dequantizing; (T, D) float32 written."""
    v, d = table.shape
    t = int(np.prod(np.shape(ids)))
    row = table.nbytes / v
    ids_bytes = int(ids.nbytes) if hasattr(ids, "nbytes") else t * 8
    return Cost(flops=t * d, bytes_read=t * row + ids_bytes, bytes_written=out_bytes((t, d)))


EMBED = OpSpec("embed", embed_ref, embed_cost, max_nmse={"default": 1e-12})
