"""UpscaleOptions: one validated value for every surface (CLI, serve, Python API), and only cli/ imports click."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

import gtasr_deploy
from gtasr_deploy.cli._options import options_from_flags
from gtasr_deploy.cli.serve import main as serve_main
from gtasr_deploy.cli.upscale import main as upscale_main
from gtasr_deploy.engines.base import Engine, EngineInfo
from gtasr_deploy.errors import ConfigError, InputError
from gtasr_deploy.inference.options import UpscaleOptions
from gtasr_deploy.serve.settings import serve_options
from gtasr_deploy.upscaler import Upscaler

PACKAGE = Path(gtasr_deploy.__file__).parent


@pytest.mark.parametrize("field,value,listed", [
    ("backend", "ncnn", "auto, torch, onnxruntime, openvino, tensorrt"),
    ("precision", "int8", "auto, fp32, bf16, fp16"),
    ("norm", "group", "shared, tile"),
    ("stats", "exact", "downscaled, tiles"),
    ("device", "mps", "auto, cpu, cuda, cuda:N"),
    ("device", "CUDA", "auto, cpu, cuda, cuda:N"),
    ("tile", -8, "'auto', 0 (the whole image)"),
    ("tile", "64px", "'auto', 0 (the whole image)"),
    ("tile", (0, 16), "(h, w)"),
    ("batch", 0, "an integer >= 1"),
    ("threads", 0, "None (the engine's default) or an integer >= 1"),
    ("tile_overlap", -1, "an integer >= 0"),
    ("seed", 2**64, "an integer -9223372036854775808..18446744073709551615"),
    ("seed", 1.5, "an integer"),
    ("compile", "yes", "True, False"),
    ("weights", 3, "a path"),
])
def test_a_bad_value_is_one_line_that_names_the_field_and_lists_the_valid_values(field, value, listed):
    with pytest.raises(ConfigError) as err:
        UpscaleOptions.from_mapping({field: value})
    message = str(err.value)
    assert message.startswith(f"{field}={value!r} is not valid; valid values: ") and listed in message
    assert "\n" not in message


def test_unknown_keys_are_refused_with_the_valid_ones_listed():
    with pytest.raises(ConfigError) as err:
        UpscaleOptions.from_mapping({"tiel": 64, "seed": 1, "colour": "red"})
    message = str(err.value)
    assert message.startswith("unknown upscale option(s) 'colour', 'tiel'; valid options: weights, param_key")
    assert all(name in message for name in UpscaleOptions.keys())
    with pytest.raises(ConfigError, match="unknown upscale option"):
        UpscaleOptions().replace(tiles=3)
    with pytest.raises(ConfigError, match="unknown upscale option"):
        Upscaler(tiel=64)


def test_frozen_keyword_only_and_replace_validates():
    opts = UpscaleOptions(tile=64, seed=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.seed = 4
    with pytest.raises(TypeError):
        UpscaleOptions("weights.pth")
    assert dataclasses.replace(opts, seed=4) == UpscaleOptions(tile=64, seed=4)
    with pytest.raises(ConfigError, match="batch=0"):
        dataclasses.replace(opts, batch=0)
    assert opts.replace(tile="auto").auto_tile and hash(opts) == hash(UpscaleOptions(seed=3, tile=64))


def test_values_are_normalised_so_equal_inputs_compare_equal():
    assert UpscaleOptions(tile=None) == UpscaleOptions()  # None is the older spelling of auto
    assert UpscaleOptions(weights="a/w.pth", onnx="g.onnx") == UpscaleOptions(weights=Path("a/w.pth"),
                                                                             onnx=Path("g.onnx"))
    assert UpscaleOptions.from_mapping({"tile": "AUTO"}).tile == "auto"
    assert UpscaleOptions.from_mapping({"tile": "64"}).tile == 64
    assert UpscaleOptions.from_mapping({"tile": [32, 48]}).tile == (32, 48)  # JSON/TOML spell (h, w) as a list
    assert UpscaleOptions(seed=np.int64(7)).seed == 7 and type(UpscaleOptions(seed=np.int64(7)).seed) is int
    plain = UpscaleOptions(weights="w.pth").to_dict()
    assert plain["weights"] == "w.pth" and UpscaleOptions.from_mapping(plain) == UpscaleOptions(weights="w.pth")


def _cli_options(command, *args: str) -> UpscaleOptions:
    """What a command's flags build (its own parser; dummy INPUT/OUTPUT where it takes them)."""
    ctx = command.make_context(command.name, list(args))
    return options_from_flags(dict(ctx.params))


@pytest.mark.parametrize("flags,mapping", [
    ([], {}),
    (["--tile", "64", "--seed", "3", "--backend", "torch", "--precision", "fp32", "--norm", "tile"],
     {"tile": 64, "seed": 3, "backend": "torch", "precision": "fp32", "norm": "tile"}),
    (["--tile", "auto", "--tile-overlap", "8", "--batch", "2", "--threads", "2", "--stats", "tiles", "--device", "cpu"],
     {"tile": "auto", "tile_overlap": 8, "batch": 2, "threads": 2, "stats": "tiles", "device": "cpu"}),
    (["--no-shared-norm", "--network-config", "demo", "--param-key", "params"],
     {"norm": "tile", "network_config": "demo", "param_key": "params"}),
    (["--compile", "--channels-last", "--tile", "0"], {"compile": True, "channels_last": True, "tile": "0"}),
])
def test_the_cli_and_serve_build_equal_options_from_equal_inputs(flags, mapping, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    flags, mapping = [*flags, "--weights", str(weights)], {**mapping, "weights": str(weights)}
    upscale = _cli_options(upscale_main, *flags, "IN", "OUT")
    assert upscale == serve_options(mapping)
    assert upscale == serve_options(**mapping)
    assert upscale == _cli_options(serve_main.commands["http"], *flags)
    assert upscale == _cli_options(serve_main.commands["batch"], *flags, "IN", "OUT")


def test_flag_problems_are_gtasr_errors_for_the_one_line_usage_message(tmp_path):
    with pytest.raises(InputError, match="--device 'bogus' is not a device"):
        _cli_options(upscale_main, "--device", "bogus", "IN", "OUT")
    with pytest.raises(ConfigError, match="--weights is not used with --onnx"):
        _cli_options(upscale_main, "--onnx", "g.onnx", "--weights", str(Path(gtasr_deploy.__file__)), "IN", "OUT")
    with pytest.raises(ConfigError, match="--tile 'x': expected auto, 0"):
        _cli_options(upscale_main, "--tile", "x", "IN", "OUT")


class _Nearest(Engine):
    """A local operator in place of the network: nearest x4 of lq; counts its calls."""

    def __init__(self) -> None:
        self.info = EngineInfo(backend="fake", device="cpu", precision="fp32", size_multiple=8, tile_lr=None,
                               batch_range=(1, 1, 8), norm_groups=1, norm_modes=("tile",))
        self.calls = 0

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        self.calls += 1
        return lq.repeat(4, axis=2).repeat(4, axis=3), None


def test_from_engine_runs_an_open_engine_without_loading_weights():
    engine = _Nearest()
    up = Upscaler.from_engine(engine, UpscaleOptions(tile=16, tile_overlap=4, norm="tile", batch=2))
    image = np.random.default_rng(0).integers(0, 256, (20, 36, 3), dtype=np.uint8)
    sr = up.upscale(image)
    assert sr.shape == (80, 144, 3) and engine.calls > 1  # tiled: 16 px tiles
    assert np.array_equal(sr, image.repeat(4, axis=0).repeat(4, axis=1))  # nearest x4, seams and all
    assert up.loaded is None and up.weights_label == "weights inside the exported graph"
    assert (up.options.tile, up.options.overlap, up.options.batch) == (16, 4, 2)
    assert up.backend_choice.backend == "fake" and up.precision_choice.precision == "fp32"
    whole = Upscaler.from_engine(_Nearest(), UpscaleOptions(tile=0, norm="tile"))
    assert np.array_equal(whole.upscale(image), sr)


def test_keywords_options_and_both_build_the_same_upscaler():
    opts = UpscaleOptions(backend="torch", precision="fp32", tile=32, seed=5)
    image = np.random.default_rng(1).integers(0, 256, (40, 24, 3), dtype=np.uint8)
    by_keywords = Upscaler(backend="torch", precision="fp32", tile=32, seed=5)
    by_options = Upscaler(opts)
    assert by_keywords.upscale_options == by_options.upscale_options == opts
    assert np.array_equal(by_keywords.upscale(image), by_options.upscale(image))
    varied = Upscaler.from_options(opts, log=print)
    assert Upscaler(options=opts, seed=6).upscale_options == dataclasses.replace(opts, seed=6)
    assert Upscaler(opts, shared_norm=False).upscale_options.norm == "tile"
    over = varied.with_engine(varied.engine)  # e.g. a batching proxy of its own engine
    assert over.upscale_options == opts and over.loaded is varied.loaded and over.memory == varied.memory
    assert np.array_equal(over.upscale(image), by_options.upscale(image))


def _imports_click(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "click" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "click":
            return True
    return False


def test_no_module_outside_cli_imports_click():
    """The click commands are the CLI's; options, serve, bench, eval and the API take UpscaleOptions."""
    offenders = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
                 if "cli" not in path.relative_to(PACKAGE).parts[:1] and _imports_click(path)]
    assert offenders == []
    assert _imports_click(PACKAGE / "cli" / "_options.py")  # the check sees imports
