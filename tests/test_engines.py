"""Engines: TorchEngine (fp32, fp16 islands), OrtEngine (sidecar, input checks), open_engine."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from gtasr_deploy.engines.factory import open_engine
from gtasr_deploy.engines.torch_engine import TorchEngine
from gtasr_deploy.model.precond import reduced_precision
from gtasr_deploy.errors import BackendUnavailableError, ConfigError, InputError
from gtasr_deploy.model import build_model, from_authors
from gtasr_deploy.model.network import GroupNorm
from conftest import randomized  # the graph factory's "random" weights

TILE = (8, 24)  # with seed 0: test_onnx.py's random 8x24 graph, exported once per session
SILENT = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def model(fixture_dir):
    return randomized(build_model(from_authors(fixture_dir / "network_g.json")), seed=0)


@pytest.fixture(scope="module")
def onnx_path(graph_factory):  # the graph of `model` (the same seed-0 weights), exported once per session
    return graph_factory("random", seed=0, tile=TILE, batch_max=2).onnx_path


def inputs(tile=TILE, batch=1, seed=0):
    rng = np.random.default_rng(seed)
    h, w = tile
    return {"x_t": rng.standard_normal((batch, 3, 4 * h, 4 * w)).astype(np.float32),
            "lq": rng.uniform(-1, 1, (batch, 3, h, w)).astype(np.float32),
            "sigma": np.linspace(1.0, 0.3, batch).astype(np.float32)}


def reference(model, feeds):
    with torch.inference_mode():
        return model(torch.from_numpy(feeds["x_t"]), torch.from_numpy(feeds["sigma"]),
                     torch.from_numpy(feeds["lq"])).numpy()


def test_torch_engine_fp32_is_the_model(model):
    engine = TorchEngine(model)
    assert engine.info.backend == "torch" and engine.info.precision == "fp32" and engine.info.tile_lr is None
    assert engine.info.batch_range[0] == 1 and engine.info.max_batch >= 64
    assert engine.info.size_multiple == 8
    for tile in [(8, 8), (16, 24)]:
        feeds = inputs(tile, batch=2)
        np.testing.assert_array_equal(engine(**feeds), reference(model, feeds))


def test_torch_engine_scalar_sigma_broadcasts(model):
    feeds = inputs(batch=2)
    feeds["sigma"] = np.float32(0.5)
    out = TorchEngine(model)(**feeds)
    feeds["sigma"] = np.full(2, 0.5, np.float32)
    np.testing.assert_array_equal(out, reference(model, feeds))


def test_torch_engine_rejects_bad_shapes(model):
    engine = TorchEngine(model, tile_lr=(8, 8))
    feeds = inputs((8, 8))
    with pytest.raises(InputError, match=r"'x_t' has shape \(1, 3, 32, 64\), expected \(1, 3, 32, 32\)"):
        engine(**{**feeds, "x_t": np.zeros((1, 3, 32, 64), np.float32)})
    with pytest.raises(InputError, match=r"built for static tiles of 8x8.*expected \(N, 3, 8, 8\)"):
        engine(**inputs((16, 16)))
    with pytest.raises(InputError, match="multiples of 8"):
        TorchEngine(model)(**inputs((12, 12)))


def test_torch_engine_option_errors(model):
    with pytest.raises(ConfigError, match="precision 'int8'"):
        TorchEngine(model, precision="int8")
    with pytest.raises(ConfigError, match="cuda_graph=True needs a CUDA device"):
        TorchEngine(model, cuda_graph=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_islands_structure(model, dtype):
    half = reduced_precision(model, dtype)
    backbone = half.model
    assert half.compute_dtype == dtype
    assert backbone.enc["16x16_conv"].weight.dtype == dtype
    assert backbone.conv_last.weight.dtype == dtype
    for name, module in backbone.named_modules():
        if isinstance(module, GroupNorm):
            assert module.weight.dtype == torch.float32, name
        if name.endswith(".affine") or name.startswith("map_layer"):
            assert module.weight.dtype == torch.float32, name
        if name.endswith(".qkv"):
            assert module.weight.dtype == dtype, name
        if name.endswith(".attn"):
            assert module.relative_position_bias_table.dtype == torch.float32, name
    assert set(half.state_dict()) == {k for k in model.state_dict()}  # same keys: weights load unchanged
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is untouched


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_torch_engine_runs_on_cpu_close_to_fp32(model, precision):
    feeds = inputs(batch=2)
    try:
        out = TorchEngine(model, precision=precision)(**feeds)
    except RuntimeError as err:  # an op without a CPU half kernel in this torch build
        pytest.skip(f"torch CPU lacks an fp16 kernel: {err}")
    ref = reference(model, feeds)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    err = np.abs(out - ref)
    bound = 0.05 if precision == "fp16" else 0.2  # bf16 keeps 8 mantissa bits to fp16's 11
    assert 0 < err.max() < bound and err.mean() < bound / 10


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_fp16_engine(model, cuda_graph):
    feeds = inputs(batch=2)
    engine = TorchEngine(model, device="cuda", precision="fp16", cuda_graph=cuda_graph)
    for _ in range(2):  # the second call replays the captured graph
        out = engine(**feeds)
    assert np.abs(out - reference(model, feeds)).max() < 0.05


def test_ort_engine_info_and_parity(model, onnx_path):
    from gtasr_deploy.engines.onnxruntime import OrtEngine

    with OrtEngine(onnx_path, providers="cpu", threads=1) as engine:
        info = engine.info
        assert (info.backend, info.device, info.precision) == ("onnxruntime", "CPUExecutionProvider", "fp32")
        assert info.tile_lr == TILE and info.batch_range == (1, 1, 2) and info.size_multiple == 8
        feeds = inputs(batch=2, seed=5)
        assert np.abs(engine(**feeds) - reference(model, feeds)).max() <= 1e-4


def test_ort_engine_input_errors(onnx_path):
    from gtasr_deploy.engines.onnxruntime import OrtEngine

    engine = OrtEngine(onnx_path, providers="cpu", threads=1)
    with pytest.raises(InputError, match=r"built for static tiles of 8x24; got shape \(1, 3, 16, 16\), "
                                         r"expected \(N, 3, 8, 24\)"):
        engine(**inputs((16, 16)))
    with pytest.raises(InputError, match=r"'x_t' has shape \(1, 3, 32, 32\), expected \(1, 3, 32, 96\)"):
        engine(**{**inputs(), "x_t": np.zeros((1, 3, 32, 32), np.float32)})
    with pytest.raises(InputError, match=r"batch 3 outside the engine's range \[1, 2\]"):
        engine(**inputs(batch=3))
    with pytest.raises(ConfigError, match="threads=0"):
        OrtEngine(onnx_path, providers="cpu", threads=0)


def test_ort_engine_needs_its_sidecar(onnx_path, tmp_path):
    from gtasr_deploy.engines.onnxruntime import OrtEngine

    lone = tmp_path / "lone.onnx"
    lone.write_bytes(onnx_path.read_bytes())
    with pytest.raises(ConfigError, match="lone.json not found"):
        OrtEngine(lone, providers="cpu")
    with pytest.raises(ConfigError, match="not found; export one with gtasr-export"):
        OrtEngine(tmp_path / "missing.onnx", providers="cpu")


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    from gtasr_deploy.engines.onnxruntime import import_onnxruntime

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'gtasr-deploy\[onnx\]'"):
        import_onnxruntime()


def test_open_engine_dispatch(model, onnx_path):
    assert open_engine("torch", model=model).info.backend == "torch"
    assert open_engine("auto", model=model).info.backend == "torch"  # no graph: torch
    import importlib.util

    # a given fp32 graph: OpenVINO when installed (the fastest CPU runtime), else ONNX Runtime
    want = "openvino" if importlib.util.find_spec("openvino") else "onnxruntime"
    assert open_engine("auto", onnx_path=onnx_path).info.backend == want
    assert open_engine("onnxruntime", onnx_path=onnx_path, threads=1).info.tile_lr == TILE
    with pytest.raises(ConfigError, match="unknown backend 'ncnn'; valid backends: auto, torch, onnxruntime, openvino, tensorrt"):
        open_engine("ncnn", model=model)
    with pytest.raises(ConfigError, match="needs a model"):
        open_engine("torch")
    with pytest.raises(ConfigError, match="needs an exported ONNX graph"):
        open_engine("onnxruntime", model=model)


def test_every_backend_states_its_facts_once():
    """Each engine class declares its backend's facts; the factory, precision choice, gtasr-check and
    the bench read that list, so every backend (OpenVINO included) appears in each of them."""
    from gtasr_deploy.bench import runner as bench_runner
    from gtasr_deploy.cli import check as check_cli
    from gtasr_deploy.engines import factory
    from gtasr_deploy.engines.backends import ENGINE_CLASSES, FACTS, GRAPH_BACKENDS, NAMES, facts_of
    from gtasr_deploy.extras import EXTRA_OF, install_hint

    assert NAMES == ("torch", "onnxruntime", "openvino", "tensorrt")
    assert factory.BACKENDS == ("auto", *NAMES) and set(factory._OPENERS) == set(NAMES)
    assert check_cli.BACKEND_CHOICES == list(NAMES) and bench_runner.BACKENDS == NAMES
    assert bench_runner.BACKEND_PRECISIONS == {name: FACTS[name].precisions for name in NAMES}
    assert GRAPH_BACKENDS == ("onnxruntime", "openvino", "tensorrt")
    for cls in ENGINE_CLASSES:
        facts = cls.facts
        assert facts_of(facts.name) is facts and set(facts.precisions) <= {"fp32", "bf16", "fp16"}
        assert set(facts.devices) <= {"cpu", "cuda"} and facts.devices
        if facts.extra is None:
            assert facts.install_hint is None and not facts.modules
        else:  # the extra named agrees with the one table of optional packages
            assert all(EXTRA_OF[m] == facts.extra for m in facts.modules)
            assert facts.install_hint == install_hint(facts.modules[0])
        assert facts.graph == bool(facts.graph_precisions)
    with pytest.raises(ConfigError, match="unknown backend 'ncnn'; valid backends: torch, onnxruntime, openvino"):
        facts_of("ncnn")


def test_backend_facts_answer_what_callers_ask():
    from gtasr_deploy.engines.backends import FACTS
    from gtasr_deploy.inference.memory import call_memory

    torch_f, ort, openvino, trt = (FACTS[n] for n in ("torch", "onnxruntime", "openvino", "tensorrt"))
    assert torch_f.graph_precision("bf16") is None
    assert ort.graph_precision("fp16") == "fp16" and trt.graph_precision("fp32") == "fp32"
    assert openvino.graph_precision("bf16") == "fp32"  # OpenVINO compiles the fp32 graph in bf16
    assert torch_f.runs_on("cuda:1") and openvino.runs_on("cpu") and not openvino.runs_on("cuda")
    assert trt.runs_on("cuda") and not trt.runs_on("cpu")
    assert ort.precision_from_graph and trt.precision_from_graph and not openvino.precision_from_graph
    assert torch_f.native_bf16 and openvino.native_bf16 and "bf16" not in ort.precisions
    assert ort.install_hint == "pip install 'gtasr-deploy[onnx]'"
    assert openvino.install_hint == "pip install 'gtasr-deploy[openvino]'"
    base = call_memory("demo", "fp32", "torch").per_lr_px
    assert call_memory("demo", "fp32", "openvino").per_lr_px == pytest.approx(base * openvino.memory_factor)
    assert call_memory("demo", "fp32", "onnxruntime").per_lr_px == base


def test_open_engines_carry_their_facts(model, onnx_path):
    from gtasr_deploy.engines.onnxruntime import OrtEngine

    engine = open_engine("torch", model=model)
    assert engine.info.facts is TorchEngine.facts and engine.info.backend == TorchEngine.facts.name
    with OrtEngine(onnx_path, providers="cpu") as ort:
        assert ort.info.facts is OrtEngine.facts and ort.info.backend == "onnxruntime"


def test_open_engine_tensorrt_unavailable_here(onnx_path):
    from gtasr_deploy.engines.tensorrt_build import explain_unavailable

    if explain_unavailable() is None:
        pytest.skip("TensorRT and a GPU are present; the GPU tests cover this backend")
    with pytest.raises(BackendUnavailableError):
        open_engine("tensorrt", onnx_path=onnx_path)


def test_channels_last_gives_the_same_output(model):
    feeds = inputs(batch=2, seed=3)
    ref = TorchEngine(model)
    nhwc = TorchEngine(model, channels_last=True)
    assert np.abs(nhwc(**feeds) - ref(**feeds)).max() <= 1e-4
    stats = ref.tile_statistics(**feeds)
    assert np.abs(nhwc.tile_statistics(**feeds) - stats).max() <= 1e-4


@pytest.mark.slow
def test_compiled_engine_matches_eager_in_every_normalisation_mode(model):
    """torch.compile of the static tile shape (inductor on CPU; minutes on 2 cores the first time)."""
    from gtasr_deploy.model.shared_norm import pool_statistics

    feeds = inputs(batch=2, seed=4)
    eager, compiled = TorchEngine(model), TorchEngine(model, compile=True)
    assert np.abs(compiled(**feeds) - eager(**feeds)).max() <= 1e-4
    stats = eager.tile_statistics(**feeds)
    assert np.abs(compiled.tile_statistics(**feeds) - stats).max() <= 1e-4
    pooled = pool_statistics(stats)
    assert np.abs(compiled(**feeds, norm_stats=pooled) - eager(**feeds, norm_stats=pooled)).max() <= 1e-4
