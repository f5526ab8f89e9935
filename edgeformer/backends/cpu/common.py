"""Shared Numba settings for the CPU kernels."""
from __future__ import annotations

from numba import njit

# No nnan/ninf: masked attention uses -inf and callers' inf/NaN must come back as from the
# reference. reassoc/contract let LLVM vectorize float reductions and use FMA.
FAST = {"nsz", "arcp", "contract", "reassoc"}
# error_model="numpy": x / 0 gives inf/nan like numpy instead of a raise, whose branch
# also stops LLVM vectorising any loop with a division in it.
JIT = dict(fastmath=FAST, cache=True, nogil=True, error_model="numpy")
PARALLEL_MIN = 1 << 16   # elements; below this a serial loop beats waking the thread pool


def jit_pair(fn):
    """(serial, parallel) compiled versions of a kernel written with `prange`."""
    return njit(**JIT)(fn), njit(parallel=True, **JIT)(fn)
