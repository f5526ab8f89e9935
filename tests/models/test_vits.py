"""VITS parity with transformers' VitsModel: tiny random-weight configs, the same noise
fed to both (torch.randn / randn_like patched to record draws), fp32 waveforms."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeformer.backends import get_backend
from edgeformer.errors import FormatError, InputError, UnsupportedError
from edgeformer.models.vits import VitsConfig, VitsModel, vits_tensors_from_hf

transformers = pytest.importorskip("transformers")


TINY = dict(vocab_size=23, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, window_size=2,
            ffn_dim=24, ffn_kernel_size=3, flow_size=8, upsample_initial_channel=16, upsample_rates=[4, 2],
            upsample_kernel_sizes=[8, 4], resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3], [1, 2]],
            duration_predictor_num_flows=3, prior_encoder_num_flows=2, prior_encoder_num_wavenet_layers=2,
            wavenet_kernel_size=3, depth_separable_num_layers=2, layerdrop=0.0, hidden_dropout=0.0,
            attention_dropout=0.0, activation_dropout=0.0, duration_predictor_dropout=0.0)


def _hf_model(seed: int, **over):
    torch.manual_seed(seed)
    cfg = transformers.VitsConfig(**{**TINY, **over})
    m = transformers.VitsModel(cfg).eval()
    # random init leaves some parameters at 0/1 (affine flow, biases): perturb every one so
    # a swapped or dropped tensor cannot hide
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        # keep the final tanh out of saturation, where it would hide errors upstream
        m.decoder.conv_post.weight.mul_(0.02)
    return m


class _RecordedNoise:
    """Patch torch.randn / randn_like with float32 numpy normals; replay them in order."""

    def __init__(self, monkeypatch, seed: int):
        self.rng = np.random.default_rng(seed)
        self.draws: list[np.ndarray] = []
        self.used = 0

        def randn(*size, **kw):
            size = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
            a = self.rng.standard_normal(size, dtype=np.float32)
            self.draws.append(a)
            return torch.from_numpy(a.copy())

        monkeypatch.setattr(torch, "randn", randn)
        monkeypatch.setattr(torch, "randn_like", lambda t, **kw: randn(*t.shape))

    def __call__(self, shape):
        a = self.draws[self.used]
        self.used += 1
        assert a.shape[-len(shape):] == tuple(shape), (a.shape, shape)
        return a.reshape(shape)


def _ours(hf_model) -> VitsModel:
    cfg = VitsConfig.from_hf(hf_model.config)
    return VitsModel(cfg, vits_tensors_from_hf(hf_model.state_dict()), get_backend("numpy"))


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("seed,n_ids,noise_scale,noise_w,rate", [
    (0, 11, 0.0, 0.0, 1.0),
    (1, 17, 0.667, 0.8, 1.0),
    (2, 5, 0.5, 1.0, 0.6),
    (3, 1, 0.667, 0.8, 1.3),
])
def test_waveform_matches_transformers(monkeypatch, seed, n_ids, noise_scale, noise_w, rate):
    hf = _hf_model(seed)
    hf.noise_scale, hf.noise_scale_duration = noise_scale, noise_w
    ids = np.random.default_rng(seed).integers(0, TINY["vocab_size"], n_ids)
    noise = _RecordedNoise(monkeypatch, seed)
    with torch.no_grad():
        out = hf(torch.from_numpy(ids)[None], speaking_rate=rate)
    want = out.waveform[0].numpy()
    got = _ours(hf).synthesize_ids(ids, noise_scale=noise_scale, noise_w=noise_w, length_scale=1.0 / rate,
                                   noise=noise)
    assert noise.used == len(noise.draws) == 2
    assert np.abs(want).max() < 0.99, "tanh saturated: the comparison would be weak"
    assert got.dtype == np.float32 and got.shape == want.shape, (got.shape, want.shape)
    assert _rel_err(got, want) <= 1e-4


def test_other_shapes_match_transformers(monkeypatch):
    # gelu FFN, an even FFN kernel (asymmetric padding), window 1, 4 heads, 3 upsamplers
    hf = _hf_model(7, hidden_act="gelu", ffn_kernel_size=4, window_size=1, upsample_rates=[2, 2, 3],
                   upsample_kernel_sizes=[4, 4, 7], num_attention_heads=4, wavenet_dilation_rate=2)
    ids = np.random.default_rng(7).integers(0, TINY["vocab_size"], 9)
    noise = _RecordedNoise(monkeypatch, 7)
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)[None]).waveform[0].numpy()
    got = _ours(hf).synthesize_ids(ids, noise_scale=hf.noise_scale, noise_w=hf.noise_scale_duration, noise=noise)
    assert got.shape == want.shape and _rel_err(got, want) <= 1e-4


@pytest.mark.parametrize("backend,window", [("cpu", 2), ("numpy", 3)])
def test_long_input_matches_transformers(monkeypatch, backend, window):
    """150 ids: relative-position attention runs in several query blocks (REL_BLOCK=64,
    the last one partial), each block's one-hot window slots at its own offset."""
    from edgeformer.models import vits
    assert 150 > 2 * vits.REL_BLOCK
    hf = _hf_model(11, window_size=window)
    ids = np.random.default_rng(11).integers(0, TINY["vocab_size"], 150)
    noise = _RecordedNoise(monkeypatch, 11)
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)[None]).waveform[0].numpy()
    model = VitsModel(VitsConfig.from_hf(hf.config), vits_tensors_from_hf(hf.state_dict()), get_backend(backend))
    got = model.synthesize_ids(ids, noise_scale=hf.noise_scale, noise_w=hf.noise_scale_duration, noise=noise)
    assert got.shape == want.shape and _rel_err(got, want) <= 1e-4


def test_bad_inputs_raise():
    model = _ours(_hf_model(0))
    with pytest.raises(InputError):
        model.synthesize_ids([])
    with pytest.raises(InputError):
        model.synthesize_ids([0, TINY["vocab_size"]])
    with pytest.raises(InputError):
        model.synthesize_ids([1, 2], length_scale=0.0)
    with pytest.raises(InputError):
        model.synthesize_ids([1, 2], noise_scale=float("nan"))


def test_missing_or_misshapen_tensor_is_format_error():
    hf = _hf_model(0)
    cfg = VitsConfig.from_hf(hf.config)
    t = vits_tensors_from_hf(hf.state_dict())
    del t["dec.ups.1.weight"]
    with pytest.raises(FormatError, match="dec.ups.1.weight"):
        VitsModel(cfg, t, get_backend("numpy"))
    t = vits_tensors_from_hf(hf.state_dict())
    t["enc_p.proj.weight"] = t["enc_p.proj.weight"][:-1]
    with pytest.raises(FormatError, match="enc_p.proj.weight"):
        VitsModel(cfg, t, get_backend("numpy"))


def test_unsupported_configs():
    with pytest.raises(UnsupportedError):
        VitsConfig.from_hf(transformers.VitsConfig(**TINY, use_stochastic_duration_prediction=False))
    with pytest.raises(UnsupportedError):
        VitsConfig.from_hf(transformers.VitsConfig(**TINY, num_speakers=4, speaker_embedding_size=8))


def test_trace_prices_the_conv_ops():
    from edgeformer.backends.trace import trace_forward
    model = _ours(_hf_model(0))
    rec = trace_forward(lambda: model.synthesize_ids([1, 2, 3], seed=0), model.ops)
    assert {"conv1d", "conv_transpose1d", "linear", "layer_norm", "attention"} <= {r.op for r in rec}
    ups = [r for r in rec if r.op == "conv_transpose1d"]
    assert len(ups) == len(TINY["upsample_rates"]) and all(r.cost.flops > 0 for r in ups)
