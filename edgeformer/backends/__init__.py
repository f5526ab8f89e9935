"""Built-in backends register here; out-of-tree ones through the `edgeformer.backends`
entry-point group."""
from edgeformer.backends.base import Backend, Ops, Weight, backend_names, get_backend, register_backend
from edgeformer.backends.numpy_ref import NumpyBackend

register_backend("numpy", NumpyBackend)

__all__ = ["Backend", "Ops", "Weight", "get_backend", "register_backend", "backend_names", "NumpyBackend"]

from edgeformer.backends.cpu import CpuBackend  # noqa: E402  (cheap: numba loads when one is built)

register_backend("cpu", CpuBackend)
