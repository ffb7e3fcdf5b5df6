"""Progress in logs: stderr that is not a terminal gets one plain line per image, no bars or
escape codes; a terminal keeps the tqdm bars."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from gtasr_deploy.batch.runner import collect_inputs, plan_outputs, run_batch
from gtasr_deploy.cli.upscale import main
from gtasr_deploy.batch.progress import CountProgress, is_terminal, log_line

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
WEIGHTS = ["--weights", str(FIXTURE / "checkpoint.pth"), "--network-config", str(FIXTURE / "network_g.json"),
           "--no-shared-norm"]
LINE = re.compile(r"^\[(\d+)/(\d+)\] (\S+): (\d+)x(\d+) -> (\d+)x(\d+), \d+\.\d s$")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def two_images(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (13, 9, 3), dtype=np.uint8)).save(folder / "b.png")
    return folder


def tiled_x4(rgb, *, on_tile):
    for done in range(1, 4):
        on_tile(done, 3)
    return np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)


def test_log_line_wording():
    assert log_line(3, 10, "sub/p.jpg", status="written", input_size=(640, 480), output_size=(2560, 1920),
                    seconds=12.44) == "[3/10] sub/p.jpg: 640x480 -> 2560x1920, 12.4 s"
    assert log_line(1, 2, "a.png", status="skipped", reason="done earlier") == "[1/2] a.png: skipped (done earlier)"


def test_is_terminal():
    assert not is_terminal(io.StringIO()) and is_terminal(Terminal())
    closed = io.StringIO()
    closed.close()
    assert not is_terminal(closed)


def test_count_progress_in_a_log_prints_tenths_or_every_n():
    """A video's frames (or a download's bytes) in a log: a plain line per tenth of a known total,
    every ``every`` units of an unknown one; no escape codes; nothing when disabled."""
    err = io.StringIO()
    bar = CountProgress("clip.mp4", unit="frame", err=err)
    for done in range(1, 21):
        bar(done, 20)
    bar.close()
    lines = err.getvalue().splitlines()
    assert lines == [f"clip.mp4: {n}/20 frames" for n in range(2, 21, 2)]
    err = io.StringIO()
    bar = CountProgress("w.safetensors", unit="B", err=err, every=100)
    for done in (50, 120, 180, 230):
        bar(done, 0)
    assert err.getvalue().splitlines() == ["w.safetensors: 120/? B", "w.safetensors: 230/? B"]
    err = io.StringIO()
    CountProgress("x", unit="frame", err=err, enabled=False)(5, 10)
    assert err.getvalue() == ""


def test_not_a_terminal_gives_one_plain_line_per_image(tmp_path):
    jobs = plan_outputs(collect_inputs(two_images(tmp_path / "in")), tmp_path / "out")
    err = io.StringIO()
    summary = run_batch(jobs, tiled_x4, progress=True, tile_progress=True, err=err)
    text = err.getvalue()
    assert summary.written == 2
    assert "\r" not in text and "\x1b" not in text and "img/s" not in text and "tile" not in text
    lines = text.splitlines()
    assert len(lines) == 3  # one per image, then the summary
    parsed = [LINE.match(line) for line in lines[:2]]
    assert all(parsed), lines
    assert [(m[1], m[2], m[3]) for m in parsed] == [("1", "2", "a.png"), ("2", "2", "b.png")]
    assert [tuple(map(int, m.groups()[3:])) for m in parsed] == [(28, 20, 112, 80), (9, 13, 36, 52)]
    # A re-run says "skipped" per image, still one plain line each.
    again = io.StringIO()
    run_batch(jobs, tiled_x4, progress=True, tile_progress=True, err=again)
    assert [line.split(": ", 1)[1].startswith("skipped") for line in again.getvalue().splitlines()[:2]] == [True] * 2


def test_a_terminal_keeps_the_bars(tmp_path):
    jobs = plan_outputs(collect_inputs(two_images(tmp_path / "in")), tmp_path / "out")
    err = Terminal()
    run_batch(jobs, tiled_x4, progress=True, tile_progress=True, err=err)
    assert "\r" in err.getvalue() and "img" in err.getvalue() and not LINE.search(err.getvalue())


def test_quiet_prints_no_progress(tmp_path):
    jobs = plan_outputs(collect_inputs(two_images(tmp_path / "in")), tmp_path / "out")
    err = io.StringIO()
    run_batch(jobs, tiled_x4, progress=False, tile_progress=True, err=err)
    [summary_line] = err.getvalue().splitlines()  # only the summary
    assert summary_line.startswith("2 written")


def test_cli_with_captured_stderr_prints_plain_lines(tmp_path):
    src = two_images(tmp_path / "in")
    result = CliRunner().invoke(main, [str(src), str(tmp_path / "out"), *WEIGHTS])
    assert result.exit_code == 0, result.output
    assert "\r" not in result.output and "\x1b" not in result.output
    assert sum(bool(LINE.match(line)) for line in result.output.splitlines()) == 2


def test_real_process_with_stderr_to_a_log_file(tmp_path):
    src = two_images(tmp_path / "in")
    log = tmp_path / "run.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    with open(log, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "gtasr_deploy.cli.upscale", str(src), str(tmp_path / "out"),
                               *WEIGHTS, "--threads", "1"], stderr=handle, stdout=subprocess.DEVNULL, env=env,
                              timeout=300)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "\x1b" not in text
    assert [LINE.match(line)[3] for line in text.splitlines() if LINE.match(line)] == ["a.png", "b.png"]
