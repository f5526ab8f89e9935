"""The lane layout of Q8_0 / Q4_0 / Q4_1 (`simd_rows._lanes`): whole groups of 16 blocks
stored one block per int32 lane, weights permuted at bind, activations quantized into it.

Checked against the layout as documented (a direct loop over [p, h, j, e], not the
vectorised permutation), gguf-py's dequantizer, and row invariance on every row count;
row lengths cover no whole group (K < 512), whole groups only, and groups followed by a
tail of pairs and a lone block."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.backends.cpu import CpuBackend
from edgeformer.backends.cpu.act_quant import lane_pos, positions, quant_row, quantize_lanes, quantize_x, to_lanes
from edgeformer.backends.cpu.repack import LANE_KINDS, dequantize_rows, lanes_of, repack, set_lanes
from edgeformer.kernels.linear import LINEAR, linear_ref
from edgeformer.quant.qtypes import QType

from tests.backends.cpu.test_cpu_linear import gguf_dequant, make_weight, nmse

KS = (32, 96, 512, 544, 608, 1056, 1536)      # blocks: 1, 3, 16, 17, 19, 33, 48


def _documented(q: QType, nb: int) -> np.ndarray:
    """Where each byte of a row's natural quants goes, from the layout's docstring."""
    per = 32 if q == QType.Q8_0 else 16
    at = np.arange(nb * per)
    for b in range(nb // 16 * 16):
        g, j = divmod(b, 16)
        for c in range(per):
            if q == QType.Q8_0:     # element 16 h + 2 p + e -> [p, h, j, e]
                h, p, e = c // 16, c % 16 // 2, c % 2
                at[b * per + c] = g * 512 + p * 64 + h * 32 + j * 2 + e
            else:                   # byte 2 p + e -> [p, j, e]
                at[b * per + c] = g * 256 + (c // 2) * 32 + j * 2 + c % 2
    return at


@pytest.mark.parametrize("q", LANE_KINDS, ids=lambda q: q.name)
@pytest.mark.parametrize("nb", (1, 16, 19, 33))
def test_weight_permutation_is_the_documented_layout(q: QType, nb: int) -> None:
    at = _documented(q, nb)
    rows = np.random.default_rng(nb).integers(0, 256, (3, at.size), dtype=np.uint8)
    lane = np.empty_like(rows)
    lane[:, at] = rows
    np.testing.assert_array_equal(lanes_of(q, rows, nb * 32, True), lane)
    np.testing.assert_array_equal(lanes_of(q, lane, nb * 32, False), rows)


@pytest.mark.parametrize("k", KS)
def test_activation_positions_are_the_documented_layout(k: int) -> None:
    nb = k // 32
    got = positions(k, True, True)
    assert sorted(got) == list(range(k))                    # a permutation
    for b in range(nb // 16 * 16):                          # whole groups: [p, h, j, e]
        g, j = divmod(b, 16)
        for i in range(32):
            h, p, e = i // 16, i % 16 // 2, i % 2
            assert got[b * 32 + i] == g * 512 + p * 64 + h * 32 + j * 2 + e
    # past the last group: what the pair layout stores there
    tail = slice(nb // 16 * 512, k)
    np.testing.assert_array_equal(got[tail], positions(k, False, True)[tail])
    assert lane_pos(nb - 1, 31, nb, True, True) == got[-1]


@pytest.mark.parametrize("proto", (np.int16, np.int8), ids=("int16", "int8"))
@pytest.mark.parametrize("k", KS)
def test_quantize_lanes_is_quant_row_rearranged(proto, k: int) -> None:
    """The same integers and scales as `quant_row` at the setting's levels, as int16 in
    the lane layout (so the fused step's `to_lanes` and the linears agree)."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((3, k)).astype(np.float32) * np.float32(3.0)
    x[1, 5] = np.nan
    xl, xd, xs = quantize_lanes(x, np.zeros(0, proto))
    xq, xd0, xs0 = quantize_x(x, np.zeros(0, proto))
    assert xl.dtype == np.int16
    np.testing.assert_array_equal(xd, xd0)
    np.testing.assert_array_equal(xs, xs0)
    for t in range(3):
        np.testing.assert_array_equal(xl[t], to_lanes(xq[t]))
        q = np.empty(k, proto)
        d, s = np.empty(k // 32, np.float32), np.empty(k // 32, np.float32)
        quant_row(x[t], q, d, s)
        np.testing.assert_array_equal(to_lanes(q), xl[t])
    assert xl.ctypes.data % 64 == 0 or (k * 2) % 64


@pytest.mark.parametrize("q", LANE_KINDS, ids=lambda q: q.name)
def test_set_lanes_round_trips(q: QType) -> None:
    w = repack(make_weight(q, 5, 1056, np.random.default_rng(3)))
    before = w.arrays[0].copy()
    set_lanes(w, True)
    assert w.lanes
    np.testing.assert_array_equal(w.arrays[0], lanes_of(q, before, 1056, True))
    set_lanes(w, True)                                       # a no-op when already there
    set_lanes(w, False)
    np.testing.assert_array_equal(w.arrays[0], before)


@pytest.mark.parametrize("q", LANE_KINDS, ids=lambda q: q.name)
@pytest.mark.parametrize("k", KS)
def test_lane_linear_vs_reference_and_rows(q: QType, k: int) -> None:
    """Bound with integer activations the weight is in the lane layout; embedding rows
    still dequantize bit-exactly; the linear is within the op's bound of a float64 matmul
    over gguf's dequantized weights, and every output row has the bits it has alone
    (T = 1: `lanes1_*`; T = 4, 9: `lanes4_*` plus the remainder)."""
    rng = np.random.default_rng(k + int(q))
    n = 21
    qt = make_weight(q, n, k, rng)
    backend = CpuBackend()
    w = backend.prepare_weight(qt, "w").handle
    assert w.lanes
    np.testing.assert_array_equal(dequantize_rows(w, np.array([20, 0, 7, 7])), gguf_dequant(qt)[[20, 0, 7, 7]])
    bias = rng.standard_normal(n).astype(np.float32)
    x = rng.standard_normal((9, k)).astype(np.float32)
    lin = backend.kernels["linear"]
    alone = np.stack([lin(x[t:t + 1], w, bias)[0] for t in range(9)])
    ref = linear_ref(x, gguf_dequant(qt), bias)
    assert nmse(alone, ref) <= LINEAR.max_nmse["default"]
    for t in (4, 9):
        np.testing.assert_array_equal(lin(x[:t], w, bias), alone[:t])


def test_joined_lane_weights_equal_their_parts() -> None:
    """q|k|v joined after binding (already in the lane layout) give each part's bits."""
    rng = np.random.default_rng(11)
    backend = CpuBackend()
    parts = [backend.prepare_weight(make_weight(QType.Q4_1, n, 608, rng), "w") for n in (9, 4, 4)]
    x = rng.standard_normal((5, 608)).astype(np.float32)
    lin = backend.kernels["linear"]
    want = np.concatenate([lin(x, p.handle) for p in parts], axis=1)
    joined = backend.concat_weights(parts)
    assert joined is not None and joined.handle.lanes
    np.testing.assert_array_equal(lin(x, joined.handle), want)


def test_f32_activations_keep_the_file_layout() -> None:
    backend = CpuBackend(activations="f32")
    w = backend.prepare_weight(make_weight(QType.Q8_0, 3, 544, np.random.default_rng(5)), "w").handle
    assert not w.lanes
