"""How many CPU threads a command uses when the user gave no --threads.

On a machine where other processes keep cores busy, one compute thread per logical CPU loses
badly: every OpenMP parallel region waits for its slowest thread, and a thread that shares its
core with another process runs half the time. So the default is the number of CPUs this process
may use (its affinity mask) that are idle now, measured over a short window from /proc/stat, at
least 1. Measured on a 2-core machine in docs/performance.md ("Threads on a busy machine").
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

SAMPLE_S = 0.15  # long enough to see a process that keeps a core busy, short next to model loading


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    usable: int  # CPUs in this process's affinity mask
    busy: float | None  # CPUs kept busy by other processes during the sample; None = not measurable here

    def describe(self) -> str:
        if self.busy is None:
            return f"{self.threads} CPU thread(s) (all usable CPUs)"
        return (f"{self.threads} CPU thread(s): {self.usable} usable CPU(s), {self.busy:.1f} busy with other "
                "processes (--threads sets it)")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True, kw_only=True)
class CpuSnapshot:
    """Wall clock, CPU seconds used by the whole machine, and by this process + its waited children."""

    wall_s: float
    machine_busy_s: float
    own_s: float


def cpu_snapshot() -> CpuSnapshot | None:
    """Read /proc/stat and this process's times; None where /proc/stat does not exist (non-Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    own = os.times()
    return CpuSnapshot(wall_s=time.monotonic(), machine_busy_s=(sum(fields[:8]) - idle) / ticks,
                       own_s=own.user + own.system + own.children_user + own.children_system)


def other_processes_cores(start: CpuSnapshot | None, end: CpuSnapshot | None) -> float | None:
    """Average number of cores other processes kept busy between two snapshots (>= 0).

    This process and the children it waited for are subtracted, so this says whether the machine
    was otherwise busy meanwhile (gtasr-bench records it per scenario)."""
    if start is None or end is None or end.wall_s <= start.wall_s:
        return None
    others = (end.machine_busy_s - start.machine_busy_s) - (end.own_s - start.own_s)
    return max(0.0, others / (end.wall_s - start.wall_s))


def busy_cpus(sample_s: float = SAMPLE_S) -> float | None:
    """CPUs kept busy by other processes over ``sample_s`` seconds (this one sleeps meanwhile), or None."""
    start = cpu_snapshot()
    time.sleep(sample_s)
    return other_processes_cores(start, cpu_snapshot())


def choose_threads(usable: int | None = None, busy: float | None = ...) -> ThreadChoice:
    """The default thread count: usable CPUs minus those other processes keep busy (rounded), >= 1."""
    usable = usable_cpus() if usable is None else usable
    busy = busy_cpus() if busy is ... else busy
    if busy is None:
        return ThreadChoice(usable, usable, None)
    return ThreadChoice(max(1, min(usable, round(usable - busy))), usable, busy)
