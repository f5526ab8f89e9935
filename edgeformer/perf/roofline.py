"""Roofline prediction over op records: pure functions, no model code.

Each op costs  t = max(flops / (eta_c * peak[dtype]),  bytes / (eta_m * bw)) + t_dispatch
with efficiencies and dispatch overhead per op class held in a `Calibration`. Summing
over an op list gives a prefill time; over one decode step's op list, decode tokens/s.

Records come from `backends/trace.py` (or anything shaped like them): the roofline reads
only `rec.op` (the OPS name, e.g. "linear"), `rec.cost` (flops, bytes_read,
bytes_written) and, when present, `rec.compute_dtype` (a catalog dtype such as "int8")
or else the weight's quant type from `rec.qtype` / `rec.weight_qtype` (a `QType` or its
name). Records without either are priced as fp32, the activation dtype of our kernels.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edgeformer.errors import ConfigError, UnsupportedError
from edgeformer.kernels import OPS
from edgeformer.kernels.base import OP_CLASSES
from edgeformer.perf.device_spec import DTYPES, DeviceSpec


# Weight quant type -> dtype the arithmetic runs in. ggml-style kernels dot quantized
# weights against int8-quantized activations (llama.cpp `vec_dot_q4_0_q8_0`), so every
# block-quantized type computes in int8; plain float types compute in their own dtype.
QTYPE_COMPUTE_DTYPE = {"F32": "fp32", "F64": "fp64", "F16": "fp16", "BF16": "bf16"}
QUANTIZED_COMPUTE_DTYPE = "int8"
# Where a device lacks a dtype, the next one down the chain that it has is used.
DTYPE_FALLBACK = {"int4": "int8", "fp8": "fp16", "int8": "fp16", "bf16": "fp16",
                  "fp16": "fp32", "tf32": "fp32", "fp64": "fp32"}


class CostLike(Protocol):
    @property
    def flops(self) -> float: ...

    @property
    def bytes_read(self) -> float: ...

    @property
    def bytes_written(self) -> float: ...


class OpRecordLike(Protocol):
    """What the roofline needs from a traced op (see module docstring for optional attrs).
    Read-only members, here and in CostLike, so frozen dataclasses (`trace.OpRecord`,
    `Cost`) match."""

    @property
    def op(self) -> str: ...

    @property
    def cost(self) -> CostLike: ...


@dataclass(frozen=True)
class OpRecord:
    """A minimal concrete op record, for callers (and tests) that build op lists by hand."""

    op: str
    cost: CostLike
    qtype: Any = None
    compute_dtype: str | None = None
    name: str | None = None
    layer: int | None = None


def _default_eta_compute() -> dict[str, float]:
    # Tuned GEMMs reach ~60-80% of datasheet peak; attention kernels less (softmax,
    # masking, short KV tiles). Elementwise/gather compute never binds in practice.
    return {"matmul": 0.7, "attention": 0.5, "gather": 0.5, "elementwise": 0.5}


def _default_eta_mem() -> dict[str, float]:
    # STREAM-style reads reach ~70-90% of theoretical DRAM peak; gathers of embedding
    # rows are short strided reads and do worse.
    return {"matmul": 0.8, "attention": 0.7, "gather": 0.5, "elementwise": 0.7}


def _default_dispatch() -> dict[str, float]:
    # ~5 us per op: the order of a CUDA kernel launch or a Python->Numba call.
    return {c: 5e-6 for c in OP_CLASSES}


@dataclass(frozen=True)
class Calibration:
    """Per op class: achieved fraction of peak compute (`eta_compute`) and of peak
    bandwidth (`eta_mem`), and a fixed per-op overhead in seconds (`dispatch_s`).
    Defaults are documented guesses (see the `_default_*` helpers); `perf/calibrate.py`
    fits them to measurements. `compute_dtype` overrides the qtype -> dtype mapping
    (keys are QType names, e.g. {"Q4_0": "fp16"} for a backend that dequantizes)."""

    eta_compute: Mapping[str, float] = field(default_factory=_default_eta_compute)
    eta_mem: Mapping[str, float] = field(default_factory=_default_eta_mem)
    dispatch_s: Mapping[str, float] = field(default_factory=_default_dispatch)
    compute_dtype: Mapping[str, str] = field(default_factory=dict)
    source: str = "defaults"

    def __post_init__(self) -> None:
        for label, table in (("eta_compute", self.eta_compute), ("eta_mem", self.eta_mem),
                             ("dispatch_s", self.dispatch_s)):
            missing, extra = set(OP_CLASSES) - set(table), set(table) - set(OP_CLASSES)
            if missing or extra:
                raise ConfigError(f"Calibration.{label}: needs exactly the op classes "
                                  f"{OP_CLASSES}; missing {sorted(missing)}, unknown {sorted(extra)}")
            for k, v in table.items():
                ok = v >= 0 if label == "dispatch_s" else 0 < v <= 1
                if not ok:
                    want = ">= 0 seconds" if label == "dispatch_s" else "in (0, 1]"
                    raise ConfigError(f"Calibration.{label}[{k!r}] = {v}: must be {want}")
        bad = {v for v in self.compute_dtype.values() if v not in DTYPES}
        if bad:
            raise ConfigError(f"Calibration.compute_dtype: unknown dtype(s) {sorted(bad)}")


DEFAULT_CALIBRATION = Calibration()


@dataclass(frozen=True)
class OpTime:
    """One op's predicted time split into its three terms, and what binds it."""

    op: str
    op_class: str
    dtype: str
    flops: float
    bytes: float
    t_compute: float
    t_memory: float
    t_dispatch: float
    name: str | None = None
    layer: int | None = None

    @property
    def t(self) -> float:
        return max(self.t_compute, self.t_memory) + self.t_dispatch

    @property
    def bound(self) -> str:
        """"overhead" if dispatch exceeds both roofs, else "compute" or "bandwidth"."""
        if self.t_dispatch > max(self.t_compute, self.t_memory):
            return "overhead"
        return "compute" if self.t_compute >= self.t_memory else "bandwidth"


@dataclass(frozen=True)
class Prediction:
    """Sum over an op list. `time_by_bound` attributes each op's whole time to what binds
    it; `bound` is the resource with the most time."""

    device: str
    unit: str
    ops: tuple[OpTime, ...]

    @property
    def total_s(self) -> float:
        return sum(o.t for o in self.ops)

    @property
    def flops(self) -> float:
        return sum(o.flops for o in self.ops)

    @property
    def bytes(self) -> float:
        return sum(o.bytes for o in self.ops)

    @property
    def time_by_bound(self) -> dict[str, float]:
        out = {"compute": 0.0, "bandwidth": 0.0, "overhead": 0.0}
        for o in self.ops:
            out[o.bound] += o.t
        return out

    @property
    def bound(self) -> str:
        tb = self.time_by_bound
        return max(tb, key=tb.__getitem__)


def op_class(op: str) -> str:
    """The op class (one of OP_CLASSES) of an OPS name: its `OpSpec.op_class`; a name
    outside OPS is elementwise."""
    return OPS[op].op_class if op in OPS else "elementwise"


def record_dtype(rec: Any, calib: Calibration = DEFAULT_CALIBRATION) -> str:
    """The catalog dtype a record computes in: `rec.compute_dtype` if set, else mapped
    from its weight qtype (`rec.qtype` or `rec.weight_qtype`), else "fp32"."""
    explicit = getattr(rec, "compute_dtype", None)
    if explicit:
        if explicit not in DTYPES:
            raise UnsupportedError(f"op {rec.op!r}: unknown compute dtype {explicit!r}; "
                                   f"known: {', '.join(DTYPES)}")
        return explicit
    qt = getattr(rec, "qtype", None) or getattr(rec, "weight_qtype", None)
    if qt is None:
        return "fp32"
    qname = getattr(qt, "name", str(qt)).upper()
    if qname in calib.compute_dtype:
        return calib.compute_dtype[qname]
    return QTYPE_COMPUTE_DTYPE.get(qname, QUANTIZED_COMPUTE_DTYPE)


def resolve_peak(device: DeviceSpec, dtype: str, unit: str) -> tuple[str, float]:
    """(dtype actually used, peak FLOP/s) on `unit`: `dtype` if the device has a figure,
    else the first of its `DTYPE_FALLBACK` chain that it has. UnsupportedError if none."""
    d: str | None = dtype
    while d is not None:
        p = device.peak(d, unit)
        if p is not None:
            return d, p
        d = DTYPE_FALLBACK.get(d)
    raise UnsupportedError(f"device {device.name!r} has no throughput figure on unit {unit!r} "
                           f"for {dtype} or its fallbacks; units with figures: {', '.join(device.units)}")


def op_time(rec: OpRecordLike, device: DeviceSpec, calib: Calibration = DEFAULT_CALIBRATION,
            unit: str | None = None) -> OpTime:
    """Predicted time of one op record on `device` (compute unit `unit`, default the
    device's `default_unit`)."""
    unit = unit or device.default_unit
    cls = op_class(rec.op)
    flops = float(rec.cost.flops)
    nbytes = float(rec.cost.bytes_read) + float(rec.cost.bytes_written)
    dtype, peak = resolve_peak(device, record_dtype(rec, calib), unit)
    t_c = flops / (calib.eta_compute[cls] * peak) if flops else 0.0
    t_m = nbytes / (calib.eta_mem[cls] * device.mem_bw.si) if nbytes else 0.0
    return OpTime(rec.op, cls, dtype, flops, nbytes, t_c, t_m, calib.dispatch_s[cls],
                  getattr(rec, "name", None), getattr(rec, "layer", None))


def predict(records: Iterable[OpRecordLike], device: DeviceSpec,
            calib: Calibration = DEFAULT_CALIBRATION, unit: str | None = None) -> Prediction:
    """Price every record and keep the per-op breakdown. Ops run one after another."""
    unit = unit or device.default_unit
    return Prediction(device.name, unit, tuple(op_time(r, device, calib, unit) for r in records))


def prefill_time(records: Iterable[OpRecordLike], device: DeviceSpec,
                 calib: Calibration = DEFAULT_CALIBRATION, unit: str | None = None) -> Prediction:
    """Prefill of a prompt: `records` is the op list traced for one forward pass over the
    whole prompt (its length is in the shapes, hence in the costs)."""
    return predict(records, device, calib, unit)


@dataclass(frozen=True)
class DecodePoint:
    """Decode throughput at one (context length, batch size)."""

    context_len: int
    batch_size: int
    step: Prediction

    @property
    def step_s(self) -> float:
        return self.step.total_s

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second over the whole batch (one token per sequence/step)."""
        return self.batch_size / self.step_s

    @property
    def bound(self) -> str:
        return self.step.bound


def decode_rate(step_records: Iterable[OpRecordLike], device: DeviceSpec, batch_size: int = 1,
                context_len: int = 0, calib: Calibration = DEFAULT_CALIBRATION,
                unit: str | None = None) -> DecodePoint:
    """Decode throughput from the op list of one decode step that advances `batch_size`
    sequences by one token each, at `context_len` tokens of KV cache."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return DecodePoint(context_len, batch_size, predict(step_records, device, calib, unit))


def decode_curve(step_ops: Callable[[int, int], Iterable[OpRecordLike]], device: DeviceSpec,
                 context_lens: Iterable[int], batch_sizes: Iterable[int] = (1,),
                 calib: Calibration = DEFAULT_CALIBRATION, unit: str | None = None) -> list[DecodePoint]:
    """Decode tok/s over a grid: `step_ops(context_len, batch_size)` returns one decode
    step's op records (typically a tracer run on shape-only inputs)."""
    batch_sizes = list(batch_sizes)
    return [decode_rate(step_ops(c, b), device, b, c, calib, unit)
            for c in context_lens for b in batch_sizes]


@dataclass(frozen=True)
class Energy:
    """Energy per token in joules: `power_j` = catalog power x time (an upper-bound style
    estimate: the device at its rated power for the whole time); `dram_j` = bytes moved x
    DRAM energy per byte, or None where the catalog has no pJ/byte figure."""

    power_j: float | None
    dram_j: float | None


def energy_per_token(pred: Prediction, device: DeviceSpec, n_tokens: int) -> Energy:
    """Energy per token of a prediction that produced `n_tokens` tokens (prompt length for
    prefill, batch size for a decode step)."""
    if n_tokens < 1:
        raise ConfigError(f"n_tokens must be >= 1, got {n_tokens}")
    power = device.power_w.si * pred.total_s / n_tokens if device.power_w else None
    dram = device.pj_per_byte.si * pred.bytes / n_tokens if device.pj_per_byte else None
    return Energy(power, dram)
