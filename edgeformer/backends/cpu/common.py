"""Shared Numba settings for the CPU kernels."""
from __future__ import annotations

import types

from numba import njit

# No nnan/ninf: masked attention uses -inf and callers' inf/NaN must come back as from the
# reference. reassoc/contract let LLVM vectorize float reductions and use FMA.
FAST = {"nsz", "arcp", "contract", "reassoc"}
# error_model="numpy": x / 0 gives inf/nan like numpy instead of a raise, whose branch
# also stops LLVM vectorising any loop with a division in it.
JIT = dict(fastmath=FAST, cache=True, nogil=True, error_model="numpy")
# Batch invariance: code that must give a row the same bits on every path (attention, the
# rms_norm / rope / glu rows shared by the op path and the fused decode step) compiles
# without fast-math flags. LLVM must then round as written wherever it inlines or
# vectorises it (reassoc/contract let it pick a different order or FMA fusion per call
# site); explicit orders (fixed lane trees, llvm.fmuladd) keep it fast.
EXACT = dict(fastmath=False, cache=True, nogil=True, error_model="numpy")
PARALLEL_MIN = 1 << 16   # elements; below this a serial loop beats waking the thread pool


def specialise(fn, name: str, flags: dict, **names):
    """`fn` compiled with Numba options `flags` as a kernel called `name`, with the global
    `names` rebound (e.g. the row dot a template calls): one source, one machine-code kernel
    per binding. Rebound globals, not a closure: Numba's disk cache keys a closure by
    pickling its cells, and an intrinsic pickles to a new id in every process (never a hit).
    Renamed because the cache keys an entry by qualified name and line, not by bindings."""
    g = dict(fn.__globals__, **names) if names else fn.__globals__
    f = types.FunctionType(fn.__code__, g, name, fn.__defaults__, fn.__closure__)
    f.__qualname__, f.__module__, f.__doc__ = name, fn.__module__, fn.__doc__
    return njit(**flags)(f)


def jit_pair(fn, flags=None):
    """(serial, parallel) compiled versions of a kernel written with `prange` (Numba
    options `flags`, default JIT).

    The parallel one compiles a renamed copy: Numba's disk cache keys an entry by the
    function's qualified name, line and signature, not by `parallel=`, so two dispatchers
    of one function shared an entry and whichever compiled first served both (the HiFi-GAN
    convs ran their "parallel" kernel on one thread: 17.8 ms vs 8.6 ms)."""
    flags = JIT if flags is None else flags
    return njit(**flags)(fn), specialise(fn, fn.__qualname__ + "_parallel", dict(parallel=True, **flags))
