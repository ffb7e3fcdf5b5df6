"""gtasr-serve batch on a local Ray instance: the CLI's output folder, also when a worker is killed."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

# Ray Serve 2.x still uses pydantic-1 style Field() arguments: its warnings, not ours. Slow: every test
# needs the module's local Ray instance (~60 s to start on 2 busy cores); test_reliability_cluster.py
# keeps serve/cluster.py in the fast tier.
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:ray"), pytest.mark.slow]
THREADS = 1  # per actor: two actors share the two CPUs


def _picture(height: int, width: int, seed: int) -> np.ndarray:
    """uint8 RGB with structure (blurred noise), so every output pixel depends on the model."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Eight small inputs in two folders, PNG and JPEG, 32x32 and 48x40."""
    root = tmp_path_factory.mktemp("cluster") / "in"
    (root / "sub").mkdir(parents=True)
    for i in range(8):
        size = (32, 32) if i % 2 else (40, 48)
        name = f"{'sub/' if i >= 5 else ''}img{i}.{'jpg' if i == 3 else 'png'}"
        Image.fromarray(_picture(*size, seed=i)).save(root / name)
    return root


@pytest.fixture(scope="module")
def cli_folder(photos, tmp_path_factory) -> Path:
    from gtasr_deploy.cli.upscale import main

    out = tmp_path_factory.mktemp("cli_out")
    previous = torch.get_num_threads()
    try:
        result = CliRunner().invoke(main, [str(photos), str(out), "--threads", str(THREADS), "-q"])
    finally:
        torch.set_num_threads(previous)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
    yield ray
    ray.shutdown()


def _images(folder: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every output image (completion records, in .gtasr/, differ by mtime)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def test_cluster_batch_cli_writes_the_cli_folder_and_resumes(local_ray, photos, cli_folder, tmp_path):
    from gtasr_deploy.cli.serve import main

    out = tmp_path / "out"
    args = ["batch", str(photos), str(out), "--actors", "2", "--threads", str(THREADS), "-q"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "8 written" in first.output
    assert _images(out) == _images(cli_folder) and len(_images(out)) == 8
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 written, 8 skipped" in again.output, again.output


def test_list_of_paths_mirrors_below_the_common_folder(local_ray, photos, cli_folder, tmp_path):
    from gtasr_deploy.cli.serve import main

    listing = tmp_path / "paths.txt"
    listing.write_text(f"# two of them\n{photos / 'sub' / 'img5.png'}\n\n{photos / 'img3.jpg'}\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["batch", str(listing), str(out), "--actors", "1", "--threads",
                                       str(THREADS), "-q"])
    assert result.exit_code == 0, result.output
    want = _images(cli_folder)
    got = _images(out)
    assert set(got) == {"sub/img5.png", next(k for k in want if k.startswith("img3"))}
    assert all(got[k] == want[k] for k in got)


def test_a_killed_worker_is_restarted_and_its_task_retried(local_ray, photos, cli_folder, tmp_path):
    """SIGKILL one worker process as soon as the first output lands; the run still completes,
    the restarted worker (a new process) finishes jobs, and the folder is the CLI's to the byte."""
    from gtasr_deploy.batch.runner import collect_inputs, plan_outputs
    from gtasr_deploy.serve.cluster import ClusterOptions, run_on_cluster
    from gtasr_deploy.serve.settings import serve_options

    out = tmp_path / "out"
    jobs = plan_outputs(collect_inputs(photos), out)
    started: list[int] = []
    killed: list[int] = []

    def kill_when_first_output_lands():
        deadline = time.monotonic() + 120
        while not _images(out) and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(started[0], signal.SIGKILL)
        killed.append(started[0])

    killer = threading.Thread(target=kill_when_first_output_lands, daemon=True)

    def on_workers(pids):
        started.extend(pids)
        killer.start()

    result = run_on_cluster(jobs, serve_options(threads=THREADS), ClusterOptions(address="local", actors=2),
                            on_workers=on_workers)
    killer.join(timeout=10)
    assert killed, "the worker was never killed"
    summary = result.summary
    assert summary.failed == 0, [r.reason for r in summary.records if r.status == "failed"]
    assert len(summary.records) == len(jobs)
    assert result.worker_pids - set(started), "no restarted worker finished a job"
    assert _images(out) == _images(cli_folder)


def test_workers_that_cannot_load_the_model_are_one_usage_error(local_ray, photos, tmp_path):
    from gtasr_deploy.cli.serve import main

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(main, ["batch", str(photos), str(tmp_path / "out"), "--weights", str(bad),
                                       "--actors", "1", "-q"])
    assert result.exit_code == 2, result.output
    assert "bad.safetensors: not a valid safetensors file" in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    # on a remote cluster the workers are the first to open the model: the same one line, raised
    from gtasr_deploy.batch.runner import collect_inputs, plan_outputs
    from gtasr_deploy.errors import ConfigError
    from gtasr_deploy.serve.cluster import ClusterOptions, run_on_cluster
    from gtasr_deploy.serve.settings import serve_options

    jobs = plan_outputs(collect_inputs(photos), tmp_path / "out")
    with pytest.raises(ConfigError, match=r"^the workers could not start: .*bad\.safetensors: not a valid"):
        run_on_cluster(jobs, serve_options(weights=str(bad)), ClusterOptions(actors=1))
