"""`Checkpoint`: what every reader returns. Models never know which file it came from.

Tensors are named and laid out the GGUF way (`blk.{i}.attn_q.weight`, llama-arch q/k
rows permuted for interleaved rope, Gemma norm weights with the +1 folded in): the HF
reader maps into that convention once (`formats/tensor_map.py`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeformer.quant.qtypes import QTensor


class LazyTensors(Mapping[str, QTensor]):
    """name -> QTensor, each built on first access by a loader function and not cached
    (a memmap-backed QTensor is cheap to rebuild; caching would pin transformed copies)."""

    def __init__(self, loaders: Mapping[str, Callable[[], QTensor]], infos: dict[str, tuple] | None = None) -> None:
        self._loaders = loaders
        # name -> (qtype, shape) known without loading, for `info` and validation
        self.infos = infos or {}

    def __getitem__(self, name: str) -> QTensor:
        return self._loaders[name]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


@dataclass
class TokenizerSpec:
    """Where the tokenizer comes from: GGUF `tokenizer.ggml.*` metadata, or an HF
    `tokenizer.json` (+ parsed `tokenizer_config.json`)."""

    gguf_metadata: dict[str, Any] | None = None
    tokenizer_json: Path | None = None
    tokenizer_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Checkpoint:
    path: Path
    format: str                       # "gguf" | "hf"
    config: Any                       # DecoderConfig for decoder LLMs
    tensors: Mapping[str, QTensor]    # lazy, GGUF names and layout
    metadata: dict[str, Any]          # raw GGUF key/values, or the HF config.json dict
    tokenizer: TokenizerSpec
    chat_template: str | None = None
    file_bytes: int = 0

    @property
    def arch(self) -> str:
        return self.config.arch
