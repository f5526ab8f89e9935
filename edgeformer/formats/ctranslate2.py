"""CTranslate2 model directories (`model.bin` + `config.json` + vocabulary/tokenizer),
read without ctranslate2 at run time.

`model.bin` layout (CTranslate2 `python/ctranslate2/specs/model_spec.py`
`ModelSpec._serialize`, read back by `src/models/model.cc` `Model::load`), little-endian:

    u32 binary_version                       (we read 2..6; 6 is CURRENT_BINARY_VERSION)
    [version >= 2] string spec_name, u32 spec_revision
    u32 n_variables, then per variable (sorted by name):
        string name; u8 rank; u32 dims[rank];
        [version >= 4] u8 dtype id, u32 n_bytes   (ids: float32, int8, int16, int32, float16, bfloat16)
        [version <  4] u8 item size, u32 n_items  (4 -> float32, 2 -> int16, 1 -> int8)
        n_bytes of row-major data
    [version >= 3] u32 n_aliases, then pairs (string alias, string target)
    string = u16 length (including a trailing NUL) + bytes

Scalars (rank 0) are model attributes (`decoder/num_heads`, `decoder/pre_norm`...).
int8/int16 weights come with a `{name}_scale` variable; we dequantize them to float32
(per-row scale for int8, per-tensor for int16: value / scale, as `ops::Dequantize`).
`whisper_tensors` maps a WhisperSpec to edgeformer's Whisper tensor names.
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeformer.errors import FormatError, UnsupportedError

MAX_BINARY_VERSION = 6
MAX_RANK = 8           # CTranslate2 variables have rank <= 4; numpy stops at 64
# dtype id -> numpy type; id 5 = bfloat16 (raw uint16)
_DTYPES: tuple[type[np.generic] | None, ...] = (np.float32, np.int8, np.int16, np.int32, np.float16, None)
_ITEM_SIZE_DTYPES: dict[int, type[np.generic]] = {4: np.float32, 2: np.int16, 1: np.int8}


@dataclass
class CT2Model:
    """A parsed `model.bin`: spec name/revision, variables (name -> numpy array, float16
    weights kept as float16, bfloat16 widened to float32), aliases resolved into
    `variables`, and the directory's `config.json` (empty dict if absent)."""

    path: Path
    binary_version: int
    spec: str
    spec_revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def scalar(self, name: str) -> int | float:
        """A rank-0 attribute as a Python number; FormatError if missing or not one value."""
        if name not in self.variables:
            raise FormatError(self.path, f"missing attribute {name!r}")
        a = self.variables[name]
        if a.size != 1:
            raise FormatError(self.path, f"attribute {name!r} holds {a.size} values, expected 1")
        return a.reshape(()).item()

    def count(self, name: str) -> int:
        """A scalar attribute that must be a positive integer (a head count...)."""
        v = self.scalar(name)
        if not (isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())) or v <= 0:
            raise FormatError(self.path, f"attribute {name!r} must be a positive integer, got {v!r}")
        return int(v)


class _Reader:
    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf, self.off, self.path = buf, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.off + n > len(self.buf):
            raise FormatError(self.path, f"truncated: {what} needs {n} bytes at offset {self.off}, "
                                         f"file has {len(self.buf)}")
        b = self.buf[self.off:self.off + n]
        self.off += n
        return b

    def u(self, fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.u("H", f"{what} length")
        raw = bytes(self.take(n, what))
        try:
            return raw.split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError as e:
            raise FormatError(self.path, f"{what} is not UTF-8 at offset {self.off - n}") from e


def _model_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "model.bin"
    if not p.is_file():
        raise FormatError(p, "no such CTranslate2 model file")
    return p


def read_ctranslate2(path: str | os.PathLike) -> CT2Model:
    """Parse a CTranslate2 `model.bin` (or the directory holding it, whose config.json is
    read too). FormatError for a file that is not one (bad version, truncation, bad
    dtype, shape/size mismatch); the whole file is read into memory (tiny/base Whisper
    are < 300 MB)."""
    p = _model_file(path)
    data = p.read_bytes()
    r = _Reader(memoryview(data), p)
    if len(data) < 8:
        raise FormatError(p, "not a CTranslate2 model.bin (file too small)")
    version = r.u("I", "binary version")
    if not 1 <= version <= MAX_BINARY_VERSION:
        raise FormatError(p, f"not a CTranslate2 model.bin (binary version {version}; "
                             f"supported 1..{MAX_BINARY_VERSION})")
    spec, revision = "", 1
    if version >= 2:
        spec = r.string("spec name")
        revision = r.u("I", "spec revision")
    n_vars = r.u("I", "variable count")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = r.string("variable name")
        rank = r.u("B", f"{name} rank")
        if rank > MAX_RANK:
            raise FormatError(p, f"{name}: rank {rank} is over {MAX_RANK}")
        dims = tuple(r.u("I", f"{name} dims") for _ in range(rank))
        if version >= 4:
            type_id = r.u("B", f"{name} dtype")
            if type_id >= len(_DTYPES):
                raise FormatError(p, f"{name}: unknown dtype id {type_id}")
            n_bytes = r.u("I", f"{name} size")
            dtype = _DTYPES[type_id]
        else:
            item = r.u("B", f"{name} item size")
            if item not in _ITEM_SIZE_DTYPES:
                raise FormatError(p, f"{name}: unknown item size {item}")
            dtype = _ITEM_SIZE_DTYPES[item]
            n_bytes = r.u("I", f"{name} size") * item
        raw = r.take(n_bytes, f"{name} data")
        n = math.prod(dims)
        if n * (2 if dtype is None else np.dtype(dtype).itemsize) != n_bytes:
            raise FormatError(p, f"{name}: {n_bytes} bytes do not hold shape {list(dims)}")
        if dtype is None:    # bfloat16: the high half of a float32
            arr = (np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        variables[name] = arr.reshape(dims)
    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(r.u("I", "alias count")):
            alias, target = r.string("alias"), r.string("alias target")
            if target not in variables:
                raise FormatError(p, f"alias {alias!r} points to missing variable {target!r}")
            aliases[alias] = target
            variables[alias] = variables[target]
    if r.off != len(data):
        raise FormatError(p, f"{len(data) - r.off} unexpected trailing bytes")
    config: dict = {}
    cfg_path = p.parent / "config.json"
    if cfg_path.is_file():
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise FormatError(cfg_path, f"invalid JSON: {type(e).__name__}: {str(e)[:200]}") from None
        if not isinstance(config, dict):
            raise FormatError(cfg_path, f"expected a JSON object, got {type(config).__name__}")
    return CT2Model(p, version, spec, revision, variables, aliases, config)


def _float(m: CT2Model, name: str) -> np.ndarray:
    """A weight as float16/float32, int8/int16 dequantized with its `_scale`."""
    a = m.variables[name]
    if a.dtype in (np.float16, np.float32):
        return a
    if a.dtype in (np.int8, np.int16):
        scale = m.variables.get(f"{name}_scale")
        if scale is None:
            raise FormatError(m.path, f"{name} is {a.dtype} without {name}_scale")
        s = scale.astype(np.float32)
        if s.size != 1 and (a.ndim == 0 or s.shape != (a.shape[0],)):
            raise FormatError(m.path, f"{name}_scale has shape {list(s.shape)}; expected one value per row "
                                      f"of {name} {list(a.shape)} or a single value")
        if not (np.isfinite(s).all() and (s != 0).all()):
            raise FormatError(m.path, f"{name}_scale holds zero, NaN or infinite values")
        s = s.reshape(-1, *([1] * (a.ndim - 1))) if s.size != 1 else s.reshape(())
        return (a.astype(np.float32) / s).astype(np.float32)
    raise FormatError(m.path, f"{name}: unexpected dtype {a.dtype}")


def _layer_count(m: CT2Model, prefix: str) -> int:
    n = 0
    while f"{prefix}/layer_{n}/ffn/linear_0/weight" in m.variables:
        n += 1
    return n


def _split_rows(m: CT2Model, name: str, a: np.ndarray, parts: int) -> list[np.ndarray]:
    if a.ndim == 0 or a.shape[0] % parts:
        raise FormatError(m.path, f"fused projection {name} of shape {list(a.shape)} does not split in {parts}")
    return np.split(a, parts, axis=0)


def _check_ranks(m: CT2Model, out: dict[str, np.ndarray]) -> None:
    """Each tensor a non-empty float of its rank: norms and biases 1-D, convolutions
    (out, in, kernel), the rest 2-D."""
    for k, a in out.items():
        want = 1 if "norm" in k or k.endswith(".bias") else 3 if ".conv" in k else 2
        if a.ndim != want or a.dtype.kind != "f" or a.size == 0:
            raise FormatError(m.path, f"{k}: a {a.dtype} tensor of shape {list(a.shape)}, "
                                      f"expected a non-empty {want}-D float tensor")


def whisper_tensors(m: CT2Model) -> dict[str, np.ndarray]:
    """Edgeformer Whisper tensors (see models/whisper.py) from a WhisperSpec model.

    CTranslate2 fuses q/k/v of self-attention (`linear_0`, 3*dim rows) and k/v of
    cross-attention (`attention/linear_1`, 2*dim rows); they are split here. The k bias
    (zeros: Whisper's k_proj has none) is dropped. UnsupportedError for other specs."""
    if m.spec != "WhisperSpec":
        raise UnsupportedError(f"{m.path}: CTranslate2 spec {m.spec or '(none)'!r} is not Whisper (WhisperSpec)")
    v = m.variables
    out: dict[str, np.ndarray] = {}

    def lin(dst: str, src: str, bias: bool = True) -> None:
        out[f"{dst}.weight"] = _float(m, f"{src}/weight")
        if bias:
            out[f"{dst}.bias"] = v[f"{src}/bias"]

    def ln(dst: str, src: str) -> None:
        out[f"{dst}.weight"], out[f"{dst}.bias"] = v[f"{src}/gamma"], v[f"{src}/beta"]

    def qkv(dst: str, src: str) -> None:
        wq, wk, wv = _split_rows(m, f"{src}/weight", _float(m, f"{src}/weight"), 3)
        bq, _, bv = _split_rows(m, f"{src}/bias", v[f"{src}/bias"], 3)
        out.update({f"{dst}_q.weight": wq, f"{dst}_q.bias": bq, f"{dst}_k.weight": wk,
                    f"{dst}_v.weight": wv, f"{dst}_v.bias": bv})

    def self_attn_and_ffn(d: str, s: str) -> None:     # what encoder and decoder layers share
        ln(f"{d}.attn_norm", f"{s}/self_attention/layer_norm")
        qkv(f"{d}.attn", f"{s}/self_attention/linear_0")
        lin(f"{d}.attn_output", f"{s}/self_attention/linear_1")
        ln(f"{d}.ffn_norm", f"{s}/ffn/layer_norm")
        lin(f"{d}.ffn_up", f"{s}/ffn/linear_0")
        lin(f"{d}.ffn_down", f"{s}/ffn/linear_1")

    try:
        for i in (1, 2):
            lin(f"enc.conv{i}", f"encoder/conv{i}")
        out["enc.position_embd.weight"] = v["encoder/position_encodings/encodings"]
        for i in range(_layer_count(m, "encoder")):
            self_attn_and_ffn(f"enc.blk.{i}", f"encoder/layer_{i}")
        ln("enc.output_norm", "encoder/layer_norm")
        out["dec.token_embd.weight"] = _float(m, "decoder/embeddings/weight")
        out["dec.position_embd.weight"] = v["decoder/position_encodings/encodings"]
        for i in range(_layer_count(m, "decoder")):
            s, d = f"decoder/layer_{i}", f"dec.blk.{i}"
            self_attn_and_ffn(d, s)
            ln(f"{d}.cross_attn_norm", f"{s}/attention/layer_norm")
            lin(f"{d}.cross_attn_q", f"{s}/attention/linear_0")
            wk, wv = _split_rows(m, f"{s}/attention/linear_1/weight", _float(m, f"{s}/attention/linear_1/weight"), 2)
            _, bv = _split_rows(m, f"{s}/attention/linear_1/bias", v[f"{s}/attention/linear_1/bias"], 2)
            out.update({f"{d}.cross_attn_k.weight": wk, f"{d}.cross_attn_v.weight": wv,
                        f"{d}.cross_attn_v.bias": bv})
            lin(f"{d}.cross_attn_output", f"{s}/attention/linear_2")
        ln("dec.output_norm", "decoder/layer_norm")
        if "decoder/projection/weight" in v:
            out["dec.output.weight"] = _float(m, "decoder/projection/weight")
    except KeyError as e:
        raise FormatError(m.path, f"WhisperSpec model lacks variable {e.args[0]!r}") from None
    _check_ranks(m, out)
    return out


def whisper_attributes(m: CT2Model) -> Mapping[str, int]:
    """Head counts stored as attributes: {"n_audio_heads", "n_text_heads"}."""
    return {"n_audio_heads": m.count("encoder/num_heads"), "n_text_heads": m.count("decoder/num_heads")}
