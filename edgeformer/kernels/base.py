"""`OpSpec`: one op, defined once: contract, reference, cost, output shape, op class,
tolerance and conformance cases."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# How the roofline prices an op (perf/roofline.py keeps efficiencies per class): weight
# matmuls, attention, table gathers, and everything else streaming over activations.
OP_CLASSES = ("matmul", "attention", "gather", "elementwise")


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
class Case:
    """One conformance case of an op: `build(rng) -> (args, attrs)` makes its inputs
    (typed `Callable[...]`: builders are lambdas binding their shapes as defaults).
    `check` is "nmse", "nonfinite" (a planted NaN/Inf must reach exactly the outputs the
    reference's reach) or "rows" (row invariance over ROWS_T and ROWS_CHUNKS, see
    backends/conformance.py); `dtype` picks the `max_nmse` entry; `quick` cases make up
    `check-backend --quick`."""

    op: str
    name: str
    build: Callable[..., tuple[tuple, dict]]
    dtype: str = "F32"
    check: str = "nmse"
    quick: bool = False

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}"


# "rows" cases: row counts of a whole call, and chunk sizes its rows are also computed in
# (1 = alone); 63/64 straddle the row count where kernels classically switch to a prefill path
ROWS_T = (1, 5, 70, 130)
ROWS_CHUNKS = (1, 7, 63, 64)


@dataclass(frozen=True)
class OpSpec:
    """One op, defined once.

    `reference(*args, **attrs)` is the numpy definition every backend is tested against.
    `cost(*args, **attrs)` prices the same call and `out_shape(*args, **attrs)` gives its
    output's shape (float32), both from shapes/qtypes only: they never read data, so they
    also work on shape-only stand-ins (the tracer, the null backend).
    `cases()` lists its conformance cases (awkward shapes, planted NaN/Inf).
    `op_class` (one of OP_CLASSES) is how the roofline prices it.
    `max_nmse` is the conformance bound per weight/activation dtype, like ggml's
    `max_nmse_err()`; key "default" applies when the dtype has no entry.
    """

    name: str
    reference: Callable[..., Any]
    cost: Callable[..., Cost]
    out_shape: Callable[..., tuple[int, ...]]
    cases: Callable[[], list[Case]]
    op_class: str = "elementwise"
    max_nmse: dict[str, float] = field(default_factory=lambda: {"default": 1e-7})
    doc: str = ""

    def __post_init__(self) -> None:
        if self.op_class not in OP_CLASSES:
            raise ValueError(f"op {self.name}: op_class {self.op_class!r} is not one of {OP_CLASSES}")


def same_shape(x: Any, *args: Any, **attrs: Any) -> tuple[int, ...]:
    """`out_shape` of ops whose output has their first operand's shape."""
    return tuple(x.shape)


def nbytes_of(x: Any) -> int:
    """Bytes of an ndarray or QTensor-like operand (anything with `.nbytes`)."""
    return int(x.nbytes) if x is not None else 0


def out_bytes(shape: tuple[int, ...], itemsize: int = 4) -> int:
    return int(np.prod(shape)) * itemsize if shape else itemsize
