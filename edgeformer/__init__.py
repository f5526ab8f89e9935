"""edgeformer: Python-first, low-level inference for transformer models on edge devices.

    import edgeformer
    engine = edgeformer.load()            # the default shipped model, or a path / short name
    print(engine.chat([{"role": "user", "content": "What is the capital of France?"}]).text)
"""
from typing import Any

from edgeformer.errors import CapacityError, ConfigError, EdgeformerError, FormatError, InputError, UnsupportedError

__version__ = "0.1.0"

# imported on first use so `import edgeformer` stays cheap (no numba, no model code)
_LAZY = {"load": "edgeformer.api", "Engine": "edgeformer.runtime.engine",
         "SamplingParams": "edgeformer.runtime.sampler"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgeformer' has no attribute {name!r}")


__all__ = ["CapacityError", "load", "Engine", "SamplingParams", "EdgeformerError", "FormatError", "UnsupportedError",
           "ConfigError", "InputError", "__version__"]
