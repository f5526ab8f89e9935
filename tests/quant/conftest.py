"""Fixtures for the quant tests."""
from __future__ import annotations

import pathlib

import pytest

from support.quant_testutil import GGML


@pytest.fixture(scope="session")
def ggml() -> GGML:
    llama_cpp = pytest.importorskip("llama_cpp")
    path = pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    if not path.exists():
        pytest.skip(f"llama-cpp-python has no {path.name}")
    return GGML(path)
