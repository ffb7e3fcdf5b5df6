"""gtasr-export --triton-repo: a Triton model repository whose config.pbtxt parses with Triton's own
ModelConfig protobuf (tritonclient) and whose graphs run (the per-tile variant = norm_mix 0)."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from gtasr_deploy.cli.export import main as export_main
from gtasr_deploy.contract import io_shapes, read_onnx_sidecar
from gtasr_deploy.errors import ConfigError
from gtasr_deploy.integrations.triton_repo import TritonOptions, model_config, tensor_dims, write_triton_repo

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is part of the test install")
text_format = pytest.importorskip("google.protobuf.text_format")
try:
    from tritonclient.grpc import model_config_pb2
except (ImportError, RuntimeError) as err:  # tritonclient.grpc raises RuntimeError without grpcio
    pytest.skip(f"tritonclient with grpc is not installed ({err})", allow_module_level=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, fixture_dir):
    """The tiny network exported once (tile 16, batch up to 2) with a Triton repository."""
    work = tmp_path_factory.mktemp("triton")
    result = CliRunner().invoke(export_main, ["--weights", str(fixture_dir / "checkpoint.pth"), "--tile", "16",
                                              "--batch", "2", "--out", str(work / "export"),
                                              "--triton-repo", str(work / "repo")])
    assert result.exit_code == 0, result.output
    graph = next((work / "export").glob("*.onnx"))
    return graph, work / "repo", result.output


def parse(path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())  # strict: unknown fields fail


def _dims(tensors):
    return {t.name: list(t.dims) for t in tensors}


@pytest.mark.slow  # the module's export: ~1-2 min on 2 busy CPU cores
def test_full_graph_model(exported):
    graph, repo, output = exported
    folder = repo / graph.stem
    assert f"wrote Triton model {folder}" in output
    assert (folder / "1" / "model.onnx").read_bytes() == graph.read_bytes()
    config = parse(folder / "config.pbtxt")
    side = read_onnx_sidecar(graph)
    shapes = io_shapes(side["tile_lr"], -1, side["norm_groups"])  # -1: the explicit batch axis
    assert config.name == graph.stem and config.backend == "onnxruntime" and config.max_batch_size == 0
    assert _dims(config.input) == {k: list(shapes[k]) for k in ("x_t", "lq", "sigma", "norm_stats", "norm_mix")}
    assert _dims(config.output) == {k: list(shapes[k]) for k in ("sr", "tile_stats")}
    assert all(t.data_type == model_config_pb2.TYPE_FP32 for t in [*config.input, *config.output])
    assert not config.HasField("dynamic_batching")  # Triton batches only when every tensor has a batch axis
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
    assert shapes["lq"] == (-1, 3, 16, 16)


@pytest.mark.slow  # the module's export: ~1-2 min on 2 busy CPU cores
def test_per_tile_model_batches_dynamically(exported):
    graph, repo, _ = exported
    config = parse(repo / f"{graph.stem}_tile" / "config.pbtxt")
    side = read_onnx_sidecar(graph)
    assert config.max_batch_size == side["batch"]["max"] == 2
    assert _dims(config.input) == {"x_t": [3, 64, 64], "lq": [3, 16, 16], "sigma": [1]}
    assert list(config.input[2].reshape.shape) == []  # one sigma per sample, (N,) in the graph
    assert _dims(config.output) == {"sr": [3, 64, 64], "tile_stats": [2, side["norm_groups"]]}
    assert list(config.dynamic_batching.preferred_batch_size) == [1, 2]
    assert config.dynamic_batching.max_queue_delay_microseconds > 0


@pytest.mark.slow  # the module's export: ~1-2 min on 2 busy CPU cores
def test_per_tile_graph_is_norm_mix_zero(exported):
    graph, repo, _ = exported
    groups = read_onnx_sidecar(graph)["norm_groups"]
    rng = np.random.default_rng(0)
    feeds = {"x_t": rng.standard_normal((2, 3, 64, 64), dtype=np.float32),
             "lq": rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32), "sigma": np.ones(2, np.float32)}
    full = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    per_tile = ort.InferenceSession(str(repo / f"{graph.stem}_tile" / "1" / "model.onnx"),
                                    providers=["CPUExecutionProvider"])
    assert [i.name for i in per_tile.get_inputs()] == ["x_t", "lq", "sigma"]
    expected = full.run(None, {**feeds, "norm_stats": rng.standard_normal((2, groups), dtype=np.float32),
                               "norm_mix": np.zeros(1, np.float32)})
    for got, want in zip(per_tile.run(None, feeds), expected):
        np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow  # the module's export: ~1-2 min on 2 busy CPU cores
def test_tensorrt_plan_where_an_engine_exists(exported, tmp_path):
    graph, _, _ = exported
    engine = tmp_path / "stand-in.engine"  # the repository writer copies the file; no TensorRT here
    engine.write_bytes(b"engine bytes")
    folders = write_triton_repo(graph, tmp_path / "repo", engine_path=engine,
                                options=TritonOptions(instances=2, kind="KIND_GPU"))
    assert [f.name for f in folders] == [graph.stem, f"{graph.stem}_tile", f"{graph.stem}_trt"]
    config = parse(folders[2] / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 0
    assert (folders[2] / "1" / "model.plan").read_bytes() == b"engine bytes"
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert not list(tmp_path.joinpath("repo").glob(".gtasr-*"))  # staging folders are gone
    with pytest.raises(ConfigError, match="not found"):
        write_triton_repo(graph, tmp_path / "repo", engine_path=tmp_path / "missing.engine")


def test_dynamic_spatial_axes_become_minus_one():
    """Graphs with dynamic height/width (sidecar tile_lr null) get -1 for those dims."""
    side = {"tile_lr": None, "norm_groups": 12, "batch": {"min": 1, "opt": 2, "max": 4}, "scale": 4}
    dims = tensor_dims(side)
    assert dims["x_t"] == [3, -1, -1] and dims["lq"] == [3, -1, -1] and dims["sr"] == [3, -1, -1]
    assert dims["norm_stats"] == [2, 12] and dims["tile_stats"] == [2, 12] and dims["sigma"] == []
    for batched in (False, True):
        text = model_config("dyn", side, platform="onnxruntime", batched=batched, options=TritonOptions())
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        assert list(config.input[0].dims)[-2:] == [-1, -1]
        assert config.max_batch_size == (4 if batched else 0)


def test_options_are_checked():
    for bad in ({"instances": 0}, {"kind": "GPU"}, {"queue_delay_us": -1}):
        with pytest.raises(ConfigError):
            TritonOptions(**bad)
