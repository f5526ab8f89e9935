"""Cost tracing: an `Ops` observer that records every op call with its `OpSpec.cost`.

The op list a model runs is the one priced here (no second hand-written list of costs):

    records = trace_forward(lambda: model(tokens, positions, kv), model.ops)
    print_summary(summarize(records))

Costs come from shapes, qtypes and byte sizes only (`Weight.shape/.nbytes/.qtype`,
array `.shape/.nbytes`), so tracing works on any backend's buffers.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeformer.backends.base import Ops, Weight
from edgeformer.kernels import OPS, Cost
from edgeformer.quant.qtypes import QTensor

if TYPE_CHECKING:
    from rich.table import Table

@dataclass(frozen=True)
class OpRecord:
    """One op call: `shapes[i]` is positional argument i's shape (None for scalars and
    None arguments); `weight_qtype` the qtype name of the first Weight/QTensor operand."""

    index: int
    op: str
    name: str | None
    layer: int | None
    shapes: tuple[tuple[int, ...] | None, ...]
    weight_qtype: str | None
    attrs: dict[str, Any]
    cost: Cost


def _shape(a: Any) -> tuple[int, ...] | None:
    s = getattr(a, "shape", None)
    return None if s is None else tuple(int(d) for d in s)


class Tracer:
    """Callable `Ops` observer; `records` grows by one OpRecord per op call."""

    def __init__(self) -> None:
        self.records: list[OpRecord] = []

    def __call__(self, op: str, args: tuple, attrs: dict, name: str | None, layer: int | None) -> None:
        try:
            cost = OPS[op].cost(*args, **attrs)
        except Exception as e:
            raise RuntimeError(f"cost of {op} ({name or '?'}, layer {layer}) failed: {e}") from e
        qtype = next((a.qtype.name for a in args if isinstance(a, (Weight, QTensor))), None)
        scalars = {k: v for k, v in attrs.items() if isinstance(v, (bool, int, float, str)) or v is None}
        self.records.append(OpRecord(len(self.records), op, name, layer, tuple(_shape(a) for a in args),
                                     qtype, scalars, cost))

    @contextmanager
    def attach(self, ops: Ops) -> Iterator["Tracer"]:
        """Observe `ops` inside the block; detached on exit, even on error."""
        ops.observers.append(self)
        try:
            yield self
        finally:
            ops.observers.remove(self)


def trace_forward(fn: Callable[[], Any], ops: Ops) -> list[OpRecord]:
    """Run `fn()` (e.g. one model forward) with a tracer on `ops`, the facade the model
    calls; return its op calls in order. `fn` runs normally (outputs are computed)."""
    tracer = Tracer()
    with tracer.attach(ops):
        fn()
    return tracer.records


@dataclass
class Total:
    count: int = 0
    cost: Cost = field(default_factory=Cost)

    def add(self, c: Cost) -> None:
        self.count += 1
        self.cost = self.cost + c


@dataclass
class TraceSummary:
    """Totals over records: overall, by op, by debug name ("?" if unnamed), by layer
    (None = outside layers). Dicts keep first-seen order."""

    total: Total
    by_op: dict[str, Total]
    by_name: dict[str, Total]
    by_layer: dict[int | None, Total]


def summarize(records: list[OpRecord]) -> TraceSummary:
    s = TraceSummary(Total(), {}, {}, {})
    for r in records:
        s.total.add(r.cost)
        s.by_op.setdefault(r.op, Total()).add(r.cost)
        s.by_name.setdefault(r.name or "?", Total()).add(r.cost)
        s.by_layer.setdefault(r.layer, Total()).add(r.cost)
    return s


def summary_table(summary: TraceSummary, by: str = "op") -> "Table":
    """A rich Table of `summary` grouped `by` "op", "name" or "layer": calls, GFLOP,
    MB read, MB written, share of total bytes."""
    from rich.table import Table
    by_key: dict[str, Mapping[Any, Total]] = {"op": summary.by_op, "name": summary.by_name, "layer": summary.by_layer}
    groups = by_key[by]
    t = Table(title=f"cost by {by}")
    for col in (by, "calls", "GFLOP", "MB read", "MB written", "% bytes"):
        t.add_column(col, justify="left" if col == by else "right")
    tot = summary.total.cost.bytes or 1.0
    for key, g in list(groups.items()) + [("total", summary.total)]:
        c = g.cost
        t.add_row(str(key), str(g.count), f"{c.flops / 1e9:.4g}", f"{c.bytes_read / 1e6:.4g}",
                  f"{c.bytes_written / 1e6:.4g}", f"{100 * c.bytes / tot:.1f}")
    return t


def print_summary(summary: TraceSummary, by: str = "op") -> None:
    from rich.console import Console
    Console().print(summary_table(summary, by))
