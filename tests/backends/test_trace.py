"""The tracer on a tiny hand-built attention block: it must record every op call, in
order, with its tags, shapes and weight qtype, price it with OpSpec.cost (checked here
by hand-computed FLOPs/bytes), leave outputs untouched, and detach afterwards."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.backends import NumpyBackend, Ops
from edgeformer.backends.trace import Tracer, print_summary, summarize, trace_forward
from edgeformer.kernels.inputs import random_qtensor
from edgeformer.quant.qtypes import QType

T, D, H, HD, V = 3, 64, 2, 32, 11


def build():
    r = np.random.default_rng(0)
    be = NumpyBackend()
    w = {
        "tok": be.prepare_weight(random_qtensor(QType.Q8_0, (V, D), r), "token_embd.weight"),
        "q": be.prepare_weight(random_qtensor(QType.Q4_0, (D, D), r), "blk.0.attn_q.weight"),
        "o": be.prepare_weight(random_qtensor(QType.F16, (D, D), r), "blk.0.attn_output.weight"),
        "norm": r.standard_normal(D).astype(np.float32),
    }
    return Ops(be), w


def block(ops, w):
    inv = (1.0 / 10000 ** (np.arange(0, HD, 2) / HD)).astype(np.float32)
    x = ops.embed(w["tok"], np.array([1, 5, 10]), name="tok_embd")
    h = ops.rms_norm(x, w["norm"], 1e-6, name="attn_norm", layer=0)
    q = ops.linear(h, w["q"], name="attn_q", layer=0).reshape(T, H, HD)        # (T, H, HD)
    q = ops.rope(q, np.arange(T), inv, name="attn_q_rope", layer=0)
    a = ops.attention(q, q, q, scale=HD ** -0.5, name="attn", layer=0).reshape(T, D)
    o = ops.linear(a, w["o"], name="attn_out", layer=0)
    return ops.add(x, o, name="ffn_inp", layer=0)


def test_trace_records_every_call_with_hand_checked_costs():
    ops, w = build()
    plain = block(ops, w)
    out = []
    recs = trace_forward(lambda: out.append(block(ops, w)), ops)
    np.testing.assert_array_equal(out[0], plain)            # tracing changes nothing
    assert ops.observers == []                             # and detaches
    assert [r.op for r in recs] == ["embed", "rms_norm", "linear", "rope", "attention", "linear", "add"]
    assert [r.name for r in recs] == ["tok_embd", "attn_norm", "attn_q", "attn_q_rope", "attn", "attn_out", "ffn_inp"]
    assert [r.layer for r in recs] == [None, 0, 0, 0, 0, 0, 0]
    assert [r.index for r in recs] == list(range(7))
    emb, _, lq, rope, att, lo, add = recs
    assert emb.weight_qtype == "Q8_0" and lq.weight_qtype == "Q4_0" and lo.weight_qtype == "F16"
    assert att.weight_qtype is None and att.attrs["scale"] == HD ** -0.5
    assert lq.shapes == ((T, D), (D, D)) and rope.shapes == ((T, H, HD), (T,), (HD // 2,))
    # embed: 3 rows of 2 Q8_0 blocks (34 B each) + 3 int64 ids; writes 3x64 f32
    assert (emb.cost.flops, emb.cost.bytes_read, emb.cost.bytes_written) == (T * D, T * 68 + 24, T * D * 4)
    # attn_q: 2*T*N*K FLOPs; reads x f32 + Q4_0 weight (64 rows x 2 blocks x 18 B)
    assert (lq.cost.flops, lq.cost.bytes_read, lq.cost.bytes_written) == (2 * T * D * D, T * D * 4 + D * 2 * 18, T * D * 4)
    # attn_out reads an F16 weight: 2 bytes per element
    assert lo.cost.bytes_read == T * D * 4 + D * D * 2
    # causal T=3 prefill: 1+2+3 = 6 visible pairs per head, 2*(32+32)+5 FLOPs per pair
    assert att.cost.flops == H * 6 * (2 * (HD + HD) + 5)
    assert add.cost.flops == T * D


def test_summary_totals_and_grouping(capsys):
    ops, w = build()
    recs = trace_forward(lambda: block(ops, w), ops)
    s = summarize(recs)
    assert s.total.count == 7
    assert s.total.cost.flops == sum(r.cost.flops for r in recs)
    assert s.total.cost.bytes == sum(r.cost.bytes for r in recs)
    assert s.by_op["linear"].count == 2
    assert s.by_op["linear"].cost.flops == 2 * (2 * T * D * D)
    assert s.by_name["attn_q"].cost == recs[2].cost
    assert s.by_layer[None].count == 1 and s.by_layer[0].count == 6
    print_summary(s, by="name")
    out = capsys.readouterr().out
    assert "attn_q" in out and "total" in out


def test_tracer_detaches_on_error_and_names_failing_cost():
    ops, w = build()
    tracer = Tracer()
    with pytest.raises(ZeroDivisionError):
        with tracer.attach(ops):
            ops.mul(np.ones(3, np.float32), 2.0, name="m")
            raise ZeroDivisionError
    assert ops.observers == [] and [r.name for r in tracer.records] == ["m"]
    with pytest.raises(RuntimeError, match="cost of linear"):
        trace_forward(lambda: ops.linear(np.ones((2, 3), np.float32), "not a weight", name="bad"), ops)
    assert ops.observers == []
