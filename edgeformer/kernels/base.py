"""`OpSpec`: one op's contract, reference implementation, cost function and tolerance."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Cost:
    """What one op call costs: floating-point (or integer MAC) operations and bytes moved
    to/from memory, assuming each operand is read once and each output written once."""

    flops: float = 0.0
    bytes_read: float = 0.0
    bytes_written: float = 0.0

    @property
    def bytes(self) -> float:
        return self.bytes_read + self.bytes_written

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes_read + other.bytes_read,
                    self.bytes_written + other.bytes_written)


@dataclass(frozen=True)
class OpSpec:
    """One op, defined once.

    `reference(*args, **attrs)` is the numpy definition every backend is tested against.
    `cost(*args, **attrs)` prices the same call from shapes/qtypes only (it never reads
    data, so it also works on `ShapeOnly` stand-ins in the tracer).
    `max_nmse` is the conformance bound per weight/activation dtype, like ggml's
    `max_nmse_err()`; key "default" applies when the dtype has no entry.
    """

    name: str
    reference: Callable[..., Any]
    cost: Callable[..., Cost]
    max_nmse: dict[str, float] = field(default_factory=lambda: {"default": 1e-7})
    doc: str = ""


def nbytes_of(x: Any) -> int:
    """Bytes of an ndarray or QTensor-like operand (anything with `.nbytes`)."""
    return int(x.nbytes) if x is not None else 0


def out_bytes(shape: tuple[int, ...], itemsize: int = 4) -> int:
    return int(np.prod(shape)) * itemsize if shape else itemsize
