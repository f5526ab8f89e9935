"""Model file readers/writers: GGUF (`gguf.py`), HF directories (`hf.py` over
`safetensors.py`), GGUF conversion (`convert.py`). Every reader returns a `Checkpoint`."""
from __future__ import annotations

import os
from pathlib import Path

from edgeformer.errors import FormatError
from edgeformer.formats.checkpoint import Checkpoint, LazyTensors, TokenizerSpec
from edgeformer.formats.validate import expected_tensors, validate_checkpoint


def load_checkpoint(path: str | os.PathLike, validate: bool = True) -> Checkpoint:
    """Open a GGUF file or an HF model directory (detected by the GGUF magic / a
    directory), lazily. With `validate`, check every tensor the config needs is present
    with the right shape (`validate.validate_checkpoint`). Raises FormatError for a path
    that is neither, and whatever the reader raises for a bad file."""
    p = Path(path)
    if p.is_dir():
        from edgeformer.formats.hf import load_hf
        ckpt = load_hf(p)
    elif p.is_file():
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise FormatError(p, f"not a GGUF file (magic {magic!r}) nor an HF model directory")
        from edgeformer.formats.gguf import load_gguf
        ckpt = load_gguf(p)
    else:
        raise FormatError(p, "no such file or directory")
    if validate:
        validate_checkpoint(ckpt)
    return ckpt


__all__ = ["Checkpoint", "LazyTensors", "TokenizerSpec", "expected_tensors", "load_checkpoint",
           "validate_checkpoint"]
