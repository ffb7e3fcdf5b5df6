"""Every command line in the README's ```bash blocks runs as typed on a fresh clone.

Each line is split at ``&&`` and every command is checked:

* the program is known (a gtasr-* command, a ``python -m`` module of this package, or a setup step);
* its arguments parse with the command's real options (click's own parser and type checks, or the
  module's argparse parser) — for all of them, including those that need downloads, a GPU or hours;
* the files it reads exist in the repository or are written by an earlier README command (an ONNX
  path must be the name an earlier ``gtasr-export`` line writes);
* the cheap ones run for real in a copy of the repository's samples and recipes (RUN_FOR_REAL).
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gtasr_deploy import weights_registry as reg

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
SETUP = {"python3", "pip", ".", "bash"}  # the quick start's venv/pip/activate steps and the test script
# Cheap enough to run in the test (seconds on a 2-core CPU, no downloads): exact command text.
RUN_FOR_REAL = {"gtasr-upscale samples/ out/", "gtasr-weights list", "gtasr-train training/demo.toml --dry-run"}
# Parameters that name files a command reads (must exist, or be written by an earlier command).
INPUT_PARAMS = {"input_path", "onnx_path", "sr_dir", "gt_dir", "hr_dir", "config", "images"}


def readme_commands() -> list[str]:
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:  # split at && into single commands
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(shlex.join(words[:cut]))
                words = words[cut + 1:]
    return commands


COMMANDS = readme_commands()


def click_main(program: str) -> click.Command:
    module, _, attr = SCRIPTS[program].partition(":")
    return getattr(importlib.import_module(module), attr)


def parse(command: click.Command, program: str, args: list[str]) -> tuple[click.Command, click.Context]:
    """Parse ``args`` with the command's real parser (types, choices, callbacks), without running it."""
    ctx = command.make_context(program, list(args))
    while isinstance(command, click.Group):
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = command.make_context(name, rest, parent=ctx)
    return command, ctx


@pytest.fixture()
def fetched_names(tmp_path, monkeypatch):
    """Stand-ins for fetched official files, so `--weights gtasr-final` parses (nothing downloads)."""
    cache = tmp_path / "weights"
    cache.mkdir()
    for entry in reg.REGISTRY.values():
        if entry.filename:
            (cache / entry.filename).write_bytes(b"stand-in")
            (cache / f"{entry.filename}.json").write_text(json.dumps({"sha256": "0" * 64}))
    monkeypatch.setenv(reg.DIR_ENV, str(cache))
    return cache


def test_readme_has_the_commands_we_expect():
    assert len(COMMANDS) >= 10
    assert any(c.startswith("gtasr-weights fetch") for c in COMMANDS)
    assert "https://huggingface.co/Blaze-UESTC/GTASR" in README.read_text()
    assert RUN_FOR_REAL <= set(COMMANDS), RUN_FOR_REAL - set(COMMANDS)


def _inputs_of(command: click.Command, ctx: click.Context) -> list[Path]:
    return [Path(ctx.params[p.name]) for p in command.params
            if p.name in INPUT_PARAMS and ctx.params.get(p.name) is not None]


def _export_outputs(ctx: click.Context) -> list[Path]:
    """The graph files an export line writes (the rule of gtasr_deploy.export.onnx.graph_file_name)."""
    from gtasr_deploy.export.onnx import graph_file_name
    from gtasr_deploy.upscaler import DEFAULT_TILE, EMBEDDED_WEIGHTS

    p = ctx.params
    if p["weights"] is not None:
        name = Path(p["weights"]).stem
    elif p["network_config"] is not None or p["preset"] is not None:
        name = Path(p["network_config"]).stem if p["network_config"] is not None else p["preset"]
    else:
        name = EMBEDDED_WEIGHTS.stem
    preset = p["preset"] or ("demo" if p["weights"] is None and p["network_config"] is None else "paper")
    tile = p["tile"] or DEFAULT_TILE[preset]
    return [p["out_dir"] / graph_file_name(name, (tile, tile), precision)
            for precision in ("fp32", *(["fp16"] if p["fp16"] else []))]


def _outputs_of(program: str, command: click.Command, ctx: click.Context) -> list[Path]:
    params = ctx.params
    if program == "gtasr-export":
        return _export_outputs(ctx)
    if program == "gtasr-upscale":
        return [Path(params["output_dir"])]
    return [Path(params["out_dir"])] if command.name == "compare" else []


def _photos_parse(args: list[str], monkeypatch) -> Path:
    """python -m gtasr_deploy.training.photos: parse with its argparse parser (the download stubbed)."""
    from gtasr_deploy.training import photos

    seen = {}
    monkeypatch.setattr(photos, "assemble", lambda out_dir, **kw: seen.setdefault("out", out_dir) and {})
    assert photos.main(args) == 0
    return Path(seen["out"])


def test_every_readme_command_parses_and_reads_existing_files(fetched_names, monkeypatch):
    produced: list[Path] = []

    def available(path: Path) -> bool:
        return (ROOT / path).exists() or any(path == p or p in path.parents for p in produced)

    for text in COMMANDS:
        words = shlex.split(text)
        program, args = words[0], words[1:]
        if program in ("python", "python3") and args[:2] == ["-m", "gtasr_deploy.training.photos"]:
            produced.append(_photos_parse(args[2:], monkeypatch))
            continue
        if program in SETUP:
            if program == "pip":
                extras = re.findall(r"\.\[([\w,-]+)\]", text)
                assert all(set(e.split(",")) <= EXTRAS for e in extras), text
            if program == "bash":
                assert (ROOT / args[0]).is_file(), text
            continue
        if program == "torchrun":  # torchrun ... -m gtasr_deploy.cli.train CONFIG
            program, args = "gtasr-train", args[args.index("-m") + 2:]
        assert program in SCRIPTS, f"README command with an unknown program: {text}"
        command, ctx = parse(click_main(program), program, args)
        for path in _inputs_of(command, ctx):
            assert available(path), f"{text}: reads {path}, which is neither in the repository nor " \
                                    "written by an earlier README command"
        produced += _outputs_of(program, command, ctx)


@pytest.mark.parametrize("text", sorted(RUN_FOR_REAL))
def test_cheap_readme_commands_run_as_typed(text, tmp_path, monkeypatch):
    for folder in ("samples", "training"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(reg.DIR_ENV, str(tmp_path / "no-weights-fetched"))
    program, *args = shlex.split(text)
    result = CliRunner().invoke(click_main(program), args)
    assert result.exit_code == 0, f"{text}\n{result.output}"
    if text.startswith("gtasr-upscale"):
        written = sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("."))
        assert written == ["chelsea_lr.png", "coffee_lr.png"]  # (.gtasr/ holds completion records)


def test_help_of_every_command():
    for program in SCRIPTS:
        result = CliRunner().invoke(click_main(program), ["--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, program


@pytest.mark.slow
def test_demo_export_then_onnx_upscale_run_as_typed(tmp_path, monkeypatch):
    """The README's demo export writes exactly the graph its ONNX Runtime line reads (about a minute)."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    export_line = next(c for c in COMMANDS if c.startswith("gtasr-export") and "--weights" not in c)
    ort_line = next(c for c in COMMANDS if "--backend onnxruntime" in c and "gtasr_demo" in c)
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    monkeypatch.chdir(tmp_path)
    for text in (export_line, ort_line):
        program, *args = shlex.split(text)
        result = CliRunner().invoke(click_main(program), args)
        assert result.exit_code == 0, f"{text}\n{result.output}"
    out = Path(shlex.split(ort_line)[2])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["chelsea_lr.png", "coffee_lr.png"]
