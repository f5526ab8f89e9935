"""GGUF reader and writer (own code; the `gguf` package is only a test reference).

Layout (ggml `docs/gguf.md`, `ggml/src/gguf.cpp`), all little-endian:
    magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
    n_kv x (string key | u32 value type | value)
    n_tensors x (string name | u32 n_dims | u64 ne[n_dims] | u32 ggml type | u64 offset)
    padding to `general.alignment` (default 32) | tensor data (offsets relative to here)
A string is u64 length + UTF-8 bytes; an array is u32 element type + u64 count + elements.

The reader maps the file and parses only the header; tensor bytes are memmap slices made
on access. Every length and count is checked against the bytes left and the `MAX_*`
limits BEFORE anything is allocated or looped over, so a corrupt or hostile file gets a
`FormatError` naming the field (quoting at most 64 characters of a read string), never a
huge allocation, a hang or a huge message. Tensor data must be laid out as gguf.cpp
requires: contiguous in tensor-info order, each padded to the alignment.

Metadata values come back as plain Python: int, float, bool, str, and arrays as Python
lists (numeric arrays go through numpy `.tolist()`, so a 150k-entry vocabulary is one
fast list). Strings that are not valid UTF-8 decode with `surrogateescape`, which the
writer reverses, so a read -> write round trip is byte-exact.
"""
from __future__ import annotations

import enum
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from math import prod
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from edgeformer.config import DecoderConfig
from edgeformer.errors import ConfigError, FormatError, InputError, UnsupportedError, brief
from edgeformer.formats.checkpoint import Checkpoint, LazyTensors, TokenizerSpec
from edgeformer.quant.qtypes import QTensor, QType, nbytes

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32          # ggml GGUF_DEFAULT_ALIGNMENT
MAX_DIMS = 4                    # ggml GGML_MAX_DIMS
MAX_ARRAY_NESTING = 8           # arrays of arrays deeper than this are certainly corrupt
MAX_KEY_BYTES = 65535           # ggml docs/gguf.md: a key is at most 2^16 - 1 bytes
MAX_NAME_BYTES = 63             # ggml GGML_MAX_NAME (64, with the NUL): gguf.cpp refuses longer
# Sane bounds far above real files, so that any header is parsed in well under 2 s and
# 256 MB: counts a file could hold but no model needs (12M empty strings fit in 100 MB)
# are refused, not built. SmolLM2 has 33 keys and 272 tensors, DeepSeek V3 (experts
# merged, as llama.cpp writes them) ~1k.
MAX_KV = 1 << 16
MAX_TENSORS = 1 << 15
# Elements of all metadata arrays together, in units (`ELEM_COST`): a number costs 1 (a
# 36-byte Python object, ~0.1 us), a string 4 (~60 bytes, ~0.5 us to read), an array 64 (a
# list and a Python call each; no real file nests arrays). Gemma 3's 262k vocabulary
# (strings, float scores, int types) costs 1.6M units, Llama 3's 128k tokens + 280k merges 1.8M.
MAX_ARRAY_ITEMS = 1 << 22
# Bytes of all strings together (keys, values, array elements). A Python str takes up to 4
# bytes a character (one non-Latin-1 character makes a whole string UCS-4; each byte of
# invalid UTF-8 becomes a surrogate), so this bounds the text to 128 MB of memory. Real
# headers: ~0.6 MB (SmolLM2), ~4 MB (Gemma 3), a whole tokenizer.json embedded ~20 MB.
MAX_STRING_BYTES = 32 << 20


class GGUFValueType(enum.IntEnum):
    """GGUF metadata value types (ggml `enum gguf_type`)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# scalar value type -> struct format / numpy dtype (both little-endian)
_FMT = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_DTYPE = {t: np.dtype(f) for t, f in _FMT.items()}
_ARRAY_HEAD = struct.Struct("<IQ")   # an array's element type and length
# a tensor info after its name and n_dims: u64 ne[n_dims], u32 ggml type, u64 offset
_TENSOR_TAIL = {n: struct.Struct(f"<{n}QIQ") for n in range(1, MAX_DIMS + 1)}
# array element type -> its least size in bytes (a string is a u64 length + bytes, an
# array a u32 type + u64 count + elements)
_MIN_ELEM_BYTES = {**{int(t): d.itemsize for t, d in _DTYPE.items()},
                   GGUFValueType.STRING: 8, GGUFValueType.ARRAY: 12}
ELEM_COST = {GGUFValueType.STRING: 4, GGUFValueType.ARRAY: 64}   # units of MAX_ARRAY_ITEMS; others 1
_DTYPE_TO_VTYPE: dict[np.dtype, GGUFValueType] = {d: t for t, d in _DTYPE.items() if t != GGUFValueType.BOOL}
_DTYPE_TO_VTYPE[np.dtype("bool")] = GGUFValueType.BOOL


@dataclass(frozen=True)
class TensorInfo:
    """One tensor-info record: row-major `shape` (ggml `ne` reversed), qtype, and the
    absolute byte offset of its data in the file."""

    name: str
    shape: tuple[int, ...]
    qtype: QType
    offset: int
    nbytes: int


class _Cursor:
    """Bounds-checked little-endian reads over the mapped file. Every length and count is
    checked against the bytes left, and against what is left of the header's array units
    (`items_left`) and string bytes (`text_left`), before anything is built; error texts
    quote read strings through `brief`."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)
        self.items_left = MAX_ARRAY_ITEMS
        self.text_left = MAX_STRING_BYTES

    def fail(self, what: str) -> FormatError:
        return FormatError(self.path, what)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated: {what} needs {n} bytes at offset {self.pos}, "
                            f"file has {self.size - self.pos} left")

    def scalar(self, vt: GGUFValueType, what: str) -> Any:
        fmt = _FMT[vt]
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str, limit: int | None = None) -> str:
        n = self.scalar(GGUFValueType.UINT64, f"length of {what}")
        if limit is not None and n > limit:
            raise self.fail(f"{what}: length {n} is over the {limit}-byte limit")
        self.need(n, what)  # checked before the bytes are touched: a 2**40 length fails here
        self.take_text(n, what)
        s = str(memoryview(self.buf)[self.pos:self.pos + n], "utf-8", "surrogateescape")  # no copy
        self.pos += n
        return s

    def take_text(self, n: int, what: str) -> None:
        if n > self.text_left:
            raise self.fail(f"{what}: {n} bytes of text, over what is left of the "
                            f"{MAX_STRING_BYTES} bytes of strings a header may hold")
        self.text_left -= n

    def value(self, vt: int, what: str, depth: int = 0) -> Any:
        if vt == GGUFValueType.STRING:
            return self.string(what)
        if vt == GGUFValueType.ARRAY:
            return self.array(what, depth + 1)
        try:
            vt = GGUFValueType(vt)
        except ValueError:
            raise self.fail(f"{what}: unknown metadata value type {vt}") from None
        return self.scalar(vt, what)

    def array(self, what: str, depth: int) -> list:
        if depth > MAX_ARRAY_NESTING:
            raise self.fail(f"{what}: arrays nested deeper than {MAX_ARRAY_NESTING}")
        if self.pos + 12 <= self.size:   # the hot path of arrays of arrays: no message built
            et, n = _ARRAY_HEAD.unpack_from(self.buf, self.pos)
            self.pos += 12
        else:
            et = self.scalar(GGUFValueType.UINT32, f"element type of {what}")
            n = self.scalar(GGUFValueType.UINT64, f"length of {what}")
        min_size = _MIN_ELEM_BYTES.get(et)
        if min_size is None:
            raise self.fail(f"{what}: unknown array element type {et}")
        self.need(n * min_size, f"{n} elements of {what}")  # strings >= 8 bytes, arrays >= 12
        cost = n * ELEM_COST.get(et, 1)
        if cost > self.items_left:
            raise self.fail(f"{what}: {n} elements, over what is left of the {MAX_ARRAY_ITEMS} "
                            f"array element units a header may hold")
        self.items_left -= cost
        if et == GGUFValueType.STRING:
            return self.strings(n, what)
        if et == GGUFValueType.ARRAY:
            return [self.array(what, depth + 1) for _ in range(n)]
        out = np.frombuffer(self.buf, _DTYPE[et], n, self.pos).tolist() if n else []
        self.pos += n * min_size
        return out

    def strings(self, n: int, what: str) -> list[str]:
        """n length-prefixed strings: the hot loop of a vocabulary (no per-element
        message is built unless one fails)."""
        buf, pos, size = self.buf, self.pos, self.size
        out: list[str] = []
        append, unpack = out.append, struct.Struct("<Q").unpack_from
        text_left = self.text_left
        for i in range(n):
            end = pos + 8 + (unpack(buf, pos)[0] if pos + 8 <= size else 0)
            text_left -= end - pos - 8
            if end > size or text_left < 0:
                self.pos, self.text_left = pos, text_left + end - pos - 8
                self.need(end - pos, f"{what}[{i}]")   # one of these two raises
                self.take_text(end - pos - 8, f"{what}[{i}]")
            append(buf[pos + 8:end].decode("utf-8", "surrogateescape"))
            pos = end
        self.pos, self.text_left = pos, text_left
        return out


class GGUFFile:
    """A parsed GGUF file: `metadata` (key -> plain value), `value_types`
    (key -> GGUFValueType), `array_types` (array key -> element types down its nesting),
    `tensors` (name -> TensorInfo, file order), `alignment`, `version`,
    `data_offset`, `file_bytes`. `tensor(name)` returns a QTensor over a memmap slice.

    Raises FormatError for anything malformed and UnsupportedError for an unknown tensor
    type id; opening reads only the header bytes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            if size == 0:
                raise FormatError(self.path, "not a GGUF file: empty")
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise FormatError(self.path, f"cannot open: {e.strerror or e}") from None
        self.file_bytes = size
        self._bytes = np.frombuffer(self._mm, dtype=np.uint8)  # no read: pages fault in on use
        self.metadata: dict[str, Any] = {}
        self.value_types: dict[str, GGUFValueType] = {}
        self.array_types: dict[str, tuple[GGUFValueType, ...]] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse(_Cursor(self._mm, self.path))

    def _parse(self, c: _Cursor) -> None:
        c.need(4, "magic")
        magic = bytes(c.buf[:4])
        if magic != GGUF_MAGIC:
            raise c.fail(f"not a GGUF file: magic {magic!r}, expected {GGUF_MAGIC!r}")
        c.pos = 4
        self.version = c.scalar(GGUFValueType.UINT32, "version")
        if self.version not in (2, 3):
            if self.version & 0xFFFF == 0 and (self.version >> 24) in (2, 3):
                raise UnsupportedError(f"{self.path}: big-endian GGUF is not supported")
            raise UnsupportedError(f"{self.path}: GGUF version {self.version} is not supported "
                                   f"(supported: 2, 3)")
        n_tensors = c.scalar(GGUFValueType.UINT64, "tensor count")
        n_kv = c.scalar(GGUFValueType.UINT64, "metadata count")
        if n_tensors > MAX_TENSORS:
            raise c.fail(f"tensor count {n_tensors} is over the limit {MAX_TENSORS}")
        if n_kv > MAX_KV:
            raise c.fail(f"metadata count {n_kv} is over the limit {MAX_KV}")
        # minimal record sizes: kv = 8 (key len) + 4 (type) + 1; tensor info = 8 + 4 + 8 + 4 + 8
        c.need(n_kv * 13 + n_tensors * 32, f"{n_kv} metadata entries and {n_tensors} tensor infos")
        for i in range(n_kv):
            key = c.string(f"metadata key #{i}", MAX_KEY_BYTES)
            q = brief(key)
            vt = c.scalar(GGUFValueType.UINT32, f"type of {q}")
            if key in self.metadata:
                raise c.fail(f"duplicate metadata key {q}")
            start = c.pos
            self.metadata[key] = c.value(vt, f"metadata {q}")
            self.value_types[key] = GGUFValueType(vt)
            if vt == GGUFValueType.ARRAY:  # remember element types for a faithful rewrite
                self.array_types[key] = _elem_types(c.buf, start)
        self.alignment = self._alignment()
        infos = [self._tensor_info(c, i) for i in range(n_tensors)]
        self.data_offset = _align(c.pos, self.alignment)
        expected = 0
        for name, shape, qtype, rel in infos:
            q = brief(name)
            if name in self.tensors:
                raise c.fail(f"duplicate tensor name {q}")
            try:
                size = nbytes(qtype, shape)
            except UnsupportedError as e:
                raise c.fail(f"tensor {q}: {e}") from None
            if rel != expected:  # gguf.cpp refuses any other layout too
                raise c.fail(f"tensor {q}: data offset {rel}, expected {expected} (tensor data "
                             f"is contiguous in tensor-info order, padded to the alignment "
                             f"{self.alignment})")
            start = self.data_offset + rel
            if start + size > self.file_bytes:
                raise c.fail(f"truncated: tensor {q} data [{start}, {start + size}) "
                             f"runs past the end of the file ({self.file_bytes} bytes)")
            self.tensors[name] = TensorInfo(name, shape, qtype, start, size)
            expected = _align(rel + size, self.alignment)

    def _alignment(self) -> int:
        a = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        if "general.alignment" in self.metadata and self.value_types["general.alignment"] != GGUFValueType.UINT32:
            raise FormatError(self.path, "general.alignment must be a uint32")
        if not isinstance(a, int) or a <= 0 or a & (a - 1):
            raise FormatError(self.path, f"general.alignment must be a power of two, got {brief(a)}")
        return a

    def _tensor_info(self, c: _Cursor, i: int) -> tuple[str, tuple[int, ...], QType, int]:
        name = c.string(f"tensor info #{i} name", MAX_NAME_BYTES)
        q = brief(name)
        n_dims = c.scalar(GGUFValueType.UINT32, f"tensor {q} n_dims")
        if not 1 <= n_dims <= MAX_DIMS:
            raise c.fail(f"tensor {q}: n_dims {n_dims} outside 1..{MAX_DIMS}")
        tail = _TENSOR_TAIL[n_dims]
        c.need(tail.size, f"tensor {q} dims, type and offset")
        *ne, type_id, rel = tail.unpack_from(c.buf, c.pos)
        c.pos += tail.size
        if prod(ne) >= 2**63:  # gguf.cpp: the element count must fit an int64
            raise c.fail(f"tensor {q}: dims {ne} hold over 2^63 elements")
        try:
            qtype = QType.from_id(type_id)
        except UnsupportedError as e:
            raise UnsupportedError(f"{self.path}: tensor {q}: {e}") from None
        return name, tuple(reversed(ne)), qtype, rel  # ggml ne[0] is the contiguous dim

    def tensor(self, name: str) -> QTensor:
        """The named tensor as a QTensor over a read-only memmap slice (no copy)."""
        ti = self.tensors[name]
        return QTensor(self._bytes[ti.offset:ti.offset + ti.nbytes], ti.qtype, ti.shape)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def _elem_types(buf: mmap.mmap | bytes, pos: int) -> tuple[GGUFValueType, ...]:
    """Element types down a (validated) array's nesting, read at its first elements:
    (ARRAY, INT32) for an array of int32 arrays."""
    out = []
    while True:
        et, n = struct.unpack_from("<IQ", buf, pos)
        out.append(GGUFValueType(et))
        if et != GGUFValueType.ARRAY or n == 0:
            return tuple(out)
        pos += 12


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# ---------------------------------------------------------------- writer

@dataclass
class TensorToWrite:
    """A tensor the writer will stream: its header fields, and `load()` producing its
    bytes (a QTensor or uint8 array of exactly nbytes(qtype, shape)) when written."""

    name: str
    qtype: QType
    shape: tuple[int, ...]
    load: Callable[[], QTensor | np.ndarray]


def infer_value_type(value: Any) -> GGUFValueType:
    """The GGUF type a scalar or array is written as when no type is given, following
    llama.cpp's converter: bool -> BOOL; int -> UINT32 (its counts and ids), INT32 if
    negative, INT64 if out of 32-bit range; float -> FLOAT32; str -> STRING;
    list/tuple/ndarray -> ARRAY. numpy int64/float64 scalars (numpy's defaults) count as
    int/float; other numpy scalars keep their dtype. UnsupportedError for anything else."""
    if isinstance(value, (bool, np.bool_)):
        return GGUFValueType.BOOL
    if isinstance(value, np.generic) and value.dtype not in (np.int64, np.float64):
        return _vtype_of_dtype(value.dtype)
    if isinstance(value, (int, np.integer)):
        v = int(value)
        if 0 <= v < 2**32:
            return GGUFValueType.UINT32
        return GGUFValueType.INT32 if -(2**31) <= v < 0 else GGUFValueType.INT64
    if isinstance(value, (float, np.floating)):
        return GGUFValueType.FLOAT32
    if isinstance(value, str):
        return GGUFValueType.STRING
    if isinstance(value, (list, tuple, np.ndarray)):
        return GGUFValueType.ARRAY
    raise UnsupportedError(f"cannot write {type(value).__name__} as GGUF metadata")


def _vtype_of_dtype(dt: np.dtype) -> GGUFValueType:
    try:
        return _DTYPE_TO_VTYPE[np.dtype(dt).newbyteorder("=")]
    except KeyError:
        raise UnsupportedError(f"no GGUF metadata type for numpy dtype {dt}") from None


_INT_TYPES = {GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.INT64}


def _array_elem_type(value: Any) -> GGUFValueType:
    """Element type of an untyped array: a numpy array's dtype; for a list, one type for
    all elements, ints as INT32 like gguf-py's `add_array` (UINT32/INT64 if they need it)."""
    if isinstance(value, np.ndarray):
        dt = value.dtype
        return GGUFValueType.STRING if dt.kind == "U" else _vtype_of_dtype(dt)
    if not len(value):
        return GGUFValueType.INT32  # empty arrays: the type is arbitrary
    types = {infer_value_type(v) for v in value}
    if types <= _INT_TYPES:
        lo, hi = min(int(v) for v in value), max(int(v) for v in value)
        if -(2**31) <= lo and hi < 2**31:
            return GGUFValueType.INT32
        return GGUFValueType.UINT32 if lo >= 0 and hi < 2**32 else GGUFValueType.INT64
    if len(types) != 1:
        raise UnsupportedError(f"GGUF arrays are homogeneous; got {sorted(t.name for t in types)}")
    return types.pop()


# an array's element type, or a tuple of element types down nested arrays
ElemTypes = GGUFValueType | tuple[GGUFValueType, ...] | None


def _encode_value(out: list[bytes], value: Any, vt: GGUFValueType, et: ElemTypes = None) -> None:
    if vt == GGUFValueType.STRING:
        b = str(value).encode("utf-8", errors="surrogateescape")
        out += [struct.pack("<Q", len(b)), b]
    elif vt == GGUFValueType.ARRAY:
        # et: this array's element type, or a tuple of them down the nesting
        inner = None
        if isinstance(et, tuple):
            et, inner = (et[0], et[1:] or None) if et else (None, None)
        et = et if et is not None else _array_elem_type(value)
        out.append(struct.pack("<IQ", et, len(value)))
        if et in _DTYPE:
            out.append(np.asarray(value, dtype=_DTYPE[et]).tobytes())
        else:
            for v in value:
                _encode_value(out, v, et, inner)
    else:
        out.append(struct.pack(_FMT[vt], value))


def encode_kv(key: str, value: Any, vt: GGUFValueType | None = None, et: ElemTypes = None) -> bytes:
    """One serialized metadata record; `vt` (and the array element type `et`, or a tuple
    of element types down nested arrays) override `infer_value_type`."""
    vt = GGUFValueType(vt) if vt is not None else infer_value_type(value)
    out: list[bytes] = []
    _encode_value(out, key, GGUFValueType.STRING)
    out.append(struct.pack("<I", vt))
    _encode_value(out, value, vt, et)
    return b"".join(out)


def write_gguf(path: str | os.PathLike, metadata: Mapping[str, Any], tensors: Iterable[TensorToWrite],
               value_types: Mapping[str, GGUFValueType] | None = None,
               array_types: Mapping[str, Any] | None = None,
               on_tensor: Callable[[TensorToWrite], None] | None = None) -> int:
    """Write a GGUF v3 file, streaming tensor data one tensor at a time.

    `metadata` values are plain Python/numpy values; their GGUF types come from
    `value_types`/`array_types` (as `GGUFFile` records them) where given, else
    `infer_value_type`. `general.alignment`
    in metadata sets the alignment (default 32). Tensors are written in the given order,
    each padded to the alignment; `on_tensor` is called after each (progress bars).
    Writes to `path + '.tmp'`, fsyncs it and renames it on success, so the path holds the
    old file or the whole new one, never a part. Returns the file size in bytes.
    InputError for a bad alignment, duplicate names, a tensor whose loader returns other
    than it declared, or a write that fails (full disk, file size limit: nothing is left at
    the path); UnsupportedError for a metadata value GGUF cannot hold.
    """
    path = Path(path)
    tensors = list(tensors)
    value_types = value_types or {}
    array_types = array_types or {}
    alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise InputError(f"general.alignment must be a power of two, got {alignment}")
    if len({t.name for t in tensors}) != len(tensors):
        raise InputError("duplicate tensor names")
    header = [GGUF_MAGIC, struct.pack("<IQQ", 3, len(tensors), len(metadata))]
    for key, value in metadata.items():
        vt = value_types.get(key)
        if key == "general.alignment":
            vt = GGUFValueType.UINT32  # llama.cpp requires u32
        header.append(encode_kv(key, value, vt, array_types.get(key)))
    rel = 0
    sizes = []
    for t in tensors:
        size = nbytes(t.qtype, t.shape)
        sizes.append(size)
        _encode_value(header, t.name, GGUFValueType.STRING)
        header.append(struct.pack("<I", len(t.shape)))
        header.append(struct.pack(f"<{len(t.shape)}Q", *reversed(t.shape)))
        header.append(struct.pack("<IQ", t.qtype, rel))
        rel = _align(rel + size, alignment)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            head = b"".join(header)
            f.write(head)
            _pad(f, len(head), alignment)
            for t, size in zip(tensors, sizes):
                _write_tensor(f, t, size)
                _pad(f, size, alignment)
                if on_tensor is not None:
                    on_tensor(t)
            total = f.tell()
            f.flush()
            os.fsync(f.fileno())      # the data is on disk before the name points at it
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e} (nothing was written there)") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return total


def _write_tensor(f: BinaryIO, t: TensorToWrite, size: int) -> None:
    data = t.load()
    if isinstance(data, QTensor):
        if data.qtype != t.qtype or tuple(data.shape) != tuple(t.shape):
            raise InputError(f"tensor {t.name!r}: declared {t.qtype.name}{list(t.shape)}, "
                             f"produced {data.qtype.name}{list(data.shape)}")
        data = data.data
    data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if data.size != size:
        raise InputError(f"tensor {t.name!r}: {data.size} bytes, expected {size}")
    f.write(data.data)


def _pad(f: BinaryIO, n: int, alignment: int) -> None:
    f.write(b"\0" * (_align(n, alignment) - n))


# ---------------------------------------------------------------- Checkpoint

def load_gguf(path: str | os.PathLike) -> Checkpoint:
    """Checkpoint from a GGUF file: config from `DecoderConfig.from_gguf(metadata)`,
    lazy memmap-backed tensors, tokenizer from `tokenizer.ggml.*` metadata.
    Raises FormatError / UnsupportedError as `GGUFFile` and the config do."""
    g = GGUFFile(path)
    md = g.metadata
    if not isinstance(md.get("general.architecture"), str):
        raise FormatError(g.path, "no general.architecture string in the metadata")
    try:
        config = DecoderConfig.from_gguf(md, g.tensors)
    except (UnsupportedError, ConfigError) as e:  # add the file to the message
        raise type(e)(f"{g.path}: {e}") from None
    loaders = {name: partial(g.tensor, name) for name in g.tensors}
    infos = {name: (t.qtype, t.shape) for name, t in g.tensors.items()}
    tmpl = md.get("tokenizer.chat_template")
    return Checkpoint(path=g.path, format="gguf", config=config, tensors=LazyTensors(loaders, infos),
                      metadata=md, tokenizer=TokenizerSpec(gguf_metadata=md),
                      chat_template=tmpl if isinstance(tmpl, str) else None, file_bytes=g.file_bytes)
