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
last one; another reader may keep the first), headers over `MAX_HEADER_BYTES` and more
than `MAX_TENSORS` entries are refused. A well-formed file with a dtype edgeformer cannot
use (F8, BOOL, U8...) is an UnsupportedError; every malformed one is a FormatError.
"""
from __future__ import annotations

import json
import math
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeformer.errors import FormatError, UnsupportedError, brief
from edgeformer.quant.qtypes import QTensor, QType

# The official limit is 100_000_000 bytes; ours is lower so that any header parses in
# well under 2 s and 256 MB (JSON of small values becomes ~10x its size in Python
# objects). Real headers are far smaller: ~100 bytes per tensor, 1.3 MB for 12k tensors.
MAX_HEADER_BYTES = 16 << 20
MAX_TENSORS = 1 << 17
MAX_DEPTH = 127                  # serde_json's recursion limit (128) refuses the 128th container
U64 = 2**64

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
        bad = lambda what: FormatError(self.path, f"tensor {brief(name)}: {what}")  # noqa: E731
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise bad("header entry needs dtype, shape and data_offsets")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise bad(f"unknown safetensors dtype {brief(dtype)}")
        if not (isinstance(shape, list) and all(_is_u64(d) for d in shape)):
            raise bad(f"shape must be a list of unsigned 64-bit ints, got {brief(shape)}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_u64(o) for o in offs)):
            raise bad(f"data_offsets must be two unsigned 64-bit ints, got {brief(offs)}")
        return dtype, tuple(shape), (offs[0], offs[1])

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


def _is_u64(v: object) -> bool:
    return type(v) is int and 0 <= v < U64


class _Refused(Exception):
    """A JSON construct serde_json (or our limits) refuse, raised from a json hook."""


def _parse_json(raw: bytes, path: Path) -> dict[str, Any]:
    """The header as a dict, parsed with serde_json's rules where Python's `json` is looser:
    strict UTF-8, no NaN/Infinity, no float out of range, no lone surrogate, no negative
    zero or other negative literal where an unsigned int is read (they become floats, which
    the entry checks refuse), nesting at most MAX_DEPTH; and no duplicate key, at most
    2 x MAX_TENSORS objects (checked while parsing, before a huge header is built)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(path, f"corrupt safetensors header: not UTF-8 (byte {e.start})") from None
    if raw.count(b"[") + raw.count(b"{") > 4 * MAX_TENSORS + 1024:   # brackets in strings count too
        raise FormatError(path, f"corrupt safetensors header: over {4 * MAX_TENSORS} JSON containers")
    objects = 0

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal objects
        objects += 1
        if objects > 2 * MAX_TENSORS:
            raise _Refused(f"over {2 * MAX_TENSORS} JSON objects")
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

    def number(s: str) -> float:
        v = float(s)
        if not math.isfinite(v):
            raise _Refused(f"number {brief(s)} out of range")
        return v

    try:
        header = json.loads(text, object_pairs_hook=pairs, parse_constant=constant, parse_float=number,
                            parse_int=lambda s: number(s) if s[0] == "-" or len(s) > 20 else int(s))
    except json.JSONDecodeError as e:
        raise FormatError(path, f"corrupt safetensors header: not JSON ({e.msg} at byte {e.pos})") from None
    except _Refused as e:
        raise FormatError(path, f"corrupt safetensors header: {e}") from None
    except RecursionError:
        raise FormatError(path, f"corrupt safetensors header: nested deeper than {MAX_DEPTH}") from None
    if not isinstance(header, dict):
        raise FormatError(path, "corrupt safetensors header: not a JSON object")
    _check_strings_and_depth(header, path)
    return header


def _check_strings_and_depth(header: dict[str, Any], path: Path) -> None:
    """serde_json refuses a lone surrogate escape (`"\\ud800"`) and nesting deeper than
    MAX_DEPTH; Python's json accepts both. One walk over the parsed header checks them."""
    stack: list[tuple[Any, int]] = [(header, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FormatError(path, f"corrupt safetensors header: nested deeper than {MAX_DEPTH}")
        items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
        for k, x in items:
            for s in (k, x):
                if isinstance(s, str) and not s.isascii():
                    try:
                        s.encode("utf-8")
                    except UnicodeEncodeError:
                        raise FormatError(path, "corrupt safetensors header: lone surrogate escape "
                                                f"in {brief(s)}") from None
            if isinstance(x, (dict, list)):
                stack.append((x, depth + 1))
