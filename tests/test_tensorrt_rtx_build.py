"""Real TensorRT-for-RTX engines built on this machine (no GPU needed) from the package's own graphs.

TensorRT for RTX compiles ahead of time for named GPU architectures, so CI builds real engines here.
An engine cannot be deserialized without a GPU, so what is checked is everything up to that point:
the parsed network's tensor types (the fp16 graph's convolutions and matrix multiplies in HALF, the
GroupNorm, softmax and sigma-embedding islands in FLOAT), the builder's own per-kernel report, one
engine for several targets, the cache beside the graph (reuse, rebuild on a changed key or a
corrupt file), the library's refusal of a malformed engine, and the one-line errors.

The embedded demo weights' graphs (LR tile 32, the demo network's size rule) are exported once per
session; building them takes tens of seconds on a 2-core CPU (``slow``). The cache and error tests
use the tiny fixture network, whose engines build in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT for RTX is not installed (pip install "
                                                 "'gtasr-deploy[tensorrt-rtx]'; it is part of the test extra)")
onnx = pytest.importorskip("onnx", reason="the onnx extra is part of the test install")

from click.testing import CliRunner  # noqa: E402

from gtasr_deploy import contract  # noqa: E402
from gtasr_deploy.cli.export import main as export_main  # noqa: E402
from gtasr_deploy.engines import tensorrt_build, trt_cache  # noqa: E402
from gtasr_deploy.engines.tensorrt import engine_validity_problem  # noqa: E402
from gtasr_deploy.errors import ConfigError, EngineBuildError  # noqa: E402
from gtasr_deploy.export.fp16 import classify  # noqa: E402

quiet = lambda _: None  # noqa: E731


def _graphs(graph_factory, weights: str, tile: int) -> dict[str, Path]:
    """fp32 and fp16 graphs, LR tile ``tile``, batch 1..2, opset 17 (the session's graph factory)."""
    return {precision: graph_factory(weights, tile=tile, batch_max=2, opset=17, precision=precision).onnx_path
            for precision in ("fp32", "fp16")}


@pytest.fixture(scope="session")
def demo_graphs(graph_factory) -> dict[str, Path]:
    """The embedded demo weights' fp32 and fp16 graphs, LR tile 32, batch 1..2 (exported once)."""
    return _graphs(graph_factory, "embedded", 32)


@pytest.fixture(scope="session")
def demo_engines(demo_graphs) -> dict[str, Path]:
    """Engines built once: fp16 and fp32 for SM89 (RTX 40), and fp16 for SM86+SM89+SM120 in one engine."""
    return {"fp16": tensorrt_build.get_or_build_engine(demo_graphs["fp16"], targets="sm89", log=quiet),
            "fp32": tensorrt_build.get_or_build_engine(demo_graphs["fp32"], targets="sm89", log=quiet),
            "several": tensorrt_build.get_or_build_engine(demo_graphs["fp16"], targets="sm86,sm89,sm120", log=quiet)}


@pytest.fixture(scope="module")
def tiny_graphs(graph_factory) -> dict[str, Path]:
    return _graphs(graph_factory, "fixture", 16)


def _island_kinds(fp32_graph: Path) -> dict[str, str]:
    """ONNX node name -> "fp16" or its fp32 island kind (sigma, group_norm, attention, tail, ...)."""
    model = onnx.load(str(fp32_graph))
    return {model.graph.node[i].name: kind for i, kind in classify(model).items()}


# --------------------------------------------------------------------------- what the fp16 engine computes in


@pytest.mark.slow
def test_parsed_fp16_network_keeps_the_graph_types(demo_graphs):
    """Strongly typed: the network TensorRT builds has exactly the fp16 graph's types."""
    kinds = _island_kinds(demo_graphs["fp32"])
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(demo_graphs["fp16"]))
    by_type: dict[str, dict[str, set]] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        kind = kinds.get(layer.name, "other")
        by_type.setdefault(layer.type.name, {}).setdefault(kind, set()).add(layer.get_output(0).dtype.name)
    assert by_type["CONVOLUTION"] == {"fp16": {"HALF"}}
    assert by_type["MATRIX_MULTIPLY"]["fp16"] == {"HALF"}  # attention QKV, projections, MLPs
    assert by_type["MATRIX_MULTIPLY"]["sigma"] == {"FLOAT"}  # the sigma-embedding MLP island
    assert by_type["SOFTMAX"] == {"attention": {"FLOAT"}}
    assert set(by_type["REDUCE"]) == {"group_norm"} and by_type["REDUCE"]["group_norm"] == {"FLOAT"}
    counts = {t: sum(1 for i in range(network.num_layers) if network.get_layer(i).type.name == t)
              for t in ("CONVOLUTION", "SOFTMAX", "REDUCE")}
    assert min(counts.values()) > 0


@pytest.mark.slow
def test_builder_kernel_report_shows_half_convolutions_and_float_islands(demo_graphs, demo_engines):
    kinds = _island_kinds(demo_graphs["fp32"])
    side = trt_cache.read_engine_sidecar(demo_engines["fp16"])
    kernels = side["build"]["kernel_report"]
    assert kernels and side["build"]["kernels"]["correlation"] == {"Half": len(
        [k for k in kernels if k["type"] == "correlation"])}  # every convolution kernel writes fp16
    gemms = [k for k in kernels if k["type"] == "gemm"]
    sigma = [k for k in gemms if {kinds.get(n) for n in k["onnx"]} == {"sigma"}]
    assert sigma and all(k["out"] == ["Float"] for k in sigma)
    rest = [k for k in gemms if k not in sigma]
    assert rest and all(k["out"] == ["Half"] for k in rest)
    norm = [k for k in kernels if any(kinds.get(n) == "group_norm" for n in k["onnx"])]
    assert norm and all("Float" in k["out"] for k in norm if k["type"] == "kgen" and
                        all(kinds.get(n) == "group_norm" for n in k["onnx"]))
    assert any("Float" in k["out"] for k in norm)  # GroupNorm statistics stay fp32
    fp32 = trt_cache.read_engine_sidecar(demo_engines["fp32"])["build"]["kernel_report"]
    assert fp32 and all("Half" not in k["out"] for k in fp32)  # the fp32 graph has no fp16 kernel


@pytest.mark.slow
def test_one_engine_for_several_targets(demo_graphs, demo_engines):
    several = trt_cache.read_engine_sidecar(demo_engines["several"])
    single = trt_cache.read_engine_sidecar(demo_engines["fp16"])
    assert several["targets"] == ["sm86", "sm89", "sm120"] and single["targets"] == ["sm89"]
    assert several["library"] == "tensorrt-rtx" and several["library_version"] == trt.__version__
    assert several["build_gpu"] == "" and several["onnx_sha256"] == single["onnx_sha256"]
    assert several["engine_sha256"] != single["engine_sha256"]
    assert demo_engines["several"].parent == demo_graphs["fp16"].parent  # beside the graph
    for capability in ((8, 6), (8, 9), (12, 0)):
        assert trt_cache.runs_on(several, capability, "RTX") is None
    assert "is sm120" in trt_cache.runs_on(single, (12, 0), "NVIDIA GeForce RTX 5090")
    assert trt_cache.canonical_profile(several["profile"]) == trt_cache.canonical_profile(
        trt_cache.graph_profile(contract.read_onnx_sidecar(demo_graphs["fp16"])))


# --------------------------------------------------------------------------- the cache beside the graph


@pytest.mark.slow  # two engine builds and the tiny graphs
def test_cache_reuses_identical_builds_and_rebuilds_on_a_changed_key(tiny_graphs, tmp_path):
    logs: list[str] = []
    first = tensorrt_build.get_or_build_engine(tiny_graphs["fp16"], engine_dir=tmp_path, targets="sm89",
                                               log=logs.append)
    assert first.stat().st_size > 0 and "building" in logs[0]
    stamp = first.stat().st_mtime_ns
    again = tensorrt_build.get_or_build_engine(tiny_graphs["fp16"], engine_dir=tmp_path, targets="sm89",
                                               log=logs.append)
    assert again == first and first.stat().st_mtime_ns == stamp and "reusing" in logs[-1]

    other = tensorrt_build.get_or_build_engine(tiny_graphs["fp16"], engine_dir=tmp_path, targets="sm120",
                                               log=logs.append)  # a changed setting: another key, a build
    assert other != first and "building" in logs[-2] and first.stat().st_mtime_ns == stamp

    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])  # truncated by a crash or a bad copy
    rebuilt = tensorrt_build.get_or_build_engine(tiny_graphs["fp16"], engine_dir=tmp_path, targets="sm89",
                                                 log=logs.append)
    assert rebuilt == first and "corrupt, truncated or replaced" in logs[-2]
    assert trt_cache.read_engine_sidecar(first)["engine_sha256"] == trt_cache.file_sha256(first)
    assert not [p for p in tmp_path.iterdir() if p.suffix not in (".engine", ".json")]  # no temp files left


def test_library_refuses_a_malformed_engine_without_a_gpu():
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    assert "MALFORMED_ENGINE" in engine_validity_problem(trt, runtime, b"not an engine" * 16)


@pytest.mark.slow  # the tiny opset-17 graphs: ~25 s on 2 busy cores
def test_turing_really_cannot_build_and_is_refused_up_front(tiny_graphs, tmp_path):
    """The SM75 refusal states a fact: building anyway fails on the sigma MLP, named in one line."""
    graph = tiny_graphs["fp32"]
    with pytest.raises(EngineBuildError) as info:
        tensorrt_build.build_serialized_engine(graph, contract.read_onnx_sidecar(graph), library="tensorrt-rtx",
                                               targets=tensorrt_build.Targets(names=("sm75",)), log=quiet)
    message = str(info.value)
    assert "\n" not in message and "for sm75 failed at ONNX node 'node_linear' (Gemm)" in message
    assert "FP32 GEMM is not supported" in message
    with pytest.raises(ConfigError, match="sm75 \\(Turing: RTX 20 series\\) is not a TensorRT-for-RTX target"):
        tensorrt_build.get_or_build_engine(graph, engine_dir=tmp_path, targets="sm75,sm89", log=quiet)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # the tiny opset-17 graphs
def test_parse_error_is_one_line_naming_the_node_and_op(tiny_graphs, tmp_path):
    """A graph with an op TensorRT does not know: the parser's error names the node and its op."""
    model = onnx.load(str(tiny_graphs["fp32"]))
    node = next(n for n in model.graph.node if n.op_type == "Conv")
    node.op_type, node.domain = "FancyConv", "com.example"
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    graph = tmp_path / "broken_tile16_fp32.onnx"
    onnx.save(model, str(graph))
    side = json.loads(contract.sidecar_path_for(tiny_graphs["fp32"]).read_text())
    contract.sidecar_path_for(graph).write_text(json.dumps({**side, "onnx_sha256": trt_cache.file_sha256(graph)}))
    with pytest.raises(EngineBuildError) as info:
        tensorrt_build.get_or_build_engine(graph, targets="sm89", log=quiet)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"TensorRT could not parse {graph}: ")
    assert f"'{node.name}' (FancyConv)" in message
    assert not list(tmp_path.glob("*.engine"))


def test_export_cli_refuses_bad_targets_before_exporting(tmp_path):
    for targets, words in (("sm75", "FP32 GEMM is not supported"), ("rtx4090", "not a compute capability")):
        result = CliRunner().invoke(export_main, ["--out", str(tmp_path), "--trt-targets", targets])
        assert result.exit_code == 2 and words in result.output
        assert len([line for line in result.output.splitlines() if line.strip()]) == 1
    assert not list(tmp_path.iterdir())


def test_running_needs_a_gpu_and_says_so():
    if tensorrt_build.local_gpu() is not None:
        pytest.skip("a GPU is present: tests/test_gpu_tensorrt.py runs engines there")
    reason = tensorrt_build.explain_unavailable()
    assert "no CUDA GPU is visible" in reason and "built here with TensorRT for RTX" in reason


# Every name the builder and the runner call, per class: the fakes in test_tensorrt_cpu.py stand in
# for these, so the real library must have them all.
API_USED = {
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile", "build_serialized_network"),
    "IBuilderConfig": ("set_memory_pool_limit", "profiling_verbosity", "num_compute_capabilities",
                       "set_compute_capability", "add_optimization_profile"),
    "IOptimizationProfile": ("set_shape",),
    "OnnxParser": ("parse_from_file", "num_errors", "get_error"),
    "ParserError": ("node", "node_name", "node_operator", "desc"),
    "Runtime": ("deserialize_cuda_engine", "get_engine_validity"),
    "ICudaEngine": ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype",
                    "create_execution_context", "create_runtime_config"),
    "IRuntimeConfig": ("create_runtime_cache", "set_runtime_cache", "cuda_graph_strategy"),
    "IRuntimeCache": ("serialize", "deserialize"),
    "IExecutionContext": ("set_tensor_address", "set_input_shape", "get_tensor_shape", "execute_async_v3"),
}


def test_the_installed_library_has_every_name_the_package_calls():
    missing = [f"{cls}.{name}" for cls, names in API_USED.items() for name in names
               if not hasattr(getattr(trt, cls), name)]
    assert missing == []
    for enum, member in (("ComputeCapability", "SM89"), ("ComputeCapability", "CURRENT"),
                         ("CudaGraphStrategy", "WHOLE_GRAPH_CAPTURE"), ("EngineValidity", "INVALID"),
                         ("EngineInvalidityDiagnostics", "MALFORMED_ENGINE"), ("ProfilingVerbosity", "DETAILED"),
                         ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"), ("MemoryPoolType", "WORKSPACE")):
        assert hasattr(getattr(trt, enum), member), f"{enum}.{member}"
    assert set(tensorrt_build.DEFAULT_AOT_TARGETS) <= set(tensorrt_build._rtx_targets(trt))
