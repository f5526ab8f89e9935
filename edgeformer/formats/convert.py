"""HF directory or GGUF file -> GGUF file llama.cpp loads, with optional requantization.

Tensor names and metadata keys are llama.cpp's (`convert_hf_to_gguf.py`): the
Checkpoint already uses GGUF names, `DecoderConfig.to_gguf()` gives the `{arch}.*` keys,
`hf_vocab.py` the `tokenizer.*` keys. The quantization rule is llama.cpp's: 1-D tensors
(norms, biases) stay F32; a 2-D+ weight takes the target type when its row length is a
multiple of the type's block size, else falls back (K-quants to llama.cpp's legacy
type, then F16; reported).
"""
from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.errors import UnsupportedError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.checkpoint import LazyTensors
from edgeformer.formats.gguf import GGUFFile, TensorToWrite, write_gguf
from edgeformer.formats.hf import to_float32
from edgeformer.formats.hf_vocab import gguf_tokenizer_metadata
from edgeformer.formats.tensor_map import extra_gguf_tensors
from edgeformer.quant.dequant import dequantize
from edgeformer.quant.qtypes import QTensor, QType
from edgeformer.quant.quantize import quantize

GGML_QUANT_VERSION = 2  # ggml.h GGML_QNT_VERSION, written as general.quantization_version

# target qtype -> llama.cpp `enum llama_ftype` (gguf.LlamaFileType), general.file_type
FILE_TYPES = {
    QType.F32: 0, QType.F16: 1, QType.Q4_0: 2, QType.Q4_1: 3, QType.Q8_0: 7, QType.Q5_0: 8,
    QType.Q5_1: 9, QType.Q2_K: 10, QType.Q3_K: 11, QType.Q4_K: 14, QType.Q5_K: 16,
    QType.Q6_K: 18, QType.IQ4_NL: 25, QType.IQ4_XS: 30, QType.BF16: 32,
}
# Target types convert can write: those edgeformer.quant can quantize to.
TARGETS = tuple(q for q in FILE_TYPES if q not in (QType.IQ4_NL, QType.IQ4_XS))

# llama.cpp `llama_tensor_get_type` (llama-quant.cpp): what a K-quant falls back to when a
# row is not a multiple of 256. llama.cpp uses IQ4_NL for Q2_K/Q3_K; we have no IQ4_NL
# quantizer, so Q4_0 (llama.cpp's choice before IQ4_NL existed).
K_FALLBACK = {QType.Q2_K: QType.Q4_0, QType.Q3_K: QType.Q4_0, QType.Q4_K: QType.Q5_0,
              QType.Q5_K: QType.Q5_1, QType.Q6_K: QType.Q8_0}


@dataclass
class ConvertReport:
    """What `convert` wrote: per-qtype tensor counts, fallbacks as (name, wanted, got),
    and the output size in bytes."""

    path: Path
    qtype_counts: Counter = field(default_factory=Counter)
    fallbacks: list[tuple[str, QType, QType]] = field(default_factory=list)
    file_bytes: int = 0


def plan_qtype(shape: tuple[int, ...], source: QType, target: QType) -> QType:
    """The type a tensor is stored as when converting to `target` (llama.cpp's rule):
    non-float sources keep their type; 1-D tensors become F32; others take `target` if
    the row length is a multiple of its block size, else the K-quant fallback
    (`K_FALLBACK`) if that fits, else F16."""
    if not (source.is_float or source.block_size > 1):
        return source  # integer tensors are copied as they are
    if len(shape) <= 1:
        return QType.F32
    for q in (target, K_FALLBACK.get(target)):
        if q is not None and shape[-1] % q.block_size == 0:
            return q
    return QType.F16


def _loader(get: Callable[[str], QTensor], name: str, target: QType) -> Callable[[], QTensor]:
    """What writes tensor `name`: `get` it, then `requantize` it to `target`."""
    return lambda: requantize(get(name), target)


def requantize(t: QTensor, target: QType) -> QTensor:
    """`t` stored as `target`: raw bytes when the type already matches, else via float32
    by `edgeformer.quant.quantize` (F16 by numpy rounding, BF16 round-to-nearest-even like
    gguf-py, block types by llama.cpp's reference quantizers)."""
    if t.qtype == target:
        return t
    a = to_float32(t) if t.qtype.is_float else np.asarray(dequantize(t), dtype=np.float32).reshape(t.shape)
    return quantize(a, target)


def _tensor_order(name: str) -> tuple:
    m = re.match(r"blk\.(\d+)\.", name)
    if m:
        return (1, int(m.group(1)), name)
    return (0 if name.startswith("token_embd") else 2, 0, name)


def hf_metadata(ckpt: Any, name: str | None) -> dict[str, Any]:
    """GGUF metadata for an HF checkpoint: general.*, config.to_gguf(), tokenizer.*."""
    md: dict[str, Any] = {"general.architecture": ckpt.config.arch,
                          "general.name": name or ckpt.path.name}
    md.update(ckpt.config.to_gguf())
    if (ckpt.path / "tokenizer.json").is_file() or (ckpt.path / "tokenizer.model").is_file():
        md.update(gguf_tokenizer_metadata(ckpt.path, ckpt.config.vocab_size))
    else:
        warnings.warn(f"{ckpt.path}: no tokenizer.json or tokenizer.model; the GGUF will have "
                      f"no vocabulary", stacklevel=2)
    if ckpt.chat_template and "tokenizer.chat_template" not in md:
        md["tokenizer.chat_template"] = ckpt.chat_template
    return md


def convert(src: str | os.PathLike, out: str | os.PathLike, qtype: QType | str = QType.F16,
            name: str | None = None,
            on_tensor: Callable[[int, int, str, QType], None] | None = None) -> ConvertReport:
    """Write `src` (HF model directory or GGUF file) as a GGUF v3 file at `out`, weights in
    `qtype` by `plan_qtype`'s rule. Tensors are read, converted and written one at a time.
    `on_tensor(i, n, name, stored_qtype)` is called after the i-th of n (progress). Raises FormatError /
    UnsupportedError / ConfigError for bad or unsupported input, UnsupportedError for a
    target type convert cannot write."""
    target = QType.from_name(qtype) if isinstance(qtype, str) else QType.from_id(qtype)
    if target not in TARGETS:
        raise UnsupportedError(f"cannot convert to {target.name}; targets: "
                               f"{', '.join(q.name for q in TARGETS)}")
    src = Path(src)
    value_types: dict = {}
    array_types: dict = {}
    get: Callable[[str], QTensor]
    if src.is_file():
        g = GGUFFile(src)  # GGUF -> GGUF: copy metadata with its exact types, no config needed
        md = dict(g.metadata)
        value_types, array_types = dict(g.value_types), dict(g.array_types)
        infos = {n: (t.qtype, t.shape) for n, t in g.tensors.items()}
        get = g.tensor
        if name:
            md["general.name"] = name
    else:
        ckpt = load_checkpoint(src)
        assert isinstance(ckpt.tensors, LazyTensors)   # what every reader returns
        md = hf_metadata(ckpt, name)
        infos = {n: ckpt.tensors.infos.get(n) or (ckpt.tensors[n].qtype, ckpt.tensors[n].shape)
                 for n in ckpt.tensors}
        # rope data llama.cpp's converter derives from the config (llama3 rope_freqs,
        # longrope factors) goes into the file as F32 tensors, as it does there
        extra = {n: QTensor.from_array(np.ascontiguousarray(a, dtype=np.float32))
                 for n, a in extra_gguf_tensors(ckpt.config).items() if n not in infos}
        infos.update({n: (t.qtype, t.shape) for n, t in extra.items()})
        get = lambda n: extra[n] if n in extra else ckpt.tensors[n]  # noqa: E731
    md.pop("general.alignment", None)  # our writer's default (32) is llama.cpp's
    md["general.file_type"] = np.uint32(FILE_TYPES[target])
    md["general.quantization_version"] = np.uint32(GGML_QUANT_VERSION)
    for k in ("general.file_type", "general.quantization_version"):
        value_types.pop(k, None)

    report = ConvertReport(Path(out))
    specs = []
    for tname in sorted(infos, key=_tensor_order):
        src_q, shape = infos[tname]
        q = plan_qtype(tuple(shape), src_q, target)
        if q != target and len(shape) > 1 and (src_q.is_float or src_q.block_size > 1):
            report.fallbacks.append((tname, target, q))
        report.qtype_counts[q] += 1
        specs.append(TensorToWrite(tname, q, tuple(shape), _loader(get, tname, q)))
    index = {t.name: i for i, t in enumerate(specs)}
    done = (lambda t: on_tensor(index[t.name] + 1, len(specs), t.name, t.qtype)) if on_tensor else None
    report.file_bytes = write_gguf(out, md, specs, value_types=value_types, array_types=array_types,
                                   on_tensor=done)
    return report
