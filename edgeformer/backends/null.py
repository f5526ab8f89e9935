"""The null backend: runs a model's whole pipeline and computes nothing, like tinygrad's
`ops_null`. Each kernel returns zeros of its op's output shape (`OpSpec.out_shape`;
`np.zeros` is a lazy calloc, so even a (2048, vocab) logits buffer costs nothing until
touched). Weights keep qtype, shape and byte size, so the tracer prices them as stored.
perf/trace_model.py runs the real Decoder on it to price models without their weights."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend, Weight
from edgeformer.kernels import OPS
from edgeformer.quant.qtypes import QTensor, nbytes


@dataclass(frozen=True)
class NullHandle:
    """Handle of a null-backend weight: only its shape."""

    shape: tuple[int, ...]


def _zeros_of(out_shape: Callable[..., tuple[int, ...]]) -> Callable[..., np.ndarray]:
    def kernel(*args: Any, **attrs: Any) -> np.ndarray:
        return np.zeros(out_shape(*args, **attrs), dtype=np.float32)
    return kernel


class NullBackend(Backend):
    """Runs every op as "return zeros of the output shape". Weights keep qtype, shape and
    byte size (so costs price them as stored) but no data; vectors are zeros."""

    name = "null"
    kernels = {name: _zeros_of(spec.out_shape) for name, spec in OPS.items()}

    def __init__(self, fuse: bool = False) -> None:
        # mirror a backend's weight fusion (the Decoder joins q|k|v and gate|up when the
        # backend `joins_weights`), so the traced op list is the one it executes
        self.joins_weights = fuse

    def concat_weights(self, ws: list[Weight], name: str = "") -> Weight | None:
        """Shape-only join of `ws`' rows, under the cpu backend's conditions (same qtype
        and row length, at least two parts)."""
        if len(ws) < 2 or any(w.qtype != ws[0].qtype or w.shape[1:] != ws[0].shape[1:] for w in ws):
            return None
        shape = (sum(w.shape[0] for w in ws),) + tuple(ws[0].shape[1:])
        return Weight(name, ws[0].qtype, shape, sum(w.nbytes for w in ws), NullHandle(shape), None)

    def prepare_weight(self, qt: Any, name: str = "") -> Weight:
        """Any object with `qtype` and `shape` (a QTensor, a shape-only stand-in)."""
        shape = tuple(qt.shape)
        return Weight(name, qt.qtype, shape, nbytes(qt.qtype, shape), NullHandle(shape), None)

    def prepare_vector(self, qt: Any) -> np.ndarray:
        if isinstance(qt, QTensor):   # real data (rope tensors) stays real
            return super().prepare_vector(qt)
        return np.zeros(tuple(qt.shape), dtype=np.float32)
