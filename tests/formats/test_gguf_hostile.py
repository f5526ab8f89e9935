"""Hostile GGUF headers (issue 16): every count, length and type field set to extremes,
bit flips and truncations of a small random GGUF are accepted or refused with one of
edgeformer's errors and a short message; the findings on the shipped SmolLM2 (a string
length swallowing the file: 21-26 s, 6.3 GB, a 350 MB message; flipped tensor infos:
19 s, 1.2 GB) are refused at once, naming the field."""
from __future__ import annotations

import importlib.util
import random
import shutil
import struct
import time
from pathlib import Path

import pytest

from edgeformer.config import DecoderConfig
from edgeformer.errors import EdgeformerError, FormatError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.gguf import ELEM_COST, MAX_ARRAY_ITEMS, MAX_STRING_BYTES, GGUFFile
from edgeformer.formats.mutate import gguf_fields, header_end, sample_fields, set_field
from edgeformer.formats.synthetic import write_random_gguf
from edgeformer.perf.memory import TINY_MODEL

MAX_MESSAGE = 400       # what a refusal may say, past the file name
BENCH = Path(__file__).resolve().parents[2] / "bench" / "reader_budget.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    """A small complete GGUF (2 layers, a 256-token vocabulary) as bytes."""
    path = tmp_path_factory.mktemp("hostile") / "tiny.gguf"
    return write_random_gguf(DecoderConfig(**TINY_MODEL), path, "Q8_0").read_bytes()


def outcome(path) -> str:
    """'ok', or the refusal's text past the path; anything but an EdgeformerError fails."""
    try:
        load_checkpoint(path)
        return "ok"
    except EdgeformerError as e:
        msg = str(e).removeprefix(f"{path}: ")
        assert len(msg) <= MAX_MESSAGE, msg[:200]
        return msg


def test_field_map_matches_reader(tiny, tmp_path):
    fields = gguf_fields(tiny)
    families = {f.family for f in fields}
    assert families >= {"tensor count", "metadata count", "key length", "value type", "string length",
                        "array type", "array length", "array string length", "tensor name length",
                        "n_dims", "dim", "tensor type", "tensor offset"}
    (tmp_path / "m.gguf").write_bytes(tiny)
    g = GGUFFile(tmp_path / "m.gguf")
    assert sum(f.family == "key length" for f in fields) == len(g.metadata)
    assert sum(f.family == "tensor name length" for f in fields) == len(g.tensors)
    assert header_end(fields) <= g.data_offset


def test_every_field_family_at_extremes(tiny, tmp_path):
    p = tmp_path / "m.gguf"
    refused = set()
    for f in sample_fields(gguf_fields(tiny), per_family=4):
        for v in f.extremes:
            buf = bytearray(tiny)
            set_field(buf, f, v)
            p.write_bytes(buf)
            t = time.perf_counter()
            if outcome(p) != "ok":
                refused.add(f.family)
            assert time.perf_counter() - t < 1.0, (f, v)
    assert len(refused) >= 12, refused     # the rest (e.g. a value type 0 -> 1) may still parse


def test_bit_flips_in_header(tiny, tmp_path):
    p = tmp_path / "m.gguf"
    end = header_end(gguf_fields(tiny))
    rng = random.Random(16)
    for bit in rng.sample(range(8 * end), 300):
        buf = bytearray(tiny)
        buf[bit // 8] ^= 1 << (bit % 8)
        p.write_bytes(buf)
        outcome(p)


def test_truncations(tiny, tmp_path):
    p = tmp_path / "m.gguf"
    end = header_end(gguf_fields(tiny))
    for cut in [*range(0, end, max(1, end // 200)), end + 1, len(tiny) // 2, len(tiny) - 1]:
        p.write_bytes(tiny[:cut])
        assert outcome(p) != "ok", cut


def _kv(key: str, vt: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vt) + payload


def _gguf(*kvs: bytes) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)


@pytest.mark.parametrize("case,words", [
    ("strings", "over what is left of the"),
    ("numbers", "over what is left of the"),
    ("nested", "over what is left of the"),
    ("text", f"over what is left of the {MAX_STRING_BYTES} bytes"),
    ("key", "metadata key #0: length 65536 is over the 65535-byte limit"),
])
def test_header_limits(tmp_path, case, words):
    """Counts a file can hold but no model needs are refused before they are built
    (each case is one element over its limit)."""
    def over(vt: int) -> int:
        return MAX_ARRAY_ITEMS // ELEM_COST.get(vt, 1) + 1
    data = {
        "strings": lambda: _gguf(_kv("a", 9, struct.pack("<IQ", 8, over(8)) + b"\0" * 8 * over(8))),
        "numbers": lambda: _gguf(_kv("a", 9, struct.pack("<IQ", 0, over(0)) + b"\0" * over(0))),
        "nested": lambda: _gguf(_kv("a", 9, struct.pack("<IQ", 9, over(9)) + struct.pack("<IQ", 0, 0) * over(9))),
        "text": lambda: _gguf(*[_kv(f"k{i}", 8, struct.pack("<Q", 1 << 20) + b"x" * (1 << 20))
                                for i in range((MAX_STRING_BYTES >> 20) + 1)]),
        "key": lambda: _gguf(_kv("k" * 65536, 4, b"\0" * 4)),
    }[case]()
    p = tmp_path / "m.gguf"
    p.write_bytes(data)
    with pytest.raises(FormatError, match=words):
        GGUFFile(p)


def test_tensor_name_over_ggml_limit(tmp_path):
    name = b"n" * 64
    info = struct.pack("<Q", 64) + name + struct.pack("<IQIQ", 1, 8, 0, 0)
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + info + b"\0" * 64)
    with pytest.raises(FormatError, match="tensor info #0 name: length 64 is over the 63-byte limit"):
        GGUFFile(p)


def _bench():
    spec = importlib.util.spec_from_file_location("reader_budget", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("family,index,mutate,words", [
    # the findings: 21-26 s, 6.3 GB and a 350 MB message; 11 s, 2.3 GB, 246 MB (bit 26)
    ("key length", 0, "swallow", "metadata key #0: length"),
    ("string length", 0, "swallow", "metadata 'general.architecture': "),
    ("tensor name length", 0, 1 << 26, "tensor info #0 name: length"),
    ("tensor name length", 100, 1 << 62, "name: length"),
    ("array string length", 0, "swallow", "metadata 'general.languages'[0]: "),
    ("tensor count", 0, 1 << 20, "tensor"),
])
def test_shipped_model_findings(shipped, tmp_path, family, index, mutate, words):
    """On the shipped ~94 MiB SmolLM2, each refused within 2 s and 256 MB above the
    interpreter (a forked child, as bench/reader_budget.py measures), naming the field."""
    src = shipped.path("smollm2-135m-instruct")
    p = tmp_path / "m.gguf"
    shutil.copyfile(src, p)
    with open(p, "r+b") as f:
        fl = [x for x in gguf_fields(f.read(4 << 20)) if x.family == family][index]
        f.seek(fl.offset)
        old = int.from_bytes(f.read(fl.size), "little")
        new = src.stat().st_size - fl.offset - fl.size if mutate == "swallow" else old ^ mutate
        f.seek(fl.offset)
        f.write(new.to_bytes(fl.size, "little"))
    r = _bench().measure(p, timeout=20)
    assert r["outcome"] == "refused" and words in r["message"], r
    assert r["seconds"] < 2 and r["peak_mb"] < 256 and r["message_chars"] < MAX_MESSAGE, r


@pytest.mark.parametrize("alignment,words", [(0, "power of two"), (48, "power of two"), (2**32 - 1, "power of two"),
                                             (2**31, "runs past the end"), (1, None), (64, None)])
def test_alignment_extremes(tmp_path, alignment, words):
    info = struct.pack("<Q", 1) + b"w" + struct.pack("<IQIQ", 1, 8, 0, 0)    # one F32[8] tensor
    head = _gguf(_kv("general.alignment", 4, struct.pack("<I", alignment))).replace(
        struct.pack("<IQQ", 3, 0, 1), struct.pack("<IQQ", 3, 1, 1), 1) + info
    p = tmp_path / "m.gguf"
    pad = -len(head) % alignment if words is None else 0
    p.write_bytes(head + b"\0" * pad + b"\1" * 32)
    if words is None:
        assert GGUFFile(p).tensor("w").nbytes == 32
    else:
        with pytest.raises(FormatError, match=words):
            GGUFFile(p)
