"""The safetensors reader is at least as strict as the official `safetensors` library
(issue 16): every mutated header it refuses, we refuse with a FormatError; every one it
accepts, we read identically (or refuse as UnsupportedError for a dtype edgeformer has no
QType for). The one deliberate difference: duplicate JSON keys, which the library resolves
by keeping the last, are refused. Finding kept: a header length off by 1-2 bytes loaded
without error and `run` printed `215215215...`."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from edgeformer.errors import FormatError, UnsupportedError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.mutate import safetensors_mutants, split_safetensors
from edgeformer.formats.safetensors import DTYPES, MAX_HEADER_BYTES, MAX_JSON_TOKENS, MAX_TENSORS, SafetensorsFile

safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> bytes:
    """A valid file written by the official library (its header padded with spaces)."""
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("st") / "base.safetensors"
    save_file({"a": rng.standard_normal((3, 4)).astype(np.float32),
               "b": rng.standard_normal(5).astype(np.float16),
               "c": np.arange(6, dtype=np.int32).reshape(2, 3),
               "d": np.arange(-3, 4, dtype=np.int8)}, str(p), metadata={"format": "pt"})
    return p.read_bytes()


def official(path) -> tuple[set[str], dict, dict[str, np.ndarray]] | str:
    """(names, metadata, numpy-readable tensors) as the library reads them, or its error."""
    try:
        with safe_open(str(path), framework="numpy") as f:
            names, md = set(f.keys()), f.metadata() or {}
            arrays = {}
            for n in names:
                try:
                    arrays[n] = f.get_tensor(n)
                except Exception:  # noqa: BLE001 - a dtype numpy lacks (F8, BF16...): header-only
                    pass
            return names, md, arrays
    except Exception as e:  # noqa: BLE001 - the library raises SafetensorError and others
        return f"{type(e).__name__}: {e}"


def test_mutants_against_official(base, tmp_path):
    header, raw, data = split_safetensors(base)
    p = tmp_path / "m.safetensors"
    verdicts = {"refused by both": 0, "accepted by both": 0, "unsupported dtype": 0, "duplicate key": 0}
    for m in safetensors_mutants(header, raw, len(data)):
        p.write_bytes(m.build(data))
        want = official(p)
        label = f"{m.family}: {m.name}"
        if isinstance(want, str):
            with pytest.raises(FormatError):
                SafetensorsFile(p)
            verdicts["refused by both"] += 1
            continue
        names, md, arrays = want
        try:
            ours = SafetensorsFile(p)
        except UnsupportedError:
            assert m.family == "dtype" and m.name.split()[-1].strip("'") not in DTYPES, label
            verdicts["unsupported dtype"] += 1
            continue
        except FormatError as e:
            assert "duplicate" in m.name and "duplicate key" in str(e), (label, str(e))
            verdicts["duplicate key"] += 1
            continue
        assert set(ours.tensors) == names and ours.metadata == md, label
        for n, a in arrays.items():
            # BF16: our raw bits; the official reader gives float16 or, once ml_dtypes is
            # imported in the process, bfloat16 (2 bytes either way)
            ref = a.view(np.uint16) if ours.tensors[n].dtype == "BF16" else a
            np.testing.assert_array_equal(ours.array(n), ref, err_msg=label)
        verdicts["accepted by both"] += 1
    assert verdicts["refused by both"] > 50 and verdicts["accepted by both"] >= 5, verdicts
    assert verdicts["unsupported dtype"] >= 3 and verdicts["duplicate key"] == 2, verdicts


@pytest.mark.parametrize("shift", [-2, -1, 1, 2])
def test_header_length_off_by_a_little(tiny_llama, tmp_path, shift):
    """The finding: with the length 2 bytes off, `run` read shifted weights and printed
    `215215215...`. Now the whole HF directory is refused, naming the file."""
    d = tmp_path / "m"
    d.mkdir()
    for f in tiny_llama.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    st = d / "model.safetensors"
    buf = bytearray(st.read_bytes())
    buf[:8] = struct.pack("<Q", struct.unpack_from("<Q", buf)[0] + shift)
    st.write_bytes(buf)
    with pytest.raises(FormatError, match="model.safetensors: corrupt safetensors"):
        load_checkpoint(d)


@pytest.mark.parametrize("file,text,words", [
    ("config.json", "[1, 2]", "not a JSON object"),
    ("config.json", "[" * 100_000 + "]" * 100_000, "nested too deep"),       # was a RecursionError
    ("config.json", " " * (17 << 20) + "{}", "over the"),
    ("config.json", "[" + "1," * (1 << 19) + "1]", "separators and brackets, over the limit"),
    ("config.json", '{"a": ' + "9" * 5000 + "}", "invalid JSON"),                # was a ValueError
    ("tokenizer_config.json", '"x"', "not a JSON object"),                  # was an AttributeError
    ("model.safetensors.index.json", "[]", "not a JSON object"),
    ("model.safetensors.index.json", '{"weight_map": {"a": "sub\\\\x.safetensors"}}', "bad shard file name"),
])
def test_hf_json_files_hostile(tiny_llama, tmp_path, file, text, words):
    d = tmp_path / "m"
    d.mkdir()
    for f in tiny_llama.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    (d / file).write_text(text)
    with pytest.raises(FormatError, match=words) as ei:
        load_checkpoint(d)
    assert file in str(ei.value) and len(str(ei.value)) < 500


@pytest.mark.parametrize("case,words", [
    ("header bytes", "limit 16777216"),
    ("separators", "JSON separators and brackets, over the limit"),
    ("tensors", f"lists {MAX_TENSORS + 1} tensors, over the limit"),
])
def test_header_limits(tmp_path, case, words):
    """Stricter than the official library (100 MB headers, no count limits): what would
    take a Python header parser past 2 s or 256 MB is refused before or while parsing."""
    entry = b'"t%06d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}'
    head = {
        "header bytes": lambda: b'{"__metadata__":{"a":"%s"}}' % (b"x" * MAX_HEADER_BYTES),
        "separators": lambda: b'{"__metadata__":{"a":"%s"}}' % (b"," * MAX_JSON_TOKENS),
        "tensors": lambda: b"{%s}" % b",".join(entry % i for i in range(MAX_TENSORS + 1)),
    }[case]()
    p = tmp_path / "m.safetensors"
    p.write_bytes(struct.pack("<Q", len(head)) + head)
    with pytest.raises(FormatError, match=words):
        SafetensorsFile(p)
