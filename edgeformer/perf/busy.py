"""Is this machine busy while we measure? Other processes' CPU use over an interval.

A prediction-vs-measurement check is only worth judging on a quiet machine: on a shared
host the other processes' threads take cores, caches and memory bandwidth from the
measured one (on a 2-vCPU VM beside a busy neighbour, a 2-thread Numba step waits for its
descheduled thread and runs up to ~10x slower; even one thread timed by CPU time swings
+-20 %). `CpuMonitor` measures, over the interval it is running, how many cores other
processes (and, on a VM, other guests: steal time) kept busy: the whole machine's busy
time from /proc/stat minus this process's and its waited-for children's CPU time. Where
/proc/stat is unreadable it estimates the same from the 1-minute load average.
`validate` and `codesign --verify` record it per measurement and print "machine busy:
results not judged" instead of a verdict made from noise.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

# other processes using more than this many cores on average (while we measure) make a
# result unjudgeable: a quiet machine's daemons use a few hundredths of a core
BUSY_CORES = 0.5


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def read_proc_stat() -> tuple[float, float] | None:
    """(busy seconds, idle seconds) of all CPUs since boot from /proc/stat's "cpu" line
    (busy: user, nice, system, irq, softirq, steal; idle: idle, iowait); None where
    unreadable (not Linux)."""
    try:
        with open("/proc/stat") as f:
            line = f.readline().split()
    except OSError:
        return None
    if not line or line[0] != "cpu" or len(line) < 5:
        return None
    v = [float(x) for x in line[1:]] + [0.0] * 8
    hz = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq + steal) / hz, (idle + iowait) / hz


def own_cpu_s() -> float:
    """CPU seconds of this process and of its terminated, waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def load_average() -> float | None:
    """The 1-minute load average; None where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class CpuLoad:
    """What the machine did while a measurement ran: `others_cores` = mean cores used by
    other processes (None: unknown), `own_cores` = ours, over `wall_s`; `source` says how
    `others_cores` was obtained ("/proc/stat" or "loadavg")."""

    wall_s: float
    others_cores: float | None
    own_cores: float
    cores: int
    source: str

    @property
    def busy(self) -> bool:
        return is_busy(self.others_cores)

    def describe(self) -> str:
        if self.others_cores is None:
            return "other processes' CPU use unknown"
        return (f"other processes used {self.others_cores:.2f} of {self.cores} cores on average "
                f"({self.source}, {self.wall_s:.0f} s)")


def is_busy(others_cores: float | None, threshold: float = BUSY_CORES) -> bool:
    """Whether other processes' mean CPU use (cores) makes a measurement unjudgeable."""
    return others_cores is not None and others_cores > threshold


class CpuMonitor:
    """`with CpuMonitor() as m: ...` then `m.load` (a `CpuLoad`); or `start()` / `stop()`.
    The counters are read through the arguments, default this module's readers (looked
    up when the monitor is made, so a test can inject a machine's counters)."""

    def __init__(self, stat: Callable[[], tuple[float, float] | None] | None = None,
                 own: Callable[[], float] | None = None,
                 loadavg: Callable[[], float | None] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.stat = stat or read_proc_stat
        self.own = own or own_cpu_s
        self.loadavg = loadavg or load_average
        self.clock = clock or time.perf_counter
        self.load: CpuLoad | None = None

    def start(self) -> CpuMonitor:
        self._t0, self._own0, self._stat0 = self.clock(), self.own(), self.stat()
        return self

    def stop(self) -> CpuLoad:
        wall = max(self.clock() - self._t0, 1e-9)
        own = max(self.own() - self._own0, 0.0)
        stat1 = self.stat()
        cores = cpu_count()
        if self._stat0 is not None and stat1 is not None:
            busy = stat1[0] - self._stat0[0]
            ticked = busy + stat1[1] - self._stat0[1] > 0      # else shorter than a clock tick
            others = min(float(cores), max(0.0, (busy - own) / wall)) if ticked else None
            self.load = CpuLoad(wall, others, own / wall, cores, "/proc/stat")
        else:
            la = self.loadavg()
            others = None if la is None else max(0.0, la - own / wall)
            self.load = CpuLoad(wall, others, own / wall, cores, "loadavg")
        return self.load

    def __enter__(self) -> CpuMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
