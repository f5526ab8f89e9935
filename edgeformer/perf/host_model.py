"""This machine as the calibrated roofline sees it (`calibrate.fit` builds it).

Beyond the per-op-class roofline (`roofline.op_time` with a `Calibration` per weight
qtype and per op), three measured corrections, each from `calib_tables`:

- a linear over T > 1 tokens computes at the GEMM rate measured for its qtype at its
  (K, T), interpolated (whole calls: the rate includes per-call overhead); one token
  (GEMV) is priced as per-call + per-output-row + per-byte terms fitted to three
  measured GEMV shapes (their compute is in those times: no compute roof);
- causal prefill attention computes at the rate measured at its key length;
- a block over T > 1 tokens (prefill, batched decode) pays `prefill_s_per_layer_token`
  x T once (a synthetic `layer_glue` entry per layer): a whole prefill measured against
  the sum of its ops (the model's Python glue and copies between ops, fresh activation
  buffers' page faults, operands cold from the op before; `calibrate._fit_prefill`);
- a decode step the backend runs fused (`predict(..., fused=True)`, or
  `predict_decode(trace)` when `trace.fused_decode`) pays no per-op dispatch inside the
  blocks, prices in-block GEMVs scaled by the fitted fused/microbenchmark ratio and
  in-block attention by its bytes (the cached K/V) at the fused kernel's measured rate
  (its FLOPs do not set its time: `calib_tables`), and adds a fitted per-block
  overhead (one synthetic `fused_block` entry per layer).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from edgeformer.perf.calib_tables import FusedDecode, attention_rate, gemm_rate
from edgeformer.perf.device_spec import DeviceSpec
from edgeformer.perf.roofline import Calibration, OpTime, Prediction, op_class, op_time


def _qname(rec: Any) -> str | None:
    q = getattr(rec, "weight_qtype", None) or getattr(rec, "qtype", None)
    q = getattr(q, "name", q)
    return None if q is None else str(q).upper()


def record_tokens(rec: Any) -> int | None:
    """Tokens (rows) a traced record processes: the ids of an embed, the leading dims of
    a linear's input, the first dim of any other op's first operand; None for records
    without shapes (hand-built ones)."""
    shapes = getattr(rec, "shapes", None)
    if not shapes or shapes[0] is None:
        return None
    if rec.op == "embed":
        dims = shapes[1] if len(shapes) > 1 and shapes[1] is not None else ()
    else:
        dims = shapes[0][:-1] if rec.op == "linear" else shapes[0][:1]
    n = 1
    for d in dims:
        n *= d
    return n


@dataclass(frozen=True)
class HostModel:
    """This machine as the roofline sees it: `device` (measured bandwidth and peaks),
    `calib` for non-matmul ops and unknown qtypes, `by_qtype` matmul calibrations,
    `by_op` per-op calibrations, plus the measured tables (module docstring)."""

    device: DeviceSpec
    calib: Calibration
    by_qtype: dict[str, Calibration]
    backend: str
    measurements: Any = None
    by_op: dict[str, Calibration] = field(default_factory=dict)
    gemm_grid: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    attn_lengths: list[dict[str, float]] = field(default_factory=list)
    fused: FusedDecode | None = None
    prefill_s_per_layer_token: float = 0.0
    gemv_row_s: dict[str, float] = field(default_factory=dict)   # qtype -> seconds per output row

    def calibration_for(self, rec: Any) -> Calibration:
        """Matmuls: their weight qtype's calibration; other ops: their own if measured;
        else the default."""
        q = _qname(rec)
        if q is not None and op_class(rec.op) == "matmul":
            return self.by_qtype.get(q, self.calib)
        return self.by_op.get(rec.op, self.calib)

    def op_time(self, rec: Any, in_fused_block: bool = False) -> OpTime:
        """One record's predicted time (module docstring for what the tables change);
        `in_fused_block`: the op runs inside the backend's fused decode step."""
        cal = self.calibration_for(rec)
        ot = op_time(rec, self.device, cal)
        t = record_tokens(rec)
        if ot.op_class == "matmul" and t is not None:
            q = _qname(rec)
            if t == 1:   # GEMV: per-call + per-row + per-byte terms, fitted on measured GEMVs
                rows = float(rec.shapes[1][0]) * self.gemv_row_s.get(q or "", 0.0)
                ot = replace(ot, t_compute=0.0, t_memory=ot.t_memory + rows)
            elif q in self.gemm_grid:
                # the measured rate is whole calls' (per-call overhead included): no
                # separate dispatch term, which at a grid point would count it twice
                rate = gemm_rate(self.gemm_grid[q], rec.shapes[1][-1], t)
                ot = replace(ot, t_compute=ot.flops / rate, t_dispatch=0.0)
        elif ot.op_class == "attention" and t is not None and t > 1 and self.attn_lengths:
            rate = attention_rate(self.attn_lengths, rec.shapes[1][0])
            ot = replace(ot, t_compute=ot.flops / rate, t_dispatch=0.0)
        if in_fused_block:
            ot = replace(ot, t_dispatch=0.0)
            if ot.op_class == "attention" and self.fused is not None:
                ot = replace(ot, t_compute=0.0, t_memory=ot.bytes / self.fused.attn_bytes_s)
            elif ot.op_class == "matmul" and self.fused is not None:
                g = self.fused.gemv_scale
                ot = replace(ot, t_compute=ot.t_compute * g, t_memory=ot.t_memory * g)
        return ot

    def predict(self, records: Iterable[Any], fused: bool = False) -> Prediction:
        """Price `records` (one after another). `fused`: they are one decode step the
        backend runs through its fused `decode_layers` (ops with a layer index are inside
        it); the fitted per-block overhead is added once per layer. Layers whose ops
        process T > 1 tokens get the fitted between-ops time for T tokens."""
        ops: list[OpTime] = []
        layers: set[int] = set()
        rows: dict[int, int] = {}      # layer -> most tokens one of its ops processed
        for r in records:
            layer: int | None = getattr(r, "layer", None)
            inside = fused and layer is not None
            ops.append(self.op_time(r, inside))
            if inside and layer is not None:
                layers.add(layer)
            t = record_tokens(r)
            if layer is not None and t is not None and t > 1:
                rows[layer] = max(rows.get(layer, 0), t)
        if self.prefill_s_per_layer_token:
            ops += [OpTime("layer_glue", "elementwise", "fp32", 0.0, 0.0, 0.0, 0.0,
                           self.prefill_s_per_layer_token * t, "between ops", i) for i, t in sorted(rows.items())]
        if fused and self.fused is not None:
            ops += [OpTime("fused_block", "elementwise", "fp32", 0.0, 0.0, 0.0, 0.0, self.fused.block_s,
                           "decode_layers", i) for i in sorted(layers)]
        return Prediction(self.device.name, self.device.default_unit, tuple(ops))

    def predict_decode(self, trace: Any) -> Prediction:
        """One decode step of a `trace_model.ModelTrace`, fused when the backend fuses it."""
        return self.predict(trace.decode, fused=bool(getattr(trace, "fused_decode", False))
                            and trace.config is not None and self.backend == "cpu")
