"""Reader budget (issue 16): is every input, valid or not, accepted or refused within
2 s and 256 MB above the interpreter, with one of edgeformer's errors?

Corpus (builders in edgeformer/formats/mutate.py):
  gguf ...   the shipped SmolLM2 GGUF (~94 MiB): truncated at many points; single bit
             flips (random header bits, and bits across one field of each family); each
             count, length and type field family (first/middle/last field) set to the
             extremes 0, 1, 2^31, 2^63, 2^64-1 (u32 fields: 0, 1, 2^31, 2^32-1)
  crafted    small headers just under and over the reader's limits (array elements,
             text bytes, keys, tensor infos, nesting)
  hf ...     a synthetic ~91 MB F16 Llama directory: model.safetensors with every
             `safetensors_mutants` header, and hostile config.json / index files
Every input is read in a fresh child forked from this process (everything imported
already). The child resets its peak RSS (/proc/self/clear_refs 5), runs the `run` path's
load (`formats.load_checkpoint`, header + config + tensor check) and `edgeformer info`'s
`summarize`, and reports the wall time of both, its peak RSS above its RSS at the start
(perf.runner's readers), and the outcome: accepted, refused (an EdgeformerError), crash
(any other exception or a signal) or timeout.

    python bench/reader_budget.py [--quick] [--timeout 20] [--all-inputs] [--out bench/results/reader_budget.json]
Writes every input's figures as JSON and prints the worst time and memory per family.
Exit status 1 if any input crashed, timed out or broke the budget.
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import random
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgeformer.cli.info import summarize
from edgeformer.errors import EdgeformerError
from edgeformer.formats import load_checkpoint
from edgeformer.formats.gguf import GGUFFile
from edgeformer.formats.mutate import STMutant, gguf_fields, header_end, safetensors_mutants, sample_fields
from edgeformer.perf.runner import current_rss_bytes, peak_rss_bytes

BUDGET_S, BUDGET_MB = 2.0, 256.0
HF_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 512,
             "intermediate_size": 1536, "num_hidden_layers": 4, "num_attention_heads": 8,
             "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
             "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}


def read_model(path: Path) -> str:
    """What the child does: the `run` path's load, then `info`'s summary."""
    load_checkpoint(path)
    summarize(path)
    return "accepted"


def measure(path: Path, timeout: float) -> dict[str, Any]:
    """`read_model(path)` in a forked child: outcome, seconds, peak MB above its start."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                    # the child: measure, report, exit
        os.close(r)
        out: dict[str, Any] = {}
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")                        # peak RSS := RSS now
            base = current_rss_bytes()
            t = time.perf_counter()
            try:
                out["outcome"] = read_model(path)
            except EdgeformerError as e:
                msg = str(e).replace(str(path), "<file>")
                out.update(outcome="refused", error=type(e).__name__, message=msg[:160], message_chars=len(msg))
            except BaseException as e:  # noqa: BLE001 - what we are looking for
                out.update(outcome="crash", error=type(e).__name__, message=str(e)[:160])
            out["seconds"] = time.perf_counter() - t
            out["peak_mb"] = (peak_rss_bytes() - base) / 2**20
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    t = time.perf_counter()
    ready, _, _ = select.select([r], [], [], timeout)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        return {"outcome": "timeout", "seconds": time.perf_counter() - t, "peak_mb": None}
    data = b"".join(iter(lambda: os.read(r, 1 << 16), b""))
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if not data:
        return {"outcome": "crash", "error": f"signal {os.WTERMSIG(status)}", "seconds": time.perf_counter() - t,
                "peak_mb": None}
    return json.loads(data)


# ---------------------------------------------------------------- GGUF corpus

def gguf_cases(src: Path, quick: bool) -> Iterator[tuple[str, str, int, bytes | None]]:
    """(family, input, offset, bytes) for the shipped GGUF: write `bytes` at `offset` of a
    copy of it, or (bytes None) cut the copy to `offset` bytes."""
    with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        fields = gguf_fields(mm)
        end, size = header_end(fields), len(mm)
        head = mm[:end]
    rng = random.Random(16)
    yield "gguf valid", "unchanged", 0, b"GGUF"
    n = 8 if quick else 64
    cuts = {*(end * i // (n * 3 // 4) for i in range(n * 3 // 4)), *(end + (size - end) * i // (n // 4)
                                                                     for i in range(1, n // 4)), size - 1}
    for cut in sorted(cuts):
        yield "gguf truncated", f"at {cut}", cut, None
    for bit in rng.sample(range(8 * end), 16 if quick else 200):
        yield "gguf bit flip (random)", f"bit {bit}", bit // 8, bytes([head[bit // 8] ^ (1 << (bit % 8))])
    for fl in sample_fields(fields, 1):
        was = int.from_bytes(head[fl.offset:fl.offset + fl.size], "little")
        for bit in range(0, 8 * fl.size, 8 * fl.size // (4 if quick else 8)):
            yield (f"gguf bit flip: {fl.family}", f"{fl.where[:40]} bit {bit}", fl.offset,
                   (was ^ (1 << bit)).to_bytes(fl.size, "little"))
    for fl in sample_fields(fields, 1 if quick else 3):
        for v in fl.extremes:
            yield f"gguf {fl.family}", f"{fl.where[:40]} = {v}", fl.offset, (v % 2 ** (8 * fl.size)).to_bytes(fl.size, "little")


def _gguf(kvs: list[bytes], n_tensors: int = 0, infos: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kvs)) + b"".join(kvs) + infos


def _kv(key: bytes, vt: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key + struct.pack("<I", vt) + payload


def crafted_cases() -> Iterator[tuple[str, bytes]]:
    """Headers at the reader's limits (gguf.MAX_*): exactly at a limit (parsed, then
    refused for lacking a model) and one over (refused while parsing)."""
    from edgeformer.formats.gguf import ELEM_COST, MAX_ARRAY_ITEMS, MAX_KV, MAX_STRING_BYTES, MAX_TENSORS
    for over in (0, 1):
        tag = "over" if over else "at"
        n = MAX_ARRAY_ITEMS // ELEM_COST[8] + over
        yield f"{tag}: {n} 2-byte strings", _gguf([_kv(b"a", 9, struct.pack("<IQ", 8, n) + struct.pack("<Q2s", 2, b"ab") * n)])
        n = MAX_ARRAY_ITEMS + over
        yield f"{tag}: {n} int32", _gguf([_kv(b"a", 9, struct.pack("<IQ", 5, n) + os.urandom(4 * n))])
        n = MAX_ARRAY_ITEMS // ELEM_COST[9] + over
        yield f"{tag}: {n} nested arrays", _gguf([_kv(b"a", 9, struct.pack("<IQ", 9, n) + struct.pack("<IQ", 4, 0) * n)])
        n = MAX_STRING_BYTES - 1 + over                 # the key takes 1; one non-Latin-1 character: UCS-4
        yield f"{tag}: {n}-byte UCS-4 string", _gguf([_kv(b"a", 8, struct.pack("<Q", n) + b"x" * (n - 4) + "\U0001F600".encode())])
        yield f"{tag}: {n}-byte invalid UTF-8", _gguf([_kv(b"a", 8, struct.pack("<Q", n) + b"\xff" * n)])
        n = MAX_KV + over
        yield f"{tag}: {n} keys", _gguf([_kv(b"k%d" % i, 4, b"\0" * 4) for i in range(n)])
        n = MAX_TENSORS + over
        info = b"".join(struct.pack("<Q", len(b"t%d" % i)) + b"t%d" % i + struct.pack("<IQIQ", 1, 8, 0, 32 * i)
                        for i in range(n))
        yield f"{tag}: {n} tensor infos", _gguf([], n, info) + b"\0" * (32 * n + 32)


# ---------------------------------------------------------------- HF corpus

def write_hf(d: Path) -> tuple[dict[str, Any], bytes, int]:
    """A ~91 MB F16 Llama directory (zero weights, written sparse); returns the parsed
    header, its raw bytes and the data length of model.safetensors."""
    c = HF_CONFIG
    dim, ffn, kv = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // 2
    shapes = {"model.embed_tokens.weight": [c["vocab_size"], dim], "model.norm.weight": [dim],
              "lm_head.weight": [c["vocab_size"], dim]}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": [dim], p + "post_attention_layernorm.weight": [dim],
                       p + "self_attn.q_proj.weight": [dim, dim], p + "self_attn.k_proj.weight": [kv, dim],
                       p + "self_attn.v_proj.weight": [kv, dim], p + "self_attn.o_proj.weight": [dim, dim],
                       p + "mlp.gate_proj.weight": [ffn, dim], p + "mlp.up_proj.weight": [ffn, dim],
                       p + "mlp.down_proj.weight": [dim, ffn]})
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, shape in shapes.items():
        n = 2 * shape[0] * (shape[1] if len(shape) > 1 else 1)
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)                  # the official writer's padding
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(c))
    with open(d / "base.data", "wb") as f:
        f.truncate(off)
    return header, raw, off


def install(d: Path, m: STMutant, data_len: int) -> None:
    """d/model.safetensors := m's head + (part of) the data in d/base.data + m's tail."""
    cut = data_len if m.cut is None else m.cut
    with open(d / "model.safetensors", "wb") as f, open(d / "base.data", "rb") as src:
        f.write(m.head)
        f.flush()
        left = cut
        while left:
            left -= os.copy_file_range(src.fileno(), f.fileno(), left)
        f.seek(0, os.SEEK_END)
        f.write(m.tail)


def crafted_safetensors() -> Iterator[tuple[str, bytes]]:
    """Headers (no tensor data) at the safetensors reader's limits."""
    from edgeformer.formats.safetensors import MAX_HEADER_BYTES, MAX_JSON_TOKENS, MAX_TENSORS
    n = MAX_JSON_TOKENS - 64
    extra = b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"x":[%s1]}}'
    yield f"{n} floats in an extra key", extra % (b"1.5," * n)
    yield f"{n} 2-byte strings in an extra key", extra % (b'"ab",' * n)
    yield f"{n // 2} __metadata__ entries", b'{"__metadata__":{%s}}' % b",".join(b'"%06x":"ab"' % i for i in range(n // 2))
    yield f"{MAX_TENSORS} zero-size tensors", b"{%s}" % b",".join(
        b'"t%06d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(MAX_TENSORS))
    yield f"{MAX_HEADER_BYTES}-byte UCS-4 string", (b'{"__metadata__":{"a":"%s"}}' % (
        b"x" * (MAX_HEADER_BYTES - 50) + "\U0001F600".encode())).ljust(MAX_HEADER_BYTES)
    yield f"{MAX_JSON_TOKENS + 1} separators", b'{"__metadata__":{"a":"%s"}}' % (b"," * (MAX_JSON_TOKENS + 1))
    yield "depth 900", b'{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0],"x":%s}}' % (b"[" * 900 + b"]" * 900)


def hf_json_cases() -> Iterator[tuple[str, str, str]]:
    """(file, name, text): hostile JSON files of the HF directory."""
    yield "config.json", "nested 10^5 deep", "[" * 100_000 + "]" * 100_000
    yield "config.json", "a list", "[1]"
    yield "config.json", "17 MiB of spaces", " " * (17 << 20) + "{}"
    yield "config.json", "16 MiB of floats", "[" + "1.5," * ((16 << 20) // 4 - 2) + "1]"
    yield "config.json", "huge layer count", json.dumps({**HF_CONFIG, "num_hidden_layers": 2**64 - 1})
    yield "model.safetensors.index.json", "a list", "[]"
    yield "model.safetensors.index.json", "shard path", json.dumps({"weight_map": {"a": "../x"}})


# ---------------------------------------------------------------- driver

def run_all(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    from edgeformer.models.shipped import resolve_model
    results: list[dict[str, Any]] = []

    def record(family: str, name: str, path: Path) -> None:
        r = {"family": family, "input": name, **measure(path, args.timeout)}
        results.append(r)
        print(f"{family:36} {name[:48]:48} {r['outcome']:8} {r['seconds']:6.2f} s "
              f"{r['peak_mb'] if r['peak_mb'] is not None else float('nan'):7.1f} MB", flush=True)

    src = resolve_model("smollm2-135m-instruct")
    work = tmp / "m.gguf"
    shutil.copyfile(src, work)
    with open(src, "rb") as f:
        head = f.read(GGUFFile(src).data_offset)    # every patch lies in the header: this undoes it
    for family, name, offset, data in gguf_cases(src, args.quick):
        with open(work, "r+b") as w:
            if data is None:
                w.truncate(offset)
            else:
                w.seek(offset)
                w.write(data)
        record(family, name, work)
        if data is None:
            shutil.copyfile(src, work)
        else:
            with open(work, "r+b") as w:
                w.write(head)
    for name, data in crafted_cases():
        (tmp / "c.gguf").write_bytes(data)
        record("crafted gguf", name, tmp / "c.gguf")
    d = tmp / "hf"
    header, raw, data_len = write_hf(d)
    install(d, STMutant("hf valid", "unchanged", struct.pack("<Q", len(raw)) + raw), data_len)
    record("hf valid", "unchanged", d)
    for m in safetensors_mutants(header, raw, data_len):
        install(d, m, data_len)
        record(f"hf safetensors {m.family}", m.name, d)
    for name, head in crafted_safetensors():
        install(d, STMutant("crafted", name, struct.pack("<Q", len(head)) + head, cut=0), data_len)
        record("crafted safetensors", name, d)
    install(d, STMutant("hf valid", "unchanged", struct.pack("<Q", len(raw)) + raw), data_len)
    for file, name, text in hf_json_cases():
        keep = (d / file).read_bytes() if (d / file).exists() else None
        (d / file).write_text(text)
        record(f"hf {file}", name, d)
        (d / file).write_bytes(keep) if keep is not None else (d / file).unlink()
    return results


def summarize_results(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per family: counts by outcome, the worst time and memory and their inputs."""
    rows: dict[str, dict[str, Any]] = {}
    for r in results:
        row = rows.setdefault(r["family"], {"family": r["family"], "inputs": 0, "accepted": 0, "refused": 0,
                                            "crash": 0, "timeout": 0, "worst_s": 0.0, "worst_s_input": "",
                                            "worst_mb": 0.0, "worst_mb_input": "", "longest_message": 0})
        row["inputs"] += 1
        row[r["outcome"]] += 1
        if r["seconds"] > row["worst_s"]:
            row["worst_s"], row["worst_s_input"] = r["seconds"], r["input"]
        if (r["peak_mb"] or 0) > row["worst_mb"]:
            row["worst_mb"], row["worst_mb_input"] = r["peak_mb"], r["input"]
        row["longest_message"] = max(row["longest_message"], r.get("message_chars", 0))
    return list(rows.values())


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| family | inputs | accepted | refused | crash | timeout | worst s (input) | worst MB (input) | longest error |",
           "|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for r in rows:
        out.append(f"| {r['family']} | {r['inputs']} | {r['accepted']} | {r['refused']} | {r['crash']} | {r['timeout']} "
                   f"| {r['worst_s']:.2f} ({r['worst_s_input'][:40]}) | {r['worst_mb']:.1f} ({r['worst_mb_input'][:40]}) "
                   f"| {r['longest_message']} |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small corpus (a CI-sized pass)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds before an input counts as a hang")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "reader_budget.json")
    ap.add_argument("--all-inputs", action="store_true", help="keep every input's figures in the JSON "
                    "(default: the families, and the inputs that crashed, hung or broke the budget)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="reader_budget") as tmp:
        t = time.perf_counter()
        results = run_all(args, Path(tmp))
        wall = time.perf_counter() - t
    rows = summarize_results(results)
    over = [r for r in results if r["outcome"] in ("crash", "timeout") or r["seconds"] > BUDGET_S
            or (r["peak_mb"] or 0) > BUDGET_MB]
    meta = {"command": " ".join(["python", *sys.argv]), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "inputs": len(results), "wall_s": wall,
            "budget": {"seconds": BUDGET_S, "peak_mb": BUDGET_MB}, "over_budget_or_crashed": len(over)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    kept = results if args.all_inputs else over
    args.out.write_text(json.dumps({"meta": meta, "families": rows, "inputs": kept}, indent=1) + "\n")
    print(table(rows))
    print(f"\n{len(results)} inputs in {wall:.0f} s; {len(over)} crashed, hung or over {BUDGET_S} s / {BUDGET_MB} MB")
    for r in over:
        print(f"  {r['family']}: {r['input']}: {r['outcome']} {r['seconds']:.2f} s {r['peak_mb']} MB {r.get('message', '')}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
