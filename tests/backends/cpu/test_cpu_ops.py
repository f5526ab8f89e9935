"""CPU backend non-matmul ops vs their `kernels/` references (each checked against torch
or plain math in tests/kernels/), NMSE within the OpSpec bounds, on awkward shapes."""
from __future__ import annotations

import numpy as np
import pytest

from edgeformer.backends.cpu import CpuBackend
from edgeformer.kernels import OPS


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.sum((a.astype(np.float64) - ref) ** 2) / max(np.sum(ref.astype(np.float64) ** 2), 1e-30))


@pytest.fixture(scope="module")
def be() -> CpuBackend:
    return CpuBackend()


def check(be: CpuBackend, op: str, *args, **kw) -> np.ndarray:
    got = be.kernels[op](*args, **kw)
    ref = OPS[op].reference(*args, **kw)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert nmse(got, ref) <= OPS[op].max_nmse["default"], (op, nmse(got, ref))
    return got


rng = np.random.default_rng(11)
ROWS = [(1, 33), (7, 99), (33, 1025), (2, 3, 64), (300, 256)]   # the last one runs the parallel path


@pytest.mark.parametrize("shape", ROWS, ids=str)
def test_norms(be: CpuBackend, shape: tuple) -> None:
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    w = rng.standard_normal(shape[-1]).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    check(be, "rms_norm", x, w, 1e-6)
    check(be, "rms_norm", x, None, 1e-5)
    check(be, "layer_norm", x, w, b, 1e-5)
    check(be, "layer_norm", x, None, None, 1e-6)


@pytest.mark.parametrize("neox", [True, False])
@pytest.mark.parametrize("t,h,d,r", [(1, 4, 64, 64), (7, 3, 40, 20), (33, 2, 128, 96), (300, 8, 64, 64)])
def test_rope(be: CpuBackend, neox: bool, t: int, h: int, d: int, r: int) -> None:
    x = rng.standard_normal((t, h, d)).astype(np.float32)
    pos = rng.integers(0, 40000, t)
    inv_freq = (10000.0 ** (-np.arange(0, r, 2) / r)).astype(np.float32)
    check(be, "rope", x, pos, inv_freq, neox=neox, mscale=1.0 if neox else 1.3)


ATTN = [  # t, s, hq, hkv, d, dv, causal, window, softcap
    (1, 33, 6, 2, 40, 40, True, None, None),      # decode, GQA
    (1, 1, 4, 4, 64, 64, True, None, None),       # first token
    (7, 7, 4, 1, 64, 32, True, None, None),       # prefill, MQA, Dv != D
    (33, 45, 8, 2, 32, 32, True, 5, 30.0),        # chunked prefill, sliding window, softcap
    (5, 9, 2, 2, 16, 16, False, None, None),      # bidirectional (encoders)
]


@pytest.mark.parametrize("case", ATTN, ids=str)
def test_attention(be: CpuBackend, case: tuple) -> None:
    t, s, hq, hkv, d, dv, causal, window, softcap = case
    q = rng.standard_normal((t, hq, d)).astype(np.float32)
    k = rng.standard_normal((s, hkv, d)).astype(np.float32)
    v = rng.standard_normal((s, hkv, dv)).astype(np.float32)
    check(be, "attention", q, k, v, scale=d ** -0.5, causal=causal, window=window, softcap=softcap)


def test_attention_explicit_positions_and_empty_rows(be: CpuBackend) -> None:
    # query 0 sees no key (positions before every key): zeros; masked keys holding NaN
    # must not leak into visible outputs
    q = rng.standard_normal((3, 4, 16)).astype(np.float32)
    k = rng.standard_normal((6, 2, 16)).astype(np.float32)
    v = rng.standard_normal((6, 2, 16)).astype(np.float32)
    q_pos = np.array([2, 10, 11])
    k_pos = np.array([5, 6, 7, 8, 9, 12])
    v[5] = np.nan
    got = check(be, "attention", q, k, v, q_pos, k_pos, scale=0.25, causal=True, window=4)
    assert np.all(got[0] == 0)


@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh", "relu"])
@pytest.mark.parametrize("shape", [(1, 37), (7, 99), (33, 4096)], ids=str)
def test_activations(be: CpuBackend, kind: str, shape: tuple) -> None:
    gate = (rng.standard_normal(shape) * 4).astype(np.float32)
    up = rng.standard_normal(shape).astype(np.float32)
    check(be, "glu", gate, up, kind)
    check(be, "activation", gate, kind)


def test_relu_keeps_nan(be: CpuBackend) -> None:
    x = np.array([-1.0, np.nan, 2.0], np.float32)
    assert np.isnan(be.kernels["activation"](x, "relu")[1])


@pytest.mark.parametrize("shape", [(1, 33), (7, 99), (3, 70000)], ids=str)
def test_softcap_softmax(be: CpuBackend, shape: tuple) -> None:
    x = (rng.standard_normal(shape) * 40).astype(np.float32)
    check(be, "softcap", x, 30.0)
    check(be, "softmax", x)
    x[0, 3] = -np.inf
    check(be, "softmax", x)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")   # the reference's own inf - inf
def test_softmax_special_rows(be: CpuBackend) -> None:
    x = np.array([[0.0, np.nan, 1.0], [-np.inf] * 3, [1.0, np.inf, 0.0]], np.float32)
    np.testing.assert_array_equal(be.kernels["softmax"](x), OPS["softmax"].reference(x))


def test_add_mul(be: CpuBackend) -> None:
    a = rng.standard_normal((7, 99)).astype(np.float32)
    b = rng.standard_normal(99).astype(np.float32)
    check(be, "add", a, b)
    check(be, "mul", a, 0.5)


def test_first_increment_ops_have_kernels(be: CpuBackend) -> None:
    ops = ("linear", "embed", "rms_norm", "layer_norm", "rope", "attention", "activation", "glu",
           "softmax", "softcap", "add", "mul")
    assert [op for op in ops if be.unsupported(op)] == []


def test_shape_mismatches_raise_instead_of_reading_out_of_bounds(be: CpuBackend) -> None:
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError):
        be.kernels["rms_norm"](x, np.ones(9, np.float32), 1e-6)
    with pytest.raises(ValueError):
        be.kernels["glu"](x, np.ones((2, 9), np.float32), "silu")
    with pytest.raises(ValueError):
        be.kernels["rope"](np.ones((2, 1, 8), np.float32), np.arange(2), np.ones(5, np.float32))
    with pytest.raises(ValueError):
        be.kernels["attention"](np.ones((1, 3, 8), np.float32), np.ones((4, 2, 8), np.float32),
                                np.ones((4, 2, 8), np.float32), scale=1.0)


@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh", "relu"])
def test_glu_reads_column_views_of_one_array(kind):
    """gate and up as column ranges of one joined (T, 2F) output, either order, 3-D, and a
    strided view that must be copied: same values as the reference on contiguous copies."""
    from edgeformer.backends.cpu import CpuBackend
    from edgeformer.kernels.activation import glu_ref
    glu = CpuBackend().kernels["glu"]
    rng = np.random.default_rng(4)
    gu = rng.standard_normal((7, 2 * 37 + 3)).astype(np.float32)
    cases = [(gu[:, :37], gu[:, 37:74]), (gu[:, 40:77], gu[:, 1:38]),
             (gu.reshape(1, 7, -1)[..., 2:39], gu.reshape(1, 7, -1)[..., 39:76]),
             (gu[::2, :37], gu[::2, 37:74])]
    for g, u in cases:
        want = glu_ref(np.ascontiguousarray(g), np.ascontiguousarray(u), kind)
        np.testing.assert_allclose(glu(g, u, kind), want, rtol=2e-6, atol=1e-7)
