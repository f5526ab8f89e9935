"""Rope frequencies: every rope variant reduced to `(inv_freq, mscale)` for the `rope` op.

Each variant mirrors transformers' `modeling_rope_utils.py` (`_compute_*_parameters`),
in float32 like it, so HF checkpoints match `transformers` to float rounding. GGUF files
carry two variants as tensors instead of config (llama.cpp's converter writes them):
llama3 as `rope_freqs.weight` (per-frequency divisors) and longrope as
`rope_factors_long/short.weight`; `make_rope` takes those from the checkpoint.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from edgeformer.config import DecoderConfig, RopeScaling, longrope_attention_factor
from edgeformer.errors import ConfigError, FormatError


def base_inv_freq(theta: float, rot_dim: int) -> np.ndarray:
    """1 / theta^(2i / rot_dim) for i in [0, rot_dim/2), float32 (HF's default rope)."""
    exps = np.arange(0, rot_dim, 2, dtype=np.float32) / np.float32(rot_dim)
    return (np.float32(1.0) / np.power(np.float32(theta), exps)).astype(np.float32)


def _llama3(inv: np.ndarray, s: RopeScaling) -> np.ndarray:
    """transformers `_compute_llama3_parameters`: keep high frequencies, divide low ones by
    `factor`, interpolate smoothly in between."""
    # RopeScaling requires all three for llama3
    assert s.original_max_position_embeddings and s.low_freq_factor is not None and s.high_freq_factor is not None
    old = float(s.original_max_position_embeddings)
    lo, hi, factor = float(s.low_freq_factor), float(s.high_freq_factor), np.float32(s.factor)
    low_wavelen, high_wavelen = old / lo, old / hi
    wavelen = (np.float32(2 * math.pi) / inv).astype(np.float32)
    out = np.where(wavelen > low_wavelen, inv / factor, inv).astype(np.float32)
    smooth = ((old / wavelen - lo) / (hi - lo)).astype(np.float32)
    smoothed = (1 - smooth) * out / factor + smooth * out
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, out).astype(np.float32)


def yarn_attention_factor(s: RopeScaling) -> float:
    """cos/sin scale of YaRN (transformers `_compute_yarn_parameters`)."""
    if s.attention_factor is not None:
        return float(s.attention_factor)

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if s.mscale and s.mscale_all_dim:
        return float(get_mscale(s.factor, s.mscale) / get_mscale(s.factor, s.mscale_all_dim))
    return get_mscale(s.factor)


def _yarn(theta: float, dim: int, s: RopeScaling) -> np.ndarray:
    """transformers `_compute_yarn_parameters`: interpolate low frequencies by `factor`,
    extrapolate high ones, with a linear ramp between the beta_fast/beta_slow bounds."""
    base, factor = float(theta), float(s.factor)
    beta_fast, beta_slow = s.beta_fast or 32, s.beta_slow or 1
    orig = s.original_max_position_embeddings
    assert orig, "yarn rope scaling needs original_max_position_embeddings"

    def correction_dim(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001   # as transformers: avoid a zero-width ramp
    pos_freqs = np.power(np.float32(base), np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    extra = np.float32(1.0) / pos_freqs
    inter = np.float32(1.0) / (np.float32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
    extra_factor = (1 - ramp).astype(np.float32)
    return (inter * (1 - extra_factor) + extra * extra_factor).astype(np.float32)


class Rope:
    """The rope of one kind of layer. `frequencies(seq_len)` gives `(inv_freq, mscale)`
    for a forward pass whose largest position is `seq_len - 1`; only dynamic NTK and
    longrope depend on it (as in transformers, which re-derives them per forward)."""

    def __init__(self, theta: float, rot_dim: int, max_pos: int, scaling: RopeScaling | None = None,
                 freq_factors: np.ndarray | None = None) -> None:
        self.theta, self.rot_dim, self.max_pos = float(theta), int(rot_dim), int(max_pos)
        self.scaling = scaling if scaling is not None and scaling.kind != "default" else None
        self.freq_factors = freq_factors
        self._static: tuple[np.ndarray, float] | None = None
        if self.scaling is not None and self.scaling.kind == "longrope":
            for name in ("short_factor", "long_factor"):
                f = getattr(self.scaling, name)
                if f is None or len(f) != self.rot_dim // 2:
                    raise ConfigError(f"longrope {name} must have {self.rot_dim // 2} entries, "
                                      f"got {None if f is None else len(f)}")

    def frequencies(self, seq_len: int) -> tuple[np.ndarray, float]:
        s = self.scaling
        if s is None or s.kind not in ("dynamic", "longrope"):
            if self._static is None:
                self._static = self._compute(seq_len)
            return self._static
        return self._compute(seq_len)

    def _compute(self, seq_len: int) -> tuple[np.ndarray, float]:
        s, dim = self.scaling, self.rot_dim
        if s is None:
            inv = base_inv_freq(self.theta, dim)
            if self.freq_factors is not None:   # llama.cpp rope_freqs: theta_i / ff_i
                inv = (inv / self.freq_factors.astype(np.float32)).astype(np.float32)
            return inv, 1.0
        if s.kind == "linear":
            return (base_inv_freq(self.theta, dim) / np.float32(s.factor)).astype(np.float32), 1.0
        if s.kind == "llama3":
            return _llama3(base_inv_freq(self.theta, dim), s), 1.0
        if s.kind == "dynamic":
            n = max(int(seq_len), self.max_pos)
            base = self.theta * ((s.factor * n / self.max_pos) - (s.factor - 1)) ** (dim / (dim - 2))
            return base_inv_freq(base, dim), 1.0
        if s.kind == "yarn":
            return _yarn(self.theta, dim, s), yarn_attention_factor(s)
        if s.kind == "longrope":
            assert s.original_max_position_embeddings, "longrope needs original_max_position_embeddings"
            long = seq_len > s.original_max_position_embeddings
            ext = np.asarray(s.long_factor if long else s.short_factor, dtype=np.float32)
            exps = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
            inv = np.float32(1.0) / (ext * np.power(np.float32(self.theta), exps))
            return inv.astype(np.float32), longrope_attention_factor(s)
        raise ConfigError(f"unknown rope scaling kind {s.kind!r}")


def _vector(tensors: Mapping, name: str, n: int, path: object) -> np.ndarray | None:
    if name not in tensors:
        return None
    from edgeformer.quant import dequantize
    v = np.asarray(dequantize(tensors[name]), dtype=np.float32).reshape(-1)
    if v.size != n:
        raise FormatError(path, f"{name} has {v.size} entries, rope needs {n}")
    return v


def make_rope(config: DecoderConfig, tensors: Mapping, sliding: bool, path: object = "checkpoint") -> Rope:
    """The Rope of full (`sliding=False`) or sliding layers. Gemma 3 sliding layers use
    `rope_local_theta` and no scaling (transformers' `rope_parameters["sliding_attention"]`,
    llama.cpp's `rope_freq_base_train_swa`). GGUF-held rope data is read from `tensors`."""
    dim = config.rotary_dim
    if sliding and config.rope_local_theta is not None:
        return Rope(config.rope_local_theta, dim, config.max_seq_len)
    s = config.rope_scaling
    if s is not None and s.kind == "longrope" and (s.short_factor is None or s.long_factor is None):
        short = _vector(tensors, "rope_factors_short.weight", dim // 2, path)
        long = _vector(tensors, "rope_factors_long.weight", dim // 2, path)
        if short is None or long is None:
            raise FormatError(path, "longrope rope scaling without rope_factors_short/long tensors")
        s = replace(s, short_factor=tuple(map(float, short)), long_factor=tuple(map(float, long)))
    ff = None
    if s is None or s.kind == "default":
        ff = _vector(tensors, "rope_freqs.weight", dim // 2, path)
    return Rope(config.rope_theta, dim, config.max_seq_len, s, ff)
