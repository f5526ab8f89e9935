"""embed: rows of a (possibly quantized) table."""
from __future__ import annotations

import numpy as np

from edgeformer.kernels.base import Case, Cost, OpSpec, out_bytes
from edgeformer.kernels.inputs import WEIGHT_QTYPES, random_qtensor, with_nan
from edgeformer.quant import dequantize
from edgeformer.quant.qtypes import QTensor, QType


def embed_ref(table: QTensor | np.ndarray, ids: np.ndarray) -> np.ndarray:
    """table: (V, D); ids: (T,) ints in [0, V). Returns (T, D) float32."""
    ids = np.asarray(ids, dtype=np.int64)
    if isinstance(table, QTensor):
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


def embed_shape(table, ids) -> tuple[int, ...]:
    return tuple(np.shape(ids)) + (table.shape[1],)


def embed_cases() -> list[Case]:
    """Every weight qtype with repeated and edge ids, a single id, a NaN row."""
    cases = []
    for qt in WEIGHT_QTYPES:
        d = {1: 33, 32: 96, 256: 256}[qt.block_size]
        cases.append(Case("embed", f"{qt.name}_v37_d{d}",
                          lambda r, d=d, qt=qt: ((random_qtensor(qt, (37, d), r), np.array([0, 36, 5, 5, 17, 1, 36])), {}),
                          dtype=qt.name, quick=qt in (QType.F32, QType.Q4_K)))
    cases += [
        Case("embed", "F16_single_id", lambda r: ((random_qtensor(QType.F16, (1025, 64), r), np.array([1024], np.int32)), {}),
             dtype="F16"),
        Case("embed", "nan_in_table_row", lambda r: ((with_nan(random_qtensor(QType.F32, (11, 33), r), 4), np.array([4, 3, 4, 10])), {}),
             dtype="F32", check="nonfinite", quick=True),
    ]
    return cases


EMBED = OpSpec("embed", embed_ref, embed_cost, embed_shape, embed_cases, op_class="gather",
               max_nmse={"default": 1e-12})
