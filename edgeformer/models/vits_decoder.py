"""VITS' HiFi-GAN generator: latent z (flow_dim, N) -> waveform (N * hop,).

conv_pre (k7) -> per stage: leaky_relu(0.1), transposed-conv upsample, mean of the
multi-receptive-field resblocks -> leaky_relu(0.01) -> conv_post (k7, no bias) -> tanh.
Resblock "1" (HiFi-GAN v1, transformers' HifiGanResidualBlock) is pairs of convs
(dilated, then dilation 1); resblock "2" (Piper medium voices) is one dilated conv per
dilation. Leaky ReLU and tanh have no op and are plain numpy, marked.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgeformer.backends.base import Ops
from edgeformer.models.encoder import TensorSource
from edgeformer.models.vits_config import VitsConfig, conv_weight

_POST_SLOPE = 0.01   # VITS calls F.leaky_relu(x) before conv_post: torch's default slope


def _leaky(x: np.ndarray, slope: float) -> np.ndarray:
    """Plain numpy: leaky ReLU has no op. For 0 <= slope <= 1 it is max(x, slope * x),
    bit for bit (the same product; -0.0 and NaN come out alike): one temporary and two
    passes, ~20x faster than np.where's mask + product + select on a (32, 210k) stage."""
    s = np.float32(slope)
    if not 0 <= s <= 1:
        return np.where(x >= 0, x, x * s).astype(np.float32, copy=False)
    y = np.multiply(x, s, dtype=np.float32)
    return np.maximum(x, y, out=y)


@dataclass
class ResBlock:
    kernel: int
    dilations: tuple[int, ...]
    convs1: list[tuple[np.ndarray, np.ndarray]]
    convs2: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)   # resblock "1" only


@dataclass
class Decoder:
    conv_pre: tuple[np.ndarray, np.ndarray]
    ups: list[tuple[np.ndarray, np.ndarray]]
    resblocks: list[ResBlock]
    conv_post: np.ndarray
    conv_post_b: np.ndarray | None


def load_decoder(cfg: VitsConfig, src: TensorSource) -> Decoder:
    """`dec.*`: conv_pre, the upsamplers, len(ups) * len(resblock_kernels) resblocks, conv_post."""
    def cw(name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return conv_weight(src, f"{name}.weight", shape), src.vector(f"{name}.bias", shape[0])

    c0 = cfg.up_initial
    ups, blocks = [], []
    for i, k in enumerate(cfg.up_kernels):
        c_in, c = c0 // 2 ** i, c0 // 2 ** (i + 1)
        ups.append((conv_weight(src, f"dec.ups.{i}.weight", (c_in, c, k)), src.vector(f"dec.ups.{i}.bias", c)))
        for j, (rk, dil) in enumerate(zip(cfg.resblock_kernels, cfg.resblock_dilations)):
            p = f"dec.resblocks.{i * len(cfg.resblock_kernels) + j}"
            if cfg.resblock == "1":
                blocks.append(ResBlock(rk, tuple(dil), [cw(f"{p}.convs1.{n}", (c, c, rk)) for n in range(len(dil))],
                                       [cw(f"{p}.convs2.{n}", (c, c, rk)) for n in range(len(dil))]))
            else:
                blocks.append(ResBlock(rk, tuple(dil), [cw(f"{p}.convs.{n}", (c, c, rk)) for n in range(len(dil))]))
    c_last = c0 // 2 ** len(cfg.up_kernels)
    return Decoder(cw("dec.conv_pre", (c0, cfg.flow_dim, 7)), ups, blocks,
                   conv_weight(src, "dec.conv_post.weight", (1, c_last, 7)),
                   src.vector("dec.conv_post.bias", 1, optional=True))


def resblock_forward(ops: Ops, cfg: VitsConfig, rb: ResBlock, x: np.ndarray, il: int) -> np.ndarray:
    """x (C, N) -> (C, N): per dilation, x += conv(leaky(x)) (type "2"), or
    x += conv2(leaky(conv1(leaky(x)))) (type "1")."""
    k, slope = rb.kernel, cfg.leaky_slope
    for n, d in enumerate(rb.dilations):
        xt = ops.conv1d(_leaky(x, slope), *rb.convs1[n], padding=(k * d - d) // 2, dilation=d,
                        name="res_conv1", layer=il)
        if rb.convs2:
            xt = ops.conv1d(_leaky(xt, slope), *rb.convs2[n], padding=(k - 1) // 2, name="res_conv2", layer=il)
        x = ops.add(xt, x, name="res_residual", layer=il)
    return x


def decoder_forward(ops: Ops, cfg: VitsConfig, dec: Decoder, z: np.ndarray) -> np.ndarray:
    """z (flow_dim, N) float32 -> waveform (N * hop,) float32 in [-1, 1]."""
    x = ops.conv1d(z, *dec.conv_pre, padding=3, name="dec_pre")
    nk = len(cfg.resblock_kernels)
    for i, ((w, b), rate, k) in enumerate(zip(dec.ups, cfg.up_rates, cfg.up_kernels)):
        x = ops.conv_transpose1d(_leaky(x, cfg.leaky_slope), w, b, stride=rate, padding=(k - rate) // 2,
                                 name="dec_up", layer=i)
        xs = None
        for j in range(nk):
            y = resblock_forward(ops, cfg, dec.resblocks[i * nk + j], x, i * nk + j)
            xs = y if xs is None else ops.add(xs, y, name="dec_mrf_sum", layer=i)
        x = ops.mul(xs, 1.0 / nk, name="dec_mrf_mean", layer=i) if nk > 1 else xs
    x = ops.conv1d(_leaky(x, _POST_SLOPE), dec.conv_post, dec.conv_post_b, padding=3, name="dec_post")
    return np.tanh(x[0]).astype(np.float32)    # plain numpy: tanh has no op
