"""gtasr-serve batch interrupted (the driver's scheduler, with a stand-in for Ray: no cluster needed).

Property: a KeyboardInterrupt (Ctrl-C, or SIGTERM/SIGHUP routed by gtasr_deploy.interrupts) while
jobs are in flight starts no new job, lets the jobs in flight finish and keeps their records, and
the summary says interrupted (exit code 130). tests/test_cluster.py runs the real Ray cluster.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray", reason="gtasr-serve batch needs Ray (pip extra 'serve')")

from gtasr_deploy.batch.runner import BatchSummary, FileRecord, Job  # noqa: E402
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


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_sigterm_stops_gtasr_serve_batch_in_order_and_a_rerun_resumes(tmp_path):
    """The real command with a local Ray (one worker): SIGTERM after the first output is a stop
    after the file in flight, exit 130, no temp file, only complete outputs; a re-run does the rest.
    (ray.init takes SIGTERM over with sys.exit: the run must take it back.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np
    from PIL import Image

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / f"{i}.png")

    def batch() -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "RAY_DEDUP_LOGS": "0"}
        return subprocess.Popen(
            [sys.executable, "-m", "gtasr_deploy.cli.serve", "batch", str(src), str(out), "--actors", "1",
             "--num-cpus", "1", "--threads", "1", "--device", "cpu", "-q"],
            cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True,
            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM,
                                                                           signal.SIGHUP)])

    def done() -> list[str]:
        return sorted(p.name for p in out.glob("*.png"))

    run = batch()
    deadline = time.monotonic() + 300
    while not done() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, f"the run ended before it could be interrupted: {run.communicate()}"
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=180)
    assert run.returncode == 130, stderr
    assert "interrupted: " in stderr and "Traceback" not in stderr
    kept = done()
    assert 1 <= len(kept) < 8 and list(tmp_path.rglob(".gtasr-*.tmp")) == []
    for name in kept:
        with Image.open(out / name) as im:
            im.load()
            assert im.size == (256, 256)
    again = batch()
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert f"{8 - len(kept)} written, {len(kept)} skipped (done), 0 failed" in stderr
