"""Backends: the interface and registry (base.py), the numpy reference, the Numba cpu
backend (cpu/), the shape-only null backend, the tracer and the conformance suite.
Built-in backends are listed in `base.BUILTIN_BACKENDS`; others call `register_backend`."""
from edgeformer.backends.base import Backend, Ops, Weight, backend_names, get_backend, register_backend
from edgeformer.backends.numpy_ref import NumpyBackend

__all__ = ["Backend", "Ops", "Weight", "get_backend", "register_backend", "backend_names", "NumpyBackend"]
