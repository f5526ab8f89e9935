"""VITS' invertible parts, run in reverse (inference): the stochastic duration
predictor (DDSConv + rational-quadratic spline flows) and the prior's residual coupling
flows (WaveNet-conditioned, mean only). Layout (C, T) throughout.

Convs, layer norms and gelu go through the op facade; the spline, the WaveNet gate
(tanh * sigmoid), the affine flow and the channel flips have no op and are plain numpy,
marked where they happen.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgeformer.backends.base import Ops
from edgeformer.models.encoder import TensorSource
from edgeformer.models.vits_config import VitsConfig, conv_weight


# ---- DDSConv (dilated depth-separable convs) -------------------------------------------------

@dataclass
class DDSLayer:
    sep: tuple[np.ndarray, np.ndarray]       # depthwise (C, 1, K), dilation K**i
    pw: tuple[np.ndarray, np.ndarray]        # pointwise (C, C, 1)
    norm1: tuple[np.ndarray, np.ndarray]
    norm2: tuple[np.ndarray, np.ndarray]
    dilation: int


def load_dds(cfg: VitsConfig, src: TensorSource, p: str) -> list[DDSLayer]:
    """The `dp_layers` DDSConv layers under prefix `p` (`dp.convs`, `dp.flows.{j}.convs`)."""
    c, k = cfg.dp_dim, cfg.dp_kernel
    return [DDSLayer(
        sep=(conv_weight(src, f"{p}.convs_sep.{i}.weight", (c, 1, k)), src.vector(f"{p}.convs_sep.{i}.bias", c)),
        pw=(conv_weight(src, f"{p}.convs_1x1.{i}.weight", (c, c, 1)), src.vector(f"{p}.convs_1x1.{i}.bias", c)),
        norm1=(src.vector(f"{p}.norms_1.{i}.gamma", c), src.vector(f"{p}.norms_1.{i}.beta", c)),
        norm2=(src.vector(f"{p}.norms_2.{i}.gamma", c), src.vector(f"{p}.norms_2.{i}.beta", c)),
        dilation=k ** i) for i in range(cfg.dp_layers)]


def _ln_channels(ops: Ops, x: np.ndarray, norm: tuple[np.ndarray, np.ndarray], name: str, layer: int) -> np.ndarray:
    """LayerNorm over channels of x (C, T) (VITS' eps 1e-5)."""
    return np.ascontiguousarray(ops.layer_norm(np.ascontiguousarray(x.T), *norm, 1e-5, name=name, layer=layer).T)


def dds_forward(ops: Ops, cfg: VitsConfig, layers: list[DDSLayer], x: np.ndarray, g: np.ndarray | None = None,
                name: str = "dds") -> np.ndarray:
    """x (+ g) then per layer: x += gelu(ln(pw(gelu(ln(sep(x)))))). (C, T) -> (C, T)."""
    if g is not None:
        x = ops.add(x, g, name=f"{name}_cond")
    k = cfg.dp_kernel
    for i, lyr in enumerate(layers):
        d = lyr.dilation
        y = ops.conv1d(x, *lyr.sep, padding=(k * d - d) // 2, dilation=d, groups=x.shape[0],
                       name=f"{name}_sep", layer=i)
        y = ops.activation(_ln_channels(ops, y, lyr.norm1, f"{name}_norm1", i), "gelu", name=f"{name}_act1", layer=i)
        y = ops.conv1d(y, *lyr.pw, name=f"{name}_1x1", layer=i)
        y = ops.activation(_ln_channels(ops, y, lyr.norm2, f"{name}_norm2", i), "gelu", name=f"{name}_act2", layer=i)
        x = ops.add(x, y, name=f"{name}_residual", layer=i)
    return x


# ---- rational-quadratic spline (Durkan et al. 2019), inverse only -------------------------

def rq_spline_inverse(y: np.ndarray, uw: np.ndarray, uh: np.ndarray, ud: np.ndarray, tail_bound: float,
                      min_w: float = 1e-3, min_h: float = 1e-3, min_d: float = 1e-3) -> np.ndarray:
    """Plain numpy (no op): inverse of the monotone rational-quadratic spline on
    [-B, B] with linear tails, elementwise over y (N,); uw, uh: (N, bins) unnormalized
    widths/heights, ud: (N, bins - 1) inner derivatives. float32, the same steps as
    VITS' `piecewise_rational_quadratic_transform(..., inverse=True, tails="linear")`."""
    f32 = np.float32
    y = y.astype(f32, copy=False)
    out = y.copy()
    inside = (y >= -tail_bound) & (y <= tail_bound)
    if not inside.any():
        return out
    yi, uw, uh, ud = y[inside], uw[inside], uh[inside], ud[inside]
    nb = uw.shape[-1]
    const = f32(np.log(np.exp(1 - min_d) - 1))           # softplus^-1(1 - min_d): unit slope at the tails
    ud = np.concatenate([np.full((ud.shape[0], 1), const, f32), ud, np.full((ud.shape[0], 1), const, f32)], axis=1)

    def knots(u: np.ndarray, min_size: float) -> tuple[np.ndarray, np.ndarray]:
        e = np.exp(u - u.max(axis=-1, keepdims=True))
        s = e / e.sum(axis=-1, keepdims=True)
        s = f32(min_size) + f32(1 - min_size * nb) * s
        cum = np.concatenate([np.zeros((s.shape[0], 1), f32), np.cumsum(s, axis=-1, dtype=f32)], axis=1)
        cum = f32(2 * tail_bound) * cum + f32(-tail_bound)
        cum[:, 0], cum[:, -1] = -tail_bound, tail_bound
        return cum, cum[:, 1:] - cum[:, :-1]

    cumw, widths = knots(uw, min_w)
    cumh, heights = knots(uh, min_h)
    derivs = f32(min_d) + np.logaddexp(f32(0), ud).astype(f32)          # softplus
    loc = cumh.copy()
    loc[:, -1] += f32(1e-6)
    idx = ((yi[:, None] >= loc).sum(axis=-1) - 1)[:, None]
    take = lambda a: np.take_along_axis(a, idx, axis=-1)[:, 0]          # noqa: E731
    in_cumw, in_w, in_cumh, in_h = take(cumw), take(widths), take(cumh), take(heights)
    in_delta = take(heights / widths)
    in_d, in_d1 = take(derivs), take(derivs[:, 1:])
    i1 = in_d + in_d1 - f32(2) * in_delta
    i2 = yi - in_cumh
    i3 = i2 * i1
    a = in_h * (in_delta - in_d) + i3
    b = in_h * in_d - i3
    c = -in_delta * i2
    disc = b * b - f32(4) * a * c
    root = (f32(2) * c) / (-b - np.sqrt(np.maximum(disc, f32(0))))
    out[inside] = root * in_w + in_cumw
    return out


# ---- stochastic duration predictor ------------------------------------------------------

@dataclass
class ConvFlow:
    pre: tuple[np.ndarray, np.ndarray]       # (F, 1, 1)
    dds: list[DDSLayer]
    proj: tuple[np.ndarray, np.ndarray]      # (3 bins - 1, F, 1)


@dataclass
class DurationPredictor:
    pre: tuple[np.ndarray, np.ndarray]
    dds: list[DDSLayer]
    proj: tuple[np.ndarray, np.ndarray]
    affine_m: np.ndarray                      # (2, 1)
    affine_logs: np.ndarray                   # (2, 1)
    flows: dict[int, ConvFlow]                # flows 2..dp_flows (flow 1 is unused in reverse)


def load_duration_predictor(cfg: VitsConfig, src: TensorSource) -> DurationPredictor:
    """`dp.*` minus the training-only posterior flows and the unused first conv flow."""
    f, d = cfg.dp_dim, cfg.dim
    n_proj = 3 * cfg.dp_bins - 1

    def cw(name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return conv_weight(src, f"{name}.weight", shape), src.vector(f"{name}.bias", shape[0])

    # conv flow k (1-based) sits at dp.flows.{2k - 1}: VITS puts a Flip after each
    flows = {k: ConvFlow(cw(f"dp.flows.{2 * k - 1}.pre", (f, 1, 1)), load_dds(cfg, src, f"dp.flows.{2 * k - 1}.convs"),
                         cw(f"dp.flows.{2 * k - 1}.proj", (n_proj, f, 1)))
             for k in range(2, cfg.dp_flows + 1)}
    return DurationPredictor(cw("dp.pre", (f, d, 1)), load_dds(cfg, src, "dp.convs"), cw("dp.proj", (f, f, 1)),
                             conv_weight(src, "dp.flows.0.m", (2, 1)), conv_weight(src, "dp.flows.0.logs", (2, 1)),
                             flows)


def _conv_flow_reverse(ops: Ops, cfg: VitsConfig, fl: ConvFlow, z: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    """z (2, T): the second channel goes through the inverse spline conditioned on the first and g."""
    x0, x1 = z[:1], z[1:]
    h = ops.conv1d(x0, *fl.pre, name="dp_flow_pre", layer=k)
    h = dds_forward(ops, cfg, fl.dds, h, g, name=f"dp_flow{k}")
    h = ops.conv1d(h, *fl.proj, name="dp_flow_proj", layer=k)                           # (3 bins - 1, T)
    t, nb = z.shape[1], cfg.dp_bins
    h = h.reshape(1, 3 * nb - 1, t).transpose(0, 2, 1).reshape(t, 3 * nb - 1)           # (T, 3 bins - 1)
    s = np.float32(math.sqrt(cfg.dp_dim))
    x1 = rq_spline_inverse(x1[0], h[:, :nb] / s, h[:, nb:2 * nb] / s, h[:, 2 * nb:], cfg.dp_tail_bound)
    return np.stack([x0[0], x1]).astype(np.float32)


def duration_predictor_reverse(ops: Ops, cfg: VitsConfig, dp: DurationPredictor, hidden: np.ndarray,
                               eps: np.ndarray, noise_w: float) -> np.ndarray:
    """hidden (dim, T), eps (2, T) standard normal -> log durations (T,) float32."""
    x = ops.conv1d(hidden, *dp.pre, name="dp_pre")
    x = dds_forward(ops, cfg, dp.dds, x, name="dp")
    x = ops.conv1d(x, *dp.proj, name="dp_proj")
    z = np.asarray(eps, dtype=np.float32).reshape(2, -1) * np.float32(noise_w)
    # VITS reverses flows [affine, f1, f2, ..., fn] and drops f1 ("a useless vflow")
    for k in range(cfg.dp_flows, 1, -1):
        z = np.ascontiguousarray(z[::-1])                # plain numpy: Flip
        z = _conv_flow_reverse(ops, cfg, dp.flows[k], z, x, k)
    z = np.ascontiguousarray(z[::-1])
    # plain numpy: elementwise affine flow, reversed
    z = (z - dp.affine_m) * np.exp(-dp.affine_logs)
    return z[0]


# ---- prior coupling flows with WaveNet --------------------------------------------------

@dataclass
class CouplingFlow:
    pre: tuple[np.ndarray, np.ndarray]          # (H, C/2, 1)
    in_layers: list[tuple[np.ndarray, np.ndarray]]    # (2H, H, K), dilation rate**i
    res_skip: list[tuple[np.ndarray, np.ndarray]]     # (2H or H, H, 1)
    post: tuple[np.ndarray, np.ndarray]         # (C/2, H, 1)


def load_coupling_flows(cfg: VitsConfig, src: TensorSource) -> list[CouplingFlow]:
    """The `n_flows` residual coupling layers `flow.flows.{2i}` (mean-only)."""
    h, half, k = cfg.dim, cfg.flow_dim // 2, cfg.wn_kernel

    def cw(name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        return conv_weight(src, f"{name}.weight", shape), src.vector(f"{name}.bias", shape[0])

    flows = []
    for i in range(cfg.n_flows):
        p = f"flow.flows.{2 * i}"      # odd indices are the parameter-free Flip modules
        flows.append(CouplingFlow(
            cw(f"{p}.pre", (h, half, 1)),
            [cw(f"{p}.enc.in_layers.{j}", (2 * h, h, k)) for j in range(cfg.wn_layers)],
            [cw(f"{p}.enc.res_skip_layers.{j}", (2 * h if j < cfg.wn_layers - 1 else h, h, 1))
             for j in range(cfg.wn_layers)],
            cw(f"{p}.post", (half, h, 1))))
    return flows


def wavenet_forward(ops: Ops, cfg: VitsConfig, fl: CouplingFlow, x: np.ndarray, il: int) -> np.ndarray:
    """VITS' WN without conditioning: gated dilated convs with residual and skip sums."""
    h = cfg.dim
    out = np.zeros_like(x)
    for j, ((wi, bi), (wr, br)) in enumerate(zip(fl.in_layers, fl.res_skip)):
        d = cfg.wn_dilation_rate ** j
        x_in = ops.conv1d(x, wi, bi, padding=(cfg.wn_kernel * d - d) // 2, dilation=d, name="wn_in", layer=il)
        # plain numpy: the WaveNet gate tanh(a) * sigmoid(b) has no op
        acts = (np.tanh(x_in[:h]) * (np.float32(1) / (np.float32(1) + np.exp(-x_in[h:])))).astype(np.float32)
        rs = ops.conv1d(acts, wr, br, name="wn_res_skip", layer=il)
        if j < cfg.wn_layers - 1:
            x = ops.add(x, rs[:h], name="wn_residual", layer=il)
            out = ops.add(out, rs[h:], name="wn_skip", layer=il)
        else:
            out = ops.add(out, rs, name="wn_skip", layer=il)
    return out


def coupling_flows_reverse(ops: Ops, cfg: VitsConfig, flows: list[CouplingFlow], z: np.ndarray) -> np.ndarray:
    """z_p (flow_dim, N) -> z (flow_dim, N): for each flow, last first: flip channels,
    then x1 -= post(WN(pre(x0)))."""
    half = cfg.flow_dim // 2
    for il in range(len(flows) - 1, -1, -1):
        fl = flows[il]
        z = np.ascontiguousarray(z[::-1])                # plain numpy: Flip
        x0, x1 = z[:half], z[half:]
        h = ops.conv1d(x0, *fl.pre, name="flow_pre", layer=il)
        h = wavenet_forward(ops, cfg, fl, h, il)
        mean = ops.conv1d(h, *fl.post, name="flow_post", layer=il)
        z = np.concatenate([x0, ops.add(x1, -mean, name="flow_shift", layer=il)], axis=0)
    return z
