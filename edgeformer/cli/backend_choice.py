"""`--backend` / `--activations` for every command, and the start-up line that names the
backend a command runs on. The default itself is chosen in one place:
`edgeformer.backends.base.default_backend_name()` (also what `edgeformer.load()` and the
server use)."""
from __future__ import annotations

import argparse
import sys
from typing import Any

BACKEND_HELP = "numpy | cpu | ... (default: the fastest that runs here: cpu with Numba, else numpy)"


def add_backend_args(p: argparse.ArgumentParser, activations: bool = True) -> None:
    p.add_argument("--backend", default=None, help=BACKEND_HELP)
    if activations:
        add_activations_arg(p)


def add_activations_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--activations", default="auto", choices=["auto", "int16", "int8", "f32"],
                   help="cpu backend: how activations meet quantized weights: int16 per 32-block (auto; "
                        "KLD ~1e-7 vs the float reference), int8 (llama.cpp's scheme, bit-for-bit its "
                        "rounding), f32 (dequantized weights; slowest decode) (default: %(default)s)")


def announce(backend: Any, what: str = "backend") -> None:
    """One stderr line naming the backend and its settings (`Backend.describe()`)."""
    print(f"edgeformer: {what} {backend.describe()}", file=sys.stderr, flush=True)


def make_backend(args: argparse.Namespace) -> Any:
    """The Backend that `--backend` / `--activations` name (None: the default), announced."""
    from edgeformer.backends import get_backend
    be = get_backend(args.backend, getattr(args, "activations", None))
    announce(be)
    return be
