"""Issue 32, signals on every kind of input: the real ``gtasr-upscale`` (embedded demo weights) on a
folder holding an image and a video, stopped by SIGINT, SIGTERM or SIGHUP while the video is being
upscaled (its temp file exists).

Properties, the same as for images (tests/test_reliability_signals.py): exit code 130 with the
"interrupted" line and no traceback; no temp file anywhere; the finished image kept with its
completion record; no partial video; the --json report says interrupted; a re-run does the video
only, and a third run skips both (videos use completion records as the skip rule too).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av", reason="video needs PyAV (pip extra 'video')")

REPO = Path(__file__).resolve().parents[1]
FRAMES = 20


def _default_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def upscale(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "gtasr_deploy.cli.upscale", *args, "--device", "cpu",
                             "--threads", "1"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_default_signals)


def make_inputs(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / "a.png")
    with av.open(str(folder / "b.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for i in range(FRAMES):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".gtasr-*.tmp")]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_during_a_video_is_an_orderly_stop_and_a_rerun_resumes(tmp_path, signum):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    make_inputs(src)
    run = upscale(str(src), str(out), "--json", str(report))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(run.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    # the frame counter's first line (a log gets one per tenth): the video is under way, most frames to go
    while not any(line.startswith("b.mp4: ") for line in lines) and run.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.poll() is None, f"the run ended before the video could be interrupted: {lines}"
    run.send_signal(signum)
    run.wait(timeout=120)
    reader.join(timeout=30)
    stderr = "".join(lines)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: 1 written, 0 skipped (done), 0 failed" in stderr
    assert temps(tmp_path) == []
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["a.png"]  # no partial video
    summary = json.loads(report.read_text())["summary"]
    assert summary["interrupted"] is True and summary["exit_code"] == 130 and summary["written"] == 1
    if signum != signal.SIGTERM:
        return
    again = upscale(str(src), str(out), "-q")
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert "1 written, 1 skipped (done), 0 failed" in stderr  # the image had its record: only the video ran
    with av.open(str(out / "b.mp4")) as video:
        assert sum(1 for _ in video.decode(video=0)) == FRAMES
    third = upscale(str(src), str(out), "-q")
    _, stderr = third.communicate(timeout=600)
    assert third.returncode == 0 and "0 written, 2 skipped (done), 0 failed" in stderr, stderr
