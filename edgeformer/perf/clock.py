"""How perf measures: the named clocks, the timing loop, and the measuring setup (kernel
threads + clock) a benchmark runs in.

Timing loops run each measurement repeatedly until at least `min_time` seconds of wall
time have passed (0.2 s by default) because some machines' clocks tick in 4-12 ms steps;
a single call can take less than one tick. The clock a loop reports in is named by its
caller ("wall" or "cpu") and passed down explicitly to whatever measures.

The shipped calibration and validation numbers (BENCHMARKS.md, "Performance model") were
made with one kernel thread timed by process CPU time (`CALIBRATED_THREADS`,
`CALIBRATED_CLOCK`): on a 2-vCPU host shared with other processes a parallel (2-thread)
Numba region waits for its descheduled thread and wall-clock times swing 2-10x; one
thread timed by its own CPU time is steady enough to compare with the roofline.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import edgeformer.backends.cpu  # noqa: F401 - applies EDGEFORMER_CPU_ISA before numba is imported
import numba

from edgeformer.errors import InputError

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
DEFAULT_MIN_TIME = 0.2
CALIBRATED_THREADS = 1
CALIBRATED_CLOCK = "cpu"


def timed_windows(fn: Callable[[], object], windows: int, min_time: float) -> list[tuple[float, float, int]]:
    """`windows` timing windows of whole `fn()` calls, each looping until at least
    `min_time` wall seconds elapsed (clocks may tick in 4-12 ms steps: never time one
    call), after one untimed warm-up call (JIT, page faults). Per window: (wall seconds,
    process CPU seconds, calls)."""
    fn()
    out = []
    for _ in range(windows):
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        out.append((elapsed, time.process_time() - c0, n))
    return out


def time_per_call(fn: Callable[[], object], min_time: float = DEFAULT_MIN_TIME, repeats: int = 3,
                  clock: str = "wall") -> float:
    """Best-of-`repeats` mean seconds per call of `fn` (`timed_windows` of >= `min_time`
    wall seconds), as `clock` ("wall" or "cpu": this process's CPU time) counts them."""
    column = 0 if check_clock(clock) == "wall" else 1
    return min(w[column] / w[2] for w in timed_windows(fn, repeats, min_time))


def check_clock(name: str) -> str:
    """`name` if it is a clock of CLOCKS; InputError otherwise."""
    if name not in CLOCKS:
        raise InputError(f"--clock must be one of {', '.join(CLOCKS)}, got {name!r}")
    return name


def threads() -> int:
    """Worker threads kernels run with (Numba's current setting)."""
    return int(numba.get_num_threads())


def set_threads(n: int | None) -> None:
    """Run kernels with `n` threads in this process (and, through `runner.worker_env`, in
    the worker processes it starts). None leaves the default (all cores). InputError when
    `n` is outside 1..NUMBA_NUM_THREADS."""
    if n is None:
        return
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise InputError(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS}, got {n}")
    numba.set_num_threads(n)


def use_setup(threads: int | None = None, clock: str | None = None) -> tuple[int | None, str]:
    """Apply a measuring setup's thread count (`set_threads`) and return the setup as
    (threads, clock); threads None = all cores. The clock is not stored anywhere: the
    caller passes it to whatever measures. Unspecified parts default to the calibrated
    setup (CALIBRATED_THREADS, CALIBRATED_CLOCK); a thread count > 1 without a clock
    means the wall clock (CPU time sums all threads), and `clock="wall"` without a thread
    count all cores. InputError for an unknown clock, or "cpu" with more than one thread."""
    if clock is None:
        clock = CALIBRATED_CLOCK if threads in (None, CALIBRATED_THREADS) else "wall"
    if threads is None and clock == CALIBRATED_CLOCK:
        threads = CALIBRATED_THREADS
    check_clock(clock)
    set_threads(threads)
    if clock == "cpu" and numba.get_num_threads() != 1:
        raise InputError("--clock cpu needs --threads 1 (process CPU time sums all threads)")
    return threads, clock


def setup_name(clock: str) -> str:
    """The current thread count and `clock` as the options that select them
    ("--threads 1 --clock cpu")."""
    return f"--threads {threads()} --clock {clock}"
