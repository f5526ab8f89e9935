"""embed: rows of a packed (possibly quantized) table; only the looked-up rows are
dequantized, so a tied embedding/output weight is stored once, quantized."""
from __future__ import annotations

import numpy as np

from edgeformer.backends.cpu.repack import PackedWeight, dequantize_rows
from edgeformer.errors import InputError


def embed(table: PackedWeight, ids: np.ndarray) -> np.ndarray:
    """table: PackedWeight (V, D); ids: (T,) ints in [0, V) -> (T, D) float32.
    Raises InputError for an id outside the vocabulary."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= table.n):
        bad = ids[(ids < 0) | (ids >= table.n)][0]
        raise InputError(f"token id {int(bad)} outside the vocabulary [0, {table.n})")
    return dequantize_rows(table, ids)
