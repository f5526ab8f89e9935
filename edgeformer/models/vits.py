"""VITS text-to-speech (Kim et al. 2021) over backend ops: the Piper voices and
transformers' `VitsModel` (MMS-TTS) are this one network.

    ids -> text encoder (transformer, relative-position attention) -> hidden, m_p, logs_p
        -> stochastic duration predictor (reverse flows, noise * noise_w) -> log durations
        -> expand m_p/logs_p by ceil(exp(logw) * length_scale) frames
        -> z_p = m_p + noise * exp(logs_p) * noise_scale -> reverse coupling flows -> z
        -> HiFi-GAN decoder -> waveform in [-1, 1]

One sequence at a time (batch 1, no padding), so every VITS mask is all ones and dropped.
Tensors use the original VITS module names (`enc_p.*`, `dp.*`, `flow.flows.{2i}.*`,
`dec.*`; parameter-free Flip modules keep their list slots, so duration conv flow k is
`dp.flows.{2k-1}`), conv weights in torch layout (C_out, C_in/groups, K).
`vits_tensors_from_hf` maps a transformers state dict into them, `edgeformer.tts.piper`
an ONNX export.
The duration predictor and flows live in `vits_flows.py`, the decoder in `vits_decoder.py`,
the config and the conv weight reader they share in `vits_config.py`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend, Ops, Weight
from edgeformer.errors import InputError
from edgeformer.models.encoder import TensorSource
from edgeformer.models.vits_config import FFN_ACTIVATIONS, VitsConfig, conv_weight  # noqa: F401  (re-exported)
from edgeformer.models.vits_decoder import decoder_forward, load_decoder
from edgeformer.models.vits_flows import (coupling_flows_reverse, duration_predictor_reverse, load_coupling_flows,
                                          load_duration_predictor)
from edgeformer.quant.qtypes import QTensor

NoiseFn = Callable[[tuple[int, ...]], np.ndarray]


# ---- transformers state dict -> VITS names --------------------------------------------------

_HF_RULES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [  # (regex on the HF key, replacement); first match wins
    (r"text_encoder\.embed_tokens\.", "enc_p.emb."),
    (r"text_encoder\.encoder\.layers\.(\d+)\.attention\.(q|k|v)_proj\.", r"enc_p.encoder.attn_layers.\1.conv_\2."),
    (r"text_encoder\.encoder\.layers\.(\d+)\.attention\.out_proj\.", r"enc_p.encoder.attn_layers.\1.conv_o."),
    (r"text_encoder\.encoder\.layers\.(\d+)\.attention\.emb_rel_(k|v)$", r"enc_p.encoder.attn_layers.\1.emb_rel_\2"),
    (r"text_encoder\.encoder\.layers\.(\d+)\.layer_norm\.", r"enc_p.encoder.norm_layers_1.\1."),
    (r"text_encoder\.encoder\.layers\.(\d+)\.final_layer_norm\.", r"enc_p.encoder.norm_layers_2.\1."),
    (r"text_encoder\.encoder\.layers\.(\d+)\.feed_forward\.", r"enc_p.encoder.ffn_layers.\1."),
    (r"text_encoder\.project\.", "enc_p.proj."),
    (r"duration_predictor\.conv_pre\.", "dp.pre."),
    (r"duration_predictor\.conv_proj\.", "dp.proj."),
    (r"duration_predictor\.flows\.0\.translate$", "dp.flows.0.m"),
    (r"duration_predictor\.flows\.0\.log_scale$", "dp.flows.0.logs"),
    # VITS interleaves Flip modules: conv flow k (1-based) is dp.flows.{2k - 1}
    (r"duration_predictor\.flows\.(\d+)\.conv_pre\.", lambda m: f"dp.flows.{2 * int(m.group(1)) - 1}.pre."),
    (r"duration_predictor\.flows\.(\d+)\.conv_proj\.", lambda m: f"dp.flows.{2 * int(m.group(1)) - 1}.proj."),
    (r"duration_predictor\.flows\.(\d+)\.conv_dds\.", lambda m: f"dp.flows.{2 * int(m.group(1)) - 1}.convs."),
    (r"duration_predictor\.conv_dds\.", "dp.convs."),
    (r"flow\.flows\.(\d+)\.conv_pre\.", lambda m: f"flow.flows.{2 * int(m.group(1))}.pre."),
    (r"flow\.flows\.(\d+)\.conv_post\.", lambda m: f"flow.flows.{2 * int(m.group(1))}.post."),
    (r"flow\.flows\.(\d+)\.wavenet\.", lambda m: f"flow.flows.{2 * int(m.group(1))}.enc."),
    (r"decoder\.upsampler\.", "dec.ups."),
    (r"decoder\.", "dec."),
]
# inside DDSConv and LayerNorm
_HF_SUBS = [(".convs_dilated.", ".convs_sep."), (".convs_pointwise.", ".convs_1x1.")]
# training-only parts (posterior encoder, duration posterior flows) are dropped
_HF_SKIP = re.compile(r"^(posterior_encoder\.|duration_predictor\.post_)")


_WEIGHT_NORM_KEYS = ((".weight_g", "g"), (".weight_v", "v"),       # torch.nn.utils.weight_norm
                     (".parametrizations.weight.original0", "g"),  # torch.nn.utils.parametrizations
                     (".parametrizations.weight.original1", "v"))


def _fold_weight_norm(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Weight-normed convs (`weight_g`/`weight_v`, or parametrizations original0/1) ->
    plain `weight` = g * v / ||v||, the norm over all dims but 0 (torch's dim=0).
    FormatError when one half of a pair is missing."""
    from edgeformer.errors import FormatError
    out: dict[str, np.ndarray] = {}
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for k, v in sd.items():
        a = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float32)
        part = next(((k[: -len(sfx)], role) for sfx, role in _WEIGHT_NORM_KEYS if k.endswith(sfx)), None)
        if part is None:
            out[k] = a
        else:
            pairs.setdefault(part[0], {})[part[1]] = a
    for base, gv in pairs.items():
        if set(gv) != {"g", "v"}:
            raise FormatError("<state dict>", f"{base}: weight norm needs both g and v, found {sorted(gv)}")
        v64 = gv["v"].astype(np.float64)
        norm = np.sqrt((v64 ** 2).reshape(v64.shape[0], -1).sum(axis=1)).reshape((-1,) + (1,) * (v64.ndim - 1))
        out[f"{base}.weight"] = (gv["g"].astype(np.float64) * v64 / norm).astype(np.float32)
    return out


def vits_tensors_from_hf(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A transformers `VitsModel` state dict -> float32 arrays under VITS names (linear
    weights become (N, K, 1) convs; LayerNorm weight/bias become gamma/beta)."""
    out: dict[str, np.ndarray] = {}
    for k, a in _fold_weight_norm(state_dict).items():
        if _HF_SKIP.match(k):
            continue
        for pat, rep in _HF_RULES:
            if re.match(pat, k):
                k = re.sub(pat, rep, k, count=1)
                break
        for old, new in _HF_SUBS:
            k = k.replace(old, new)
        if re.search(r"(norm_layers_\d|norms_\d)\.\d+\.(weight|bias)$", k):
            k = k[: k.rfind(".")] + (".gamma" if k.endswith(".weight") else ".beta")
        if re.match(r"enc_p\.encoder\.attn_layers\.\d+\.conv_[qkvo]\.weight$", k):
            a = a[:, :, None]
        out[k] = a
    return out


# ---- text encoder ---------------------------------------------------------------------------

@dataclass
class AttnLayer:
    q: Weight
    k: Weight
    v: Weight
    o: Weight
    bq: np.ndarray
    bk: np.ndarray
    bv: np.ndarray
    bo: np.ndarray
    rel_k: Weight | None            # emb_rel_k (2 window + 1, head_dim) as a linear weight
    rel_v: Weight | None            # emb_rel_v transposed: (head_dim, 2 window + 1)
    norm1: tuple[np.ndarray, np.ndarray]
    ffn1: tuple[np.ndarray, np.ndarray]
    ffn2: tuple[np.ndarray, np.ndarray]
    norm2: tuple[np.ndarray, np.ndarray]


@dataclass
class TextEncoder:
    emb: Weight
    layers: list[AttnLayer] = field(default_factory=list)
    proj: Weight | None = None
    proj_b: np.ndarray | None = None


def pointwise(src: TensorSource, name: str, n_out: int, n_in: int) -> Weight:
    """A kernel-1 conv `{name}.weight` (n_out, n_in, 1) prepared as a linear weight."""
    w = conv_weight(src, f"{name}.weight", (n_out, n_in, 1)).reshape(n_out, n_in)
    return src.backend.prepare_weight(QTensor.from_array(np.ascontiguousarray(w)), f"{name}.weight")


def load_text_encoder(cfg: VitsConfig, src: TensorSource) -> TextEncoder:
    """`enc_p.*`: embedding, `n_layers` attention + FFN layers, the (m, logs) projection."""
    d, f, k = cfg.dim, cfg.ffn_dim, cfg.ffn_kernel

    def ln(n: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        p = f"enc_p.encoder.norm_layers_{n}.{i}"
        return src.vector(f"{p}.gamma", d), src.vector(f"{p}.beta", d)

    enc = TextEncoder(src.linear("enc_p.emb", (cfg.n_vocab, d)))
    w = 2 * cfg.window_size + 1
    for i in range(cfg.n_layers):
        p = f"enc_p.encoder.attn_layers.{i}"
        rel = (lambda n: conv_weight(src, f"{p}.emb_rel_{n}", (1, w, cfg.head_dim))[0]) if cfg.window_size else None
        lin = lambda a, n: src.backend.prepare_weight(QTensor.from_array(np.ascontiguousarray(a)), n)  # noqa: E731
        wq, wk, wv, wo = (pointwise(src, f"{p}.conv_{n}", d, d) for n in "qkvo")
        bq, bk, bv, bo = (src.vector(f"{p}.conv_{n}.bias", d) for n in "qkvo")
        enc.layers.append(AttnLayer(
            wq, wk, wv, wo, bq, bk, bv, bo,
            lin(rel("k"), f"{p}.emb_rel_k") if rel else None, lin(rel("v").T, f"{p}.emb_rel_v") if rel else None,
            norm1=ln(1, i),
            ffn1=(conv_weight(src, f"enc_p.encoder.ffn_layers.{i}.conv_1.weight", (f, d, k)),
                  src.vector(f"enc_p.encoder.ffn_layers.{i}.conv_1.bias", f)),
            ffn2=(conv_weight(src, f"enc_p.encoder.ffn_layers.{i}.conv_2.weight", (d, f, k)),
                  src.vector(f"enc_p.encoder.ffn_layers.{i}.conv_2.bias", d)),
            norm2=ln(2, i),
        ))
    enc.proj = pointwise(src, "enc_p.proj", 2 * cfg.flow_dim, d)
    enc.proj_b = src.vector("enc_p.proj.bias", 2 * cfg.flow_dim)
    return enc


REL_BLOCK = 64   # queries per attention call in `rel_attention`: B + 2w one-hot slots each


def rel_attention(ops: Ops, cfg: VitsConfig, lyr: AttnLayer, x: np.ndarray, il: int) -> np.ndarray:
    """Multi-head self-attention over x (T, dim) with VITS' windowed relative positions:
    score[i, j] += q_i . emb_rel_k[j - i + w] and out_i += sum_j p[i, j] emb_rel_v[j - i + w]
    for |j - i| <= w. Returns (T, dim).

    The attention op has no score bias, so the bias rides on extra dimensions, exactly:
    per block of B queries from i0, keys j in [i0 - w, i0 + B + w) get a one-hot slot
    e_(j - i0 + w) appended to k_j and v_j, and query i gets, in slot j - i0 + w, its bias
    q_i . emb_rel_k[j - i + w] (0 in slots out of its window). So q'.k' = q.k + bias (one
    nonzero product; the op scales both by hd^-0.5, as VITS scales q before both), and
    the value slots return p[i, j] for the window, which meets emb_rel_v here."""
    t, h, hd, w = x.shape[0], cfg.n_heads, cfg.head_dim, cfg.window_size
    q = ops.linear(x, lyr.q, lyr.bq, name="attn_q", layer=il).reshape(t, h, hd)   # (T, H, hd)
    k = ops.linear(x, lyr.k, lyr.bk, name="attn_k", layer=il).reshape(t, h, hd)
    v = ops.linear(x, lyr.v, lyr.bv, name="attn_v", layer=il).reshape(t, h, hd)
    if not w:
        a = ops.attention(q, k, v, scale=hd ** -0.5, causal=False, name="attn", layer=il)
        return ops.linear(a.reshape(t, h * hd), lyr.o, lyr.bo, name="attn_output", layer=il)
    bias = ops.linear(q.reshape(t * h, hd), lyr.rel_k, name="attn_rel_k", layer=il).reshape(t, h, 2 * w + 1)
    # plain numpy: the one-hot layout and the window gathers
    out = np.empty((t, h, hd), np.float32)
    offs = np.arange(2 * w + 1)
    for i0 in range(0, t, REL_BLOCK):
        nb = min(REL_BLOCK, t - i0)
        m = nb + 2 * w                                   # slot s <-> key i0 - w + s
        rows = np.arange(nb)
        qa = np.zeros((nb, h, hd + m), np.float32)
        qa[:, :, :hd] = q[i0:i0 + nb]
        # query i0 + r, offset o = j - i + w: key j = i0 + r + o - w sits in slot r + o
        qa[rows[:, None], :, hd + rows[:, None] + offs] = bias[i0:i0 + nb].transpose(0, 2, 1)
        j0, j1 = max(0, i0 - w), min(t, i0 + nb + w)     # keys that own a slot
        ka = np.zeros((t, h, hd + m), np.float32)
        va = np.zeros((t, h, hd + m), np.float32)
        ka[:, :, :hd], va[:, :, :hd] = k, v
        keys = np.arange(j0, j1)
        ka[keys, :, hd + keys - (i0 - w)] = 1.0
        va[keys, :, hd + keys - (i0 - w)] = 1.0
        a = ops.attention(qa, ka, va, scale=hd ** -0.5, causal=False, name="attn", layer=il)  # (nb, H, hd+m)
        pw = a[rows[:, None], :, hd + rows[:, None] + offs].transpose(0, 2, 1)      # (nb, H, 2w+1): p[i, i+o-w]
        rv = ops.linear(pw.reshape(nb * h, 2 * w + 1), lyr.rel_v, name="attn_rel_v", layer=il)    # (nb H, hd)
        out[i0:i0 + nb] = ops.add(a[:, :, :hd], rv.reshape(nb, h, hd), name="attn_rel_out", layer=il)
    return ops.linear(out.reshape(t, h * hd), lyr.o, lyr.bo, name="attn_output", layer=il)


def text_encoder_forward(ops: Ops, cfg: VitsConfig, enc: TextEncoder,
                         ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ids (T,) -> hidden (dim, T), m_p (flow_dim, T), logs_p (flow_dim, T), all float32."""
    k = cfg.ffn_kernel
    same = ((k - 1) // 2, k // 2)    # VITS FFN "same" padding, asymmetric for even kernels
    x = ops.mul(ops.embed(enc.emb, ids, name="token_embd"), math.sqrt(cfg.dim), name="embd_scale")   # (T, dim)
    for il, lyr in enumerate(enc.layers):
        a = rel_attention(ops, cfg, lyr, x, il)
        x = ops.layer_norm(ops.add(x, a, name="attn_residual", layer=il), *lyr.norm1, cfg.norm_eps,
                           name="attn_norm", layer=il)
        h = ops.conv1d(np.ascontiguousarray(x.T), *lyr.ffn1, padding=same, name="ffn_up", layer=il)     # (F, T)
        h = ops.activation(h, cfg.ffn_act, name="ffn_act", layer=il)
        h = ops.conv1d(h, *lyr.ffn2, padding=same, name="ffn_down", layer=il)                             # (dim, T)
        x = ops.layer_norm(ops.add(x, np.ascontiguousarray(h.T), name="ffn_residual", layer=il), *lyr.norm2,
                           cfg.norm_eps, name="ffn_norm", layer=il)
    stats = ops.linear(x, enc.proj, enc.proj_b, name="enc_proj")                                        # (T, 2 C)
    c = cfg.flow_dim
    return (np.ascontiguousarray(x.T), np.ascontiguousarray(stats[:, :c].T), np.ascontiguousarray(stats[:, c:].T))


# ---- the whole model ------------------------------------------------------------------------

def default_noise(seed: int | None) -> NoiseFn:
    """Standard normal float32 noise from numpy's PCG64 seeded with `seed`."""
    rng = np.random.default_rng(seed)
    return lambda shape: rng.standard_normal(shape, dtype=np.float32)


class VitsModel:
    """A loaded VITS voice. `synthesize_ids(ids)` -> float32 waveform in [-1, 1]."""

    def __init__(self, config: VitsConfig, tensors: Mapping[str, np.ndarray | QTensor], backend: Backend,
                 origin: object = "<tensors>") -> None:
        self.config = config
        self.ops = Ops(backend)
        src = TensorSource(tensors, backend, origin)
        self.enc = load_text_encoder(config, src)
        self.dp = load_duration_predictor(config, src)
        self.flows = load_coupling_flows(config, src)
        self.dec = load_decoder(config, src)

    def synthesize_ids(self, ids: np.ndarray | list[int], *, noise_scale: float = 0.667, length_scale: float = 1.0,
                       noise_w: float = 0.8, noise: NoiseFn | None = None, seed: int | None = None) -> np.ndarray:
        """Phoneme ids (T,) -> waveform (n_frames * hop,) float32.

        noise(shape) supplies the standard-normal draws, in VITS' order: (2, T) for the
        duration predictor, then (flow_dim, n_frames) for the prior (default: numpy with
        `seed`). InputError on empty ids, ids outside the vocabulary or bad scales."""
        cfg, ops = self.config, self.ops
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise InputError("no phoneme ids to synthesize")
        if ids.min() < 0 or ids.max() >= cfg.n_vocab:
            raise InputError(f"phoneme ids must be in [0, {cfg.n_vocab}), got {ids.min()}..{ids.max()}")
        for nm, v in (("noise_scale", noise_scale), ("noise_w", noise_w)):
            if not (math.isfinite(v) and v >= 0):
                raise InputError(f"{nm} must be a finite number >= 0, got {v!r}")
        if not (math.isfinite(length_scale) and length_scale > 0):
            raise InputError(f"length_scale must be a finite number > 0, got {length_scale!r}")
        draw = noise or default_noise(seed)
        hidden, m_p, logs_p = text_encoder_forward(ops, cfg, self.enc, ids)
        logw = duration_predictor_reverse(ops, cfg, self.dp, hidden, draw((2, ids.size)), noise_w)     # (T,)
        # plain numpy: durations and the monotonic expansion (a 0/1 path, so a repeat is exact)
        w_ceil = np.ceil(np.exp(logw) * np.float32(length_scale)).astype(np.int64)
        n_frames = max(int(w_ceil.sum()), 1)
        m = np.zeros((cfg.flow_dim, n_frames), np.float32)
        logs = np.zeros((cfg.flow_dim, n_frames), np.float32)
        if w_ceil.sum() > 0:
            m[:] = np.repeat(m_p, w_ceil, axis=1)
            logs[:] = np.repeat(logs_p, w_ceil, axis=1)
        eps = np.asarray(draw((cfg.flow_dim, n_frames)), dtype=np.float32)
        z_p = m + eps * np.exp(logs) * np.float32(noise_scale)
        z = coupling_flows_reverse(ops, cfg, self.flows, z_p)
        return decoder_forward(ops, cfg, self.dec, z)
