"""gtasr-serve batch interrupted (the driver's scheduler, with a stand-in for Ray: no cluster needed).

Property: a KeyboardInterrupt (Ctrl-C, or SIGTERM/SIGHUP routed by gtasr_deploy.interrupts) while
jobs are in flight starts no new job, lets the jobs in flight finish and keeps their records, and
the summary says interrupted (exit code 130). tests/test_cluster.py runs the real Ray cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray", reason="gtasr-serve batch needs Ray (pip extra 'serve')")

from gtasr_deploy.batch import BatchSummary, FileRecord, Job  # noqa: E402
from gtasr_deploy.serve import cluster  # noqa: E402


class FakeRay:
    """ray.wait / ray.get over finished 'futures'; the second wait is interrupted, as a signal would."""

    def __init__(self, interrupt_at: int) -> None:
        self.waits, self.interrupt_at, self.started = 0, interrupt_at, []

    def wait(self, refs, num_returns=1):
        self.waits += 1
        if self.waits == self.interrupt_at:
            raise KeyboardInterrupt("signal 15")
        return [refs[0]], refs[1:]

    def get(self, ref):
        index, job = ref
        return index, FileRecord(input=str(job.src), output=str(job.dst), status="written"), 1234


class FakeWorker:
    def __init__(self, ray: FakeRay) -> None:
        self.process = self
        self.ray = ray

    def remote(self, index, job):
        self.ray.started.append(index)
        return (index, job)


def test_an_interrupt_finishes_the_jobs_in_flight_and_starts_no_new_one(monkeypatch):
    import ray.exceptions  # noqa: F401 (the scheduler imports its error classes)

    jobs = [Job(src=Path(f"in/{i}.png"), rel=Path(f"{i}.png"), dst=Path(f"out/{i}.png")) for i in range(6)]
    fake = FakeRay(interrupt_at=2)
    workers = [FakeWorker(fake), FakeWorker(fake)]
    seen = []
    records, pids, interrupted = cluster._schedule(fake, workers, jobs, 0, seen.append)
    assert interrupted is True
    # two in flight at first; one finished, one more started; then the signal: the two in flight finish
    assert fake.started == [0, 1, 2] and [Path(r.input).name for r in records] == ["0.png", "1.png", "2.png"]
    assert all(r.status == "written" for r in records) and len(seen) == 3
    summary = BatchSummary(records=tuple(records), interrupted=interrupted)
    assert summary.exit_code == 130 and summary.line() == "interrupted: 3 written, 0 skipped (done), 0 failed"
