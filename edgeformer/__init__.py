"""edgeformer: Python-first, low-level inference for transformer models on edge devices."""
from edgeformer.errors import ConfigError, EdgeformerError, FormatError, InputError, UnsupportedError

__version__ = "0.1.0"

__all__ = ["EdgeformerError", "FormatError", "UnsupportedError", "ConfigError", "InputError", "__version__"]
