"""Whisper (speech recognition): a conv + transformer audio encoder and a transformer
text decoder with cross-attention, over backend ops (transformers
`WhisperForConditionalGeneration`, OpenAI whisper `model.py`).

    encoder: mel (n_mels, 2*n_audio_ctx) -> conv1(k3,s1)+gelu -> conv2(k3,s2)+gelu
             -> + sinusoidal positions -> pre-LN blocks (models/encoder.py) -> LayerNorm
    decoder: token + learned positions -> pre-LN blocks [self-attn (causal, KV cache),
             cross-attn over the encoder output, gelu MLP] -> LayerNorm -> tied output

The 1-D convolutions (kernel 3, padding 1) run as im2col + `ops.linear`: the kernel's
(c_out, c_in, 3) weight is a (c_out, c_in*3) matrix over windows of 3 frames.
Tensor names (GGUF style): `enc.conv{1,2}.{weight,bias}`, `enc.position_embd.weight`,
`enc.blk.{i}.*` (encoder.py names), `enc.output_norm.*`; `dec.token_embd.weight`,
`dec.position_embd.weight`, `dec.blk.{i}.{attn_norm,attn_q,attn_k,attn_v,attn_output,
cross_attn_norm,cross_attn_q,cross_attn_k,cross_attn_v,cross_attn_output,ffn_norm,ffn_up,
ffn_down}.*`, `dec.output_norm.*`, optional `dec.output.weight` (else tied).
Decoding (greedy, beam, timestamps, long audio) is in `whisper_decode.py`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edgeformer.backends.base import Backend, Ops
from edgeformer.encoder_config import NORM_EPS, WhisperConfig
from edgeformer.errors import FormatError, InputError
from edgeformer.models.encoder import (Linear, Norm, TensorSource, encoder_forward, linear,
                                       load_encoder_layers, load_linear, load_norm, mlp)
from edgeformer.quant.qtypes import QTensor


# HF module path inside `model.{encoder,decoder}.layers.{i}.` -> our name inside `{enc,dec}.blk.{i}.`
_HF_LAYER = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.out_proj": "attn_output", "self_attn_layer_norm": "attn_norm",
    "encoder_attn.q_proj": "cross_attn_q", "encoder_attn.k_proj": "cross_attn_k",
    "encoder_attn.v_proj": "cross_attn_v", "encoder_attn.out_proj": "cross_attn_output",
    "encoder_attn_layer_norm": "cross_attn_norm", "fc1": "ffn_up", "fc2": "ffn_down",
    "final_layer_norm": "ffn_norm",
}
_HF_GLOBAL = {
    "model.encoder.conv1": "enc.conv1", "model.encoder.conv2": "enc.conv2",
    "model.encoder.embed_positions": "enc.position_embd", "model.encoder.layer_norm": "enc.output_norm",
    "model.decoder.embed_tokens": "dec.token_embd", "model.decoder.embed_positions": "dec.position_embd",
    "model.decoder.layer_norm": "dec.output_norm", "proj_out": "dec.output",
}
_HF_LAYER_RE = re.compile(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def whisper_name(hf_name: str) -> str:
    """Our tensor name for an HF `WhisperForConditionalGeneration` state-dict name;
    FormatError for an unknown one."""
    m = _HF_LAYER_RE.match(hf_name)
    if m and m.group(3) in _HF_LAYER:
        return f"{m.group(1)[:3]}.blk.{m.group(2)}.{_HF_LAYER[m.group(3)]}.{m.group(4)}"
    base, _, leaf = hf_name.rpartition(".")
    if base in _HF_GLOBAL and leaf in ("weight", "bias"):
        return f"{_HF_GLOBAL[base]}.{leaf}"
    raise FormatError("<whisper>", f"unknown Whisper tensor {hf_name!r}")


def whisper_tensors_from_hf(hf: Mapping[str, np.ndarray | QTensor]) -> dict[str, np.ndarray | QTensor]:
    """HF state (name -> array) renamed to our names; `proj_out` is dropped when it is
    the token embedding (tied), layouts are unchanged."""
    out = {whisper_name(k): v for k, v in hf.items()}
    w, e = out.get("dec.output.weight"), out.get("dec.token_embd.weight")
    if isinstance(w, np.ndarray) and isinstance(e, np.ndarray) and np.array_equal(w, e):
        del out["dec.output.weight"]
    return out


def _qtensor(a: np.ndarray | QTensor, shape: tuple[int, ...] | None = None) -> QTensor:
    """A float16/float32 array as a QTensor (other floats widened), optionally reshaped."""
    qt = a if isinstance(a, QTensor) else QTensor.from_array(
        np.ascontiguousarray(a if a.dtype in (np.float16, np.float32) else a.astype(np.float32)))
    return qt if shape is None else QTensor(qt.data, qt.qtype, shape)


@dataclass
class DecoderLayer:
    attn_norm: Norm
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    cross_norm: Norm
    cq: Linear
    ck: Linear
    cv: Linear
    co: Linear
    ffn_norm: Norm
    up: Linear
    down: Linear


class WhisperCache:
    """Self-attention keys/values of one decoded sequence: per layer (n_text_ctx, H, hd)
    float32 buffers and the number of positions filled (`length`)."""

    def __init__(self, cfg: WhisperConfig) -> None:
        hd = cfg.dim // cfg.n_text_heads
        shape = (cfg.n_text_ctx, cfg.n_text_heads, hd)
        self.k = [np.zeros(shape, np.float32) for _ in range(cfg.n_text_layers)]
        self.v = [np.zeros(shape, np.float32) for _ in range(cfg.n_text_layers)]
        self.length = 0

    def copy(self) -> "WhisperCache":
        """An independent copy (beam search forks hypotheses)."""
        c = WhisperCache.__new__(WhisperCache)
        c.k, c.v, c.length = [a.copy() for a in self.k], [a.copy() for a in self.v], self.length
        return c


class Whisper:
    """A Whisper model on a backend: `encode(mel)`, `cross_kv(audio)`, `decode(tokens,
    cache, cross)` -> logits."""

    def __init__(self, config: WhisperConfig, tensors: Mapping[str, np.ndarray | QTensor], backend: Backend,
                 origin: object = "<tensors>") -> None:
        self.config = c = config
        self.backend = backend
        self.ops = Ops(backend)
        t = {k: _qtensor(v) for k, v in tensors.items()}
        src = TensorSource(t, backend, origin)
        d = c.dim
        self.conv1 = self._conv(src, "enc.conv1", d, c.n_mels)
        self.conv2 = self._conv(src, "enc.conv2", d, d)
        self.enc_pos = src.array("enc.position_embd.weight")
        if self.enc_pos.shape != (c.n_audio_ctx, d):
            raise FormatError(origin, f"enc.position_embd.weight has shape {list(self.enc_pos.shape)}, "
                                      f"expected {[c.n_audio_ctx, d]}")
        self.enc_layers = load_encoder_layers(c.encoder(), src, prefix="enc.blk")
        self.enc_norm = load_norm(src, "enc.output_norm", d)
        self.tok_embd = src.linear("dec.token_embd", (c.vocab_size, d))
        self.dec_pos = src.linear("dec.position_embd", (c.n_text_ctx, d))
        self.output = src.linear("dec.output", (c.vocab_size, d)) if src.has("dec.output.weight") else self.tok_embd
        f = c.text_ffn_dim
        self.dec_layers = []
        for i in range(c.n_text_layers):
            p = f"dec.blk.{i}"
            self.dec_layers.append(DecoderLayer(
                load_norm(src, f"{p}.attn_norm", d), load_linear(src, f"{p}.attn_q", d, d),
                load_linear(src, f"{p}.attn_k", d, d), load_linear(src, f"{p}.attn_v", d, d),
                load_linear(src, f"{p}.attn_output", d, d), load_norm(src, f"{p}.cross_attn_norm", d),
                load_linear(src, f"{p}.cross_attn_q", d, d), load_linear(src, f"{p}.cross_attn_k", d, d),
                load_linear(src, f"{p}.cross_attn_v", d, d), load_linear(src, f"{p}.cross_attn_output", d, d),
                load_norm(src, f"{p}.ffn_norm", d), load_linear(src, f"{p}.ffn_up", f, d),
                load_linear(src, f"{p}.ffn_down", d, f)))
        self.dec_norm = load_norm(src, "dec.output_norm", d)

    def _conv(self, src: TensorSource, name: str, c_out: int, c_in: int) -> Linear:
        qt = src._get(f"{name}.weight")
        if tuple(qt.shape) != (c_out, c_in, 3):
            raise FormatError(src.origin, f"{name}.weight has shape {list(qt.shape)}, expected {[c_out, c_in, 3]}")
        # (c_out, c_in, 3) row-major is (c_out, c_in*3) with the tap index fastest: the im2col layout
        w = self.backend.prepare_weight(_qtensor(qt, (c_out, c_in * 3)), f"{name}.weight")
        return Linear(w, src.vector(f"{name}.bias", c_out))

    def _conv1d(self, x: np.ndarray, conv: Linear, stride: int, name: str) -> np.ndarray:
        """Kernel-3, padding-1 convolution of x (T, C) -> (T_out, C_out) via im2col."""
        t, ch = x.shape
        t_out = (t - 1) // stride + 1
        xp = np.pad(x, ((1, 1), (0, 0)))                                          # (T + 2, C)
        cols = np.stack([xp[k:k + stride * (t_out - 1) + 1:stride] for k in range(3)], axis=-1)  # (T_out, C, 3)
        return self.ops.linear(cols.reshape(t_out, ch * 3), conv.w, conv.b, name=name)

    def encode(self, mel: np.ndarray) -> np.ndarray:
        """mel (n_mels, 2*n_audio_ctx) log-mel features (audio/features.py) -> encoder
        output (n_audio_ctx, dim) float32. InputError for another shape."""
        c, ops = self.config, self.ops
        mel = np.asarray(mel, dtype=np.float32)
        if mel.shape != (c.n_mels, c.n_frames):
            raise InputError(f"Whisper input features must be {(c.n_mels, c.n_frames)}, got {mel.shape}")
        x = ops.activation(self._conv1d(np.ascontiguousarray(mel.T), self.conv1, 1, "conv1"), "gelu", name="conv1_act")
        x = ops.activation(self._conv1d(x, self.conv2, 2, "conv2"), "gelu", name="conv2_act")   # (n_audio_ctx, dim)
        x = ops.add(x, self.enc_pos, name="enc_pos")
        x = encoder_forward(ops, c.encoder(), self.enc_layers, x)
        return ops.layer_norm(x, self.enc_norm.w, self.enc_norm.b, NORM_EPS, name="enc_output_norm")

    def cross_kv(self, audio: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per decoder layer, cross-attention keys and values (n_audio_ctx, H, hd) of the
        encoder output, computed once per window and shared by every hypothesis."""
        c, ops = self.config, self.ops
        h, hd, s = c.n_text_heads, c.dim // c.n_text_heads, audio.shape[0]
        out = []
        for il, lyr in enumerate(self.dec_layers):
            k = linear(ops, audio, lyr.ck, "cross_attn_k", il).reshape(s, h, hd)   # (S, H, hd)
            v = linear(ops, audio, lyr.cv, "cross_attn_v", il).reshape(s, h, hd)
            out.append((k, v))
        return out

    def new_cache(self) -> WhisperCache:
        return WhisperCache(self.config)

    def decode(self, tokens: np.ndarray | list[int], cache: WhisperCache,
               cross: list[tuple[np.ndarray, np.ndarray]], all_logits: bool = False) -> np.ndarray:
        """Run T new tokens at positions cache.length.. and append them to the cache.
        Returns logits (T, vocab) if all_logits else (1, vocab) for the last token.
        InputError for ids out of range or past n_text_ctx."""
        x = self.decode_hidden(tokens, cache, cross)
        return self.logits(x if all_logits else x[-1:])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Final LayerNorm + output projection of decoder states (N, dim) -> (N, vocab);
        beam search stacks the last state of every hypothesis into one call."""
        x = self.ops.layer_norm(x, self.dec_norm.w, self.dec_norm.b, NORM_EPS, name="dec_output_norm")
        return self.ops.linear(x, self.output, None, name="output")

    def decode_hidden(self, tokens: np.ndarray | list[int], cache: WhisperCache,
                      cross: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """`decode` up to the last decoder block: (T, dim) states before the final norm."""
        c, ops = self.config, self.ops
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        t, p0 = ids.size, cache.length
        if t == 0:
            raise InputError("no tokens to decode")
        if p0 + t > c.n_text_ctx:
            raise InputError(f"Whisper decoder context is {c.n_text_ctx} tokens; {p0 + t} requested")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise InputError(f"token id out of range [0, {c.vocab_size})")
        h, hd = c.n_text_heads, c.dim // c.n_text_heads
        x = ops.add(ops.embed(self.tok_embd, ids, name="token_embd"),
                    ops.embed(self.dec_pos, np.arange(p0, p0 + t), name="position_embd"), name="dec_embd")
        for il, lyr in enumerate(self.dec_layers):
            a = ops.layer_norm(x, lyr.attn_norm.w, lyr.attn_norm.b, NORM_EPS, name="attn_norm", layer=il)
            cache.k[il][p0:p0 + t] = linear(ops, a, lyr.k, "attn_k", il).reshape(t, h, hd)
            cache.v[il][p0:p0 + t] = linear(ops, a, lyr.v, "attn_v", il).reshape(t, h, hd)
            q = linear(ops, a, lyr.q, "attn_q", il).reshape(t, h, hd)                     # (T, H, hd)
            a = ops.attention(q, cache.k[il][:p0 + t], cache.v[il][:p0 + t], scale=hd ** -0.5,
                              causal=True, name="attn", layer=il)
            x = ops.add(x, linear(ops, a.reshape(t, c.dim), lyr.o, "attn_output", il), name="attn_residual", layer=il)
            a = ops.layer_norm(x, lyr.cross_norm.w, lyr.cross_norm.b, NORM_EPS, name="cross_attn_norm", layer=il)
            q = linear(ops, a, lyr.cq, "cross_attn_q", il).reshape(t, h, hd)
            a = ops.attention(q, cross[il][0], cross[il][1], scale=hd ** -0.5, causal=False,
                              name="cross_attn", layer=il)
            x = ops.add(x, linear(ops, a.reshape(t, c.dim), lyr.co, "cross_attn_output", il),
                        name="cross_attn_residual", layer=il)
            a = ops.layer_norm(x, lyr.ffn_norm.w, lyr.ffn_norm.b, NORM_EPS, name="ffn_norm", layer=il)
            x = ops.add(x, mlp(ops, a, lyr.up, lyr.down, None, "gelu", il), name="ffn_residual", layer=il)
        cache.length = p0 + t
        return x

