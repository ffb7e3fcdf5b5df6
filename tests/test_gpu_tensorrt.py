"""TensorRT on a real GPU: build from the tiny fixture's ONNX graphs, parity, cache reuse, CUDA graphs.

Skipped (with the reason) where TensorRT cannot import or no CUDA GPU is visible, and where the
ONNX exporter is not available. Tolerances: the fp32 engine may use TF32 (TensorRT's default for
fp32 layers); the fp16 engine is judged by PSNR against torch fp32, as SPEC §4 asks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gtasr_deploy.errors import EngineBuildError, InputError
from gtasr_deploy.export import tensorrt_build, trt_cache

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

_REASON = tensorrt_build.explain_unavailable()
if _REASON is not None:
    pytest.skip(f"TensorRT tests need TensorRT and a CUDA GPU: {_REASON}", allow_module_level=True)

onnx_export = pytest.importorskip("gtasr_deploy.export.onnx", reason="the ONNX exporter is not available")

import torch  # noqa: E402

from gtasr_deploy.engines.tensorrt import TensorRTEngine  # noqa: E402
from gtasr_deploy.model import load_model  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
TILE = (32, 32)  # LR px; the fixture's size rule is 8
BATCH_MAX = 2


@pytest.fixture(scope="module")
def model():
    return load_model(FIXTURE / "checkpoint.pth", network_config=FIXTURE / "network_g.json")


@pytest.fixture(scope="module")
def graphs(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    paths = {}
    for precision in ("fp32", "fp16"):
        paths[precision] = onnx_export.export_onnx(
            model, out / f"tiny_tile{TILE[0]}_{precision}.onnx", tile_lr=TILE, batch_max=BATCH_MAX,
            fp16=precision == "fp16", opset=17)
    return paths


def _inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    g = torch.Generator("cpu").manual_seed(seed)
    lq = torch.rand((n, 3, *TILE), generator=g) * 2 - 1
    up = torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)
    x_t = up + torch.randn(up.shape, generator=g)
    sigma = torch.tensor([1.0, 1 / 3][:n] + [1.0] * max(0, n - 2))
    return {"x_t": x_t.numpy(), "lq": lq.numpy(), "sigma": sigma.numpy()}


def _reference(model, inputs) -> np.ndarray:
    """torch fp32 on the GPU with TF32 off: the value the engines are compared against."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        net = model.to("cuda")
        with torch.no_grad():
            sr = net(torch.from_numpy(inputs["x_t"]).cuda(), torch.from_numpy(inputs["sigma"]).cuda(),
                     torch.from_numpy(inputs["lq"]).cuda())
        return sr.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
        model.to("cpu")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(2.0**2 / mse)  # values span [-1, 1]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_and_matches_torch(model, graphs, tmp_path, precision):
    with TensorRTEngine.from_onnx(graphs[precision], cache_dir=tmp_path, workspace_gb=2, log=print) as engine:
        assert engine.info.backend == "tensorrt" and engine.info.precision == precision
        assert engine.info.tile_lr == TILE and engine.info.batch_range[2] == BATCH_MAX
        inputs = _inputs(2)
        sr = engine(**inputs)
    ref = _reference(model, inputs)
    assert sr.shape == ref.shape and sr.dtype == np.float32
    if precision == "fp32":
        assert np.abs(sr - ref).max() <= 5e-3  # TF32 may be used by TensorRT for fp32 layers
    else:
        assert _psnr(sr, ref) >= 40.0


def test_engine_cache_is_reused_and_stale_engines_are_refused(graphs, tmp_path):
    logs: list[str] = []
    first = tensorrt_build.get_or_build_engine(graphs["fp16"], cache_dir=tmp_path, workspace_gb=2, log=logs.append)
    stamp = first.stat().st_mtime_ns
    again = tensorrt_build.get_or_build_engine(graphs["fp16"], cache_dir=tmp_path, workspace_gb=2, log=logs.append)
    assert again == first and first.stat().st_mtime_ns == stamp and "reusing" in logs[-1]

    side_path = trt_cache.engine_sidecar_path(first)
    data = json.loads(side_path.read_text())
    data["gpu_name"] = "Some Other GPU"
    side_path.write_text(json.dumps(data))
    with pytest.raises(EngineBuildError, match="gpu_name differs"):
        TensorRTEngine(first)
    rebuilt = tensorrt_build.get_or_build_engine(graphs["fp16"], cache_dir=tmp_path, workspace_gb=2,
                                                 log=logs.append)
    assert rebuilt == first and first.stat().st_mtime_ns != stamp


def test_cuda_graph_matches_eager_across_batch_changes(graphs, tmp_path):
    eager = TensorRTEngine.from_onnx(graphs["fp16"], cache_dir=tmp_path, workspace_gb=2)
    graphed = TensorRTEngine.from_onnx(graphs["fp16"], cache_dir=tmp_path, workspace_gb=2, cuda_graph=True)
    try:
        for n, seed in ((2, 1), (1, 2), (2, 3), (2, 4)):
            inputs = _inputs(n, seed)
            np.testing.assert_allclose(graphed(**inputs), eager(**inputs), rtol=0, atol=1e-6)
    finally:
        eager.close()
        graphed.close()
        graphed.close()  # idempotent


def test_engine_rejects_shapes_outside_its_profile(graphs, tmp_path):
    with TensorRTEngine.from_onnx(graphs["fp32"], cache_dir=tmp_path, workspace_gb=2) as engine:
        with pytest.raises(InputError, match="batch 3 outside"):
            engine(**_inputs(3))
        bad = _inputs(1)
        bad["lq"] = bad["lq"][:, :, :16]
        bad["x_t"] = bad["x_t"][:, :, :64]
        with pytest.raises(InputError, match="static tiles of 32x32"):
            engine(**bad)
