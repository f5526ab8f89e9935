"""`edgeformer info FILE_OR_DIR`: architecture, parameter count, qtype histogram,
context length, file and tensor bytes of a GGUF file or HF model directory.

Reads headers only (no tensor data) and works on the raw file layers, so it also
describes files whose architecture edgeformer cannot run yet."""
from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

from edgeformer.errors import FormatError


@dataclass
class ModelSummary:
    path: Path
    format: str                               # "gguf" | "hf"
    arch: str
    n_params: int
    context_length: int | None
    file_bytes: int
    tensor_bytes: int
    n_tensors: int
    qtypes: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (count, bytes)
    name: str | None = None


def summarize(path: str | Path) -> ModelSummary:
    """Summary of a GGUF file or HF directory from headers only. Raises FormatError /
    UnsupportedError for malformed input."""
    p = Path(path)
    if p.is_dir():
        return _summarize_hf(p)
    if not p.is_file():
        raise FormatError(p, "no such file or directory")
    from edgeformer.formats.gguf import GGUFFile
    g = GGUFFile(p)
    md = g.metadata
    arch = str(md.get("general.architecture", "?"))
    hist: Counter = Counter()
    size: Counter = Counter()
    for t in g.tensors.values():
        hist[t.qtype.name] += 1
        size[t.qtype.name] += t.nbytes
    ctx = md.get(f"{arch}.context_length")
    return ModelSummary(p, "gguf", arch, sum(prod(t.shape) for t in g.tensors.values()),
                        ctx if isinstance(ctx, int) else None, g.file_bytes, g.tensor_bytes,
                        len(g.tensors), {k: (hist[k], size[k]) for k in hist}, md.get("general.name"))


def _summarize_hf(d: Path) -> ModelSummary:
    from edgeformer.formats.hf import open_shards, read_json_object

    if not (d / "config.json").is_file():
        raise FormatError(d, "not an HF model directory: no config.json")
    cfg = read_json_object(d / "config.json")
    text = cfg.get("text_config", cfg)
    text = text if isinstance(text, dict) else {}
    shards = open_shards(d)
    hist: Counter = Counter()
    size: Counter = Counter()
    n_params = 0
    for name, st in shards.items():
        t = st.tensors[name]
        hist[t.qtype.name] += 1
        size[t.qtype.name] += t.end - t.start
        n_params += prod(t.shape)
    files = {id(st): st for st in shards.values()}.values()
    ctx = text.get("max_position_embeddings")
    return ModelSummary(d, "hf", str(cfg.get("model_type", "?")), n_params,
                        ctx if isinstance(ctx, int) else None, sum(f.file_bytes for f in files),
                        sum(size.values()), len(shards), {k: (hist[k], size[k]) for k in hist},
                        cfg.get("_name_or_path") or d.name)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


def format_summary(s: ModelSummary) -> str:
    """Human-readable lines for `summarize`'s result."""
    lines = [f"file:           {s.path} ({s.format})",
             f"name:           {s.name or '-'}",
             f"architecture:   {s.arch}",
             f"parameters:     {s.n_params:,} ({s.n_params / 1e6:,.2f} M)",
             f"context length: {s.context_length if s.context_length is not None else '-'}",
             f"file bytes:     {s.file_bytes:,} ({_mib(s.file_bytes)})",
             f"tensor bytes:   {s.tensor_bytes:,} ({_mib(s.tensor_bytes)})",
             f"tensors:        {s.n_tensors}",
             "qtype          count        bytes"]
    for q, (n, b) in sorted(s.qtypes.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {q:<10} {n:>8} {b:>14,}")
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="describe a GGUF file or HF model directory")
    p.add_argument("path", help="GGUF file, HF model directory or shipped model name")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgeformer.models.shipped import resolve_model
    s = summarize(resolve_model(args.path))
    if args.json:
        d = {**s.__dict__, "path": str(s.path), "qtypes": {k: {"count": n, "bytes": b} for k, (n, b) in s.qtypes.items()}}
        print(json.dumps(d, indent=2))
    else:
        print(format_summary(s))
    return 0
