"""Issue 19, signals: the real ``gtasr-upscale`` (embedded demo weights, 64x64 images) in a
subprocess, stopped by SIGINT, SIGTERM or SIGHUP after its first output appears.

Properties: exit code 130 on the process and in the ``--json`` report; no partial or temp file;
every kept output finished (a re-run skips exactly those and does the rest); temp files that
killed runs of this tool left in the output folder are removed by the next run, and a live
process's temp file is left alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 12


def _default_signals() -> None:
    """In the child: signals as an interactive shell leaves them (a test runner started in the
    background or under nohup would hand down SIGINT/SIGHUP ignored, and the tool keeps those)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def upscale(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "gtasr_deploy.cli.upscale", *args, "-q", "--device", "cpu",
                             "--threads", "1"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_signals)


def photos(folder: Path) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(N_IMAGES):
        PILImage.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")


def pngs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png"))


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_leaves_finished_files_only_and_the_report_says_130(tmp_path, signum):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    photos(src)
    run = upscale(str(src), str(out), "--json", str(report))
    deadline = time.monotonic() + 300
    while not pngs(out) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.poll() is None, f"the run ended before it could be interrupted: {run.communicate()}"
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert [p for p in tmp_path.rglob("*") if p.name.startswith(".gtasr-")] == []  # no temp file anywhere
    kept = pngs(out)
    assert 1 <= len(kept) < N_IMAGES, kept
    data = json.loads(report.read_text())
    assert data["summary"]["interrupted"] is True and data["summary"]["exit_code"] == 130
    assert data["summary"]["written"] == len(kept)
    for name in kept:  # complete files: they decode at full size
        with PILImage.open(out / name) as im:
            im.load()
            assert im.size == (256, 256)


def test_resume_skips_finished_outputs_and_removes_stale_temp_files(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    photos(src)
    run = upscale(str(src), str(out))
    while not pngs(out) and run.poll() is None:
        time.sleep(0.01)
    run.send_signal(signal.SIGHUP)
    run.communicate(timeout=120)
    kept = pngs(out)
    stale = [out / f".gtasr-{dead_pid()}-0123456789ab.tmp", out / ".gtasr" / f".gtasr-{dead_pid()}-abcdef.tmp"]
    live = out / f".gtasr-{os.getpid()}-feedbeef.tmp"  # a concurrent run's temp file: not ours to remove
    for path in (*stale, live):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"\0" * 1000)
    again = upscale(str(src), str(out))
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert f"{N_IMAGES - len(kept)} written, {len(kept)} skipped (done), 0 failed" in stderr
    assert pngs(out) == [f"{i:02d}.png" for i in range(N_IMAGES)]
    assert not any(p.exists() for p in stale) and live.exists()


def test_under_nohup_sighup_stays_ignored(tmp_path):
    """A run started with SIGHUP ignored (nohup) must survive the terminal closing."""
    src, out = tmp_path / "in", tmp_path / "out"
    photos(src)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}

    def nohup():
        _default_signals()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    run = subprocess.Popen([sys.executable, "-m", "gtasr_deploy.cli.upscale", str(src), str(out), "-q",
                            "--device", "cpu", "--threads", "1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, preexec_fn=nohup)
    while not pngs(out) and run.poll() is None:
        time.sleep(0.01)
    run.send_signal(signal.SIGHUP)
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr
    assert pngs(out) == [f"{i:02d}.png" for i in range(N_IMAGES)]
