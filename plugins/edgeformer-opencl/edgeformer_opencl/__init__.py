"""An OpenCL backend for edgeformer, brought up outside edgeformer's tree as a plugin.

Registered only through the `edgeformer.backends` entry point (pyproject.toml); edgeformer
imports this module on first use of `--backend opencl`.

Native ops (OpenCL C in kernels.cl, built once per backend instance): `linear` for F16,
Q8_0 and Q4_0 weights (dequantized inside the kernel from the GGUF blocks, repacked at
`prepare_weight` into a quant plane and a scale plane), `rms_norm`, `rope`, `attention`,
`activation` and `glu`. Everything else is the numpy reference: ops without a kernel
through `Backend.kernel` (one RuntimeWarning per op), linear weights of other qtypes inside
this backend's `linear` (one RuntimeWarning per qtype; `unsupported` names them, so the
conformance suite lists them as "fallback").

Memory: host memory in and out of every call (`device_memory` stays False); weights are
copied to device buffers once, at load. Correct, not fast: one work-item per output of a
linear, no tiling, no fused decode step.

Device: the first GPU, else accelerator, else CPU device of the installed OpenCL
platforms; EDGEFORMER_OPENCL_DEVICE="text" picks the first device whose
"platform: device" name contains the text (case-insensitive).
"""
from __future__ import annotations

import os
import warnings
from importlib import resources
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend, Weight
from edgeformer.errors import UnsupportedError
from edgeformer.kernels.activation import activation_ref, glu_ref
from edgeformer.kernels.linear import linear_ref
from edgeformer.quant import dequantize
from edgeformer.quant.qtypes import QTensor, QType

__all__ = ["OpenCLBackend", "CLWeight", "NATIVE_QTYPES"]

NATIVE_QTYPES = (QType.F16, QType.Q8_0, QType.Q4_0)
DEVICE_ENV = "EDGEFORMER_OPENCL_DEVICE"
SCORES_BYTES = 64 << 20        # attention scores scratch per call (queries chunked to fit)
_ACT = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}      # kernels.cl act()


class CLWeight(QTensor):
    """A prepared weight: the source QTensor itself (its GGUF bytes, so the numpy
    references the runtime falls back to, e.g. `embed` of the token table or `linear` of
    a qtype without a kernel, take the handle as it is) plus this backend's device
    buffers (`planes`, None for a qtype without a kernel) and, once a fallback linear has
    needed it, the float32 dequantized matrix (`dense`)."""

    planes: tuple[Any, ...] | None
    dense: np.ndarray | None

    def __init__(self, qt: QTensor, planes: tuple[Any, ...] | None) -> None:
        super().__init__(qt.data, qt.qtype, tuple(qt.shape))
        object.__setattr__(self, "planes", planes)
        object.__setattr__(self, "dense", None)

    def __repr__(self) -> str:
        return f"CLWeight({self.qtype.name}, {self.shape}, {'native' if self.planes else 'fallback'})"


def _devices() -> list[Any]:
    import pyopencl as cl
    order = {cl.device_type.GPU: 0, cl.device_type.ACCELERATOR: 1, cl.device_type.CPU: 2}
    devs = []
    for p in cl.get_platforms():
        try:
            devs += p.get_devices()
        except cl.Error:             # a platform (ICD) with no device of any type
            continue
    devs.sort(key=lambda d: min((v for t, v in order.items() if d.type & t), default=3))
    return devs


def _label(dev: Any) -> str:
    return f"{dev.platform.name.strip()}: {dev.name.strip()}"


def _pick_device() -> Any:
    """The device to use (module docstring); UnsupportedError if there is none."""
    devs = _devices()
    want = os.environ.get(DEVICE_ENV)
    if want:
        devs = [d for d in devs if want.lower() in _label(d).lower()]
        if not devs:
            raise UnsupportedError(f"{DEVICE_ENV}={want!r} matches no OpenCL device; have: "
                                   f"{', '.join(_label(d) for d in _devices()) or 'none'}")
    if not devs:
        raise UnsupportedError("no OpenCL device")
    return devs[0]


def _f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


class OpenCLBackend(Backend):
    name = "opencl"
    compiles = True            # PoCL compiles a kernel per work-group size on first enqueue

    @classmethod
    def available(cls) -> str | None:
        try:
            import pyopencl as cl  # noqa: F401
        except ImportError as e:
            return f"pyopencl is not importable: {e}"
        try:
            _pick_device()
        except UnsupportedError as e:
            return str(e)
        except Exception as e:  # noqa: BLE001 - cl.Error (e.g. PLATFORM_NOT_FOUND_KHR) or an ICD loader error
            return f"no OpenCL platform: {type(e).__name__}: {e}"
        return None

    def __init__(self) -> None:
        import pyopencl as cl
        why = self.available()
        if why:
            raise UnsupportedError(f"opencl backend: {why}")
        self._cl = cl
        self.device = _pick_device()
        self.ctx = cl.Context([self.device])
        self.queue = cl.CommandQueue(self.ctx)
        ls = 1 << (min(64, self.device.max_work_group_size).bit_length() - 1)
        self.ls = ls
        opts = [f"-DLS={ls}"]
        if self.device.single_fp_config & cl.device_fp_config.CORRECTLY_ROUNDED_DIVIDE_SQRT:
            opts.append("-cl-fp32-correctly-rounded-divide-sqrt")
        src = resources.files(__package__).joinpath("kernels.cl").read_text()
        self.prg = cl.Program(self.ctx, src).build(options=opts)
        self._k = {k.function_name: k for k in self.prg.all_kernels()}
        self._dummy = cl.Buffer(self.ctx, cl.mem_flags.READ_ONLY, 4)
        self._fallback_warned: set[str] = set()
        self.kernels = {"linear": self.linear, "rms_norm": self.rms_norm, "rope": self.rope,
                        "attention": self.attention, "activation": self.activation, "glu": self.glu}

    def describe(self) -> str:
        return f"opencl ({_label(self.device)}, OpenCL kernels for {', '.join(self.kernels)}; float32)"

    # ------------------------------------------------------------------ buffers

    def _in(self, a: np.ndarray) -> Any:
        """A read-only device copy of a host array (a 4-byte dummy for an empty one)."""
        if a.nbytes == 0:
            return self._dummy
        mf = self._cl.mem_flags
        return self._cl.Buffer(self.ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=a)

    def _out(self, shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
        host = np.empty(shape, np.float32)
        return host, self._cl.Buffer(self.ctx, self._cl.mem_flags.WRITE_ONLY, max(host.nbytes, 4))

    def _read(self, host: np.ndarray, buf: Any) -> np.ndarray:
        if host.nbytes:
            self._cl.enqueue_copy(self.queue, host, buf)
        return host

    def _run(self, name: str, gsize: tuple[int, ...], lsize: tuple[int, ...] | None, *args: Any) -> None:
        self._k[name](self.queue, gsize, lsize, *args)

    # ------------------------------------------------------------------ weights

    def prepare_weight(self, qt: QTensor, name: str = "") -> Weight:
        """Repack a 2-D (N, K) weight of a native qtype into device planes (kernels.cl's
        linear layout): F16 as is; Q8_0 / Q4_0 split into a quant plane (N, K) int8 /
        (N, K/2) nibbles and a half-bits scale plane (N, K/32). Any other weight keeps
        only its bytes (the reference dequantizes them when asked)."""
        planes: tuple[Any, ...] | None = None
        if qt.qtype in NATIVE_QTYPES and len(qt.shape) == 2 and min(qt.shape) > 0:
            n, k = qt.shape
            raw = np.asarray(qt.data)
            if qt.qtype == QType.F16:
                planes = (self._in(np.ascontiguousarray(raw.view(np.uint16))),)
            else:
                bs = qt.qtype.type_size
                blocks = raw.reshape(n * (k // 32), bs)
                d = np.ascontiguousarray(blocks[:, :2]).view(np.uint16).reshape(-1)
                qs = np.ascontiguousarray(blocks[:, 2:]).reshape(-1)
                planes = (self._in(qs), self._in(d))
        return Weight(name, qt.qtype, tuple(qt.shape), qt.nbytes, CLWeight(qt, planes), None)

    def unsupported(self, op: str, **attrs: Any) -> list[str]:
        if op not in self.kernels:
            return [f"{self.name} has no kernel for {op}"]
        q = attrs.get("qtype")
        if op == "linear" and q is not None and q not in NATIVE_QTYPES:
            return [f"{self.name} has no {q.name} linear kernel (native: "
                    f"{', '.join(t.name for t in NATIVE_QTYPES)})"]
        if op in ("activation", "glu") and attrs.get("kind") not in _ACT:
            return [f"{self.name} has no {attrs.get('kind')!r} activation"]
        return []

    # ------------------------------------------------------------------ ops

    def linear(self, x: np.ndarray, w: Any, bias: np.ndarray | None = None) -> np.ndarray:
        """kernels/linear.py `linear_ref`; a weight without device planes (a qtype with no
        kernel, or a QTensor/array not prepared here) runs the reference, with one
        RuntimeWarning per qtype."""
        if not isinstance(w, CLWeight) or w.planes is None:
            return self._linear_fallback(x, w, bias)
        n, k = w.shape
        lead = x.shape[:-1]
        xs = _f32(x).reshape(-1, k)
        t = xs.shape[0]
        y, yb = self._out(lead + (n,))
        if t and n:
            b = _f32(bias) if bias is not None else None
            self._run(f"linear_{w.qtype.name.lower()}", (n, t), None, self._in(xs), *w.planes,
                      self._in(b) if b is not None else self._dummy, np.int32(b is not None), yb,
                      np.int32(n), np.int32(k))
        return self._read(y, yb)

    def _linear_fallback(self, x: np.ndarray, w: Any, bias: np.ndarray | None) -> np.ndarray:
        q = getattr(w, "qtype", None)
        label = q.name if q is not None else type(w).__name__
        self._warn_once(f"{label} linear")
        if isinstance(w, CLWeight):
            if w.dense is None:          # dequantize once, as the numpy backend does at load
                object.__setattr__(w, "dense", dequantize(w))
            w = w.dense
        return linear_ref(x, w, bias)

    def _warn_once(self, what: str) -> None:
        """One RuntimeWarning per backend instance for each thing only the reference runs
        (as `Backend.kernel` warns once per op without a kernel)."""
        if what not in self._fallback_warned:
            self._fallback_warned.add(what)
            warnings.warn(f"backend 'opencl' has no {what} kernel: using the numpy reference",
                          RuntimeWarning, stacklevel=3)

    def rms_norm(self, x: np.ndarray, w: np.ndarray | None, eps: float) -> np.ndarray:
        """kernels/norm.py `rms_norm_ref`, over the last axis."""
        xs = _f32(x)
        d = xs.shape[-1] if xs.ndim else 1
        rows = xs.size // d if d else 0
        y, yb = self._out(xs.shape)
        if rows and d:
            self._run("rms_norm", (rows * self.ls,), (self.ls,), self._in(xs),
                      self._in(_f32(w)) if w is not None else self._dummy, np.int32(w is not None), yb,
                      np.int32(d), np.float32(eps))
        return self._read(y, yb)

    def rope(self, x: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray, *,
             neox: bool = True, mscale: float = 1.0) -> np.ndarray:
        """kernels/rope.py `rope_ref`: x (T, H, D), the first 2 * len(inv_freq) dims rotate."""
        xs = _f32(x)
        t, h, d = xs.shape
        half = int(inv_freq.shape[0])
        if 2 * half > d:
            raise UnsupportedError(f"rope: {2 * half} rotary dims > head dim {d}")
        y, yb = self._out(xs.shape)
        if xs.size:
            pos = np.ascontiguousarray(np.asarray(positions).astype(np.float32))
            self._run("rope", (d, h, t), None, self._in(xs), self._in(pos), self._in(_f32(inv_freq)), yb,
                      np.int32(h), np.int32(d), np.int32(half), np.int32(bool(neox)), np.float32(mscale))
        return self._read(y, yb)

    def activation(self, x: np.ndarray, kind: str) -> np.ndarray:
        """kernels/activation.py `activation_ref`, elementwise (a kind without a kernel: the
        reference, which raises ValueError for an unknown one)."""
        if kind not in _ACT:
            self._warn_once(f"{kind!r} activation")
            return activation_ref(x, kind)
        xs = _f32(x)
        y, yb = self._out(xs.shape)
        if xs.size:
            self._run("activation", (xs.size,), None, self._in(xs), yb, np.int32(_ACT[kind]), np.int32(xs.size))
        return self._read(y, yb)

    def glu(self, gate: np.ndarray, up: np.ndarray, kind: str) -> np.ndarray:
        """kernels/activation.py `glu_ref`: act(gate) * up."""
        if kind not in _ACT:
            self._warn_once(f"{kind!r} activation")
            return glu_ref(gate, up, kind)
        g, u = _f32(gate), _f32(up)
        if g.shape != u.shape:
            raise ValueError(f"glu: gate {g.shape} and up {u.shape} differ")
        y, yb = self._out(g.shape)
        if g.size:
            self._run("glu", (g.size,), None, self._in(g), self._in(u), yb, np.int32(_ACT[kind]), np.int32(g.size))
        return self._read(y, yb)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                  q_pos: np.ndarray | None = None, k_pos: np.ndarray | None = None, *,
                  scale: float, causal: bool = True, window: int | None = None,
                  softcap: float | None = None) -> np.ndarray:
        """kernels/attention.py `attention_ref` (GQA, causal by positions, window, softcap)."""
        qs, ks, vs = _f32(q), _f32(k), _f32(v)
        t, hq, d = qs.shape
        s, hkv, dv = vs.shape
        if hq % hkv or ks.shape != (s, hkv, d):
            raise ValueError(f"attention: q {qs.shape}, k {ks.shape}, v {vs.shape} do not fit")
        qp = np.arange(s - t, s, dtype=np.int64) if q_pos is None else np.asarray(q_pos).astype(np.int64)
        kp = np.arange(s, dtype=np.int64) if k_pos is None else np.asarray(k_pos).astype(np.int64)
        out = np.zeros((t, hq, dv), np.float32)        # no key at all: zeros, as the reference
        if not (t and hq and dv and s):
            return out
        cl = self._cl
        # queries in chunks, so the (chunk, Hq, S) float32 scores stay under SCORES_BYTES
        tc = max(1, min(t, SCORES_BYTES // (4 * hq * s)))
        scores = cl.Buffer(self.ctx, cl.mem_flags.READ_WRITE, tc * hq * s * 4)
        kb, vb, kpb = self._in(ks), self._in(vs), self._in(np.ascontiguousarray(kp))
        win = np.int64(-1 if window is None else window)
        cap = np.float32(softcap if softcap else 0.0)
        for t0 in range(0, t, tc):
            n = min(tc, t - t0)
            qpb = self._in(np.ascontiguousarray(qp[t0:t0 + n]))
            o, ob = self._out((n, hq, dv))
            self._run("attn_scores", (s, hq, n), None, self._in(qs[t0:t0 + n]), kb, qpb, kpb, scores,
                      np.int32(s), np.int32(hq), np.int32(hkv), np.int32(d), np.float32(scale),
                      np.int32(bool(causal)), win, cap)
            self._run("attn_softmax_pv", (hq * self.ls, n), (self.ls, 1), scores, vb, qpb, kpb, ob,
                      np.int32(s), np.int32(hq), np.int32(hkv), np.int32(dv), np.int32(bool(causal)), win)
            out[t0:t0 + n] = self._read(o, ob)
        return out
