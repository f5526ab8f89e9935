"""Shared fixtures: the real shipped models (skipped when their packages are missing) and
their tokenizers, built once per session (the Gemma vocabulary has 262k tokens)."""
from __future__ import annotations

import os
import shutil
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

SHIPPED_NAMES = ("smollm2-135m-instruct", "gemma3-270m")


@lru_cache(maxsize=None)
def shipped_path(name: str) -> Path:
    """Path of a shipped model's GGUF; pytest.skip if its package is not installed."""
    from edgeformer.errors import InputError
    from edgeformer.models.shipped import resolve_model
    try:
        return resolve_model(name)
    except InputError as e:
        pytest.skip(f"shipped model {name} unavailable: {e}")


@lru_cache(maxsize=None)
def gguf_tokenizer_metadata(path: Path) -> dict[str, Any]:
    """The `tokenizer.*` key/values of a GGUF as plain Python values, read by edgeformer's
    GGUF reader."""
    from edgeformer.formats import load_checkpoint
    md = load_checkpoint(path, validate=False).tokenizer.gguf_metadata
    return {k: v for k, v in md.items() if k.startswith("tokenizer.")}


@lru_cache(maxsize=None)
def ef_tokenizer(name: str):
    """edgeformer's Tokenizer for a shipped model (cached for the session)."""
    from edgeformer.formats.tokenizer import Tokenizer
    path = shipped_path(name)
    return Tokenizer.from_gguf_metadata(gguf_tokenizer_metadata(path), source=path)


@lru_cache(maxsize=None)
def hf_reference_tokenizer(name: str):
    """transformers' tokenizer converted from the same GGUF (offline), the reference."""
    pytest.importorskip("transformers")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoTokenizer

    from edgeformer.models.shipped import cache_dir
    path = shipped_path(name)
    # converting a GGUF vocabulary takes transformers 5-20 s; keep transformers' own saved
    # conversion, keyed by transformers version and GGUF size/mtime, for later sessions
    st = path.stat()
    saved = cache_dir() / "test-refs" / f"{name}-tf{transformers.__version__}-{st.st_size}-{st.st_mtime_ns}"
    if (saved / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(saved))
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tmp = saved.with_name(saved.name + f".{os.getpid()}.tmp")
    tok.save_pretrained(str(tmp))
    try:
        os.rename(tmp, saved)
    except OSError:   # another process saved it first
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


_LLAMAS: dict[str, Any] = {}


def llamacpp_vocab(name: str):
    """llama.cpp (llama-cpp-python) loaded vocab-only on the same GGUF."""
    if name not in _LLAMAS:
        llama_cpp = pytest.importorskip("llama_cpp")
        _LLAMAS[name] = llama_cpp.Llama(str(shipped_path(name)), vocab_only=True, verbose=False)
    return _LLAMAS[name]


def pytest_sessionfinish(session, exitstatus) -> None:
    # free llama.cpp models while the library is still loaded (not at interpreter exit)
    for llama in _LLAMAS.values():
        llama.close()
    _LLAMAS.clear()


class Shipped:
    """Accessors handed to tests by the `shipped` fixture; each result is built once."""

    path = staticmethod(shipped_path)
    tokenizer_metadata = staticmethod(lambda name: gguf_tokenizer_metadata(shipped_path(name)))
    tokenizer = staticmethod(ef_tokenizer)
    hf_tokenizer = staticmethod(hf_reference_tokenizer)
    llamacpp = staticmethod(llamacpp_vocab)


@pytest.fixture(scope="session")
def shipped() -> Shipped:
    """`shipped.path(name)`, `.tokenizer(name)` (edgeformer), `.hf_tokenizer(name)`
    (transformers from the GGUF), `.llamacpp(name)` (llama-cpp-python, vocab only) for
    name in SHIPPED_NAMES; each skips the test when its package is missing."""
    return Shipped()


# Files whose tests run for minutes in one piece: handed to a worker before any other file.
# tests/backends/cpu/test_isa_paths.py re-runs the kernel-sensitive tests on the forced AVX2
# path in one subprocess (~5 CPU-minutes); xdist's loadfile order is by test count, which
# put that 5-test file last, so the whole run waited for it (longest job first instead).
LONGEST_FIRST = ("tests/backends/cpu/test_isa_paths.py",)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile` (pyproject's addopts), with LONGEST_FIRST's files handed out first;
    None (xdist's own scheduler) for other modes or if xdist's internals moved."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling
    if not callable(getattr(LoadFileScheduling, "_assign_work_unit", None)):
        return None

    class LongestFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            for scope in [s for s in getattr(self, "workqueue", {}) if s in LONGEST_FIRST]:
                self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)
    return LongestFirst(config, log)


@pytest.fixture
def perf_setup_restored():
    """The perf CLIs set Numba's thread count process-wide: undo it."""
    import numba
    threads = numba.get_num_threads()
    yield
    numba.set_num_threads(threads)
