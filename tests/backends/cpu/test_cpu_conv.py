"""The CPU backend's Numba conv1d / conv_transpose1d (backends/cpu/conv.py) against torch
(float64) and against the numpy references, on awkward shapes: pointwise, dilated, depthwise,
grouped, strided, asymmetric padding, even kernels, T = 1, shapes that hit both the 4-channel
blocks and the remainder rows, the serial and the parallel path, and HiFi-GAN upsamplers."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from edgeformer.backends.cpu import CpuBackend  # noqa: E402
from edgeformer.backends.cpu.conv import conv1d, conv_transpose1d  # noqa: E402
from edgeformer.kernels import OPS  # noqa: E402
from edgeformer.kernels.conv import conv1d_ref, conv_transpose1d_ref  # noqa: E402

MAX_NMSE = OPS["conv1d"].max_nmse["default"]


def nmse(a: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.sum((a.astype(np.float64) - ref) ** 2) / max(np.sum(ref ** 2), 1e-30))


def _randn(r: np.random.Generator, *shape: int) -> np.ndarray:
    return r.standard_normal(shape).astype(np.float32)


def _t(a):
    return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.float64))


# (C_in, C_out, T, K, stride, padding, dilation, groups)
CONV = [
    (33, 7, 45, 1, 1, 0, 1, 1),          # pointwise, 7 = one 4-block + 3 remainder rows
    (16, 16, 99, 7, 1, 9, 3, 1),         # HiFi-GAN resblock tap
    (12, 12, 37, 3, 1, 9, 9, 12),        # depthwise dilated (VITS DDSConv)
    (6, 9, 50, 5, 2, 2, 1, 3),           # grouped, strided, 3 channels per group
    (4, 6, 33, 4, 3, 0, 2, 2),           # even kernel, stride 3 with dilation 2
    (8, 12, 31, 3, 2, 1, 1, 1),          # Whisper conv2 shape: k3 s2 p1
    (3, 4, 1, 3, 1, 1, 1, 1),            # a single frame
    (5, 5, 7, 7, 1, 0, 1, 1),            # output of length 1
    (32, 20, 1300, 7, 1, 36, 12, 1),     # > 2 MFLOP: parallel path, many tiles, 20 = 2 blocks of 8 + 4 padded rows
    (16, 32, 70, 3, 2, 1, 1, 2),         # 2 groups of 16 channels: register tiles inside each group
    (24, 24, 45, 5, 1, 4, 2, 3),         # 3 groups of 8
    (64, 64, 33, 1, 1, 0, 1, 1),         # exactly 8 blocks, 33 = one 32-frame tile + 1
]


@pytest.mark.parametrize("case", CONV, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_matches_torch_and_reference(case, bias):
    ci, co, t, k, s, p, d, g = case
    r = np.random.default_rng(abs(hash((case, bias))) % 2**32)
    x, w = _randn(r, ci, t), _randn(r, co, ci // g, k)
    b = _randn(r, co) if bias else None
    got = conv1d(x, w, b, stride=s, padding=p, dilation=d, groups=g)
    want = F.conv1d(_t(x)[None], _t(w), _t(b), stride=s, padding=p, dilation=d, groups=g)[0].numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    assert nmse(got, want) <= MAX_NMSE, nmse(got, want)
    assert nmse(got, conv1d_ref(x, w, b, stride=s, padding=p, dilation=d, groups=g)) <= MAX_NMSE


@pytest.mark.parametrize("pads", [(1, 2), (0, 3), (2, 0)], ids=str)
def test_conv1d_asymmetric_padding(pads):
    r = np.random.default_rng(sum(pads))
    x, w, b = _randn(r, 6, 30), _randn(r, 5, 6, 4), _randn(r, 5)
    got = conv1d(x, w, b, padding=pads)
    want = F.conv1d(F.pad(_t(x)[None], pads), _t(w), _t(b))[0].numpy()
    assert got.shape == want.shape
    assert nmse(got, want) <= MAX_NMSE


def test_conv1d_keeps_nan_where_torch_does():
    r = np.random.default_rng(3)
    x, w = _randn(r, 4, 40), _randn(r, 6, 4, 3)
    x[1, 5] = np.nan
    got = conv1d(x, w, None, padding=1)
    want = F.conv1d(_t(x)[None], _t(w), padding=1)[0].numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[:, 4:7]).all() and np.isfinite(got[:, 8:]).all()


def test_conv1d_leaves_inputs_alone_and_takes_strided_views():
    r = np.random.default_rng(4)
    big = _randn(r, 10, 64)
    x = big[::2, 1::2]                        # non-contiguous view, (5, 32)
    w, b = _randn(r, 3, 5, 3), _randn(r, 3)
    x0 = x.copy()
    got = conv1d(x, w, b, padding=1)
    assert np.array_equal(x, x0)
    assert nmse(got, F.conv1d(_t(x0)[None], _t(w), _t(b), padding=1)[0].numpy()) <= MAX_NMSE


@pytest.mark.parametrize("bad", [dict(groups=4), dict(stride=0), dict(dilation=0), dict(padding=-1)], ids=str)
def test_conv1d_bad_attributes_raise_like_the_reference(bad):
    x, w = np.ones((6, 10), np.float32), np.ones((6, 6, 3), np.float32)
    with pytest.raises(ValueError):
        conv1d(x, w, None, **bad)
    with pytest.raises(ValueError):
        conv1d(np.ones((6, 2), np.float32), w, None, dilation=2)      # too short for the kernel


# (C_in, C_out, T, K, stride, padding, output_padding, dilation, groups)
CONVT = [
    (16, 8, 13, 16, 8, 4, 0, 1, 1),      # HiFi-GAN x8 upsampler
    (8, 4, 33, 8, 4, 2, 0, 1, 1),        # x4
    (7, 5, 10, 5, 3, 1, 0, 1, 1),        # odd sizes
    (3, 5, 1, 7, 5, 1, 0, 1, 1),         # a single frame
    (6, 4, 11, 5, 3, 2, 2, 1, 2),        # grouped, output_padding
    (4, 6, 9, 3, 2, 1, 1, 2, 2),         # dilation 2 with stride 2
    (4, 4, 9, 4, 1, 0, 0, 3, 1),         # stride 1, dilation 3
    (64, 32, 300, 16, 8, 4, 0, 1, 1),    # parallel path
    (8, 16, 21, 4, 2, 1, 1, 1, 2),       # 2 groups of 8 output channels (register tiles per group)
    (6, 5, 12, 3, 5, 0, 0, 1, 1),        # stride > kernel: phases with no tap get only the bias
    (5, 3, 17, 7, 3, 4, 2, 2, 1),        # padding past a stride, output_padding, dilation
]


@pytest.mark.parametrize("case", CONVT, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose1d_matches_torch_and_reference(case, bias):
    ci, co, t, k, s, p, op, d, g = case
    r = np.random.default_rng(abs(hash((case, bias))) % 2**32)
    x, w = _randn(r, ci, t), _randn(r, ci, co // g, k)
    b = _randn(r, co) if bias else None
    kw = dict(stride=s, padding=p, output_padding=op, dilation=d, groups=g)
    got = conv_transpose1d(x, w, b, **kw)
    want = F.conv_transpose1d(_t(x)[None], _t(w), _t(b), **kw)[0].numpy()
    assert got.shape == want.shape and got.dtype == np.float32
    assert nmse(got, want) <= MAX_NMSE, nmse(got, want)
    assert nmse(got, conv_transpose1d_ref(x, w, b, **kw)) <= MAX_NMSE


@pytest.mark.parametrize("groups", [1, 2], ids=["tiles", "generic"])
def test_conv_transpose1d_keeps_nan_where_torch_does(groups):
    r = np.random.default_rng(5)
    x, w = _randn(r, 8, 12), _randn(r, 8, 16 // groups if groups == 1 else 3, 6)
    x[2, 4] = np.nan
    got = conv_transpose1d(x, w, None, stride=3, padding=1, groups=groups)
    want = F.conv_transpose1d(_t(x)[None], _t(w), stride=3, padding=1, groups=groups)[0].numpy()
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(got).any() and not np.isnan(got).all()


def test_conv_transpose1d_bad_attributes_raise():
    x, w = np.ones((4, 5), np.float32), np.ones((4, 2, 3), np.float32)
    for bad in (dict(stride=2, output_padding=2), dict(padding=-1), dict(groups=3), dict(padding=10)):
        with pytest.raises(ValueError):
            conv_transpose1d(x, w, None, **bad)


def test_backend_registers_the_numba_kernels():
    be = CpuBackend()
    assert be.kernels["conv1d"] is conv1d and be.kernels["conv_transpose1d"] is conv_transpose1d
    assert be.unsupported("conv1d") == [] and be.unsupported("conv_transpose1d") == []


def test_piper_voice_on_the_cpu_backend_matches_onnxruntime():
    """End to end: the shipped Piper voice (HiFi-GAN decoder = these kernels) on the cpu
    backend, noise off, against onnxruntime on the voice's own graph, at the tolerance
    tests/tts/test_piper.py holds the numpy backend to."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from edgeformer.errors import InputError
    from edgeformer.tts.phonemize import phoneme_ids
    from edgeformer.tts.piper import load_piper_voice
    try:
        voice = load_piper_voice(backend=CpuBackend())
    except InputError as e:
        pytest.skip(str(e))
    ids = phoneme_ids(list("hɐlˈoʊ wˈɜːld."), voice.phoneme_id_map)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(voice.path), opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": np.array([ids], np.int64), "input_lengths": np.array([len(ids)], np.int64),
                           "scales": np.array([0.0, 1.0, 0.0], np.float32)})[0].reshape(-1)
    got = voice.model.synthesize_ids(ids, noise_scale=0.0, length_scale=1.0, noise_w=0.0)
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) / np.linalg.norm(want) <= 1e-4
