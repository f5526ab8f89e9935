"""The Numba CPU backend ("cpu").

Importing this package is cheap (no numba import, nothing compiled): the kernel modules
are imported when a `CpuBackend` is constructed, and each kernel compiles on first call
(`cache=True`, so later processes load machine code from `__pycache__`).

Weights are repacked once at load (`repack.py`); `linear` has one kernel per qtype
(`linear.py`, generated from `kinds.py`'s table); the other op families mirror
`kernels/`: norm, rope, attention, activation (glu, softcap, softmax), embed. add/mul are
numpy's own ufuncs (already vectorised and bandwidth-bound), i.e. the reference.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from edgeformer.backends.base import Backend, Weight
from edgeformer.backends.cpu import isa
from edgeformer.errors import UnsupportedError
from edgeformer.quant.qtypes import QTensor

# EDGEFORMER_CPU_ISA=avx2 -> NUMBA_CPU_NAME/FEATURES/CACHE_DIR, before any kernel module imports
# numba (isa.py); a request that comes too late is raised when a backend is built
isa.apply_env()


def _release_file_pages(a: Any) -> None:
    """Drop a repacked tensor's pages of the mmapped model file from this process's
    resident set (madvise DONTNEED), so loading peaks near one copy of the weights
    instead of two. Only for read-only file mappings (an `mmap.mmap` in the array's base
    chain, array not writeable): those pages are re-read from the file if touched again;
    anything else (an anonymous buffer would be zeroed) is left alone."""
    import mmap
    base = a
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    # a read-only buffer (ACCESS_READ, as formats/gguf.py maps files) is never a private
    # copy-on-write page that DONTNEED would lose
    if base is None or not isinstance(a, np.ndarray) or a.flags.writeable or sys.platform != "linux":
        return
    try:
        import ctypes
        start, n = a.ctypes.data, a.nbytes
        page = mmap.PAGESIZE
        lo, hi = (start + page - 1) // page * page, (start + n) // page * page
        if hi > lo:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), 4)   # MADV_DONTNEED
    except (OSError, AttributeError, ValueError):
        pass


def _drop_stale_cache() -> None:
    """Numba keys a cached kernel on its own source file's timestamp, not on the files whose
    intrinsics and inlined functions it compiled in (simd*.py, act_quant.py, norm.py,
    attention.py ... into linear.py's and block.py's kernels): after an edit or an upgrade
    of any of them, stale machine code would keep running. So a hash of every source of this
    package is kept beside the cache; when it changes, the cached entries are deleted (they
    recompile on first call). Only the default cache (this package's __pycache__, the forced
    ISAs' subdirectories included); a read-only install is left alone."""
    import hashlib
    here = Path(__file__).parent
    cache = here / "__pycache__"
    try:
        digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(here.glob("*.py")))).hexdigest()
        stamp = cache / "kernel-sources.sha256"
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return
        for f in list(cache.rglob("*.nbi")) + list(cache.rglob("*.nbc")):
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest + "\n")
    except OSError:
        pass


def _cache_warm() -> bool:
    """Whether Numba's on-disk cache holds the fused decode kernel (the last one a first run
    compiles): next to the sources, or under NUMBA_CACHE_DIR."""
    env = os.environ.get("NUMBA_CACHE_DIR")      # when set, Numba caches only there (in subdirectories)
    if env:
        return Path(env).is_dir() and any(Path(env).rglob("block._attn_out-*.nbi"))
    # directly in __pycache__: its isa-avx2/ subdirectory is another ISA's cache (isa.py)
    return any((Path(__file__).parent / "__pycache__").glob("block._attn_out-*.nbi"))


SPINCOUNT = 20000   # GNU OpenMP busy-wait spins before a pool thread sleeps (when idle cores)


def _choose_wait_policy() -> None:
    """How Numba's OpenMP pool threads wait between parallel regions, read once when the
    pool starts. A decode step runs ~100 short regions: a sleeping pool (PASSIVE) pays a
    ~10-50 us wake-up per region (SmolLM2-135M Q8_0 decode measured ~95 tok/s vs ~160-220
    with brief spinning, 2 threads, idle host); but spinning threads starve the working
    one when other processes hold the cores (GNU's default 300k spins: 1.7 tok/s beside two
    busy loops). So: brief spinning (GOMP_SPINCOUNT=SPINCOUNT) when, right now, other
    processes leave at least half the cores idle, else PASSIVE. A user's OMP_WAIT_POLICY
    or GOMP_SPINCOUNT wins."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if _others_running() > 0.5 * (os.cpu_count() or 1):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    else:
        os.environ["GOMP_SPINCOUNT"] = str(SPINCOUNT)


def _clean_file_runs(lo: int, hi: int) -> list[tuple[int, int]]:
    """(start, length) runs of [lo, hi) whose pages are resident and still the file's own
    (not copy-on-write copies: e.g. relocated read-only data), from /proc/self/pagemap
    (bit 63 present, bit 61 file page; readable without privileges). [] if unreadable."""
    import mmap
    import struct
    page = mmap.PAGESIZE
    n = (hi - lo) // page
    try:
        with open("/proc/self/pagemap", "rb") as pm:
            pm.seek(lo // page * 8)
            entries = struct.unpack(f"<{n}Q", pm.read(n * 8))
    except (OSError, struct.error):
        return []
    runs, start = [], None
    for i, e in enumerate(entries + (0,)):
        clean = (e >> 63) & 1 and (e >> 61) & 1
        if clean and start is None:
            start = i
        elif not clean and start is not None:
            runs.append((lo + start * page, (i - start) * page))
            start = None
    return runs


def _release_compiler_pages() -> int:
    """Drop LLVM's resident pages (libllvmlite.so) from this process's resident set;
    returns the bytes advised. Numba needs LLVM only to load or compile a kernel; once the
    kernels a model uses are loaded it runs only their code, yet LLVM's start-up left ~50
    MB of its machine code and ~15 MB of its read-only data resident. Executable pages of
    a shared library are never written; of its read-only data only the pages still
    backed by the file are taken (relocated ones are private copies and stay). So
    MADV_DONTNEED only unmaps file pages: a later kernel load faults them back in from
    the page cache, unchanged."""
    if sys.platform != "linux":
        return 0
    spans = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 6 or not parts[5].endswith("/libllvmlite.so"):
                    continue
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if parts[1] == "r-xp":
                    spans.append((lo, hi - lo))
                elif parts[1] == "r--p":
                    spans += _clean_file_runs(lo, hi)
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for lo, n in spans:
            libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(n), 4)      # MADV_DONTNEED
    except (OSError, ValueError, AttributeError):
        return 0
    return sum(n for _, n in spans)


def _keep_freed_memory() -> None:
    """Let glibc reuse freed blocks of up to 64 MiB instead of returning each to the OS.
    A prefill allocates its activations fresh per op (a 512-token SmolLM2 step: ~6 MB per
    linear output); above glibc's mmap threshold each one was a new mapping, page-faulted
    4 KiB at a time (~1 ms per array): pp512 measured 902 -> 1361 tok/s with this, same
    peak RSS (271 MB). Larger blocks (whole weights) stay mmapped and go back to the OS."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 << 20)      # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 << 20)     # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass                            # not glibc: its allocator decides


def _others_running(samples: int = 5) -> float:
    """Runnable tasks of other processes now: the fewest /proc/loadavg's running count
    shows over a few ms (a process that keeps a core busy is in every sample, a transient
    one is not), minus this process's own running threads. Not the 1-minute load average:
    it lags by a minute and still counts a benchmark's previous process. That average
    where /proc is missing."""
    import glob
    import time
    try:
        least = 1 << 30
        for _ in range(samples):
            with open("/proc/loadavg") as f:
                total = int(f.read().split()[3].split("/")[0])
            mine = 0
            for st in glob.glob("/proc/self/task/*/stat"):
                try:
                    with open(st) as f:
                        mine += f.read().rsplit(")", 1)[1].split()[0] == "R"
                except OSError:
                    pass
            least = min(least, total - mine)
            time.sleep(0.002)
        return least
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return float("inf")


class CpuBackend(Backend):
    name = "cpu"
    # a linear row's bits never depend on the other rows of the call (backends/row_invariant.py):
    # every kernel computes a row the same way for any row count
    row_invariant_rows = 1 << 30
    joins_weights = True
    fused_decode = True
    # attention takes a paged cache's `PagedKV` views and reads their pages in place
    paged_attention = True

    def __init__(self, activations: str = "auto") -> None:
        """activations: how quantized weights meet activations (`act_quant.py`): "int16"
        (what "auto" means), "int8" (llama.cpp's scheme) or "f32" (dequantized weights,
        float32 activations). Float weights always take float32 activations."""
        from edgeformer.backends.cpu.act_quant import DTYPES, resolve
        try:
            self.activations = resolve(activations)
        except ValueError as e:
            raise UnsupportedError(f"cpu backend: {e}") from None
        dt = DTYPES[self.activations]
        self._act = None if dt is None else np.zeros(0, dt)
        isa.ensure()
        _choose_wait_policy()
        _keep_freed_memory()
        if "NUMBA_CACHE_DIR" not in os.environ or isa.requested() == "avx2":
            _drop_stale_cache()
        if not _cache_warm():
            print("edgeformer: compiling the CPU kernels on first use (once for this CPU, typically 20-50 s "
                  "on 2 cores; cached afterwards)", file=sys.stderr, flush=True)
        from edgeformer.backends.cpu import activation, attention, embed, linear, norm, rope
        from edgeformer.backends.cpu.common import PARALLEL_MIN
        self.threaded_min = PARALLEL_MIN
        isa.verify()        # Numba compiles for what EDGEFORMER_CPU_ISA asked
        from edgeformer.kernels.elementwise import add_ref, mul_ref
        self.kernels: dict[str, Callable[..., Any]] = {
            "linear": linear.linear, "embed": embed.embed,
            "rms_norm": norm.rms_norm, "layer_norm": norm.layer_norm, "rope": rope.rope,
            "attention": attention.attention, "activation": activation.activation,
            "glu": activation.glu, "softmax": activation.softmax, "softcap": activation.softcap,
            "add": add_ref, "mul": mul_ref,
        }
        self._bind = linear.bind
        self._dequant_warned: set[str] = set()      # qtypes already warned about (once each)
        self.kernels.update(__import__("edgeformer.backends.cpu.conv", fromlist=["KERNELS"]).KERNELS)  # conv1d, conv_transpose1d
        self._forwards = 0                          # forward passes seen (after_forward)
        # Numba's first kernel call starts LLVM, which leaves ~50 MB of its code resident:
        # start it now, before any weights, and hand those pages back (they are needed again
        # only to load or compile a kernel), so a model's peak does not carry them
        norm.rms_norm(np.ones((1, 32), np.float32), None, 1e-6)
        _release_compiler_pages()

    @classmethod
    def available(cls) -> str | None:
        isa.ensure()        # a bad or too-late EDGEFORMER_CPU_ISA is an error, not a quiet fallback
        try:
            import numba  # noqa: F401
        except ImportError as e:
            return f"numba is not importable: {e}"
        return None

    compiles = True

    def kernels_cached(self) -> bool:
        return _cache_warm()

    def after_forward(self) -> None:
        """After forward passes 1, 2, 4, 8, ...: release LLVM's code pages (see
        `_release_compiler_pages`). Kernels load on first use, so the early passes may
        bring pages back (a new batch size, prefill after decode); doubling the interval
        keeps the cost (one /proc read) negligible."""
        self._forwards += 1
        if self._forwards & (self._forwards - 1) == 0:
            _release_compiler_pages()

    def describe(self) -> str:
        import numba
        return (f"cpu (Numba {isa.compiled_isa()}, {numba.get_num_threads()} threads, "
                f"activations {self.activations})")

    def prepare_weight(self, qt: QTensor, name: str = "") -> Weight:
        """Repack a 2-D (N, K) weight once into the kernels' layout (see `repack.py`) and
        bind its linear kernel. A qtype without a native kernel is dequantized to F32 with
        one RuntimeWarning per qtype per backend instance (a model load), naming the first
        such weight (correct, but it reads 4 bytes per weight). The handle serves both
        `linear` and `embed` (tied embeddings are stored once)."""
        from edgeformer.backends.cpu.repack import NATIVE, repack
        if len(qt.shape) != 2:
            raise UnsupportedError(f"cpu backend: weight {name or '?'} must be 2-D, got shape {qt.shape}")
        if qt.qtype not in NATIVE:
            from edgeformer.quant import dequantize
            if qt.qtype.name not in self._dequant_warned:
                self._dequant_warned.add(qt.qtype.name)
                warnings.warn(f"cpu backend has no {qt.qtype.name} kernel: weight {name or '?'} and any "
                              f"later {qt.qtype.name} weights are dequantized to F32 at load",
                              RuntimeWarning, stacklevel=2)
            qt = QTensor.from_array(dequantize(qt).astype("float32").reshape(qt.shape))
        packed = repack(qt)
        self._bind(packed, self._act)
        _release_file_pages(qt.data)
        return Weight(name, qt.qtype, qt.shape, qt.nbytes, packed, None)

    def concat_weights(self, ws: list[Weight], name: str = "") -> Weight | None:
        """One weight whose rows are `ws`' rows in order (q|k|v, gate|up), so a decode step
        reads them in one pass and quantizes the activations once; None when they cannot
        be joined (different qtypes or row lengths). The parts' arrays are not kept: the
        caller drops `ws`, so memory does not grow."""
        from edgeformer.backends.cpu.repack import concat_rows
        if len(ws) < 2 or any(w.qtype != ws[0].qtype or w.shape[1:] != ws[0].shape[1:] or w.source is not None
                              for w in ws):
            return None
        packed = concat_rows([w.handle for w in ws])
        self._bind(packed, self._act)
        n = sum(w.shape[0] for w in ws)
        return Weight(name, ws[0].qtype, (n,) + tuple(ws[0].shape[1:]), sum(w.nbytes for w in ws), packed, None)

    @classmethod
    def why_not_fused(cls, stack: Any, activations: str | None = None) -> str | None:
        """See `block.why_not_fused`: covered families, qtypes with a row dot
        (`kinds.KINDS`; a qtype the backend dequantizes at load is F32, not covered), and
        integer activations (not the "f32" setting)."""
        from edgeformer.backends.cpu.act_quant import DTYPES, resolve
        from edgeformer.backends.cpu.block import why_not_fused
        return why_not_fused(stack, DTYPES[resolve(activations or "auto")] is not None)

    def decode_step(self, stack: Any, x: Any, pos: int, cache: Any, ropes: dict) -> Any:
        """Every block for one token in two Numba calls per block (see `block.py`); None
        when the stack is not covered (`why_not_fused`)."""
        from edgeformer.backends.cpu.block import decode_step
        return decode_step(stack, x, pos, cache, ropes, self._act is not None)
