"""HF tensor names -> GGUF tensor names, and the per-family tensor transforms llama.cpp's
`convert_hf_to_gguf.py` applies (llama q/k row permutation for interleaved rope, Gemma's
+1 on norm weights), done once here so every Checkpoint is in the GGUF convention.
Owned by the decoder family; stubs until it lands."""
from __future__ import annotations

import numpy as np


def hf_to_gguf_name(arch: str, hf_name: str) -> str | None:
    """GGUF name for an HF tensor name, or None for tensors to skip (e.g. rotary
    inv_freq buffers). Raises FormatError/UnsupportedError for an unknown name."""
    raise NotImplementedError


def transform_hf_tensor(config, gguf_name: str, a: np.ndarray) -> np.ndarray:
    """The tensor as the GGUF convention stores it (row-major, last dim contiguous)."""
    raise NotImplementedError
