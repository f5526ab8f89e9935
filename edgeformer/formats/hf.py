"""Hugging Face model directory -> `Checkpoint` in the GGUF convention.

A directory holds `config.json`, weights as `model.safetensors` or a sharded
`model.safetensors.index.json` + shards, and optionally `tokenizer.json`,
`tokenizer_config.json`, `chat_template.jinja` / `chat_template.json`.
Tensor names and layouts are mapped once by `formats/tensor_map.py`.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.config import DecoderConfig
from edgeformer.errors import ConfigError, FormatError, UnsupportedError, brief
from edgeformer.formats.checkpoint import Checkpoint, LazyTensors, TokenizerSpec
from edgeformer.formats.safetensors import MAX_JSON_TOKENS, SafetensorsFile, json_tokens
from edgeformer.formats.tensor_map import hf_to_gguf_name, transform_hf_tensor
from edgeformer.quant.qtypes import QTensor, QType


# config.json, the shard index, tokenizer_config.json: real ones are far smaller (DeepSeek
# V3's index of 91k tensors: ~9 MB, 183k separators); a JSON value is a Python object of
# ~30-100 bytes, so the separators and brackets (MAX_JSON_TOKENS, as for a safetensors
# header) bound the memory and time a file parses into
MAX_JSON_BYTES = 16 << 20


def read_json(path: Path) -> Any:
    """Parsed JSON file; FormatError naming the file if it is unreadable, over
    MAX_JSON_BYTES or MAX_JSON_TOKENS (`safetensors.json_tokens`), invalid or nested too
    deep for the parser."""
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise FormatError(path, f"{size} bytes, over the {MAX_JSON_BYTES} a JSON file here may have")
        raw = path.read_bytes()
        if json_tokens(raw) > MAX_JSON_TOKENS:
            raise FormatError(path, f"{json_tokens(raw)} JSON separators and brackets, over the limit "
                                    f"{MAX_JSON_TOKENS}")
        return json.loads(raw.decode("utf-8"))
    except OSError as e:
        raise FormatError(path, f"cannot read: {e.strerror or e}") from None
    except ValueError as e:   # not UTF-8, not JSON, an int of over 4300 digits
        raise FormatError(path, f"invalid JSON: {brief(str(e))}") from None
    except RecursionError:
        raise FormatError(path, "invalid JSON: nested too deep") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """`read_json`, and FormatError unless the file holds a JSON object."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise FormatError(path, f"not a JSON object: {brief(obj)}")
    return obj


def open_shards(d: Path) -> dict[str, SafetensorsFile]:
    """HF tensor name -> the SafetensorsFile holding it, from `model.safetensors` or the
    sharded index. FormatError if neither exists, a shard is missing, or the index names a
    tensor its shard does not hold."""
    index = d / "model.safetensors.index.json"
    single = d / "model.safetensors"
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise FormatError(index, "no weight_map")
        files: dict[str, SafetensorsFile] = {}
        out = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or any(c in shard for c in "/\\\0") or shard.startswith("."):
                raise FormatError(index, f"bad shard file name {brief(shard)} for {brief(name)}")
            if shard not in files:
                if not (d / shard).is_file():
                    raise FormatError(index, f"shard {brief(shard)} (holding {brief(name)}) is missing")
                files[shard] = SafetensorsFile(d / shard)
            if name not in files[shard].tensors:
                raise FormatError(d / shard, f"tensor {brief(name)} listed in the index is not in this shard")
            out[name] = files[shard]
        return out
    if single.is_file():
        f = SafetensorsFile(single)
        return {name: f for name in f.tensors}
    if any(d.glob("*.bin")) or any(d.glob("*.pt")):
        raise FormatError(d, "only safetensors weights are supported (found .bin/.pt files)")
    raise FormatError(d, "no model.safetensors or model.safetensors.index.json")


def hf_chat_template(d: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """The chat template, looked up as llama.cpp's `gguf.SpecialVocab` does:
    tokenizer_config.json `chat_template` first, else `chat_template.jinja`, else
    `chat_template.json`. A list of named templates yields the one named "default"."""
    tmpl = tokenizer_config.get("chat_template")
    if tmpl is None and (d / "chat_template.jinja").is_file():
        tmpl = (d / "chat_template.jinja").read_text(encoding="utf-8")
    elif tmpl is None and (d / "chat_template.json").is_file():
        tmpl = read_json_object(d / "chat_template.json").get("chat_template")
    if isinstance(tmpl, list):
        tmpl = next((t.get("template") for t in tmpl if isinstance(t, dict) and t.get("name") == "default"), None)
    return tmpl if isinstance(tmpl, str) else None


def load_hf(path: str | os.PathLike) -> Checkpoint:
    """Checkpoint from an HF model directory, tensors under GGUF names and layout.

    Float tensors stay in their stored dtype (F32/F16/BF16 -> QType F32/F16/BF16, a memmap
    view, no conversion) unless tensor_map transforms them; a transformed tensor is kept in
    the stored dtype when that is exact, else stored as F32. Raises FormatError for a
    missing config.json, corrupt safetensors, a missing shard, two HF tensors mapping to
    one GGUF name; UnsupportedError/ConfigError from the config for unsupported models.
    """
    d = Path(path)
    if not (d / "config.json").is_file():
        raise FormatError(d, "not an HF model directory: no config.json")
    hf_cfg = read_json_object(d / "config.json")
    try:
        config = DecoderConfig.from_hf(hf_cfg)
    except (UnsupportedError, ConfigError) as e:  # add the file to the message
        raise type(e)(f"{d / 'config.json'}: {e}") from None
    shards = open_shards(d)
    loaders, infos = {}, {}
    names: dict[str, str] = {}   # GGUF name -> the HF name mapped to it
    for hf_name, st in shards.items():
        gname = hf_to_gguf_name(config.arch, hf_name)
        if gname is None:
            continue  # e.g. rotary inv_freq buffers
        if gname in names:
            raise FormatError(d, f"{brief(hf_name)} and {brief(names[gname])} both map to {gname!r}")
        names[gname] = hf_name
        loaders[gname] = tensor_loader(config, st, hf_name, gname)
        info = st.tensors[hf_name]
        infos[gname] = (info.qtype, info.shape)
    tok_cfg = read_json_object(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
    tok_json = d / "tokenizer.json"
    files = {id(st): st for st in shards.values()}.values()
    return Checkpoint(
        path=d, format="hf", config=config, tensors=LazyTensors(loaders, infos), metadata=hf_cfg,
        tokenizer=TokenizerSpec(tokenizer_json=tok_json if tok_json.is_file() else None,
                                tokenizer_config=tok_cfg),
        chat_template=hf_chat_template(d, tok_cfg),
        file_bytes=sum(st.file_bytes for st in files))


def tensor_loader(config: DecoderConfig, st: SafetensorsFile, hf_name: str, gname: str) -> Callable[[], QTensor]:
    """What loads HF tensor `hf_name` of `st` as GGUF tensor `gname` (`transform_to_qtensor`)."""
    return lambda: transform_to_qtensor(config, gname, st.qtensor(hf_name))


def transform_to_qtensor(config: DecoderConfig, gname: str, raw: QTensor) -> QTensor:
    """Apply tensor_map's transform to a float QTensor, keeping its qtype where exact.

    The transform sees float32 (numpy has no bfloat16, and e.g. Gemma's +1 on norm weights
    must not round in f16); an unchanged result returns the raw memmap view."""
    if not raw.qtype.is_float:
        return raw
    a = to_float32(raw)
    out = transform_hf_tensor(config, gname, a)
    if out is a or (out.shape == a.shape and np.array_equal(out, a)):
        return raw
    out = np.ascontiguousarray(out, dtype=np.float32)
    if raw.qtype == QType.F16:
        h = out.astype(np.float16)
        if np.array_equal(h.astype(np.float32), out, equal_nan=True):
            return QTensor.from_array(h)
    elif raw.qtype == QType.BF16:
        bits = out.view(np.uint32)
        if not np.any(bits & 0xFFFF):  # exactly representable in bf16
            return QTensor((bits >> 16).astype(np.uint16).reshape(-1).view(np.uint8), QType.BF16, out.shape)
    return QTensor.from_array(out)


def to_float32(t: QTensor) -> np.ndarray:
    """A float QTensor (F32/F16/BF16/F64) as a float32 array of its shape."""
    if t.qtype == QType.F32:
        return t.data.view(np.float32).reshape(t.shape)
    if t.qtype == QType.F16:
        return t.data.view(np.float16).reshape(t.shape).astype(np.float32)
    if t.qtype == QType.BF16:
        return (t.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(t.shape)
    if t.qtype == QType.F64:
        return t.data.view(np.float64).reshape(t.shape).astype(np.float32)
    raise UnsupportedError(f"to_float32 takes a float QTensor, got {t.qtype.name}")
