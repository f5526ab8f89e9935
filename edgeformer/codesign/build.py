"""Build a co-design candidate: write its random-weight GGUF (`formats.synthetic`) and
check that edgeformer loads and runs it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeformer.backends import get_backend
from edgeformer.codesign.space import Candidate
from edgeformer.formats import load_checkpoint
from edgeformer.formats.synthetic import write_random_gguf
from edgeformer.models.decoder import Decoder


def build_candidate(cand: Candidate, out: str | os.PathLike, max_seq_len: int = 2048,
                    backend: str | None = None) -> Path:
    """Write a co-design candidate's random-weight GGUF under `out` (named after its
    shape, qtype), load it with `backend` (default: the default backend) and run a
    4-token forward. RuntimeError when the logits come out wrong."""
    c = cand.config(max_seq_len)
    tag = cand.label().split(" kv:")[0].replace("/", "-").replace(" ", "_")
    path = write_random_gguf(c, Path(out) / f"codesign_{tag}.gguf", cand.qtype)
    model = Decoder(load_checkpoint(path), get_backend(backend))
    logits = model.forward(np.arange(4), model.make_cache(16))
    if logits.shape != (4, c.vocab_size) or not np.isfinite(logits).all():
        raise RuntimeError(f"built model {path} produced bad logits {logits.shape}")
    return path
