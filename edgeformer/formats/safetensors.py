"""safetensors reader (own code: header parsed here, data memory-mapped).

Layout (huggingface/safetensors README): u64 little-endian header length N | N bytes of
JSON {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}} |
data, offsets relative to the first byte after the header. Nothing but the header is
read at open; `array(name)` is a zero-copy view of the map.
"""
from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from edgeformer.errors import FormatError, UnsupportedError
from edgeformer.quant.qtypes import QTensor, QType

MAX_HEADER_BYTES = 100 * 1024 * 1024   # the safetensors library's own limit

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
    `__metadata__` dict), `file_bytes`. Raises FormatError on a corrupt header,
    UnsupportedError on a dtype with no QType (e.g. F8_E4M3, BOOL)."""

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
                    raise FormatError(self.path, f"corrupt safetensors header: length {n} "
                                                 f"in a {self.file_bytes}-byte file")
                raw = f.read(n)
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)   # not empty: 8 + n bytes
        except OSError as e:
            raise FormatError(self.path, f"cannot open: {e.strerror or e}") from None
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise FormatError(self.path, f"corrupt safetensors header: not JSON ({e})") from None
        if not isinstance(header, dict):
            raise FormatError(self.path, "corrupt safetensors header: not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        self._bytes = np.frombuffer(self._mm, dtype=np.uint8)
        self.tensors = {name: self._entry(name, e) for name, e in header.items()}

    def _entry(self, name: str, e: object) -> STInfo:
        bad = lambda what: FormatError(self.path, f"tensor {name!r}: {what}")  # noqa: E731
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise bad("header entry needs dtype, shape and data_offsets")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in DTYPES:
            raise UnsupportedError(f"{self.path}: tensor {name!r}: safetensors dtype {dtype!r} "
                                   f"is not supported (supported: {', '.join(DTYPES)})")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise bad(f"bad shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1]):
            raise bad(f"bad data_offsets {offs!r}")
        want = prod(shape) * DTYPES[dtype][0].itemsize
        if offs[1] - offs[0] != want:
            raise bad(f"data_offsets {offs} hold {offs[1] - offs[0]} bytes, "
                      f"{dtype}{shape} needs {want}")
        start, end = self.data_start + offs[0], self.data_start + offs[1]
        if end > self.file_bytes:
            raise FormatError(self.path, f"truncated: tensor {name!r} data ends at byte {end}, "
                                         f"file has {self.file_bytes}")
        return STInfo(dtype, tuple(shape), start, end)

    def array(self, name: str) -> np.ndarray:
        """The tensor's raw elements as a read-only numpy view (BF16 as uint16 bits)."""
        t = self.tensors[name]
        dt = DTYPES[t.dtype][0]
        return self._bytes[t.start:t.end].view(dt).reshape(t.shape)

    def qtensor(self, name: str) -> QTensor:
        """The tensor as a QTensor of its own dtype, zero-copy."""
        t = self.tensors[name]
        return QTensor(self._bytes[t.start:t.end], t.qtype, t.shape)
