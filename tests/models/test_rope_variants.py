"""Rope frequencies of every variant vs transformers' `ROPE_INIT_FUNCTIONS`, the llama3
GGUF form (rope_freqs divisors) vs HF's llama3, and interleaved rope on permuted rows vs
rotate-half rope."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from edgeformer.config import DecoderConfig
from edgeformer.formats.tensor_map import extra_gguf_tensors, permute_rows
from edgeformer.kernels.rope import rope_ref
from edgeformer.models.rope import Rope, base_inv_freq, make_rope
from edgeformer.quant.qtypes import QTensor

MAX_POS = 64
CASES = {
    "linear": {"rope_type": "linear", "factor": 3.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.5},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16},
    "yarn-betas": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32,
                   "beta_fast": 16, "beta_slow": 2, "truncate": False},
    "yarn-mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                    "mscale": 0.9, "mscale_all_dim": 0.7},
    "yarn-attn-factor": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                         "attention_factor": 1.3},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16},
}


def _hf_config(params: dict, partial: float = 1.0) -> LlamaConfig:
    rp = {"rope_theta": 5000.0, **params}
    if partial != 1.0:
        rp["partial_rotary_factor"] = partial
    return LlamaConfig(vocab_size=32, hidden_size=96, num_attention_heads=4, num_key_value_heads=2,
                       num_hidden_layers=1, intermediate_size=16, max_position_embeddings=MAX_POS,
                       rope_parameters=rp)


@pytest.mark.parametrize("partial", [1.0, 0.5])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seq_len", [1, 40, 64, 65, 300])
def test_rope_matches_transformers(case, partial, seq_len):
    hf = _hf_config(CASES[case], partial)
    kind = CASES[case]["rope_type"]
    want, want_scale = ROPE_INIT_FUNCTIONS[kind](hf, "cpu", seq_len=torch.tensor(seq_len))
    c = DecoderConfig.from_hf(hf.to_dict())
    inv, mscale = make_rope(c, {}, sliding=False).frequencies(seq_len)
    assert inv.dtype == np.float32 and inv.shape == (int(24 * partial) // 2,)
    np.testing.assert_allclose(inv, want.numpy(), rtol=2e-6, atol=0)
    assert mscale == pytest.approx(float(want_scale), rel=1e-12)


@pytest.mark.parametrize("seq_len", [1, 32, 33, 100])
def test_longrope_matches_transformers(seq_len):
    rng = np.random.default_rng(0)
    hf = Phi3Config(vocab_size=32, hidden_size=96, num_attention_heads=4, num_key_value_heads=2,
                    num_hidden_layers=1, intermediate_size=16, max_position_embeddings=128,
                    original_max_position_embeddings=32,
                    rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                     "short_factor": rng.uniform(1, 2, 12).tolist(),
                                     "long_factor": rng.uniform(1, 8, 12).tolist()})
    want, want_scale = ROPE_INIT_FUNCTIONS["longrope"](hf, "cpu", seq_len=seq_len)
    inv, mscale = make_rope(DecoderConfig.from_hf(hf.to_dict()), {}, sliding=False).frequencies(seq_len)
    np.testing.assert_allclose(inv, want.numpy(), rtol=2e-6, atol=0)
    assert mscale == pytest.approx(float(want_scale), rel=1e-12) and mscale > 1


def test_default_rope_matches_transformers():
    hf = _hf_config({"rope_type": "default"})
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    want = LlamaRotaryEmbedding.compute_default_rope_parameters(hf)[0].numpy()
    np.testing.assert_allclose(base_inv_freq(5000.0, 24), want, rtol=1e-6, atol=0)


def test_llama3_as_gguf_rope_freqs_matches_hf_llama3():
    """GGUF path: the converter's rope_freqs divisors on the default frequencies give
    HF's llama3 frequencies."""
    c = DecoderConfig.from_hf(_hf_config(CASES["llama3"]).to_dict())
    ff = extra_gguf_tensors(c)["rope_freqs.weight"]
    plain = DecoderConfig.from_hf(_hf_config({"rope_type": "default"}).to_dict())
    got, _ = make_rope(plain, {"rope_freqs.weight": QTensor.from_array(ff)}, sliding=False).frequencies(1)
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](_hf_config(CASES["llama3"]), "cpu")
    np.testing.assert_allclose(got, want.numpy(), rtol=2e-6, atol=0)
    assert not np.allclose(got, base_inv_freq(5000.0, 24))


def test_interleaved_rope_on_permuted_rows_equals_rotate_half():
    """Why llama-arch q/k rows are permuted: ggml NORM rope on permuted rows is HF's
    rotate-half rope, permuted the same way."""
    rng = np.random.default_rng(1)
    n_head, d, t = 3, 24, 5
    w = rng.standard_normal((n_head * d, 7)).astype(np.float32)
    x = rng.standard_normal((t, 7)).astype(np.float32)
    pos, inv = np.arange(3, 3 + t), base_inv_freq(10000.0, d)
    hf = rope_ref((x @ w.T).reshape(t, n_head, d), pos, inv, neox=True)
    gg = rope_ref((x @ permute_rows(w, n_head).T).reshape(t, n_head, d), pos, inv, neox=False)
    perm = permute_rows(np.arange(n_head * d)[:, None], n_head)[:, 0]
    np.testing.assert_allclose(gg.reshape(t, -1), hf.reshape(t, -1)[:, perm], rtol=1e-5, atol=1e-5)


def test_longrope_factor_length_is_checked():
    from edgeformer.config import RopeScaling
    from edgeformer.errors import ConfigError
    s = RopeScaling(kind="longrope", factor=4.0, original_max_position_embeddings=16,
                    short_factor=(1.0,) * 3, long_factor=(1.0,) * 3)
    with pytest.raises(ConfigError, match="short_factor must have 12"):
        Rope(10000.0, 24, 64, s)
