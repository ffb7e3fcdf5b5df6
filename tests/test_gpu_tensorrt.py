"""TensorRT on a real GPU: build from the tiny fixture's ONNX graphs, parity, cache reuse, CUDA graphs.

Skipped (with the reason) where neither TensorRT for RTX nor TensorRT can run here (no library, or
no CUDA GPU), and where the ONNX exporter is not available. This project has not yet run these on
a GPU. The library is the one ``auto`` picks: TensorRT for RTX on RTX cards, classic TensorRT on
data-centre GPUs. Tolerances: the fp32 engine may use TF32 (TensorRT's default for
fp32 layers); the fp16 engine is judged by PSNR against torch fp32, as SPEC §4 asks. Both GroupNorm
modes of the graph contract are checked: each tile its own statistics, and pooled ``norm_stats``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from gtasr_deploy import contract
from gtasr_deploy.engines import tensorrt_build, trt_cache
from gtasr_deploy.errors import EngineBuildError, InputError

pytestmark = [pytest.mark.gpu, pytest.mark.tensorrt]

_REASON = tensorrt_build.explain_unavailable()
if _REASON is not None:
    pytest.skip(f"TensorRT tests need TensorRT and a CUDA GPU: {_REASON}", allow_module_level=True)

onnx_export = pytest.importorskip("gtasr_deploy.export.onnx", reason="the ONNX exporter is not available")

import torch  # noqa: E402

from gtasr_deploy.engines.tensorrt import TensorRTEngine  # noqa: E402
from gtasr_deploy.engines.torch_engine import TorchEngine  # noqa: E402
from gtasr_deploy.model import load_model  # noqa: E402
from gtasr_deploy.model.shared_norm import NormIO, pool_statistics  # noqa: E402

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
TILE = (32, 32)  # LR px; the fixture's size rule is 8
BATCH_MAX = 2


@pytest.fixture(scope="module")
def model():
    return load_model(FIXTURE / "checkpoint.pth", network_config=FIXTURE / "network_g.json")


@pytest.fixture(scope="module")
def graphs(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    fp32 = onnx_export.export_onnx(model, out, name="tiny", tile_lr=TILE, batch_max=BATCH_MAX, opset=17)
    fp16 = onnx_export.export_fp16(fp32, model)
    for result in (fp32, fp16):
        assert contract.read_onnx_sidecar(result.onnx_path)["norm_groups"] == NormIO(model).size
    return {"fp32": fp32.onnx_path, "fp16": fp16.onnx_path}


def _inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    g = torch.Generator("cpu").manual_seed(seed)
    lq = torch.rand((n, 3, *TILE), generator=g) * 2 - 1
    up = torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)
    x_t = up + torch.randn(up.shape, generator=g)
    sigma = torch.tensor([1.0, 1 / 3][:n] + [1.0] * max(0, n - 2))
    return {"x_t": x_t.numpy(), "lq": lq.numpy(), "sigma": sigma.numpy()}


def _reference(model, inputs) -> dict[str, np.ndarray]:
    """torch fp32 on the GPU with TF32 off, the values the engines are compared against: per-tile sr,
    each sample's statistics, their pool, and sr normalised with that pool."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        engine = TorchEngine(copy.deepcopy(model), device="cuda")  # a copy: the fixture stays on the CPU
        stats = engine.tile_statistics(**inputs)
        pooled = pool_statistics(stats)
        return {"sr": engine(**inputs), "stats": stats, "pooled": pooled,
                "shared": engine(**inputs, norm_stats=pooled)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| over max |b|: statistics span very different magnitudes (means ~0, variances > 1)."""
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-12))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(2.0**2 / mse)  # values span [-1, 1]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_builds_and_matches_torch(model, graphs, tmp_path, precision):
    inputs = _inputs(2)
    ref = _reference(model, inputs)
    groups = NormIO(model).size
    with TensorRTEngine.from_onnx(graphs[precision], engine_dir=tmp_path, workspace_gb=2, log=print) as engine:
        assert engine.info.backend == "tensorrt" and engine.info.precision == precision
        assert engine.info.tile_lr == TILE and engine.info.batch_range[2] == BATCH_MAX
        assert engine.info.norm_groups == groups and "shared" in engine.info.norm_modes
        sr = engine(**inputs)
        stats = engine.tile_statistics(**inputs)
        shared = engine(**inputs, norm_stats=ref["pooled"])
    assert sr.shape == shared.shape == ref["sr"].shape and sr.dtype == shared.dtype == np.float32
    assert stats.shape == (2, 2, groups) and stats.dtype == np.float32
    assert np.abs(ref["shared"] - ref["sr"]).max() > 1e-3  # pooling changes the output: the input is used
    if precision == "fp32":
        for got, want in ((sr, ref["sr"]), (shared, ref["shared"])):
            assert np.abs(got - want).max() <= 5e-3  # TF32 may be used by TensorRT for fp32 layers
        assert _relative(stats, ref["stats"]) <= 5e-3
    else:
        assert _psnr(sr, ref["sr"]) >= 40.0 and _psnr(shared, ref["shared"]) >= 40.0
        assert _relative(stats, ref["stats"]) <= 2e-2  # statistics of fp16 activations, computed in fp32


def test_engine_cache_is_reused_and_stale_engines_are_refused(graphs, tmp_path):
    logs: list[str] = []
    first = tensorrt_build.get_or_build_engine(graphs["fp16"], engine_dir=tmp_path, workspace_gb=2, log=logs.append)
    stamp = first.stat().st_mtime_ns
    again = tensorrt_build.get_or_build_engine(graphs["fp16"], engine_dir=tmp_path, workspace_gb=2, log=logs.append)
    assert again == first and first.stat().st_mtime_ns == stamp and "reusing" in logs[-1]

    side_path = trt_cache.engine_sidecar_path(first)
    data = json.loads(side_path.read_text())
    data["targets"] = ["sm121"] if data["targets"] != ["sm121"] else ["sm86"]
    side_path.write_text(json.dumps(data))
    with pytest.raises(EngineBuildError, match="cannot run here: it holds code for sm.* only, and this GPU"):
        TensorRTEngine(first)
    rebuilt = tensorrt_build.get_or_build_engine(graphs["fp16"], engine_dir=tmp_path, workspace_gb=2,
                                                 log=logs.append)
    assert rebuilt == first and first.stat().st_mtime_ns != stamp and "stale" in logs[-2]


def test_engine_built_ahead_of_time_for_this_architecture_runs(model, graphs, tmp_path):
    """The TensorRT-for-RTX workflow: an engine compiled for named targets (as on a machine without a
    GPU) is found beside the graph and used, without a build for CURRENT."""
    if tensorrt_build.pick_library("auto", tensorrt_build.local_gpu()) != "tensorrt-rtx":
        pytest.skip("ahead-of-time targets are a TensorRT-for-RTX feature; classic TensorRT builds for this GPU")
    _, capability = tensorrt_build.cuda_device_info()
    path = tensorrt_build.get_or_build_engine(graphs["fp16"], targets=trt_cache.target_name(capability),
                                              workspace_gb=2, log=print)
    logs: list[str] = []
    inputs = _inputs(2)
    with TensorRTEngine.from_onnx(graphs["fp16"], log=logs.append) as engine:
        sr = engine(**inputs)
    assert logs[0] == f"TensorRT engine: using {path}"
    assert _psnr(sr, _reference(model, inputs)["sr"]) >= 40.0


def test_cuda_graph_matches_eager_across_batch_changes(graphs, tmp_path):
    eager = TensorRTEngine.from_onnx(graphs["fp16"], engine_dir=tmp_path, workspace_gb=2)
    graphed = TensorRTEngine.from_onnx(graphs["fp16"], engine_dir=tmp_path, workspace_gb=2, cuda_graph=True)
    try:
        for n, seed in ((2, 1), (1, 2), (2, 3), (2, 4)):
            inputs = _inputs(n, seed)
            np.testing.assert_allclose(graphed(**inputs), eager(**inputs), rtol=0, atol=1e-6)
            # the captured graph reads norm_stats / norm_mix from the bound buffers on every replay
            pooled = pool_statistics(eager.tile_statistics(**inputs))
            np.testing.assert_allclose(graphed.tile_statistics(**inputs), eager.tile_statistics(**inputs),
                                       rtol=0, atol=1e-6)
            np.testing.assert_allclose(graphed(**inputs, norm_stats=pooled), eager(**inputs, norm_stats=pooled),
                                       rtol=0, atol=1e-6)
    finally:
        eager.close()
        graphed.close()
        graphed.close()  # idempotent


def test_engine_rejects_shapes_outside_its_profile(graphs, tmp_path):
    with TensorRTEngine.from_onnx(graphs["fp32"], engine_dir=tmp_path, workspace_gb=2) as engine:
        with pytest.raises(InputError, match="batch 3 outside"):
            engine(**_inputs(3))
        bad = _inputs(1)
        bad["lq"] = bad["lq"][:, :, :16]
        bad["x_t"] = bad["x_t"][:, :, :64]
        with pytest.raises(InputError, match="static tiles of 32x32"):
            engine(**bad)
        groups = engine.info.norm_groups
        with pytest.raises(InputError, match=rf"'norm_stats' has shape \(2, {groups + 1}\), expected \(2, {groups}\)"):
            engine(**_inputs(1), norm_stats=np.zeros((2, groups + 1), np.float32))
