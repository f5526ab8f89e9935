"""safetensors reader (own code: header parsed here, data memory-mapped).

Layout (huggingface/safetensors README): u64 little-endian header length N | N bytes of
JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}} |
data, offsets relative to the first byte after the header. Nothing but the header is
read at open; `array(name)` is a zero-copy view of the map.

The header is checked as strictly as the official library checks it (its Rust
`SafeTensors::read_metadata` + `Metadata::validate`, and serde_json's grammar): UTF-8 JSON
object, `__metadata__` null or string -> string, each entry a known dtype, a shape of
unsigned ints and two unsigned offsets; sorted by offsets, the entries tile the data
contiguously from 0, each holding exactly shape x dtype bytes, and the data ends at the
end of the file. Stricter than the official library: duplicate JSON keys (it keeps the
last one; another reader may keep the first), and headers over the `MAX_*` limits
(bytes, tensors, JSON separators) are refused. A well-formed file with a dtype edgeformer cannot
use (F8, BOOL, U8...) is an UnsupportedError; every malformed one is a FormatError.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.errors import FormatError, UnsupportedError, brief
from edgeformer.quant.qtypes import QTensor, QType

# Limits under the official ones, so that any header parses in well under 2 s and 256 MB
# (JSON of small values becomes ~10x its size in Python objects, a string up to 4x). Real
# headers are far smaller: ~100 bytes and ~12 separators/brackets a tensor, a few hundred
# to a few thousand tensors a file (a 90k-tensor MoE comes in 163 shards).
MAX_HEADER_BYTES = 16 << 20      # official: 100_000_000
MAX_TENSORS = 1 << 15
MAX_JSON_TOKENS = 1 << 19        # ',' ':' '[' '{' in the header (`json_tokens`)
MAX_DEPTH = 127                  # serde_json's recursion limit (128) refuses the 128th container
U64 = 2**64
_ENTRY_KEYS = frozenset({"dtype", "shape", "data_offsets"})

# safetensors dtype -> (numpy dtype of the raw elements, QType it maps to without conversion)
DTYPES: dict[str, tuple[np.dtype, QType]] = {
    "F32": (np.dtype("<f4"), QType.F32),
    "F16": (np.dtype("<f2"), QType.F16),
    "BF16": (np.dtype("<u2"), QType.BF16),   # raw bits, as QType.BF16 stores them
    "F64": (np.dtype("<f8"), QType.F64),
    "I8": (np.dtype("i1"), QType.I8),
    "I16": (np.dtype("<i2"), QType.I16),
    "I32": (np.dtype("<i4"), QType.I32),
    "I64": (np.dtype("<i8"), QType.I64),
}
# every dtype the format defines -> bits per element (safetensors `Dtype::bitsize`)
DTYPE_BITS = {"BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8,
              "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16,
              "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64,
              "I64": 64, "U64": 64}


@dataclass(frozen=True)
class STInfo:
    """One tensor entry: safetensors dtype name, shape, absolute [start, end) in the file."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def qtype(self) -> QType:
        return DTYPES[self.dtype][1]


class SafetensorsFile:
    """A parsed `.safetensors` file: `tensors` (name -> STInfo), `metadata` (the
    `__metadata__` dict, str -> str), `file_bytes`. Raises FormatError on anything the
    official library refuses (and the few stricter rules in the module docstring),
    UnsupportedError on a well-formed file with a dtype that has no QType."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.file_bytes = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise FormatError(self.path, "truncated safetensors file: no header length")
                n = int.from_bytes(head, "little")
                if n > MAX_HEADER_BYTES or 8 + n > self.file_bytes:
                    raise FormatError(self.path, f"corrupt safetensors header: length {n} in a "
                                                 f"{self.file_bytes}-byte file (limit {MAX_HEADER_BYTES})")
                raw = f.read(n)
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)   # not empty: 8 + n bytes
        except OSError as e:
            raise FormatError(self.path, f"cannot open: {e.strerror or e}") from None
        header = _parse_json(raw, self.path)
        metadata = header.pop("__metadata__", None)
        if metadata is not None and not (isinstance(metadata, dict)
                                         and all(isinstance(v, str) for v in metadata.values())):
            raise FormatError(self.path, f"corrupt safetensors header: __metadata__ must map strings "
                                         f"to strings, got {brief(metadata)}")
        if len(header) > MAX_TENSORS:
            raise FormatError(self.path, f"safetensors header lists {len(header)} tensors, over the "
                                         f"limit {MAX_TENSORS}")
        self.metadata: dict[str, str] = metadata or {}
        self.data_start = 8 + n
        entries = {name: self._entry(name, e) for name, e in header.items()}
        self._check_layout(entries)
        for name, (dtype, _, _) in entries.items():
            if dtype not in DTYPES:
                raise UnsupportedError(f"{self.path}: tensor {brief(name)}: safetensors dtype {dtype} "
                                       f"is not supported (supported: {', '.join(DTYPES)})")
        self._bytes = np.frombuffer(self._mm, dtype=np.uint8)
        self.tensors = {name: STInfo(dtype, shape, self.data_start + b, self.data_start + e)
                        for name, (dtype, shape, (b, e)) in entries.items()}

    def _entry(self, name: str, e: object) -> tuple[str, tuple[int, ...], tuple[int, int]]:
        """(dtype, shape, offsets) of one header entry, types checked as serde does."""
        if not isinstance(e, dict) or not _ENTRY_KEYS <= e.keys():
            raise self._bad(name, "header entry needs dtype, shape and data_offsets")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise self._bad(name, f"unknown safetensors dtype {brief(dtype)}")
        if not (type(shape) is list and all(type(d) is int and 0 <= d < U64 for d in shape)):
            raise self._bad(name, f"shape must be a list of unsigned 64-bit ints, got {brief(shape)}")
        if not (type(offs) is list and len(offs) == 2 and all(type(o) is int and 0 <= o < U64 for o in offs)):
            raise self._bad(name, f"data_offsets must be two unsigned 64-bit ints, got {brief(offs)}")
        return dtype, tuple(shape), (offs[0], offs[1])

    def _bad(self, name: str, what: str) -> FormatError:
        return FormatError(self.path, f"tensor {brief(name)}: {what}")

    def _check_layout(self, entries: dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]) -> None:
        """The official `Metadata::validate` rules: sorted by offsets, entries tile the data
        from 0 with no gap or overlap, each exactly its shape x dtype bytes (no u64
        overflow), and the data section ends at the end of the file."""
        end = 0
        for name, (dtype, shape, (b, e)) in sorted(entries.items(), key=lambda kv: kv[1][2]):
            if b != end or e < b:
                raise FormatError(self.path, f"tensor {brief(name)}: data_offsets [{b}, {e}] do not "
                                             f"start where the previous tensor ends ({end})")
            end = e
            count = 1
            for d in shape:
                count *= d
                if count >= U64:
                    raise FormatError(self.path, f"tensor {brief(name)}: shape {brief(list(shape))} "
                                                 f"overflows 64 bits")
            bits = count * DTYPE_BITS[dtype]
            if bits >= U64 or bits % 8:
                raise FormatError(self.path, f"tensor {brief(name)}: {dtype}{list(shape)} is not a "
                                             f"whole number of bytes below 2^64")
            if e - b != bits // 8:
                raise FormatError(self.path, f"tensor {brief(name)}: data_offsets [{b}, {e}] hold "
                                             f"{e - b} bytes, {dtype}{list(shape)} needs {bits // 8}")
        if self.data_start + end != self.file_bytes:
            raise FormatError(self.path, f"corrupt safetensors file: the tensors cover {end} data "
                                         f"bytes, the file has {self.file_bytes - self.data_start} "
                                         f"after the {self.data_start - 8}-byte header")

    def array(self, name: str) -> np.ndarray:
        """The tensor's raw elements as a read-only numpy view (BF16 as uint16 bits)."""
        t = self.tensors[name]
        dt = DTYPES[t.dtype][0]
        return self._bytes[t.start:t.end].view(dt).reshape(t.shape)

    def qtensor(self, name: str) -> QTensor:
        """The tensor as a QTensor of its own dtype, zero-copy."""
        t = self.tensors[name]
        return QTensor(self._bytes[t.start:t.end], t.qtype, t.shape)


class _Refused(Exception):
    """A JSON construct serde_json (or our limits) refuse, raised from a json hook."""


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")    # the only way a surrogate gets into a str
_NEGATIVE_ZERO = re.compile(rb"-0(?![0-9.eE])")          # Python reads -0 as the int 0, serde as -0.0


def json_tokens(raw: bytes) -> int:
    """The separators and opening brackets in a JSON text (in its strings too): an upper
    bound on its values, so on the Python objects it parses into, counted at C speed."""
    return sum(raw.count(c) for c in (b",", b":", b"[", b"{"))


def _parse_json(raw: bytes, path: Path) -> dict[str, Any]:
    """The header as a dict, parsed with serde_json's rules where Python's `json` is looser:
    strict UTF-8, no NaN/Infinity, no number out of f64 range, no lone surrogate, no `-0`
    read as an unsigned int, nesting at most MAX_DEPTH; and, stricter, no duplicate key and
    at most MAX_JSON_TOKENS separators and brackets (counted before parsing: they bound
    the Python objects the header becomes). The json hooks are only what serde's rules
    need on every input (a hook per value would make a 16 MiB header take seconds)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(path, f"corrupt safetensors header: not UTF-8 (byte {e.start})") from None
    tokens = json_tokens(raw)
    if tokens > MAX_JSON_TOKENS:
        raise FormatError(path, f"corrupt safetensors header: {tokens} JSON separators and brackets, "
                                f"over the limit {MAX_JSON_TOKENS}")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(items)
        if len(out) != len(items):
            seen: set[str] = set()
            for k, _ in items:
                if k in seen:
                    raise _Refused(f"duplicate key {brief(k)}")
                seen.add(k)
        return out

    def constant(name: str) -> Any:
        raise _Refused(f"{name} is not JSON")

    hooks: dict[str, Any] = {"object_pairs_hook": pairs, "parse_constant": constant}
    if _NEGATIVE_ZERO.search(raw):
        hooks["parse_int"] = lambda s: float(s) if s[0] == "-" else int(s)
    try:
        header = json.loads(text, **hooks)
    except json.JSONDecodeError as e:
        raise FormatError(path, f"corrupt safetensors header: not JSON ({e.msg} at byte {e.pos})") from None
    except _Refused as e:
        raise FormatError(path, f"corrupt safetensors header: {e}") from None
    except RecursionError:
        raise FormatError(path, f"corrupt safetensors header: nested deeper than {MAX_DEPTH}") from None
    except ValueError:   # an int of over 4300 digits (Python's limit); serde: out of f64 range
        raise FormatError(path, "corrupt safetensors header: number out of range") from None
    if not isinstance(header, dict):
        raise FormatError(path, "corrupt safetensors header: not a JSON object")
    if _SURROGATE_ESCAPE.search(raw):
        _check_values(header, 1, path)
    else:   # only unknown keys of an entry can nest or hold numbers serde refuses
        for name, entry in header.items():
            if isinstance(entry, dict) and len(entry) > 3 and name != "__metadata__":
                _check_values(entry, 2, path)
    return header


def _check_values(top: dict[str, Any] | list[Any], depth: int, path: Path) -> None:
    """What serde_json refuses and Python's json accepts, under `top` (at nesting `depth`):
    a lone surrogate escape, a container nested deeper than MAX_DEPTH, a number out of
    f64 range (an inf float, an int of over 1024 bits)."""
    stack: list[tuple[Any, int]] = [(top, depth)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(path, f"corrupt safetensors header: nested deeper than {MAX_DEPTH}")
        for x in (*v.keys(), *v.values()) if isinstance(v, dict) else v:
            if isinstance(x, (dict, list)):
                stack.append((x, depth + 1))
            elif isinstance(x, str) and not x.isascii():
                try:
                    x.encode("utf-8")
                except UnicodeEncodeError:
                    raise FormatError(path, f"corrupt safetensors header: lone surrogate escape in "
                                            f"{brief(x)}") from None
            elif (isinstance(x, float) and not math.isfinite(x)) or (type(x) is int and x.bit_length() > 1024):
                raise FormatError(path, f"corrupt safetensors header: number {brief(x)} out of range")
