"""Identical pictures from every backend: torch, ONNX Runtime and OpenVINO through the one pipeline,
with graphs of dynamic height and width (whole images, and tiles when memory is short) and of a
static tile (images smaller than, equal to and larger than the tile), at sizes that are not
multiples of the size rule, in both normalisation modes; and the CLI promise: gtasr-export, then
gtasr-upscale --backend onnxruntime gives the default gtasr-upscale's files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

from gtasr_deploy.upscaler import Upscaler  # noqa: E402

ROOT = Path(__file__).parents[1]
SILENT = lambda _line: None  # noqa: E731


class _Graphs(dict):
    """case → (weights kwargs, tile, exported fp32 graph), exported on first use (the fixture network's
    16x16 graph is other modules' too; the embedded weights' 64x64 one is for the slow cases)."""

    def __init__(self, graph_factory):
        super().__init__()
        self.factory = graph_factory

    def __missing__(self, name):
        tile = {"fixture": 16, "embedded": 64}[name]
        self[name] = (self.factory.network(name).weights, tile, self.factory(name, tile=tile, batch_max=2).onnx_path)
        return self[name]


@pytest.fixture(scope="module")
def graphs(graph_factory):
    return _Graphs(graph_factory)


@pytest.fixture(scope="module")
def dynamic_graphs(graph_factory):
    """(weights kwargs, size rule, fp32 graph with dynamic height and width) per network: the graph
    cache's entry, which the default Upscaler (backend auto) fills once per session."""
    cases = {}
    for name in ("fixture", "embedded"):
        network = graph_factory.network(name)
        cases[name] = (network.weights, network.model.config.size_multiple, graph_factory.dynamic(name))
    return cases


@pytest.mark.parametrize("case", ["fixture", "embedded"])
@pytest.mark.parametrize("budget", [None, "quarter"])
def test_dynamic_graphs_give_torchs_picture_on_mixed_sizes(dynamic_graphs, case, budget):
    """Tile auto on every runtime: the whole image in one call, or (a quarter of the memory) the same
    tiles and downscaled statistics pass; ONNX Runtime and OpenVINO within 1/255 of torch."""
    from gtasr_deploy.inference.pipeline import Pipeline

    kwargs, m, graph = dynamic_graphs[case]
    ups = {"torch": Upscaler(**kwargs, backend="torch", precision="fp32", seed=5),
           "onnxruntime": Upscaler(backend="onnxruntime", onnx=graph, seed=5)}
    if importlib.util.find_spec("openvino"):
        ups["openvino"] = Upscaler(backend="openvino", onnx=graph, precision="fp32", seed=5)
    for h, w in [(1, 1), (m // 2 + 1, m // 3 + 2), (m, 3 * m), (2 * m + 5, m + 3), (3 * m + 1, 2 * m - 1)]:
        outs, plans = {}, {}
        for name, up in ups.items():
            quarter = (-(-h // m) * m) * (-(-w // m) * m) // 4
            pipeline = Pipeline(up.engine, up.options, seed=5,
                                budget=(lambda q=quarter: max(q, m * m)) if budget else None)
            outs[name] = np.rint(pipeline(_photo(h, w).transpose(2, 0, 1).astype(np.float32) / 127.5 - 1) * 255)
            plans[name] = pipeline.cost(h, w).plan
        assert len({(p.tile_h, p.tile_w, p.n_tiles) for p in plans.values()}) == 1, plans
        for name in outs:
            assert np.abs(outs[name] - outs["torch"]).max() <= 1, (name, h, w)


def _photo(h: int, w: int) -> np.ndarray:
    from PIL import Image

    with Image.open(ROOT / "samples" / "coffee_lr.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    reps = (-(-h // rgb.shape[0]), -(-w // rgb.shape[1]), 1)
    return np.ascontiguousarray(np.tile(rgb, reps)[:h, :w])


@pytest.mark.parametrize("case", ["fixture", pytest.param("embedded", marks=pytest.mark.slow)])  # a 64x64 graph
@pytest.mark.parametrize("norm", ["shared", "tile"])
def test_torch_and_onnxruntime_give_the_same_8bit_picture(graphs, case, norm):
    kwargs, tile, graph = graphs[case]
    torch_up = Upscaler(**kwargs, tile=tile, batch=2, norm=norm, seed=3, precision="fp32")
    ort_up = Upscaler(backend="onnxruntime", onnx=graph, batch=2, norm=norm, seed=3)
    assert (torch_up.options.tile, torch_up.options.overlap) == (ort_up.options.tile, ort_up.options.overlap)
    sizes = [(1, 1), (tile // 2, tile // 3 + 1), (tile, tile), (tile + 5, 2 * tile + 3), (3 * tile + 1, tile - 1)]
    for h, w in sizes:
        image = _photo(h, w)
        a, b = torch_up.upscale(image).astype(int), ort_up.upscale(image).astype(int)
        assert a.shape == b.shape == (4 * h, 4 * w, 3)
        assert np.abs(a - b).max() <= 1, (case, norm, h, w, np.abs(a - b).max())
    cost = torch_up.pipeline.cost(3 * tile + 1, tile - 1)
    assert cost.plan.n_tiles > 1 and (cost.stats_plan is not None) == (norm == "shared")  # a statistics pass


@pytest.mark.parametrize("case", ["fixture", pytest.param("embedded", marks=pytest.mark.slow)])  # a 64x64 graph
def test_openvino_fp32_gives_the_same_8bit_picture(graphs, case):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    kwargs, tile, graph = graphs[case]
    torch_up = Upscaler(**kwargs, tile=tile, batch=2, seed=1, precision="fp32")
    ov_up = Upscaler(backend="openvino", onnx=graph, batch=2, precision="fp32", seed=1)
    for h, w in [(tile // 2, tile // 3 + 1), (tile, tile), (2 * tile + 3, tile + 7)]:
        image = _photo(h, w)
        assert np.abs(torch_up.upscale(image).astype(int) - ov_up.upscale(image).astype(int)).max() <= 1, (h, w)


@pytest.mark.slow  # the embedded weights' 64x64 graph
def test_openvino_bf16_stays_close_to_fp32_on_a_photo(graphs):
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    from gtasr_deploy.engines.precision import cpu_features, native_bf16

    if native_bf16(cpu_features()) is None:
        pytest.skip("this CPU has no native bf16 (AMX-BF16 / AVX512-BF16): OpenVINO bf16 would be emulated")
    kwargs, tile, graph = graphs["embedded"]
    image = _photo(tile + 20, tile + 40)
    a = Upscaler(backend="openvino", onnx=graph, precision="fp32").upscale(image).astype(float)
    b = Upscaler(backend="openvino", onnx=graph, precision="bf16").upscale(image).astype(float)
    psnr = 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))
    assert psnr >= 45.0, psnr


@pytest.mark.slow  # the embedded weights' 64x64 graph
def test_shared_statistics_bring_tiles_closer_to_the_whole_image_on_onnxruntime(graphs):
    """The exported graph shares statistics as torch does: against torch's whole-image reference, the
    shared-statistics tiling of the graph is closer than its per-tile tiling."""
    kwargs, tile, graph = graphs["embedded"]
    image = _photo(2 * tile, 2 * tile)
    whole = Upscaler(**kwargs, tile=0, precision="fp32").upscale(image).astype(float)
    err = {norm: np.mean((Upscaler(backend="onnxruntime", onnx=graph, norm=norm).upscale(image) - whole) ** 2)
           for norm in ("shared", "tile")}
    assert err["shared"] < 0.7 * err["tile"], err


@pytest.mark.slow
def test_cli_export_then_onnxruntime_upscale_gives_the_default_files(tmp_path, cli_export):
    """The issue's promise from a clean state: default export, then the ORT backend, same PNGs as the
    default gtasr-upscale on a folder of photos of mixed sizes (smaller than, equal to, larger than the tile).
    The export is the README's ``gtasr-export`` (no options), run once per session in a fresh process."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for h, w in ((40, 30), (128, 128), (150, 170)):
        Image.fromarray(_photo(h, w)).save(photos / f"p{h}x{w}.png")
    run = lambda *args: subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,  # noqa: E731
                                       cwd=tmp_path)
    graph = cli_export() / "export" / "gtasr_demo_fp32.onnx"  # its default --out: export/
    assert graph.is_file()
    default = run("gtasr_deploy.cli.upscale", str(photos), str(tmp_path / "torch"), "--precision", "fp32")
    ort = run("gtasr_deploy.cli.upscale", str(photos), str(tmp_path / "ort"), "--backend", "onnxruntime",
              "--onnx", str(graph))
    assert default.returncode == 0 and ort.returncode == 0, (default.stderr, ort.stderr)
    assert "tiles auto" in default.stderr and "tiles auto" in ort.stderr
    for png in sorted((tmp_path / "torch").glob("*.png")):
        a = np.asarray(Image.open(png)).astype(int)
        b = np.asarray(Image.open(tmp_path / "ort" / png.name)).astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, png.name
