"""A tiny random transformers model saved as HF and converted to a GGUF by edgeformer's
converter: the reference weights and the file the backends run."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest


def random_gguf(d: Path, kind: str, config: dict[str, Any], qtype: str) -> tuple[Any, Path]:
    """(transformers model, GGUF path) for a `kind` model ("llama", "qwen3", "gemma2", ...)
    with config `config`, weights drawn N(0, 0.15) (larger than HF's 0.02 init, so the
    logits vary), saved under d/hf and converted to d/m.gguf in `qtype`."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from edgeformer.formats.convert import convert
    from edgeformer.quant.qtypes import QType
    cfg = transformers.AutoConfig.for_model(kind, **config)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15)
    model.save_pretrained(d / "hf")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no tokenizer.json.*")
        convert(d / "hf", d / "m.gguf", QType.from_name(qtype))
    return model, d / "m.gguf"
