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


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies summed over all CPUs, from the first line of /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


def busy_cpus(sample_s: float = SAMPLE_S) -> float | None:
    """CPUs used by other processes over ``sample_s`` seconds (this process sleeps meanwhile), or None."""
    first, own_first = _cpu_times(), os.times()
    if first is None:
        return None
    time.sleep(sample_s)
    second, own_second = _cpu_times(), os.times()
    if second is None or second[1] <= first[1]:
        return None
    cpus = os.cpu_count() or 1
    busy_share = (second[0] - first[0]) / (second[1] - first[1])
    wall = sample_s
    own = (own_second.user + own_second.system) - (own_first.user + own_first.system)
    return max(0.0, busy_share * cpus - own / wall)


def choose_threads(usable: int | None = None, busy: float | None = ...) -> ThreadChoice:
    """The default thread count: usable CPUs minus those other processes keep busy (rounded), >= 1."""
    usable = usable_cpus() if usable is None else usable
    busy = busy_cpus() if busy is ... else busy
    if busy is None:
        return ThreadChoice(usable, usable, None)
    return ThreadChoice(max(1, min(usable, round(usable - busy))), usable, busy)
