"""Done-when of the ONNX issue: `gtasr-export` then `gtasr-upscale --backend onnxruntime` on a folder,
within 1e-3 (on [0,1]) of the torch backend, same noise, same tiles (torch with per-tile GroupNorm
statistics, as the exported graph computes them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("onnxruntime", reason="the onnx extra is part of the test install")

from gtasr_deploy.cli.export import main as export_main  # noqa: E402
from gtasr_deploy.cli.upscale import main as upscale_main  # noqa: E402
from gtasr_deploy.upscaler import Upscaler  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
WEIGHTS = ["--weights", str(FIXTURE / "checkpoint.pth"), "--network-config", str(FIXTURE / "network_g.json")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    result = CliRunner().invoke(export_main, [*WEIGHTS, "--tile", "16", "--batch", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    graphs = sorted(out.glob("*.onnx"))
    assert len(graphs) == 1 and graphs[0].with_suffix(".json").is_file()
    return graphs[0]


def test_ort_upscaler_matches_torch_upscaler(exported):
    rng = np.random.default_rng(2)
    rgb = rng.uniform(0, 1, size=(37, 45, 3)).astype(np.float32)
    ort = Upscaler(onnx=exported, backend="onnxruntime", batch=2, seed=3)
    torch_up = Upscaler(FIXTURE / "checkpoint.pth", network_config=FIXTURE / "network_g.json", tile=16,
                        tile_overlap=ort.options.overlap, seed=3, shared_norm=False)
    a, b = ort.upscale_float(rgb), torch_up.upscale_float(rgb)
    assert a.shape == b.shape == (148, 180, 3)
    assert np.abs(a - b).max() <= 1e-3


def test_cli_export_then_upscale_folder(exported, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, size in {"x.png": (30, 22), "y.png": (9, 40)}.items():
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(src / name)
    out_ort, out_torch = tmp_path / "ort", tmp_path / "torch"
    r1 = CliRunner().invoke(upscale_main, [str(src), str(out_ort), "-q", "--backend", "onnxruntime",
                                           "--onnx", str(exported)])
    assert r1.exit_code == 0, r1.output
    overlap = str(max(8, 16 // 8))
    r2 = CliRunner().invoke(upscale_main, [str(src), str(out_torch), "-q", "--backend", "torch", *WEIGHTS,
                                           "--tile", "16", "--tile-overlap", overlap, "--no-shared-norm"])
    assert r2.exit_code == 0, r2.output
    for name in ("x.png", "y.png"):
        a = np.asarray(Image.open(out_ort / name), dtype=np.int16)
        b = np.asarray(Image.open(out_torch / name), dtype=np.int16)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1  # 8-bit rounding of values within 1e-3
