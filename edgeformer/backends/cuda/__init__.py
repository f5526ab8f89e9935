"""The Triton backend for NVIDIA GPUs ("cuda").

Importing this package is cheap and needs neither torch nor Triton (the core install has
neither): `available()` looks for the packages and an NVIDIA driver before importing
torch, and the kernel modules are imported when a backend is built.

Weights are uploaded once at load as their GGUF planes (`weights.py`) and dequantized
inside the kernels (`linear.py`). Kernels take host arrays or device tensors and return
host float32 arrays, because the decoder's op path slices and concatenates numpy arrays
between ops: each op pays a round trip, the weights never move. The fused decode step
(`block.py`) keeps the residual stream on the device across blocks.

`CudaBackend(device="cpu")` runs every kernel in Triton's interpreter
(TRITON_INTERPRET=1, set before Triton is imported): how the tests check the kernels on
machines without a GPU.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend, Weight
from edgeformer.errors import UnsupportedError
from edgeformer.backends.cuda.traits import ACTIVATIONS, NATIVE_QTYPES, interpreting
from edgeformer.quant.qtypes import QTensor, QType

# where an NVIDIA driver shows itself (Linux; WSL's is /dev/dxg)
_DRIVER_PATHS = ("/dev/nvidiactl", "/proc/driver/nvidia/version", "/dev/dxg")


@functools.cache
def _missing_package() -> str | None:
    for mod in ("torch", "triton"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'edgeformer[cuda]')"
    return None


@functools.cache
def _gpu_reason() -> str | None:
    """None if torch and Triton import and torch sees a CUDA device, else why not;
    torch is imported only once a driver is present."""
    missing = _missing_package()
    if missing:
        return missing
    if not any(os.path.exists(p) for p in _DRIVER_PATHS):
        return "no NVIDIA driver on this machine"
    try:
        import torch
        import triton  # noqa: F401
    except Exception as e:  # noqa: BLE001 - a broken install is a reason, not a traceback
        return f"torch/triton do not import: {type(e).__name__}: {e}"
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is built without CUDA"
    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def why_not_fused(stack: Any) -> str | None:
    """None if the fused step (`block.py`) runs a `blocks.DecoderStack`, else the reason.
    Neither qtypes nor rope scaling limit it (qtypes without a kernel are F32 after load;
    the step takes each step's rope frequencies as given)."""
    if not stack.blocks:
        return "no blocks"
    if stack.activation not in ACTIVATIONS:
        return f"activation {stack.activation}"
    for B in stack.blocks:
        if len(B.qkv) not in (1, 3) or len(B.gate_up) not in (1, 2):
            return "projections other than q|k|v (or q, k, v) and gate|up (or gate, up)"
        if (B.q_norm is None) != (B.k_norm is None):
            return "a q norm without a k norm"
    return None




class CudaBackend(Backend):
    name = "cuda"
    device_memory = True
    device_cache = True
    joins_weights = True
    fused_decode = True
    compiles = True             # Triton compiles each kernel specialization on first use

    def __init__(self, device: str | None = None, graphs: bool | None = None) -> None:
        """device: "cuda" (default; a "cuda:N" picks a GPU) or "cpu", which needs Triton's
        interpreter (TRITON_INTERPRET=1 before Triton is imported). A backend that cannot
        run here is still built (the registry lists it) with no kernels; loading a
        weight then raises UnsupportedError with the reason. graphs: capture the fused
        decode step as a CUDA graph (default: on a GPU, unless EDGEFORMER_CUDA_GRAPHS=0)."""
        self.device_name = device or "cuda"
        self.graphs = (self.device_name != "cpu" and os.environ.get("EDGEFORMER_CUDA_GRAPHS", "1") != "0"
                       if graphs is None else graphs)
        if self.device_name == "cpu":
            self._why = _missing_package() or (None if interpreting() else
                                               "device 'cpu' runs only in Triton's interpreter (TRITON_INTERPRET=1)")
        else:
            self._why = _gpu_reason()
        self._warned: set[str] = set()
        self.kernels: dict[str, Callable[..., Any]] = {} if self._why else self._build()

    def _build(self) -> dict[str, Callable[..., Any]]:
        import torch

        from edgeformer.backends.cuda import attention, elementwise, linear, norm, rope
        from edgeformer.backends.cuda.device import host
        self.device = torch.device(self.device_name)
        dev = self.device
        if dev.type == "cuda" and dev.index is not None:
            torch.cuda.set_device(dev)          # Triton launches on the current device

        def on_host(fn: Callable[..., Any], **bound: Any) -> Callable[..., np.ndarray]:
            return lambda *args, **kw: host(fn(*args, **kw, **bound))
        return {
            "linear": on_host(linear.linear), "embed": on_host(linear.embed),
            "rms_norm": on_host(norm.rms_norm, device=dev), "layer_norm": on_host(norm.layer_norm, device=dev),
            "rope": on_host(rope.rope, device=dev), "attention": on_host(attention.attention, device=dev),
            "activation": on_host(elementwise.activation, device=dev), "glu": on_host(elementwise.glu, device=dev),
            "softcap": on_host(elementwise.softcap, device=dev), "softmax": on_host(elementwise.softmax, device=dev),
            "add": on_host(elementwise.add, device=dev), "mul": on_host(elementwise.mul, device=dev),
        }

    @classmethod
    def available(cls) -> str | None:
        return _gpu_reason()

    def describe(self) -> str:
        if self._why:
            return f"cuda (unavailable: {self._why})"
        if self.device_name == "cpu":
            return "cuda (Triton interpreter on the CPU, float32)"
        import torch
        import triton
        return f"cuda (Triton {triton.__version__}, {torch.cuda.get_device_name(self.device)}, float32 activations)"

    def _check(self) -> None:
        if self._why:
            raise UnsupportedError(f"cuda backend unavailable: {self._why}")

    def unsupported(self, op: str, **attrs: Any) -> list[str]:
        q = attrs.get("qtype")
        if op in ("linear", "embed") and q is not None and QType(q) not in NATIVE_QTYPES:
            return [f"cuda has no {QType(q).name} kernel (weights of it are dequantized to F32 at load)"]
        return super().unsupported(op, **attrs)

    def prepare_weight(self, qt: QTensor, name: str = "") -> Weight:
        """Upload a 2-D (N, K) weight as its planes (`weights.py`), serving `linear` and
        `embed` alike. A qtype without a kernel is dequantized to F32 first, with one
        RuntimeWarning per qtype per backend (correct, at 4 bytes per weight)."""
        self._check()
        from edgeformer.backends.cuda import weights
        if len(qt.shape) != 2:
            raise UnsupportedError(f"cuda backend: weight {name or '?'} must be 2-D, got shape {qt.shape}")
        src = qt
        if qt.qtype not in NATIVE_QTYPES:
            from edgeformer.quant import dequantize
            if qt.qtype.name not in self._warned:
                self._warned.add(qt.qtype.name)
                warnings.warn(f"cuda backend has no {qt.qtype.name} kernel: weight {name or '?'} and any later "
                              f"{qt.qtype.name} weights are dequantized to F32 at load", RuntimeWarning, stacklevel=2)
            qt = QTensor.from_array(dequantize(qt).reshape(qt.shape))
        handle = weights.prepare(qt, self.device)
        return Weight(name, src.qtype, tuple(src.shape), src.nbytes, handle, None)

    def concat_weights(self, ws: list[Weight], name: str = "") -> Weight | None:
        """q|k|v and gate|up joined row-wise (same prepared qtype and row length), so the
        fused step and the op path make one linear call for each."""
        from edgeformer.backends.cuda import weights
        hs = [w.handle for w in ws]
        if len(ws) < 2 or any(h.qtype != hs[0].qtype or h.shape[1] != hs[0].shape[1] or w.qtype != ws[0].qtype
                              for h, w in zip(hs, ws)):
            return None
        joined = weights.concat(hs)
        return Weight(name, ws[0].qtype, joined.shape, sum(w.nbytes for w in ws), joined, None)

    @classmethod
    def why_not_fused(cls, stack: Any, activations: str | None = None) -> str | None:
        """See `why_not_fused` (module level); activations are float32 ("f32", "auto" or None)."""
        if activations not in (None, "auto", "f32"):
            return f"activations {activations} (the cuda backend computes in float32)"
        return why_not_fused(stack)

    def decode_step(self, stack: Any, x: Any, pos: int, cache: Any, ropes: dict) -> Any:
        """Every block for one token with the residual stream on the device (`block.py`);
        None when `why_not_fused` names a reason (the decoder then runs op by op)."""
        if self._why or why_not_fused(stack) is not None:
            return None
        from edgeformer.backends.cuda.block import decode_step
        return decode_step(stack, x, pos, cache, ropes, self.device, graphs=self.graphs)

    def measure_ceilings(self) -> dict[str, Any] | None:
        """Copy bandwidth and matmul peaks of this backend's device (`ceilings.py`); on
        "cpu" (the interpreter) small sizes, of the CPU through torch."""
        self._check()
        from edgeformer.backends.cuda.ceilings import measure
        return measure(self.device, small=self.device_name == "cpu")

    def make_cache(self, n_layers: int, n_kv_heads: int, head_dim: int, max_seq_len: int) -> Any:
        """A `DeviceKVCache` (`cache.py`): keys and values in device memory."""
        self._check()
        from edgeformer.backends.cuda.cache import DeviceKVCache
        return DeviceKVCache(n_layers, n_kv_heads, head_dim, max_seq_len, self.device)

    def to_device(self, a: np.ndarray) -> Any:
        """A host array as a tensor on the device, dtype kept (ids and positions stay ints)."""
        self._check()
        import torch
        return torch.from_numpy(np.array(a, copy=True)).to(self.device)

    def to_host(self, a: Any) -> np.ndarray:
        """A kernel's output or a device tensor as a host array (floats as float32)."""
        import torch
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu()
            return a.to(torch.float32).numpy() if a.is_floating_point() else a.numpy()
        return np.asarray(a)
