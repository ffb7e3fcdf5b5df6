"""gtasr-serve triton: a live round trip through PyTriton's Triton Inference Server on 127.0.0.1.

nvidia-pytriton needs numpy < 2, so the server runs in its own virtual environment (torch, this
package's core dependencies and its ``triton`` extra; the package itself comes from this checkout
on PYTHONPATH). The environment is built once and cached (``~/.cache/gtasr-deploy/triton-venv-<key>``,
the key hashing the requirements; ``GTASR_TRITON_VENV`` names another folder); the first build
downloads about 1 GB and takes minutes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gtasr_deploy import Upscaler
from gtasr_deploy.serve.codec import process_upload
from gtasr_deploy.serve.triton import libpython_first, upscale_files

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    core = [r for r in project["dependencies"] if not r.startswith("torch")]
    return [torch_pin, *core, *project["optional-dependencies"]["triton"]]


@pytest.fixture(scope="module")
def triton_python() -> Path:
    requirements = _requirements()
    key = hashlib.sha256("\n".join([sys.version, *requirements]).encode()).hexdigest()[:12]
    venv = Path(os.environ.get("GTASR_TRITON_VENV") or Path.home() / ".cache" / "gtasr-deploy" / f"triton-venv-{key}")
    python = venv / "bin" / "python"
    if python.is_file():
        return python
    building = venv.with_name(f"{venv.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(building)], check=True, timeout=300)
    pip = subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
                         capture_output=True, text=True, timeout=1800)
    if pip.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        tail = (pip.stderr or pip.stdout).strip().splitlines()[-1:] or ["?"]
        pytest.skip(f"could not install the Triton environment ({' '.join(requirements)}): {tail[0]}")
    os.replace(building, venv)  # published only once complete
    return python


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _session_processes(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                pass
    return pids


def _wait_session_gone(sid: int, timeout_s: float) -> list[str]:
    """Command lines of the processes of session ``sid`` still alive after ``timeout_s`` (then killed)."""
    deadline = time.monotonic() + timeout_s
    while _session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = []
    for pid in _session_processes(sid):
        try:
            left.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
        except OSError:
            pass
    if left:
        os.killpg(sid, signal.SIGKILL)
    return left


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@pytest.mark.slow  # builds the environment once (minutes), then ~30 s
def test_triton_round_trip(triton_python, tmp_path):
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 57, 3)) * 255).astype(np.uint8)).save(photo)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    http_port, grpc_port, metrics_port = _free_ports(3)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(triton_python), "-m", "gtasr_deploy.cli.serve", "triton", "--http-port", str(http_port),
             "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port), "--threads", "2"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True)
    try:
        client = subprocess.run([str(triton_python), str(ROOT / "tests" / "triton_client.py"),
                                 f"127.0.0.1:{http_port}", str(tmp_path), str(photo), str(bad)],
                                capture_output=True, text=True, env=env, timeout=600)
        server_log = (tmp_path / "server.log").read_text(errors="replace")
        assert client.returncode == 0, client.stderr[-2000:] + "\n--- server ---\n" + server_log[-3000:]
        facts = json.loads(client.stdout.strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            code = server.wait()
    assert code == 130, (tmp_path / "server.log").read_text(errors="replace")[-2000:]
    left = _wait_session_gone(server.pid, timeout_s=60)  # tritonserver and its Python stub stop too
    assert left == [], f"still running after the server exited: {left}"
    assert facts["inputs"] == ["image"] and facts["outputs"] == ["error", "png"] and facts["max_batch_size"] == 4
    assert facts["errors"][0] == "" and "not an image file" in facts["errors"][1]
    assert (tmp_path / "1.png").read_bytes() == b""
    served = _decode((tmp_path / "0.png").read_bytes())
    expected, _, size = process_upload(photo.read_bytes(), Upscaler(threads=2).upscale_float, name="photo.png")
    assert served.shape == (160, 228, 3) and size == (228, 160)
    assert np.abs(served - _decode(expected)).max() <= 1  # the CLI's picture (last-bit thread/numpy differences)


def test_one_bad_file_fails_only_itself(tmp_path):
    """The model's call on a batch: the good file is upscaled, the bad one gets its error line."""
    good = io.BytesIO()
    Image.fromarray(np.full((6, 5, 3), 100, np.uint8)).save(good, format="PNG")

    def sr_fn(rgb):  # a stand-in for the upscaler: nearest x4
        return rgb.repeat(4, axis=0).repeat(4, axis=1)

    files = np.array([[good.getvalue()], [b"\x00\x01garbage"], [b""]], dtype=np.object_)
    out = upscale_files(files, sr_fn, max_pixels=None)
    assert out["png"].shape == out["error"].shape == (3, 1)
    assert _decode(out["png"][0, 0]).shape == (24, 20, 3) and out["error"][0, 0] == b""
    assert out["png"][1, 0] == b"" and b"not an image file" in out["error"][1, 0]
    assert b"empty upload" in out["error"][2, 0]


def test_libpython_first():
    import sysconfig

    env = {"LD_LIBRARY_PATH": "/opt/x:" + sysconfig.get_config_var("LIBDIR")}
    libpython_first(env)
    assert env["LD_LIBRARY_PATH"].split(":") == [sysconfig.get_config_var("LIBDIR"), "/opt/x"]


def test_without_pytriton_one_line(monkeypatch):
    """Where PyTriton is not installed (the test environment), the command says which extra to install."""
    import importlib.util

    from click.testing import CliRunner

    from gtasr_deploy.cli.serve import main

    if importlib.util.find_spec("pytriton") is not None:
        pytest.skip("PyTriton is installed here")
    result = CliRunner().invoke(main, ["triton", "--tile", "64"])
    assert result.exit_code == 2
    assert "needs PyTriton" in result.output and "gtasr-deploy[triton]" in result.output
