"""The ComfyUI node package inside the real ComfyUI code (the snapshot in ../shared/vendor/ComfyUI).

ComfyUI's built-in UpscaleModelLoader loads GTASR weights through the registered spandrel
architecture and ImageUpscaleWithModel runs them; the GTASR node runs this package's pipeline. Both
are checked against gtasr_deploy.Upscaler on the same weights, for a batch of 2 at an odd size.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gtasr_deploy import Upscaler
from gtasr_deploy.media.images import upscale_alpha
from gtasr_deploy.inference.loader import EMBEDDED_WEIGHTS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NODE_DIR = ROOT / "integrations" / "comfyui_gtasr"
# CI lays shared/ beside the clone; GTASR_COMFYUI points elsewhere (a worktree, your own checkout)
COMFYUI = Path(os.environ.get("GTASR_COMFYUI", ROOT.parent / "shared" / "vendor" / "ComfyUI"))


def test_node_package_metadata():
    meta = tomllib.loads((NODE_DIR / "pyproject.toml").read_text())
    assert {"PublisherId", "DisplayName", "Icon"} <= set(meta["tool"]["comfy"])
    assert any(dep.startswith("gtasr-deploy") for dep in meta["project"]["dependencies"])
    source = (NODE_DIR / "gtasr_nodes.py").read_text()
    assert "\nimport comfy" not in source and "\nfrom comfy" not in source  # ComfyUI only inside the call


@pytest.fixture(scope="module")
def comfy_run(tmp_path_factory):
    if not (COMFYUI / "comfy_extras" / "nodes_upscale_model.py").is_file():
        pytest.skip(f"no ComfyUI snapshot at {COMFYUI} (CI has it in ../shared/vendor/ComfyUI; or set GTASR_COMFYUI)")
    if importlib_missing("spandrel", "psutil"):
        pytest.skip("spandrel and psutil are needed (scripts/test.sh installs them)")
    work = tmp_path_factory.mktemp("comfyui")
    models = work / "upscale_models"
    models.mkdir()
    shutil.copy(EMBEDDED_WEIGHTS, models / "gtasr_demo.safetensors")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}  # the snapshot is shared and read-only: no __pycache__ in it
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "comfyui_driver.py"), str(COMFYUI), str(models),
                           str(NODE_DIR), str(work / "out.npz")], capture_output=True, text=True, env=env,
                          timeout=600, cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    with np.load(work / "out.npz") as data:
        return facts, {k: data[k] for k in data.files}


def importlib_missing(*names):
    import importlib.util

    return [n for n in names if importlib.util.find_spec(n) is None]


def _upscaler_on(images, **kw):
    up = Upscaler(EMBEDDED_WEIGHTS, backend="torch", precision="fp32", **kw)
    return np.stack([up.upscale_float(np.ascontiguousarray(i)) for i in images])


@pytest.mark.slow  # one ComfyUI process for the module, ~40 s on 2 CPU cores
def test_builtin_loader_finds_and_loads_gtasr(comfy_run):
    facts, _ = comfy_run
    assert "gtasr_demo.safetensors" in facts["listed"] and facts["arch"] == "GTASR"
    assert (facts["default_seed"], facts["default_precision"]) == (0, "auto")
    assert "GTASRUpscale" in facts["display"]


@pytest.mark.slow  # one ComfyUI process for the module, ~40 s on 2 CPU cores
def test_builtin_upscale_node_runs_gtasr(comfy_run):
    """37x45 is below ComfyUI's 512 px tile: one call per image, the whole-image pipeline, seed 0."""
    _, out = comfy_run
    assert out["builtin"].shape == (2, 148, 180, 3)
    # computed in the ComfyUI process: the same pipeline, so equal up to the last bits of float rounding
    # (that process may split the multi-threaded kernels differently)
    np.testing.assert_allclose(out["builtin"], _upscaler_on(out["image"], tile=0, seed=0), rtol=0, atol=1e-6)


@pytest.mark.slow  # one ComfyUI process for the module, ~40 s on 2 CPU cores
def test_gtasr_node_whole_and_shared_tiles(comfy_run):
    _, out = comfy_run
    np.testing.assert_allclose(out["whole"], _upscaler_on(out["image"], tile=0, seed=3), rtol=0, atol=1e-6)
    tiled = _upscaler_on(out["image"], tile=32, seed=3, norm="shared")
    np.testing.assert_allclose(out["tiles"], tiled, rtol=0, atol=1e-6)
    assert np.abs(out["tiles"] - out["whole"]).max() > 1e-4  # tiles really were cut
    assert out["tiles"].shape == (2, 148, 180, 3) and out["tiles"].dtype == np.float32


@pytest.mark.slow  # one ComfyUI process for the module, ~40 s on 2 CPU cores
def test_gtasr_node_keeps_alpha(comfy_run):
    _, out = comfy_run
    assert out["rgba"].shape == (2, 148, 180, 4)
    np.testing.assert_array_equal(out["rgba"][..., :3], out["tiles"])
    for got, alpha in zip(out["rgba"][..., 3], out["alpha"][..., 0]):
        np.testing.assert_array_equal(got, upscale_alpha(alpha, 4))


@pytest.mark.slow  # one ComfyUI process for the module, ~40 s on 2 CPU cores
def test_gtasr_node_progress_and_cancel(comfy_run):
    facts, _ = comfy_run
    steps = facts["steps"]
    up = Upscaler(EMBEDDED_WEIGHTS, backend="torch", precision="fp32", tile=32)
    tiles, _ = up.work(37, 45)
    total = 2 * up.calls(37, 45)
    assert total > 2 * tiles and [s[1] for s in steps] == [total] * len(steps)  # tiles + the statistics pass
    assert [s[0] for s in steps] == sorted(s[0] for s in steps) and steps[-1][0] == total
    assert facts["interrupted"] and facts["steps_before_cancel"] == [[1, total]]
