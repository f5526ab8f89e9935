"""`edgeformer convert SRC -o OUT.gguf --qtype Q8_0`: HF directory (or GGUF file) to a
GGUF file llama.cpp loads, optionally requantized (see `formats/convert.py`)."""
from __future__ import annotations

import argparse
import sys

from edgeformer.quant.qtypes import QType


def register(subparsers: argparse._SubParsersAction) -> None:
    from edgeformer.formats.convert import TARGETS

    p = subparsers.add_parser("convert", help="convert an HF model directory or GGUF file to GGUF")
    p.add_argument("src", help="HF model directory (config.json + safetensors) or GGUF file")
    p.add_argument("-o", "--output", required=True, help="output .gguf path")
    p.add_argument("--qtype", default="F16", choices=[q.name for q in TARGETS],
                   help="weight type for 2-D tensors (default F16); 1-D tensors stay F32")
    p.add_argument("--name", default=None, help="general.name (default: the source's name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _tick(bar, n: int) -> None:
    bar.total = n
    bar.update(1)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from edgeformer.formats.convert import convert

    bar = tqdm(unit="tensor", disable=args.no_progress, file=sys.stderr, desc="convert")
    try:
        report = convert(args.src, args.output, QType.from_name(args.qtype), name=args.name,
                         on_tensor=lambda i, n, name, q: _tick(bar, n))
    finally:
        bar.close()
    for name, wanted, got in report.fallbacks:
        print(f"note: {name}: row length is not a multiple of {wanted.name}'s block size "
              f"{wanted.block_size}; stored as {got.name}", file=sys.stderr)
    counts = ", ".join(f"{q.name}: {n}" for q, n in sorted(report.qtype_counts.items()))
    print(f"wrote {report.path} ({report.file_bytes:,} bytes; tensors {counts})")
    return 0
