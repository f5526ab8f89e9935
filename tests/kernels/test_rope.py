"""rope reference against transformers' own code: llama `apply_rotary_pos_emb` with the
rotate_half layout (neox=True) and GPT-J's `apply_rotary_pos_emb` with interleaved pairs
(neox=False), with cos/sin built as `LlamaRotaryEmbedding.forward` builds them (float32)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeformer.kernels import OPS
from edgeformer.kernels.rope import rope_ref
from support.kernel_testutil import assert_f32_close, randn, rng_for

hf_llama = pytest.importorskip("transformers.models.llama.modeling_llama")
hf_gptj = pytest.importorskip("transformers.models.gptj.modeling_gptj")


def inv_freq_of(r: int, theta: float) -> np.ndarray:
    # as LlamaRotaryEmbedding.compute_default_rope_parameters
    return (1.0 / (theta ** (torch.arange(0, r, 2, dtype=torch.int64).float() / r))).numpy()


def hf_rope(x: np.ndarray, pos: np.ndarray, inv_freq: np.ndarray, neox: bool, mscale: float) -> np.ndarray:
    xt = torch.from_numpy(x)[None]                                         # (1, T, H, D)
    r = 2 * inv_freq.shape[0]
    freqs = torch.from_numpy(pos)[None, :, None].float() * torch.from_numpy(inv_freq)   # (1, T, R/2)
    rot, rest = xt[..., :r], xt[..., r:]
    if neox:
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos() * mscale, emb.sin() * mscale
        out, _ = hf_llama.apply_rotary_pos_emb(rot, rot, cos, sin, unsqueeze_dim=2)
    else:
        out = hf_gptj.apply_rotary_pos_emb(rot, freqs.sin() * mscale, freqs.cos() * mscale)
    return torch.cat((out, rest), dim=-1)[0].numpy()


# (T, H, D, R, theta, max position)
SHAPES = [(1, 1, 64, 64, 1e4, 1), (1, 5, 2, 2, 1e4, 3), (33, 3, 64, 64, 1e4, 5000), (7, 2, 128, 64, 5e5, 100),
          (33, 4, 80, 40, 1e4, 2048), (1, 8, 128, 128, 1e6, 100000)]


@pytest.mark.parametrize("neox", [True, False], ids=["neox", "gptj"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mscale", [1.0, 1.23])
def test_rope_matches_transformers(neox, shape, mscale):
    t, h, d, r, theta, pmax = shape
    g = rng_for("rope", neox, shape, mscale)
    x = randn(g, t, h, d)
    pos = np.sort(g.integers(0, pmax, t))
    inv = inv_freq_of(r, theta)
    got = rope_ref(x, pos, inv, neox=neox, mscale=mscale)
    # both sides form the angle in float32 exactly as HF does, so only cos/sin and the
    # final multiply-add round differently
    assert_f32_close(got, hf_rope(x, pos, inv, neox, mscale))
    np.testing.assert_array_equal(got[..., r:], x[..., r:])              # partial rotary passes through


def test_rope_position_zero_is_identity_and_norm_preserving():
    x = randn(rng_for("rope0"), 3, 2, 64)
    np.testing.assert_array_equal(rope_ref(x, np.zeros(3, np.int64), inv_freq_of(64, 1e4)), x)
    y = rope_ref(x, np.array([5, 500, 50000]), inv_freq_of(64, 1e4), neox=False)
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


@pytest.mark.parametrize("neox", [True, False])
def test_rope_nan_reaches_only_its_pair(neox):
    x = randn(rng_for("ropenan", neox), 4, 2, 64)
    x[2, 1, 3] = np.nan
    got = rope_ref(x, np.arange(7, 11), inv_freq_of(64, 1e4), neox=neox)
    partner = 3 + 32 if neox else 2
    bad = np.argwhere(~np.isfinite(got))
    assert sorted(map(tuple, bad)) == sorted([(2, 1, 3), (2, 1, partner)])


def test_rope_cost_by_hand():
    x = np.zeros((3, 2, 8), np.float32)
    pos = np.zeros(3, np.int64)
    inv = np.zeros(2, np.float32)                      # rotates 4 of 8 dims
    c = OPS["rope"].cost(x, pos, inv)
    assert c.flops == 3 * 3 * 2 * 4
    assert (c.bytes_read, c.bytes_written) == (192 + 24 + 8, 192)
