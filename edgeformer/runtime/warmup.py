"""Warm-up: run the kernels a generation uses once, on a scratch cache, before anything
is timed, so compiling (first run) or loading (later runs) the Numba kernels lands in the
load time instead of in the first prompt's prefill and decode figures.

A backend that compiles (`Backend.compiles`) gets a prefill of at least 24 tokens (large
enough for the threaded attention kernel of typical models) and of enough tokens to reach
its threaded row kernels (`Backend.threaded_min` elements: rms_norm / rope / glu over
tokens x width; SmolLM2: 114 tokens), or the first long prompt would compile them (~4 s
on 2 cores), two decode steps (the fused decode step
is a kernel of its own) and a 3-token step (the serial attention kernel: short chunks,
speculative verification). When its compiled-kernel cache is
cold (`Backend.kernels_cached()` False) the two halves compile in parallel: a child
process (`python -m edgeformer.runtime.warmup MODEL --decode`) compiles the decode kernels
into the shared on-disk cache while this process compiles the prefill ones; then this
process's decode steps load them from the cache. A first run on 2 cores takes about half
as long this way. Progress is printed on stderr with the measured time. `BatchEngine`
warms the paged attention of its own cache when it is made (`warm_paged`).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

WARM_PROMPT = 24      # prefill rows: the T > 1 kernels (row dots for 4 tokens, threaded attention)
WARM_DECODE = 2       # decode steps: the fused step, then a step from a non-empty cache
WARM_CHUNK = 3        # a short multi-token step: the serial attention kernel
WARM_AFTER = WARM_DECODE + WARM_CHUNK     # cache rows the warm-up uses after its prefill
WARM_LEN = WARM_PROMPT + WARM_AFTER


def prompt_rows(model: Any) -> int:
    """Prefill rows of the warm-up: WARM_PROMPT, or enough rows that the narrowest row-wise
    op (the hidden state, or q's heads) reaches `Backend.threaded_min` elements; within the
    model's context (less the decode and chunk steps)."""
    c = model.config
    width = min(c.dim, c.n_heads * c.head_dim)
    rows = max(WARM_PROMPT, -(-model.backend.threaded_min // width))
    return min(rows, c.max_seq_len - WARM_AFTER)


def _step(model: Any, cache: Any, n: int) -> None:
    """One forward of `n` tokens (1..n, within the vocabulary)."""
    model.forward(np.arange(1, n + 1) % model.config.vocab_size, cache, last_only=True)


def _decode(model: Any, cache: Any) -> None:
    for _ in range(WARM_DECODE):
        _step(model, cache, 1)


def _decode_child(path: str | os.PathLike, activations: str | None) -> subprocess.Popen | None:
    """Start the child that compiles the decode kernels; None where it cannot start."""
    cmd = [sys.executable, "-m", "edgeformer.runtime.warmup", str(path), "--decode"]
    if activations:
        cmd += ["--activations", activations]
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=os.environ.copy())
    except OSError:
        return None


def warm_up(model: Any, path: str | os.PathLike | None = None, quiet: bool = False) -> float:
    """Run `model`'s kernels once (see the module docstring); returns the seconds spent.
    A no-op for backends that do not compile. `path` (the model file) lets a cold cache
    compile in two processes."""
    be = model.backend
    if not be.compiles or model.config.max_seq_len < WARM_LEN:
        return 0.0
    t0 = time.perf_counter()
    cold = not be.kernels_cached()
    child = None
    if cold:         # the backend said so when it was made (CpuBackend's notice)
        if path is not None and (os.cpu_count() or 1) >= 2:
            child = _decode_child(path, be.activations)
    rows = prompt_rows(model)
    cache = model.make_cache(rows + WARM_AFTER)
    _step(model, cache, rows)
    if child is not None:
        child.wait()
    _decode(model, cache)
    _step(model, cache, WARM_CHUNK)
    dt = time.perf_counter() - t0
    if cold and not quiet:
        print(f"edgeformer: kernels compiled in {dt:.1f} s", file=sys.stderr, flush=True)
    return dt


def warm_paged(model: Any, cache: Any) -> None:
    """The kernels only continuous batching runs: attention reading `cache`'s pages in
    place (a `PagedKVCache` with `paged_views`; its storage dtype, threaded and serial), on
    a scratch sequence of `cache` that is released after (nothing enters its prefix cache)."""
    if not (model.backend.compiles and cache.paged_views) or cache.max_seq_len < WARM_LEN \
            or cache.pool.free_pages < cache.pages_for(WARM_PROMPT + 1):
        return
    seq = cache.new_sequence()
    try:
        for n in (WARM_PROMPT, 1):
            model.forward_batch([(np.arange(1, n + 1) % model.config.vocab_size, seq)])
    finally:
        seq.release()


def main(argv: list[str] | None = None) -> int:
    """The decode half of a cold warm-up, in its own process (see `_decode_child`)."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("--decode", action="store_true", help="compile only the decode kernels")
    ap.add_argument("--activations", default=None)
    args = ap.parse_args(argv)
    from edgeformer.backends import get_backend
    from edgeformer.formats import load_checkpoint
    from edgeformer.models.decoder import Decoder
    model = Decoder(load_checkpoint(Path(args.model)), get_backend("cpu", args.activations))
    rows = prompt_rows(model)
    cache = model.make_cache(rows + WARM_AFTER)
    if not args.decode:
        _step(model, cache, rows)
    _decode(model, cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
