"""The cuda backend's tests run everywhere torch and Triton are installed:

- without a usable GPU (CI, laptops), every Triton kernel runs in Triton's interpreter on
  CPU tensors: TRITON_INTERPRET=1 is set here, before any kernel module is imported
  (Triton reads it when a kernel is decorated), and the backend is built on "cpu";
- with CUDA, the same tests run the compiled kernels on the GPU, and the tests marked
  `gpu` (larger models; `pytest -m gpu tests/backends/cuda` runs only them) run as well.

Test modules skip themselves (importorskip) when torch or Triton is missing: both are
optional (`pip install 'edgeformer[cuda]'`).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from edgeformer.backends.cuda import CudaBackend

GPU = CudaBackend.available() is None
if not GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cuda" if GPU else "cpu"
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip this directory's `gpu`-marked tests, with the reason, where CUDA is not usable."""
    if GPU:
        return
    skip = pytest.mark.skip(reason=f"needs CUDA: {CudaBackend.available()}")
    for item in items:
        if "gpu" in item.keywords and item.path.is_relative_to(HERE):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def backend() -> CudaBackend:
    """The cuda backend on this machine's GPU, else in Triton's interpreter on the CPU."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    return CudaBackend(device=DEVICE)
