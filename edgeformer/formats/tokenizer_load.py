"""Which tokenizer a checkpoint gets: GGUF `tokenizer.ggml.*` metadata gives a `Tokenizer`
(llama.cpp's algorithms, `tokenizer.py`), an HF `tokenizer.json` an `HFTokenizer` (run by
the `tokenizers` library, `tokenizer_hf.py`). Kept apart so the base class does not name
its subclass."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeformer.errors import FormatError
from edgeformer.formats.tokenizer import Tokenizer
from edgeformer.formats.tokenizer_hf import HFTokenizer


def tokenizer_from_hf(tokenizer_json: str | Path, tokenizer_config: Mapping[str, Any] | None = None) -> Tokenizer:
    """From an HF `tokenizer.json` (+ the parsed `tokenizer_config.json`), run by the
    `tokenizers` library. Raises FormatError if the file cannot be read."""
    return HFTokenizer(Path(tokenizer_json), dict(tokenizer_config or {}))


def tokenizer_from_checkpoint(ckpt: Any) -> Tokenizer:
    """From a `Checkpoint`'s TokenizerSpec (GGUF metadata or HF files); FormatError when
    the model has neither."""
    spec = ckpt.tokenizer
    if spec.gguf_metadata is not None:
        return Tokenizer.from_gguf_metadata(spec.gguf_metadata, source=ckpt.path)
    if spec.tokenizer_json is not None:
        return tokenizer_from_hf(spec.tokenizer_json, spec.tokenizer_config)
    raise FormatError(ckpt.path, "the model has no tokenizer (no tokenizer.ggml.* keys / tokenizer.json)")
