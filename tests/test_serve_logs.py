"""gtasr-serve http starts and stops with clean logs: no Ray note that reads as if --port were
ignored, and no failed-task report on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_start_and_sigterm_logs_are_clean(tmp_path):
    pytest.importorskip("ray.serve", reason="the serve extra is not installed")
    port = _free_port()
    log = tmp_path / "serve.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gtasr_deploy.cli.serve", "http", "--port", str(port),
                                 "--threads", "1", "--cpus-per-replica", "1"], stdout=out, stderr=out, env=env,
                                cwd=tmp_path)
    try:
        deadline = time.monotonic() + 600
        while "ready on" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
        assert f"ready on http://127.0.0.1:{port}/" in log.read_text(), log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=300) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "will not be applied" not in text
    assert "graceful_shutdown failed" not in text and "Traceback" not in text, text[-3000:]
    assert "gtasr-serve: stopped" in text
