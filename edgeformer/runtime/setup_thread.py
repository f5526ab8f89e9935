"""Setup of a long-running process (a server loading its model, warming kernels, building
its batching engine) on a thread of its own that ends, so that the thread that then runs
the steps is the only one holding a pool of kernel threads.

Why: Numba's OpenMP layer (GNU libgomp) gives each thread that starts a parallel region a
pool of its own, kept until that thread exits. Once the pools hold more threads than the
host has CPUs, libgomp throttles every pool's busy-wait to ~100 spins, so each of a
decode step's ~120 parallel regions pays a sleeping worker's wake-up. Measured on the
real SmolLM2 (2 threads, 2 CPUs): a 1-sequence BatchEngine step 7.7 ms on the thread that
warmed the kernels, 13.6 ms on a second thread after the first warmed them (the server's
case: model loaded on the main thread, steps on the engine's thread: 15.5 ms ITL), 7.9 ms
when the warm-up ran on a thread that had ended.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_setup_thread(fn: Callable[[], T]) -> T:
    """fn() on a fresh thread, joined: its result, or its exception raised here."""
    out: dict[str, object] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the caller's thread
            out["error"] = e

    t = threading.Thread(target=target, name="edgeformer-setup")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]  # type: ignore[return-value]
