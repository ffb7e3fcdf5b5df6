"""Done-when of the ONNX issue: `gtasr-export` then `gtasr-upscale --backend onnxruntime` on a folder,
within 1e-3 (on [0,1]) of the torch backend, same noise, same tiles. The exported graph carries the
GroupNorm statistics as I/O, so both normalisation policies match torch: "shared" (the default: the
statistics of all an image's tiles pooled, two passes per tile) and "tile" (each tile its own)."""

from __future__ import annotations

import json
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
TILE = 16


@pytest.fixture(scope="module")
def exported(graph_factory):
    """The fixture network's graph for LR tile 16, batch up to 2: what `gtasr-export --tile 16 --batch 2`
    writes (test_cli_export_writes_one_graph_and_its_sidecar), exported once per session."""
    return graph_factory("fixture", tile=TILE, batch_max=2).onnx_path


@pytest.mark.slow  # an export of its own: the CLI is the subject
def test_cli_export_writes_one_graph_and_its_sidecar(exported, tmp_path):
    out = tmp_path / "export"
    result = CliRunner().invoke(export_main, [*WEIGHTS, "--tile", str(TILE), "--batch", "2", "--out", str(out),
                                              "--no-trt"])  # graphs only: these tests run ONNX Runtime
    assert result.exit_code == 0, result.output
    graphs = sorted(out.glob("*.onnx"))
    assert len(graphs) == 1 and graphs[0].with_suffix(".json").is_file()
    assert sorted(p.name for p in out.iterdir()) == sorted([graphs[0].name, graphs[0].with_suffix(".json").name])
    assert graphs[0].name == exported.name  # the shared graph is the one the CLI writes
    ours, theirs = (json.loads(p.with_suffix(".json").read_text()) for p in (graphs[0], exported))
    assert {k: v for k, v in ours.items() if k != "onnx_sha256"} == {k: v for k, v in theirs.items()
                                                                     if k != "onnx_sha256"}


@pytest.mark.parametrize("norm", ["shared", "tile"])
@pytest.mark.parametrize("size, tiles", [((37, 45), 20), ((9, 13), 1)])  # 9x13: padded up to one 16x16 tile
def test_ort_upscaler_matches_torch_upscaler(exported, norm, size, tiles):
    rng = np.random.default_rng(2)
    rgb = rng.uniform(0, 1, size=(*size, 3)).astype(np.float32)
    ort = Upscaler(onnx=exported, backend="onnxruntime", batch=2, seed=3, norm=norm)
    torch_up = Upscaler(FIXTURE / "checkpoint.pth", network_config=FIXTURE / "network_g.json", tile=TILE,
                        tile_overlap=ort.options.overlap, seed=3, norm=norm, precision="fp32")
    assert ort.options.tile == TILE and ort.options.norm == torch_up.options.norm == norm
    assert ort.work(*size) == torch_up.work(*size) == (tiles, 1)
    statistics = norm == "shared" and tiles > 1  # then a statistics pass on the image downscaled 2x
    assert ort.pipeline.cost(*size).calls == torch_up.pipeline.cost(*size).calls > tiles * statistics
    a, b = ort.upscale_float(rgb), torch_up.upscale_float(rgb)
    assert a.shape == b.shape == (4 * size[0], 4 * size[1], 3)
    assert np.abs(a - b).max() <= 1e-3


def test_shared_statistics_change_the_picture(exported):
    """The two policies differ on a multi-tile image (else the parity above would not test the graph's
    statistics I/O), and agree on a one-tile image, where there is nothing to share."""
    rgb = np.random.default_rng(4).uniform(0, 1, size=(37, 45, 3)).astype(np.float32)
    shared, tile = (Upscaler(onnx=exported, backend="onnxruntime", seed=3, norm=norm) for norm in ("shared", "tile"))
    assert np.abs(shared.upscale_float(rgb) - tile.upscale_float(rgb)).max() > 1e-3
    small = rgb[:9, :13]
    np.testing.assert_array_equal(shared.upscale_float(small), tile.upscale_float(small))


def test_cli_export_then_upscale_folder(exported, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, size in {"x.png": (30, 22), "y.png": (9, 40)}.items():
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(src / name)
    out_ort, out_torch = tmp_path / "ort", tmp_path / "torch"
    # both with the CLI's default normalisation (statistics shared across an image's tiles)
    r1 = CliRunner().invoke(upscale_main, [str(src), str(out_ort), "-q", "--backend", "onnxruntime",
                                           "--onnx", str(exported)])
    assert r1.exit_code == 0, r1.output
    overlap = str(max(8, TILE // 8))
    r2 = CliRunner().invoke(upscale_main, [str(src), str(out_torch), "-q", "--backend", "torch", *WEIGHTS,
                                           "--precision", "fp32", "--tile", str(TILE), "--tile-overlap", overlap])
    assert r2.exit_code == 0, r2.output
    for name in ("x.png", "y.png"):
        a = np.asarray(Image.open(out_ort / name), dtype=np.int16)
        b = np.asarray(Image.open(out_torch / name), dtype=np.int16)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= 1  # 8-bit rounding of values within 1e-3
