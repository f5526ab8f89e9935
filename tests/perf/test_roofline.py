"""Roofline math on hand-computed examples, priced with the real `kernels/` cost
functions: a bandwidth-bound GEMV, a compute-bound GEMM, an overhead-bound tiny op."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.errors import ConfigError, UnsupportedError
from edgeformer.kernels import OPS, Cost
from edgeformer.perf.device_spec import DeviceSpec, Figure, get_device
from edgeformer.perf.roofline import (Calibration, OpRecord, decode_curve, decode_rate,
                                      energy_per_token, op_time, predict, prefill_time,
                                      record_dtype)
from edgeformer.quant.qtypes import QType, nbytes


def _fig(v, unit, dense=None):
    return Figure(v, unit, source="test", dense=dense)


# A made-up device with round numbers: 100 GB/s, 1 TFLOP/s fp32, 4 TOP/s int8, 10 W.
DEV = DeviceSpec(
    name="toy", kind="edge",
    peak_flops={("cpu", "fp32"): _fig(1, "TFLOPS", True), ("cpu", "int8"): _fig(4, "TOPS", True)},
    mem_bw=_fig(100, "GB/s"), mem_bytes=_fig(8, "GiB"), power_w=_fig(10, "W"),
    pj_per_byte=_fig(8, "pJ/bit"), default_unit="cpu")

DEFAULT = Calibration()   # matmul: eta_c 0.7, eta_m 0.8; elementwise eta_m 0.7; 5 us dispatch
IDEAL = Calibration(eta_compute={c: 1.0 for c in DEFAULT.eta_compute},
                    eta_mem={c: 1.0 for c in DEFAULT.eta_mem},
                    dispatch_s={c: 0.0 for c in DEFAULT.dispatch_s})


class W:
    """A shape-only weight stand-in, as the tracer passes to cost functions."""

    def __init__(self, qtype: QType, shape: tuple[int, int]):
        self.qtype, self.shape, self.nbytes = qtype, shape, nbytes(qtype, shape)


def linear_record(t: int, n: int, k: int, qtype: QType) -> OpRecord:
    x = np.zeros((t, k), np.float32)
    w = W(qtype, (n, k))
    return OpRecord("linear", OPS["linear"].cost(x, w), qtype=qtype, name="ffn_up", layer=0)


def test_gemv_is_bandwidth_bound():
    rec = linear_record(1, 4096, 4096, QType.F16)
    # linear_cost: 2*1*4096*4096 flops; x 16 KiB + W 32 MiB + y 16 KiB bytes.
    assert rec.cost.flops == 2 * 4096 * 4096
    assert rec.cost.bytes_read + rec.cost.bytes_written == 16384 + 4096 * 4096 * 2 + 16384
    ot = op_time(rec, DEV, DEFAULT)
    # F16 weights compute in fp16; the toy device has none, so fp32 (1 TFLOP/s) is used.
    assert ot.dtype == "fp32"
    assert ot.t_memory == pytest.approx(33_587_200 / (0.8 * 100e9))
    assert ot.t_compute == pytest.approx(33_554_432 / (0.7 * 1e12))
    assert ot.t == pytest.approx(33_587_200 / 80e9 + 5e-6)
    assert ot.bound == "bandwidth"


def test_gemm_is_compute_bound():
    rec = linear_record(512, 4096, 4096, QType.Q8_0)
    # Q8_0: 34 bytes per 32 weights.
    w_bytes = 4096 * 4096 // 32 * 34
    assert rec.cost.bytes_read + rec.cost.bytes_written == 512 * 4096 * 4 * 2 + w_bytes
    ot = op_time(rec, DEV, DEFAULT)
    assert ot.dtype == "int8"                       # quantized weights: int8 dot products
    assert ot.t_compute == pytest.approx(2 * 512 * 4096 * 4096 / (0.7 * 4e12))
    assert ot.t_memory == pytest.approx((16_777_216 + w_bytes) / 80e9)
    assert ot.bound == "compute"
    assert ot.t == pytest.approx(ot.t_compute + 5e-6)


def test_tiny_op_is_overhead_bound():
    x, w = np.zeros((1, 64), np.float32), np.ones(64, np.float32)
    rec = OpRecord("rms_norm", OPS["rms_norm"].cost(x, w, 1e-6))
    ot = op_time(rec, DEV, DEFAULT)
    assert ot.op_class == "elementwise" and ot.dtype == "fp32"
    assert ot.t_memory == pytest.approx(768 / (0.7 * 100e9))    # 256 B x + 256 B w + 256 B y
    assert ot.t_compute == pytest.approx(256 / (0.5 * 1e12))
    assert ot.bound == "overhead"
    assert ot.t == pytest.approx(768 / 70e9 + 5e-6)


def test_prediction_sums_and_attributes_time():
    recs = [linear_record(1, 4096, 4096, QType.F16), linear_record(512, 4096, 4096, QType.Q8_0)]
    recs += [OpRecord("add", Cost(64, 768, 256))] * 10
    pred = predict(recs, DEV, DEFAULT)
    parts = [op_time(r, DEV, DEFAULT).t for r in recs]
    assert pred.total_s == pytest.approx(sum(parts))
    tb = pred.time_by_bound
    assert tb["bandwidth"] == pytest.approx(parts[0])
    assert tb["compute"] == pytest.approx(parts[1])
    assert tb["overhead"] == pytest.approx(sum(parts[2:]))
    assert pred.bound == "compute"
    assert pred.flops == sum(r.cost.flops for r in recs)
    assert prefill_time(recs, DEV, DEFAULT).total_s == pred.total_s


def test_decode_rate_of_a_weight_streaming_model():
    # 1 GB of weights read once per step on 100 GB/s at 100% efficiency: 100 tok/s at
    # batch 1; batch 4 reads the same weights once, so 400 tok/s.
    step = [OpRecord("linear", Cost(2e9 / 1000, 1e9, 0), qtype=QType.Q4_0)]
    assert decode_rate(step, DEV, 1, calib=IDEAL).tokens_per_s == pytest.approx(100.0)
    assert decode_rate(step, DEV, 4, calib=IDEAL).tokens_per_s == pytest.approx(400.0)
    # On the catalog H100 a 7B fp16 model (14 GB) decodes at 3.35e12 / 14e9 tok/s.
    h100 = get_device("h100_sxm")
    step16 = [OpRecord("linear", Cost(2 * 7e9, 14e9, 0), qtype=QType.F16)]
    pt = decode_rate(step16, h100, 1, calib=IDEAL)
    assert pt.tokens_per_s == pytest.approx(3.35e12 / 14e9)
    assert pt.bound == "bandwidth"
    with pytest.raises(ConfigError):
        decode_rate(step, DEV, 0)


def test_decode_curve_over_context_and_batch():
    w_bytes = 1e9

    def step_ops(ctx: int, batch: int):
        kv = 2 * 8 * 128 * 2 * 32 * ctx * batch       # K+V, 8 kv heads, dim 128, f16, 32 layers
        return [OpRecord("linear", Cost(2 * 5e8 * batch, w_bytes, 0), qtype=QType.Q4_0),
                OpRecord("attention", Cost(4 * 32 * 128 * ctx * batch, kv, 0))]

    pts = decode_curve(step_ops, DEV, [0, 4096], [1, 8], calib=IDEAL)
    got = {(p.context_len, p.batch_size): p for p in pts}
    assert got[(0, 1)].tokens_per_s == pytest.approx(100e9 / w_bytes)
    kv = 2 * 8 * 128 * 2 * 32 * 4096 * 8
    assert got[(4096, 8)].step_s == pytest.approx((w_bytes + kv) / 100e9)
    assert got[(4096, 8)].tokens_per_s == pytest.approx(8 / ((w_bytes + kv) / 100e9))


def test_energy_per_token():
    step = [OpRecord("linear", Cost(1e6, 1e9, 0), qtype=QType.Q4_0)]
    pred = predict(step, DEV, IDEAL)                  # 10 ms
    e = energy_per_token(pred, DEV, 2)
    assert e.power_j == pytest.approx(10 * 0.01 / 2)
    assert e.dram_j == pytest.approx(1e9 * 64e-12 / 2)     # 8 pJ/bit = 64 pJ/B
    no_power = DeviceSpec("x", "cpu", DEV.peak_flops, DEV.mem_bw, DEV.mem_bytes, default_unit="cpu")
    assert energy_per_token(pred, no_power, 1) == type(e)(None, None)


def test_record_dtype_mapping():
    assert record_dtype(OpRecord("linear", Cost(), qtype=QType.Q4_K)) == "int8"
    assert record_dtype(OpRecord("linear", Cost(), qtype="BF16")) == "bf16"
    assert record_dtype(OpRecord("rope", Cost())) == "fp32"
    assert record_dtype(OpRecord("linear", Cost(), qtype=QType.Q4_0, compute_dtype="fp16")) == "fp16"
    cal = Calibration(compute_dtype={"Q4_0": "fp16"})
    assert record_dtype(OpRecord("linear", Cost(), qtype=QType.Q4_0), cal) == "fp16"

    class TraceLike:            # a tracer record that names its field weight_qtype
        op, cost, weight_qtype = "linear", Cost(1, 1, 1), QType.F16
    assert record_dtype(TraceLike()) == "fp16"


def test_unit_selection_and_missing_unit():
    orin = get_device("jetson_orin_nano_8gb")
    rec = linear_record(64, 1024, 1024, QType.F16)
    assert op_time(rec, orin, unit="gpu").dtype == "fp16"
    assert op_time(rec, orin, unit="cpu").dtype == "fp32"        # CPU entry has fp32 only
    with pytest.raises(UnsupportedError, match="no throughput figure on unit 'npu'"):
        op_time(rec, orin, unit="npu")


def test_calibration_is_validated():
    with pytest.raises(ConfigError, match=r"eta_mem\['matmul'\] = 1.5"):
        Calibration(eta_mem={**DEFAULT.eta_mem, "matmul": 1.5})
    with pytest.raises(ConfigError, match="missing \\['gather'\\]"):
        Calibration(eta_compute={"matmul": 1, "attention": 1, "elementwise": 1})
    with pytest.raises(ConfigError, match="dispatch_s"):
        Calibration(dispatch_s={**DEFAULT.dispatch_s, "matmul": -1e-6})
    with pytest.raises(ConfigError, match="unknown dtype"):
        Calibration(compute_dtype={"Q4_0": "fp12"})


def test_records_from_the_ops_facade():
    """The records the backend observers see price the same as hand-built ones."""
    from edgeformer.backends import Ops, get_backend
    from edgeformer.kernels import OPS as ops_table
    from edgeformer.quant.qtypes import QTensor

    backend = get_backend("numpy")
    ops = Ops(backend)
    seen: list[OpRecord] = []

    def observe(op, args, attrs, name, layer):
        qt = next((a.qtype for a in args if hasattr(a, "qtype")), None)
        seen.append(OpRecord(op, ops_table[op].cost(*args, **attrs), qt, None, name, layer))

    ops.observers.append(observe)
    rng = np.random.default_rng(0)
    w = backend.prepare_weight(QTensor.from_array(rng.standard_normal((33, 64)).astype(np.float16)))
    x = rng.standard_normal((5, 64)).astype(np.float32)
    ops.linear(x, w, name="attn_q", layer=2)
    assert len(seen) == 1 and seen[0].qtype == QType.F16 and seen[0].layer == 2
    ot = op_time(seen[0], DEV, IDEAL)
    assert ot.flops == 2 * 5 * 33 * 64
    assert ot.bytes == 5 * 64 * 4 + 33 * 64 * 2 + 5 * 33 * 4
