"""Hostile variants of valid model files, for the reader checks of issue 16: where every
count, length and type field of a GGUF header lies (`gguf_fields`), the extreme values
to set them to, and mutated safetensors headers (`safetensors_mutants`).

`bench/reader_budget.py` runs them against the readers in fresh processes (time and
memory budget); `tests/formats/test_gguf_hostile.py` and `test_safetensors_strict.py`
use them on small files; a fuzzer can seed its corpus with them.
"""
from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edgeformer.formats.safetensors import DTYPE_BITS

U32_EXTREMES = (0, 1, 2**31, 2**32 - 1)
U64_EXTREMES = (0, 1, 2**31, 2**63, 2**64 - 1)
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUF value type -> size


@dataclass(frozen=True)
class Field:
    """One little-endian unsigned field of a GGUF header: its family ("key length",
    "dim", ...), which record it belongs to, and where it lies."""

    family: str
    where: str
    offset: int
    size: int                      # 4 or 8 bytes

    @property
    def extremes(self) -> tuple[int, ...]:
        return U32_EXTREMES if self.size == 4 else U64_EXTREMES


def gguf_fields(buf: bytes | memoryview) -> list[Field]:
    """Every count, length and type field of a valid GGUF header, in file order. String
    arrays contribute the lengths of their first and last elements only (a vocabulary
    has 10^5 of them, all alike). Raises ValueError on a file it cannot walk."""
    u32 = lambda p: struct.unpack_from("<I", buf, p)[0]  # noqa: E731
    u64 = lambda p: struct.unpack_from("<Q", buf, p)[0]  # noqa: E731
    out = [Field("version", "header", 4, 4), Field("tensor count", "header", 8, 8),
           Field("metadata count", "header", 16, 8)]
    n_tensors, n_kv, pos = u64(8), u64(16), 24

    def value(vt: int, where: str, pos: int, depth: int = 0) -> int:
        if vt == 8:
            out.append(Field("string length", where, pos, 8))
            return pos + 8 + u64(pos)
        if vt != 9:
            return pos + _SCALAR_BYTES[vt]
        et, n = u32(pos), u64(pos + 4)
        out.extend([Field("array type", where, pos, 4), Field("array length", where, pos + 4, 8)])
        pos += 12
        for i in range(n):
            if et in _SCALAR_BYTES:
                return pos + n * _SCALAR_BYTES[et]
            if et == 8 and 0 < i < n - 1:   # middle strings: skip without recording
                pos += 8 + u64(pos)
                continue
            pos = value(et, f"{where}[{i}]", pos, depth + 1) if et == 9 else _array_string(pos, where, i)
        return pos

    def _array_string(pos: int, where: str, i: int) -> int:
        out.append(Field("array string length", f"{where}[{i}]", pos, 8))
        return pos + 8 + u64(pos)

    def named(family: str, pos: int) -> tuple[str, int]:
        """A key or tensor name at pos (its length field recorded) and the byte after it."""
        end = pos + 8 + u64(pos)
        name = bytes(buf[pos + 8:end]).decode("utf-8", "replace")
        out.append(Field(family, name, pos, 8))
        return name, end

    for _ in range(n_kv):
        key, pos = named("key length", pos)
        out.append(Field("value type", key, pos, 4))
        if key == "general.alignment":
            out.append(Field("alignment", key, pos + 4, 4))
        pos = value(u32(pos), key, pos + 4)
    for _ in range(n_tensors):
        name, pos = named("tensor name length", pos)
        n_dims = u32(pos)
        out.append(Field("n_dims", name, pos, 4))
        pos += 4
        out.extend(Field("dim", name, pos + 8 * j, 8) for j in range(n_dims))
        pos += 8 * n_dims
        out.extend([Field("tensor type", name, pos, 4), Field("tensor offset", name, pos + 4, 8)])
        pos += 12
    return out


def header_end(fields: list[Field]) -> int:
    """The byte after the last tensor-info field (where the alignment padding starts)."""
    last = fields[-1]
    return last.offset + last.size


def sample_fields(fields: list[Field], per_family: int = 3) -> list[Field]:
    """Up to `per_family` fields of each family, spread over the file (first, middle,
    last...), so a 272-tensor file yields a corpus of a few hundred inputs, not 10^4."""
    by: dict[str, list[Field]] = {}
    for f in fields:
        by.setdefault(f.family, []).append(f)
    out: list[Field] = []
    for fs in by.values():
        k = min(per_family, len(fs))
        out.extend(fs[round(i * (len(fs) - 1) / max(k - 1, 1))] for i in range(k))
    return out


def set_field(buf: bytearray, f: Field, value: int) -> None:
    """Write `value` (taken modulo the field's width) into `buf` at the field."""
    buf[f.offset:f.offset + f.size] = (value % 2 ** (8 * f.size)).to_bytes(f.size, "little")


# ---------------------------------------------------------------- safetensors

@dataclass(frozen=True)
class STMutant:
    """A mutated safetensors file: `head` (length field + header) replaces the original
    one, followed by the original data cut to `cut` bytes (None: all) and `tail`."""

    family: str
    name: str
    head: bytes
    cut: int | None = None
    tail: bytes = b""

    def build(self, data: bytes) -> bytes:
        return self.head + (data if self.cut is None else data[:self.cut]) + self.tail


def split_safetensors(file: bytes) -> tuple[dict[str, Any], bytes, bytes]:
    """(parsed header, raw header bytes, data) of a valid safetensors file."""
    n = struct.unpack_from("<Q", file)[0]
    raw = file[8:8 + n]
    return json.loads(raw), raw, file[8 + n:]


def _head(h: Any, n: int | None = None) -> bytes:
    raw = h if isinstance(h, bytes) else json.dumps(h, separators=(",", ":")).encode()
    return struct.pack("<Q", len(raw) if n is None else n) + raw


def safetensors_mutants(header: dict[str, Any], raw: bytes, data_len: int) -> Iterator[STMutant]:
    """Hostile variants of a valid safetensors header (at least two tensors, the first
    of them at offset 0): the length field, the JSON text, `__metadata__`, each entry's
    dtype, shape and offsets, and the data's length."""
    n = len(raw)
    names = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])
    first = names[0]

    def edit(family: str, name: str, fn: Any) -> STMutant:
        h = json.loads(json.dumps(header))
        fn(h)
        return STMutant(family, name, _head(h))

    for d in (-2, -1, 1, 2):
        yield STMutant("header length", f"{d:+d}", _head(raw, n + d))
    for v in (0, 1, 100_000_001, n + data_len, 2**63, 2**64 - 1):
        yield STMutant("header length", str(v), _head(raw, v))
    text = raw.decode().rstrip()          # the official writer pads with spaces
    q = json.dumps(first).encode()        # the first tensor's name, quoted
    plus = lambda entry: (text[:-1] + "," + entry + "}").encode()  # noqa: E731 - one more entry
    z = '"z":{"dtype":"F32","shape":%s,"data_offsets":%s}'
    for name, h in [("not JSON", raw.rstrip()[:-1] + b"]"), ("array", b"[]"), ("null", b"null"),
                    ("string", b'"x"'), ("leading spaces", b"  " + raw), ("trailing spaces", raw + b"    "),
                    ("trailing junk", raw + b"x"), ("BOM", b"\xef\xbb\xbf" + raw),
                    ("invalid UTF-8", raw.replace(q, q[:-1] + b'\xff"', 1)),
                    ("lone surrogate", raw.replace(q, q[:-1] + b'\\ud800"', 1)),
                    ("surrogate pair", raw.replace(q, q[:-1] + b'\\ud83d\\ude00"', 1)),
                    ("NUL in name", raw.replace(q, q[:-1] + b'\\u0000"', 1)),
                    ("empty", b""), ("empty object", b"{}"),
                    ("zero-size tensor", plus(z % ("[0]", "[0,0]"))), ("-0 dim", plus(z % ("[-0]", "[0,0]"))),
                    ("-0 offset", plus(z % ("[0]", "[-0,0]"))), ("1e0 offset", plus(z % ("[0]", "[0,1e0]"))),
                    ("duplicate tensor", plus(q.decode() + ":" + json.dumps(header[first])))]:
        yield STMutant("header text", name, _head(h))
    def extra(value: bytes) -> bytes:   # an unknown key in the first entry (serde reads, then ignores it)
        return _head(raw.replace(q + b":{", q + b':{"x":' + value + b",", 1))

    for depth in (126, 127, 128, 129, 3000):   # the header object counts 1
        yield STMutant("nesting", f"depth {depth}", extra(("[" * (depth - 2) + "]" * (depth - 2)).encode()))
    for name, literal in [
            ("-0", b"-0"), ("-1", b"-1"), ("1e308", b"1e308"), ("1e999", b"1e999"), ("-1e999", b"-1e999"),
            ("2^64", b"18446744073709551616"), ("308 digits", b"9" * 308), ("310 digits", b"9" * 310),
            ("5000 digits", b"9" * 5000), ("lone surrogate", b'"\\udc00"'), ("NaN", b"NaN"),
            ("object", b'{"a":[1,{"b":null}]}'), ("duplicate keys", b'{"a":1,"a":2}')]:
        yield STMutant("extra key", name, extra(literal))
    md = {"__metadata__": {"format": "pt"}}
    yield STMutant("header text", "duplicate __metadata__",
                   _head(("{" + json.dumps(md)[1:-1] + "," + json.dumps(md)[1:-1] + "," + text[1:]).encode()))
    metadata: list[tuple[str, Any]] = [
        ("null", None), ("int value", {"a": 1}), ("list value", {"a": ["b"]}), ("null value", {"a": None}),
        ("not an object", "x"), ("list", ["a"]), ("nested", {"a": {"b": "c"}}), ("strings", {"a": "b", "c": "d"})]
    for name, md_value in metadata:
        yield edit("__metadata__", name, lambda h, v=md_value: h.__setitem__("__metadata__", v))
    yield from _entry_mutants(header, names, edit)
    for name, cut, tail in [("1 byte short", data_len - 1, b""), ("half", data_len // 2, b""),
                            ("no data", 0, b""), ("1 trailing byte", None, b"\0"),
                            ("8 trailing bytes", None, b"\0" * 8)]:
        yield STMutant("data length", name, _head(raw), cut, tail)


def _entry_mutants(header: dict[str, Any], names: list[str], edit: Any) -> Iterator[STMutant]:
    """Mutants of single tensor entries (`names` in data order): dtype, shape,
    data_offsets, missing keys."""
    first, last = names[0], names[-1]
    b0, e0 = header[first]["data_offsets"]
    bl, el = header[last]["data_offsets"]
    shape = header[first]["shape"]
    for dt in ("F33", "f32", "", None, 5, ["F32"], "F4", "C64"):
        yield edit("dtype", f"{first} {dt!r}", lambda h, dt=dt: h[first].__setitem__("dtype", dt))
    for name in names[:4]:   # same-size swaps: well-formed, maybe a dtype edgeformer lacks
        was = header[name]["dtype"]
        for dt in (d for d, b in DTYPE_BITS.items() if b == DTYPE_BITS[was] and d != was):
            yield edit("dtype", f"{name} {dt!r}", lambda h, n=name, dt=dt: h[n].__setitem__("dtype", dt))
    for name, s in [("dim + 1", [shape[0] + 1, *shape[1:]]), ("dim - 1", [shape[0] - 1, *shape[1:]]),
                    ("negative", [-1, *shape[1:]]), ("float", [float(shape[0]), *shape[1:]]),
                    ("bool", [True, *shape[1:]]), ("string", [str(shape[0]), *shape[1:]]),
                    ("empty", []), ("zero", [0, *shape]), ("2^64", [2**64, 0]),
                    ("overflow", [2**32, 2**32, 0]), ("zero first", [0, 2**32, 2**32]),
                    ("not a list", shape[0]), ("null", None), ("transposed", shape[::-1])]:
        yield edit("shape", name, lambda h, s=s: h[first].__setitem__("shape", s))
    for name, t, o in [("overlap", first, [b0, e0 + 1]), ("gap", last, [bl + 2, el + 2]),
                       ("beyond the file", last, [bl + 4, el + 4]), ("reversed", first, [e0, b0]),
                       ("three", first, [b0, e0, e0]), ("one", first, [b0]), ("negative", first, [-1, e0]),
                       ("float", first, [float(b0), e0]), ("2^64", last, [bl, 2**64]),
                       ("huge", last, [2**63, 2**63 + el - bl]), ("null", first, None),
                       ("swap first and last", first, [bl, el])]:
        yield edit("data_offsets", name, lambda h, t=t, o=o: h[t].__setitem__("data_offsets", o))
    yield edit("data_offsets", "last dropped", lambda h: h.pop(last))
    for key in ("dtype", "shape", "data_offsets"):
        yield edit("entry", f"no {key}", lambda h, key=key: h[first].pop(key))
    yield edit("entry", "extra key", lambda h: h[first].__setitem__("extra", [1, "x", None]))
    yield edit("entry", "not an object", lambda h: h.__setitem__(first, [1, 2]))
    yield edit("entry", "empty name", lambda h: h.__setitem__("", h.pop(first)))
