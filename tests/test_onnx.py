"""ONNX export (fp32 and fp16 with fp32 islands): parity with torch in both GroupNorm modes, sidecar,
graph structure, staged replacement, CLI."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner  # noqa: E402
from onnx import TensorProto  # noqa: E402

from gtasr_deploy import contract  # noqa: E402
from gtasr_deploy.cli.export import main as export_cli  # noqa: E402
from gtasr_deploy.engines.onnxruntime import OrtEngine  # noqa: E402
from gtasr_deploy.engines.tensorrt_build import explain_cannot_build  # noqa: E402
from gtasr_deploy.engines.torch_engine import TorchEngine  # noqa: E402
from gtasr_deploy.errors import ConfigError, EngineBuildError  # noqa: E402
from gtasr_deploy.export import fp16 as fp16_pass  # noqa: E402
from gtasr_deploy.export import verify  # noqa: E402
from gtasr_deploy.export.fp16 import convert_to_fp16  # noqa: E402
from gtasr_deploy.contract import example_inputs
from gtasr_deploy.export.onnx import export_fp16, export_onnx, graph_file_name  # noqa: E402
from gtasr_deploy.export.verify import photo_psnr  # noqa: E402
from gtasr_deploy.model import NetworkConfig, build_model, from_authors  # noqa: E402
from gtasr_deploy.model.network import GroupNorm  # noqa: E402
from gtasr_deploy.model.shared_norm import NormIO, pool_statistics  # noqa: E402
from conftest import randomized  # noqa: E402

RANDOM_TILES = [(16, 16), (8, 24)]
SILENT = lambda *_: None  # noqa: E731


@pytest.fixture(scope="module")
def tiny_config(fixture_dir) -> NetworkConfig:
    return from_authors(fixture_dir / "network_g.json")


@pytest.fixture(scope="module")
def random_model(graph_factory):
    return graph_factory.network("random", seed=0).model  # randomized(build_model(tiny_config)), shared


@pytest.fixture(scope="module")
def random_exports(graph_factory):
    return {tile: graph_factory("random", seed=0, tile=tile, batch_max=2) for tile in RANDOM_TILES}


@pytest.fixture(scope="module")
def fp16_export(graph_factory):
    return graph_factory("random", seed=0, tile=(16, 16), batch_max=2, precision="fp16")


def feeds(tile, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    h, w = tile
    lq = torch.rand((batch, 3, h, w), generator=gen) * 2 - 1
    x_t = torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic") + torch.randn(
        (batch, 3, 4 * h, 4 * w), generator=gen)
    sigma = torch.tensor([1.0, 0.25, 1 / 3][:batch])
    return {"x_t": x_t.numpy(), "lq": lq.numpy(), "sigma": sigma.numpy()}


@pytest.mark.parametrize("tile", RANDOM_TILES)
@pytest.mark.parametrize("batch", [1, 2])
def test_random_network_ort_matches_torch(random_exports, random_model, tile, batch):
    inputs = feeds(tile, batch, seed=batch)
    groups = NormIO(random_model).size
    reference = TorchEngine(random_model)
    want_stats = reference.tile_statistics(**inputs)
    pooled = pool_statistics(reference.tile_statistics(**feeds(tile, 2, seed=10 + batch)))  # other tiles
    with OrtEngine(random_exports[tile].onnx_path, providers="cpu", threads=1) as engine:
        assert engine.info.norm_groups == groups
        got = engine(**inputs)
        stats = engine.tile_statistics(**inputs)
        shared = engine(**inputs, norm_stats=pooled)
    with torch.inference_mode():
        want = random_model(torch.from_numpy(inputs["x_t"]), torch.from_numpy(inputs["sigma"]),
                            torch.from_numpy(inputs["lq"])).numpy()
    assert got.shape == want.shape == (batch, 3, 4 * tile[0], 4 * tile[1])
    assert np.abs(want).mean() > 0.1  # a network that does something, not a near-identity
    assert np.abs(got - want).max() <= 1e-4
    assert stats.shape == want_stats.shape == (batch, 2, groups)
    assert np.abs(stats - want_stats).max() <= 1e-4
    want_shared = reference(**inputs, norm_stats=pooled)
    assert np.abs(want_shared - want).max() > 1e-2  # the pooled statistics really change the output
    assert np.abs(shared - want_shared).max() <= 1e-4
    assert max(random_exports[tile].max_abs_error.values()) <= 1e-4


@pytest.mark.slow  # the shared 16x16 graph and the graph cache's dynamic one (both filled by other modules too)
def test_official_fixture_cases(graph_factory, fixture_cases):
    """The upstream implementation's outputs, through the static 16x16 graph (case 0, the other tests'
    graph) and through the graph of dynamic height and width (every case, one sample per call: its
    batch is 1; a 16x24 static graph of its own cost an export)."""
    static = graph_factory("fixture", tile=16, batch_max=2).onnx_path
    dynamic = graph_factory.dynamic("fixture")
    checked = []
    for i in range(3):
        lq, expected = fixture_cases[f"case{i}.lq"], fixture_cases[f"case{i}.expected"]
        if float(fixture_cases[f"case{i}.sigma"].max()) == 0.0:
            continue  # sigma = 0 only checks D = x, covered by the model tests; one export saved
        x_t, sigma = fixture_cases[f"case{i}.x_t"], fixture_cases[f"case{i}.sigma"]
        graphs = [dynamic, static] if tuple(lq.shape[2:]) == (16, 16) else [dynamic]
        for graph in graphs:
            with OrtEngine(graph, providers="cpu", threads=1) as engine:
                if engine.info.tile_lr is None:  # batch 1: each sample alone (GroupNorm is per sample)
                    got = np.concatenate([engine(x_t=x_t[j:j + 1].numpy(), lq=lq[j:j + 1].numpy(),
                                                 sigma=sigma[j:j + 1].numpy()) for j in range(lq.shape[0])])
                else:
                    got = engine(x_t=x_t.numpy(), lq=lq.numpy(), sigma=sigma.numpy())
            assert got.shape == tuple(expected.shape)
            assert np.abs(got - expected.numpy()).max() <= 1e-4, (i, graph.name)
            checked.append((i, engine.info.tile_lr))
    assert checked == [(0, None), (0, (16, 16)), (1, None)]


def test_sidecar_contents(random_exports, random_model, tiny_config):
    result = random_exports[(8, 24)]
    side = json.loads(result.sidecar_path.read_text())
    assert result.onnx_path.name == graph_file_name("tiny", (8, 24), "fp32") == "tiny_tile8x24_fp32.onnx"
    assert result.sidecar_path == result.onnx_path.with_suffix(".json")
    model = onnx.load(str(result.onnx_path))
    assert side["format"] == contract.FORMAT == "gtasr-onnx/3"
    groups = NormIO(random_model).size
    assert side["norm_groups"] == groups == sum(m.num_groups for m in random_model.modules()
                                                if isinstance(m, GroupNorm)) > 0
    assert contract.read_onnx_sidecar(result.onnx_path)["norm_groups"] == groups  # the engines' reader accepts it
    assert side["opset"] == next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert side["onnx_sha256"] == hashlib.sha256(result.onnx_path.read_bytes()).hexdigest()
    assert side["weights_sha256"] is None and side["preset"] is None
    assert NetworkConfig.from_dict(side["network_config"]) == tiny_config
    assert side["size_multiple"] == tiny_config.size_multiple == 8
    assert side["scale"] == 4 and side["tile_lr"] == [8, 24] and side["precision"] == "fp32"
    assert side["lr_range"] == {"min": [8, 24], "opt": [8, 24], "max": [8, 24]}  # a static graph: its tile
    assert side["batch"] == {"min": 1, "opt": 1, "max": 2}
    assert side["inputs"] == list(contract.INPUTS) == ["x_t", "lq", "sigma", "norm_stats", "norm_mix"]
    assert side["outputs"] == list(contract.OUTPUTS) == ["sr", "tile_stats"]
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in (*model.graph.input, *model.graph.output)}
    batch = dims["x_t"][0]
    assert isinstance(batch, str) and batch  # one dynamic batch axis, shared by every per-sample tensor
    assert dims == {"x_t": [batch, 3, 32, 96], "lq": [batch, 3, 8, 24], "sigma": [batch],
                    "norm_stats": [2, groups], "norm_mix": [1],  # static: one pooled set per call
                    "sr": [batch, 3, 32, 96], "tile_stats": [batch, 2, groups]}
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in (*model.graph.input, *model.graph.output)}
    assert set(elem.values()) == {TensorProto.FLOAT}


@pytest.mark.slow  # an export of its own (the lr_opt/lr_max options are the subject)
def test_dynamic_graph_sidecar_and_axes(random_model, tmp_path):
    """The default export: height and width are named (dynamic) axes, lr_range is the profile, and the
    graph runs two different shapes like torch (checked by the exporter itself, and here once more)."""
    result = export_onnx(random_model, tmp_path, name="tiny", batch_max=2, lr_opt=20, lr_max=40, log=SILENT)
    side = json.loads(result.sidecar_path.read_text())
    assert result.onnx_path.name == "tiny_fp32.onnx" and side["tile_lr"] is None
    assert side["lr_range"] == {"min": [8, 8], "opt": [24, 24], "max": [40, 40]}  # rounded up to the size rule 8
    model = onnx.load(str(result.onnx_path))
    dims = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in (*model.graph.input, *model.graph.output)}
    for name in ("x_t", "lq", "sr"):
        assert dims[name][1] == 3 and all(isinstance(d, str) and d for d in (dims[name][0], *dims[name][2:])), dims
    shapes = contract.profile_shapes(side)
    assert shapes["lq"] == ((1, 3, 8, 8), (1, 3, 24, 24), (2, 3, 40, 40))
    assert shapes["x_t"][2] == (2, 3, 160, 160) and shapes["norm_stats"][0] == (2, side["norm_groups"])
    with OrtEngine(result.onnx_path, providers="cpu") as engine:
        assert engine.info.tile_lr is None
        reference = TorchEngine(random_model)
        for h, w in ((8, 16), (24, 8)):
            feeds = example_inputs((h, w), 1)
            assert np.abs(engine(**feeds) - reference(**feeds)).max() <= 1e-4


def _group_norm_scopes(node) -> str | None:
    """The GroupNorm module a node was traced in (its name scope), from the exporter's metadata; else None."""
    if not fp16_pass._inside_group_norm(node):
        return None
    meta = {p.key: p.value for p in node.metadata_props}
    classes = ast.literal_eval(meta[fp16_pass.HIERARCHY_KEY])
    scopes = ast.literal_eval(meta["pkg.torch.onnx.name_scopes"])
    return scopes[classes.index(fp16_pass.GROUP_NORM_CLASS)]


def test_group_norm_lowering(random_exports, random_model):
    """GroupNorm is traced through NormIO: elementary ops (mean, two-pass variance) that carry the
    GroupNorm class in their metadata, which the fp16 pass reads; never a GroupNormalization op."""
    graph = onnx.load(str(random_exports[(16, 16)].onnx_path)).graph
    ops = [n.op_type for n in graph.node]
    norm_names = {name for name, m in random_model.named_modules() if isinstance(m, GroupNorm)}
    assert norm_names
    assert "GroupNormalization" not in ops
    scopes = {}
    for node in graph.node:
        scope = _group_norm_scopes(node)
        if scope is not None:
            scopes.setdefault(scope, []).append(node.op_type)
    assert {scope.removeprefix("denoiser.") for scope in scopes} == norm_names  # every GroupNorm, traced inside it
    for kinds in scopes.values():
        assert kinds.count("ReduceMean") == 2  # mean, and the variance around it
    assert ops.count("ReduceMean") == 2 * len(norm_names)  # statistics are computed nowhere else


def test_tile_must_follow_size_rule(random_model, tmp_path):
    with pytest.raises(ConfigError, match=r"tile 12x12 .* size rule 8"):
        export_onnx(random_model, tmp_path, name="bad", tile_lr=(12, 12), log=SILENT)
    assert not list(tmp_path.iterdir())


def _types(model):
    model = onnx.shape_inference.infer_shapes(model)
    types = {i.name: i.data_type for i in model.graph.initializer}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    return model, types


def test_fp16_graph_structure(fp16_export):
    side = json.loads(fp16_export.sidecar_path.read_text())
    assert side["precision"] == "fp16" and fp16_export.onnx_path.name == "tiny_tile16_fp16.onnx"
    model, types = _types(onnx.load(str(fp16_export.onnx_path)))
    onnx.checker.check_model(model)
    for vi in (*model.graph.input, *model.graph.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT, vi.name
    nodes = list(model.graph.node)
    for node in nodes:
        if node.op_type == "Softmax":
            assert all(types[t] == TensorProto.FLOAT for t in (*node.input, *node.output) if t), node.name
        if node.op_type == "Conv":
            assert types[node.input[1]] == TensorProto.FLOAT16, node.name
            assert types[node.output[0]] == TensorProto.FLOAT16, node.name
        if node.op_type == "Gemm" and "map_layer" in node.input[1]:
            assert types[node.input[1]] == TensorProto.FLOAT, node.name  # embedding MLP stays fp32
    assert sum(n.op_type == "Softmax" for n in nodes) > 0
    assert sum(n.op_type == "Cast" for n in nodes) > 0
    # the shared statistics feed fp32 nodes only (the "sigma" island: they reach no fp16 node uncast)
    for node in nodes:
        if {"norm_stats", "norm_mix"} & set(node.input):
            assert types[node.output[0]] == TensorProto.FLOAT, node.name


def test_fp16_keeps_every_group_norm_node_fp32(fp16_export, random_exports, random_model):
    """Every float node traced inside a GroupNorm (statistics, blend with norm_stats, normalisation,
    affine) is fp32 in the fp16 graph, and the classifier never put one in fp16."""
    fp32_graph = onnx.load(str(random_exports[(16, 16)].onnx_path))
    half_graph = onnx.load(str(fp16_export.onnx_path))
    kinds = fp16_pass.classify(onnx.shape_inference.infer_shapes(fp32_graph))
    inside = {i for i, node in enumerate(fp32_graph.graph.node) if _group_norm_scopes(node) is not None}
    # fp32 islands only: "group_norm"; "sigma" (slices of norm_stats); "tail" (the per-sample statistics
    # stacked into the tile_stats output, which no backbone node reads)
    assert inside and {kinds[i] for i in inside if i in kinds} <= {"group_norm", "sigma", "tail"}
    before, after = fp16_pass.node_precisions(fp32_graph), fp16_pass.node_precisions(half_graph)
    float_inside = [fp32_graph.graph.node[i].name for i in inside
                    if before[fp32_graph.graph.node[i].name] == TensorProto.FLOAT]
    n_norms = sum(isinstance(m, GroupNorm) for m in random_model.modules())
    assert len(float_inside) >= 5 * n_norms  # mean, variance, normalise, scale, shift at least, per norm
    assert {name: after.get(name) for name in float_inside} == {name: TensorProto.FLOAT for name in float_inside}
    half_inside = [n.name for n in half_graph.graph.node if _group_norm_scopes(n) is not None]
    assert sorted(half_inside) == sorted(fp32_graph.graph.node[i].name for i in inside)  # none dropped or renamed
    # and the fp16 backbone is really fp16 outside them
    assert sum(after[n.name] == TensorProto.FLOAT16 for n in half_graph.graph.node if n.op_type == "Conv") > 0


def test_fp16_graph_runs_in_both_norm_modes(fp16_export, random_exports):
    """On ORT CPU the fp16 graph reports each tile's statistics and honours pooled ones like the fp32 graph."""
    inputs = feeds((16, 16), 2, seed=5)
    results, pooled = {}, None
    for precision, path in (("fp32", random_exports[(16, 16)].onnx_path), ("fp16", fp16_export.onnx_path)):
        with OrtEngine(path, providers="cpu", threads=1) as engine:
            assert engine.info.precision == precision and engine.info.norm_modes == ("tile", "shared")
            stats = engine.tile_statistics(**inputs)
            if pooled is None:  # the fp32 graph's pool, fed to both graphs
                pooled = pool_statistics(stats)
            results[precision] = {"stats": stats, "tile": engine(**inputs),
                                  "shared": engine(**inputs, norm_stats=pooled)}
    ref, half = results["fp32"], results["fp16"]
    for key in ("stats", "tile", "shared"):
        assert half[key].dtype == np.float32 and np.isfinite(half[key]).all(), key
    assert half["stats"].shape == ref["stats"].shape == (2, 2, pooled.shape[1])
    scale = np.abs(ref["stats"]).max()
    assert np.abs(half["stats"] - ref["stats"]).max() <= 1e-2 * scale  # fp32 statistics of fp16 activations
    assert np.abs(ref["shared"] - ref["tile"]).max() > 1e-2  # sharing two tiles' statistics changes the output
    err = np.abs(half["shared"] - ref["shared"])
    assert 0 < err.max() < 0.05 and err.mean() < 5e-3  # as close as the per-tile mode is (next test)


def test_fp16_graph_runs_and_is_close(fp16_export, random_exports):
    inputs = feeds((16, 16), 2, seed=3)
    outputs = []
    for path in (random_exports[(16, 16)].onnx_path, fp16_export.onnx_path):
        with OrtEngine(path, providers="cpu", threads=1) as engine:
            outputs.append(engine(**inputs))
            assert engine.info.precision == ("fp16" if path == fp16_export.onnx_path else "fp32")
    ref, half = outputs
    assert half.dtype == np.float32 and np.isfinite(half).all()
    err = np.abs(half - ref)
    assert 0 < err.max() < 0.05  # really converted (not bit-identical), yet close
    assert err.mean() < 5e-3
    psnr = fp16_export.photo_psnr_db
    assert psnr == photo_psnr(random_exports[(16, 16)].onnx_path, fp16_export.onnx_path, (16, 16))
    if psnr is not None:  # None only without matplotlib's sample photo
        assert 40 < psnr < float("inf")


def _good_folder(tmp_path, random_exports, fp16_export):
    """An output folder holding a good fp32 + fp16 graph with sidecars (copies of the fixtures')."""
    out = tmp_path / "export"
    out.mkdir()
    for result in (random_exports[(16, 16)], fp16_export):
        for path in (result.onnx_path, result.sidecar_path):
            shutil.copy2(path, out / path.name)
    return out, {path.name: path.read_bytes() for path in out.iterdir()}


def _fake_exporter(monkeypatch, writes: bytes | None):
    """torch.onnx.export that raises (``writes`` None) or returns a program that saves ``writes``."""
    def export(*args, **kwargs):
        if writes is None:
            raise RuntimeError("exporter exploded\nsecond line of the exporter's report")
        return types.SimpleNamespace(save=lambda path, external_data=False: Path(path).write_bytes(writes))

    monkeypatch.setattr(torch.onnx, "export", export)


@pytest.mark.parametrize("failure, match", [
    ("exporter_raises", r"torch\.onnx\.export\(dynamo=True\) failed: RuntimeError: exporter exploded$"),
    ("corrupt_graph", "fails onnx.checker"),
    ("verification", "differs from torch"),
    ("fp16_check", "non-finite"),
])
def test_failed_export_leaves_the_good_graph_and_no_temp_files(tmp_path, monkeypatch, random_exports, fp16_export,
                                                                tiny_config, random_model, failure, match):
    """Nothing is replaced by a graph that did not pass every check, and nothing is left behind."""
    out, before = _good_folder(tmp_path, random_exports, fp16_export)
    good = random_exports[(16, 16)]
    with pytest.raises(EngineBuildError, match=match):
        if failure == "fp16_check":  # conversion staged, then its check fails
            monkeypatch.setattr(verify, "compare_graphs", lambda *a, **k: float("nan"))
            fp32 = dataclasses.replace(good, onnx_path=out / good.onnx_path.name,
                                       sidecar_path=out / good.sidecar_path.name)
            export_fp16(fp32, random_model, log=SILENT)
        else:
            # "verification": a valid graph of the fixture network, checked against other weights
            model = randomized(build_model(tiny_config), seed=1) if failure == "verification" else random_model
            _fake_exporter(monkeypatch, {"exporter_raises": None, "corrupt_graph": b"\x08\x07garbage",
                                         "verification": good.onnx_path.read_bytes()}[failure])
            export_onnx(model, out, name="tiny", tile_lr=(16, 16), batch_max=2, log=SILENT)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == sorted(before)  # no temp, no staging folder
    assert {name: (out / name).read_bytes() for name in before} == before  # byte-identical


def test_truncated_graph_is_a_one_line_config_error(tmp_path, random_exports):
    good = random_exports[(16, 16)]
    graph = tmp_path / good.onnx_path.name
    data = good.onnx_path.read_bytes()
    graph.write_bytes(data[: len(data) // 2])
    shutil.copy2(good.sidecar_path, contract.sidecar_path_for(graph))  # a valid sidecar beside it
    with pytest.raises(ConfigError) as info:
        OrtEngine(graph, providers="cpu", threads=1)
    message = str(info.value)
    assert "\n" not in message and str(graph) in message
    assert "corrupt, truncated or not a graph from gtasr-export" in message and "re-export" in message
    assert info.value.__suppress_context__  # raised `from None`: the ONNX Runtime trace is not chained
    # and gtasr-upscale says the same in one line, exit 2, before any output folder exists
    from PIL import Image

    from gtasr_deploy.cli.upscale import main as upscale_cli

    (tmp_path / "in").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "in" / "a.png")
    result = CliRunner().invoke(upscale_cli, [str(tmp_path / "in"), str(tmp_path / "out"), "--backend",
                                              "onnxruntime", "--onnx", str(graph)])
    assert result.exit_code == 2, result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [f"error: {message}"]
    assert not (tmp_path / "out").exists()


def test_fp16_refuses_foreign_graph():
    x = onnx.helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [1, 3, 4, 4])
    y = onnx.helper.make_tensor_value_info("sr", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x_t"], ["sr"])], "g", [x], [y])
    with pytest.raises(EngineBuildError, match="conv_last"):
        convert_to_fp16(onnx.helper.make_model(graph))


@pytest.mark.slow  # the CLI export is the subject
def test_cli_writes_graph_and_sidecar(tmp_path, tiny_config):
    config_path = tmp_path / "tiny.json"
    config_path.write_text(tiny_config.to_json())
    out = tmp_path / "export"
    result = CliRunner().invoke(export_cli, ["--network-config", str(config_path), "--tile", "8", "--batch", "2",
                                             "--fp16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for precision in ("fp32", "fp16"):
        side = json.loads((out / f"tiny_tile8_{precision}.json").read_text())
        assert side["precision"] == precision and side["tile_lr"] == [8, 8] and side["batch"]["max"] == 2
        assert side["format"] == contract.FORMAT and side["norm_groups"] > 0
        assert (out / f"tiny_tile8_{precision}.onnx").is_file()
    assert "RANDOM weights" in result.output
    assert "max abs error" in result.output and "PSNR" in result.output
    reason = explain_cannot_build()
    if reason is not None:  # no TensorRT library that can build here: exactly one line saying why
        assert [line for line in result.output.splitlines() if "TensorRT" in line] == [
            f"no TensorRT engine built: {reason}"]
    else:  # TensorRT for RTX builds on any machine: one engine beside each graph
        for precision in ("fp32", "fp16"):
            assert len(list(out.glob(f"tiny_tile8_{precision}_*.engine"))) == 1


@pytest.mark.parametrize("args, message", [
    (["--preset", "demo", "--tile", "48"], "tile 48x48 LR px is not a multiple of this network's size rule 32"),
    (["--preset", "nope"], "unknown preset 'nope'"),
])
def test_cli_user_errors(tmp_path, args, message):
    result = CliRunner().invoke(export_cli, [*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert message in result.output
    assert not list(tmp_path.iterdir())
