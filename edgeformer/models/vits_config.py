"""The shapes of a VITS voice (`VitsConfig`, from a transformers config or a Piper voice's
JSON) and the shape-checked conv weight reader that the text encoder (`vits.py`), the
duration predictor and flows (`vits_flows.py`) and the decoder (`vits_decoder.py`) share.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeformer.errors import ConfigError, FormatError, UnsupportedError
from edgeformer.models.encoder import TensorSource

FFN_ACTIVATIONS = ("relu", "gelu")


@dataclass(frozen=True)
class VitsConfig:
    """Shapes of one VITS voice (defaults: the VITS/Piper "medium" text side)."""

    n_vocab: int
    dim: int = 192                 # hidden_channels
    ffn_dim: int = 768             # filter_channels
    n_heads: int = 2
    n_layers: int = 6
    ffn_kernel: int = 3
    ffn_act: str = "relu"
    window_size: int = 4           # relative attention reaches +-window_size positions
    flow_dim: int = 192            # inter_channels (latent z)
    norm_eps: float = 1e-5
    dp_dim: int = 192              # stochastic duration predictor filter channels
    dp_kernel: int = 3
    dp_layers: int = 3             # DDSConv layers (dilation kernel**i)
    dp_flows: int = 4
    dp_bins: int = 10
    dp_tail_bound: float = 5.0
    n_flows: int = 4
    wn_layers: int = 4
    wn_kernel: int = 5
    wn_dilation_rate: int = 1
    up_initial: int = 512
    up_rates: tuple[int, ...] = (8, 8, 2, 2)
    up_kernels: tuple[int, ...] = (16, 16, 4, 4)
    resblock: str = "1"            # "1": convs1/convs2 pairs (HiFi-GAN v1), "2": one conv per dilation
    resblock_kernels: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    leaky_slope: float = 0.1
    sample_rate: int = 22050

    def __post_init__(self) -> None:
        for k in ("n_vocab", "dim", "ffn_dim", "n_heads", "n_layers", "ffn_kernel", "flow_dim", "dp_dim",
                  "dp_kernel", "dp_layers", "dp_flows", "dp_bins", "n_flows", "wn_layers", "wn_kernel",
                  "wn_dilation_rate", "up_initial", "sample_rate"):
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"vits {k} must be a positive int, got {v!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"vits dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.flow_dim % 2:
            raise ConfigError(f"vits flow_dim {self.flow_dim} must be even (coupling halves)")
        if self.ffn_act not in FFN_ACTIVATIONS:
            raise ConfigError(f"unsupported vits ffn activation {self.ffn_act!r}; supported: {FFN_ACTIVATIONS}")
        if self.resblock not in ("1", "2"):
            raise ConfigError(f"unknown HiFi-GAN resblock type {self.resblock!r}; supported: '1', '2'")
        if len(self.up_rates) != len(self.up_kernels) or not self.up_rates:
            raise ConfigError(f"up_rates {self.up_rates} and up_kernels {self.up_kernels} must pair up")
        if any(not isinstance(r, int) or r <= 0 for r in (*self.up_rates, *self.up_kernels)):
            raise ConfigError(f"up_rates {self.up_rates} and up_kernels {self.up_kernels} must be positive ints")
        if len(self.resblock_kernels) != len(self.resblock_dilations) or not self.resblock_kernels:
            raise ConfigError("resblock_kernels and resblock_dilations must pair up")
        if self.up_initial % (2 ** len(self.up_rates)):
            raise ConfigError(f"up_initial {self.up_initial} must halve {len(self.up_rates)} times")
        if self.window_size < 0:
            raise ConfigError(f"window_size must be >= 0, got {self.window_size}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hop(self) -> int:
        """Waveform samples per latent frame."""
        return int(np.prod(self.up_rates))

    @classmethod
    def from_hf(cls, hf: Any, sample_rate: int | None = None) -> "VitsConfig":
        """From a transformers `VitsConfig` (object or dict). UnsupportedError for
        multi-speaker models or the deterministic duration predictor."""
        g: Callable[..., Any] = hf.get if isinstance(hf, dict) else (lambda k, d=None: getattr(hf, k, d))
        if not g("use_stochastic_duration_prediction", True):
            raise UnsupportedError("VITS with the deterministic duration predictor is not supported")
        if (g("num_speakers", 1) or 1) > 1 or (g("speaker_embedding_size", 0) or 0) > 0:
            raise UnsupportedError("multi-speaker VITS is not supported")
        if g("depth_separable_channels", 2) != 2:
            raise UnsupportedError("VITS duration flows need depth_separable_channels == 2")
        return cls(
            n_vocab=g("vocab_size"), dim=g("hidden_size"), ffn_dim=g("ffn_dim"), n_heads=g("num_attention_heads"),
            n_layers=g("num_hidden_layers"), ffn_kernel=g("ffn_kernel_size"), ffn_act=g("hidden_act"),
            window_size=g("window_size") or 0, flow_dim=g("flow_size"), norm_eps=g("layer_norm_eps"),
            dp_dim=g("hidden_size"), dp_kernel=g("duration_predictor_kernel_size"),
            dp_layers=g("depth_separable_num_layers"), dp_flows=g("duration_predictor_num_flows"),
            dp_bins=g("duration_predictor_flow_bins"), dp_tail_bound=float(g("duration_predictor_tail_bound")),
            n_flows=g("prior_encoder_num_flows"), wn_layers=g("prior_encoder_num_wavenet_layers"),
            wn_kernel=g("wavenet_kernel_size"), wn_dilation_rate=g("wavenet_dilation_rate"),
            up_initial=g("upsample_initial_channel"), up_rates=tuple(g("upsample_rates")),
            up_kernels=tuple(g("upsample_kernel_sizes")), resblock="1",
            resblock_kernels=tuple(g("resblock_kernel_sizes")),
            resblock_dilations=tuple(tuple(d) for d in g("resblock_dilation_sizes")),
            leaky_slope=g("leaky_relu_slope"), sample_rate=sample_rate or g("sampling_rate", 16000))


def conv_weight(src: TensorSource, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A conv weight as a float32 array, shape-checked (FormatError names the file)."""
    a = src.array(name)
    if tuple(a.shape) != tuple(shape):
        raise FormatError(src.origin, f"{name} has shape {list(a.shape)}, expected {list(shape)}")
    return a
