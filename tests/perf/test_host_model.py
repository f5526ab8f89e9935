"""The measured tables of the host model: interpolation reproduces the measured points
and stays between them, the fused-decode fit recovers the terms it is given, and a
fused decode step is priced as the backend runs it (no per-op dispatch in blocks, one
per-block term per layer); the fused flag matches the cpu backend's own decision."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgeformer.backends import get_backend
from edgeformer.config import DecoderConfig
from edgeformer.perf import calib_tables as tables
from edgeformer.perf.calib_tables import FusedDecode, attention_rate, fit_fused, gemm_rate
from edgeformer.perf.host_model import HostModel
from edgeformer.perf.roofline import Calibration
from edgeformer.perf.trace_model import trace_decoder

GRID = [{"k": float(k), "t": float(t), "flops": 2.0 * 256 * k * t, "s": 2.0 * 256 * k * t / (r * 1e9)}
        for k, rates in ((512, (20, 40, 50)), (2048, (30, 60, 80)), (8192, (25, 50, 70)))
        for t, r in zip((16, 128, 512), rates)]


def test_gemm_rate_hits_points_interpolates_and_clamps():
    for p in GRID:
        assert gemm_rate(GRID, p["k"], p["t"]) == pytest.approx(p["flops"] / p["s"])
    # between two measured T at one K: between their rates, monotone in T
    r = [gemm_rate(GRID, 2048, t) for t in (16, 32, 64, 128)]
    assert r == sorted(r) and 30e9 < r[1] < r[2] < 60e9
    # geometric midpoint in (log K, log T) of a cell: the mean of log(rate) at its corners
    mid = gemm_rate(GRID, math.sqrt(512 * 2048), math.sqrt(16 * 128))
    assert mid == pytest.approx(math.exp(np.mean(np.log([20e9, 40e9, 30e9, 60e9]))))
    # outside the grid: the edge's rate
    assert gemm_rate(GRID, 100, 4) == pytest.approx(20e9)
    assert gemm_rate(GRID, 20000, 4096) == pytest.approx(70e9)


def test_attention_rate_by_length():
    pts = [{"len": 256.0, "flops": 1e9, "s": 0.02}, {"len": 2048.0, "flops": 64e9, "s": 0.8}]
    assert attention_rate(pts, 256) == pytest.approx(50e9)
    assert attention_rate(pts, 2048) == pytest.approx(80e9)
    assert 50e9 < attention_rate(pts, 700) < 80e9
    assert attention_rate(pts, 64) == pytest.approx(50e9) and attention_rate(pts, 8192) == pytest.approx(80e9)


def test_fit_fused_recovers_its_terms():
    block, rate, scale = 20e-6, 8e9, 1.3
    layers = {"tiny": 16, "main": 6}

    def parts(key, ctx):   # other seconds, GEMV seconds, in-block attention bytes, layers
        if key == "tiny":
            return 1e-5, 2e-6, 1e3 * ctx, layers[key]
        return 1e-3 + 2e-7 * ctx, 8e-3, 3e5 * ctx, layers[key]

    def meas(key, ctx):
        o, g, f, n = parts(key, ctx)
        return o + n * block + (g + f / 1e12 if key == "tiny" else scale * g + f / rate)
    pts = [{"model": "tiny", "ctx": 32, "s": meas("tiny", 32)}] + \
          [{"model": "main", "ctx": c, "s": meas("main", c)} for c in (32, 1536)]
    f = fit_fused(pts, parts)
    assert f.block_s == pytest.approx(block, rel=1e-3)
    assert f.attn_bytes_s == pytest.approx(rate, rel=1e-3) and f.gemv_scale == pytest.approx(scale, rel=1e-3)
    assert fit_fused(pts[:2], parts) is None                  # one context only
    flat = pts[:1] + [{"model": "main", "ctx": c, "s": 0.02} for c in (32, 1536)]
    assert fit_fused(flat, parts) is None                     # attention apparently free: no fit


CFG = DecoderConfig(arch="llama", vocab_size=256, dim=128, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=32,
                    ffn_dim=256, max_seq_len=512, tie_embeddings=True, rope_neox=False)


def _host(fused):
    from edgeformer.perf.bandwidth import host_spec
    cal = Calibration()
    return HostModel(host_spec(), cal, {"Q8_0": cal}, "cpu", fused=fused)


def test_fused_decode_prices_blocks_as_run():
    tr = trace_decoder(CFG, prompt_len=4, context_len=100, qtype="Q8_0", backend="cpu")
    assert tr.fused_decode
    f = FusedDecode(block_s=50e-6, attn_bytes_s=5e9)
    plain = _host(f).predict(tr.decode)
    fused = _host(f).predict_decode(tr)
    blocks = [o for o in fused.ops if o.op == "fused_block"]
    assert [o.layer for o in blocks] == list(range(CFG.n_layers))
    assert all(o.t == pytest.approx(50e-6) for o in blocks)
    inside = [o for o in fused.ops if o.layer is not None and o.op != "fused_block"]
    assert inside and all(o.t_dispatch == 0 for o in inside)
    attn = [o for o in inside if o.op == "attention"]
    assert all(o.t == pytest.approx(o.bytes / 5e9) for o in attn)     # by its K/V bytes
    # in-block GEMVs: the op-by-op price without its dispatch, times the fitted scale
    f2 = FusedDecode(block_s=50e-6, attn_bytes_s=5e9, gemv_scale=2.0)
    scaled = [o.t for o in _host(f2).predict_decode(tr).ops if o.op == "linear" and o.layer is not None]
    base = [o.t - o.t_dispatch for o in plain.ops if o.op == "linear" and o.layer is not None]
    assert scaled == pytest.approx([2 * t for t in base])
    # ops outside the blocks (embedding, final norm, output head) are priced unchanged
    outside = [(o.op, o.t) for o in fused.ops if o.layer is None]
    assert outside == [(o.op, o.t) for o in plain.ops if o.layer is None]
    # without a fitted fused term there is nothing to add
    assert not [o for o in _host(None).predict_decode(tr).ops if o.op == "fused_block"]


@pytest.mark.parametrize("qtype,kw", [("Q8_0", {}), ("Q4_0", {}), ("Q4_K", {}),
                                      ("Q8_0", {"qk_norm": True}), ("F16", {})])
def test_fused_flag_matches_cpu_backend(tmp_path, qtype, kw):
    """The trace's fused_decode equals the cpu backend's own `why_not_fused` on the real
    model loaded from the same file (Q4_K at dim 128: rows not a multiple of 256 fall
    back to F16, which has no fused kernel)."""
    if get_backend("cpu").available() is not None:
        pytest.skip("cpu backend unavailable")
    from dataclasses import replace

    from edgeformer.formats.synthetic import write_random_gguf
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder
    cfg = replace(CFG, **kw)
    path = write_random_gguf(cfg, tmp_path / "m.gguf", qtype)
    be = get_backend("cpu")
    model = Decoder(load_checkpoint(path), be)
    tr = trace_decoder(path, prompt_len=2, backend="cpu")
    assert tr.fused_decode == (be.why_not_fused(model.stack, be.activations) is None)
    assert not trace_decoder(path, prompt_len=2, backend="numpy").fused_decode


def test_fused_model_is_not_a_validation_model():
    from edgeformer.perf.validate import DIMS
    dims = {(c.dim, c.n_layers, c.ffn_dim) for c in DIMS.values()}
    for m in tables.FUSED_MODELS.values():
        assert (m["dim"], m["n_layers"], m["ffn_dim"]) not in dims


def test_fused_and_prefill_benchmarks_run_on_cpu():
    """Plumbing of the two model-level benchmarks on small synthetic models (the real
    ones use `FUSED_MODELS` / `prefill_config()`): the right points, positive times."""
    if get_backend("cpu").available() is not None:
        pytest.skip("cpu backend unavailable")
    from edgeformer.perf.clock import time_per_call
    be = get_backend("cpu")
    small = dict(tables.FUSED_MODELS["tiny"], n_layers=2, max_seq_len=256)
    main = dict(small, dim=128, ffn_dim=256, n_heads=4, n_kv_heads=2)
    pts = tables.measure_fused_decode(be, time_per_call, 0.01, (16, 100), {"tiny": small, "main": main})
    assert [(p["model"], p["ctx"]) for p in pts] == [("tiny", 16), ("main", 16), ("main", 100)]
    assert all(p["s"] > 0 for p in pts)
    assert tables.measure_fused_decode(get_backend("numpy"), time_per_call, 0.01) == []
    pre = tables.measure_prefill(be, tokens=32, config=main, trials=1)
    assert pre["tokens"] == 32 and pre["s"] > 0


def test_validate_grid_and_batch_summary():
    from edgeformer.perf.validate import BATCH, DIMS, QTYPES, REAL, Row, error_summary, grid, markdown
    full = grid(False)
    assert len(full) == len(set(full))
    b1 = [p for p in full if p[3] == 1]
    assert len(b1) == 2 + len(DIMS) * len(QTYPES) * 2
    b8 = [p for p in full if p[3] == BATCH]
    assert {p[0] for p in b8} == {REAL, *DIMS} and {p[2] for p in b8} == {128, 2048}
    rows = [Row("m", "Q8_0", 128, b, 1.0, 128.0, 10.0 * b, 100.0, t, None if t is None else 128.0 / t,
                d, 110.0, 5, "bandwidth")
            for b, t, d in ((1, 1.1, 11.0), (1, 0.9, 9.0), (8, None, 100.0))]
    s = error_summary(rows, by_batch=True)
    assert s["decode"][2] == 3 and s["decode b1"] == pytest.approx((1000 / 99, 100 / 9, 2))
    assert s["decode b8"] == pytest.approx((20.0, 20.0, 1)) and s["ttft"][2] == 2
    assert "decode b8" not in error_summary(rows)
    assert "| m | Q8_0 | 128 | 8 |" in markdown(rows)
