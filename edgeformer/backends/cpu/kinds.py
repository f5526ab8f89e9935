"""The quantized qtypes the cpu kernels know, one table row each: which packed arrays
(`repack.py`) fill a weight's slot fields, and the qtype's row dots and dequantizer. The
linear kernels (`linear.py`), the fused decode step's GEMV (`block.py`) and the
float32-activation kernels (`qgemm.py`) are generated from this table, so a new qtype is
one row here (with its row dot and dequantizer).

A slot is a packed weight in one tuple type for every qtype, (id, a, b, c, d, e, f): a-d
uint8 and e, f uint16 2-D arrays with one row per output, empty (1, 0) where the qtype has
no such field (the row dots read raw bytes, so the views' signedness is moot); id is the
qtype's position in KINDS. One type means one compiled fused step for any mix of qtypes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.backends.cpu.qgemm import (dequant_q4_0, dequant_q4_1, dequant_q4_k, dequant_q5_0, dequant_q5_1,
                                           dequant_q5_k, dequant_q6_k, dequant_q8_0)
from edgeformer.backends.cpu.repack import PackedWeight
from edgeformer.backends.cpu.simd import rowdot_q4_k, rowdot_q5_k, rowdot_q6_k
from edgeformer.backends.cpu.simd_rows import (lanes1_q4_0, lanes1_q4_1, lanes1_q8_0, lanes4_q4_0, lanes4_q4_1,
                                               lanes4_q8_0, rowdot2_q5_0, rowdot2_q5_1, rowdot4_q5_0, rowdot4_q5_1)
from edgeformer.quant.qtypes import QType


@dataclass(frozen=True)
class Kind:
    """How the cpu kernels handle one quantized qtype."""
    fields: tuple[int | None, ...]   # index into PackedWeight.arrays of slot fields a..f (None: empty)
    rowdot: Any                      # intrinsic: one weight row . one token's activations
    rowdot4: Any | None              # the row . four tokens (prefill), or None: one token at a time
    dequant: Any                     # njit: columns of one row as float32 (`qgemm.py`)
    lanes: bool = False              # the row dots take the lane layout (`repack.set_lanes`)


KINDS: dict[QType, Kind] = {
    QType.Q8_0: Kind((0, None, None, None, 1, None), lanes1_q8_0, lanes4_q8_0, dequant_q8_0, True),
    QType.Q4_0: Kind((0, None, None, None, 1, None), lanes1_q4_0, lanes4_q4_0, dequant_q4_0, True),
    QType.Q4_1: Kind((0, None, None, None, 1, 2), lanes1_q4_1, lanes4_q4_1, dequant_q4_1, True),
    QType.Q5_0: Kind((0, 1, None, None, 2, None), rowdot2_q5_0, rowdot4_q5_0, dequant_q5_0),
    QType.Q5_1: Kind((0, 1, None, None, 2, 3), rowdot2_q5_1, rowdot4_q5_1, dequant_q5_1),
    QType.Q4_K: Kind((0, None, 1, 2, 3, 4), rowdot_q4_k, None, dequant_q4_k),
    QType.Q5_K: Kind((0, 1, 2, 3, 4, 5), rowdot_q5_k, None, dequant_q5_k),
    QType.Q6_K: Kind((0, 1, 2, None, 3, None), rowdot_q6_k, None, dequant_q6_k),
}
_ID = {q: i for i, q in enumerate(KINDS)}
_E8, _E16 = np.zeros((1, 0), np.uint8), np.zeros((1, 0), np.uint16)
EMPTY_SLOT = (-1, _E8, _E8, _E8, _E8, _E16, _E16)


def fields(w: PackedWeight) -> tuple[np.ndarray, ...]:
    """A quantized PackedWeight's slot fields a..f (views, no copies)."""
    out = []
    for j, i in enumerate(KINDS[w.kind].fields):
        dt = np.uint16 if j >= 4 else np.uint8
        out.append(EMPTY_SLOT[j + 1] if i is None else w.arrays[i].view(dt))
    return tuple(out)


def slot(w: PackedWeight) -> tuple:
    """A quantized PackedWeight as its slot (id, a, b, c, d, e, f)."""
    return (_ID[w.kind],) + fields(w)
