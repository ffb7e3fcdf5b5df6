"""Every command line in the README's ```bash blocks runs as typed on a fresh clone.

Each line is split at ``&&`` and every command is checked (the docs pages' ```bash lines too, for
the first point and the second):

* the program is known (a gtasr-* command, a ``python -m`` module of this package, or a setup step);
* its arguments parse with the command's real options (click's own parser and type checks, or the
  module's argparse parser) — for all of them, including those that need downloads, a GPU or hours;
* the files it reads exist in the repository or are written by an earlier README command (an ONNX
  path must be the name an earlier ``gtasr-export`` line writes);
* the cheap ones run for real in a copy of the repository's samples and recipes (RUN_FOR_REAL);
* and (slow) in a fresh virtual environment made by the README's own set-up lines: the set-up, the
  quick start and the main commands as typed, the expensive ones with their smallest options, and a
  command whose extra is not installed yet fails in one line naming it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gtasr_deploy.weights import registry as reg

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
EXTRAS = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
SETUP = {"python3", "pip", ".", "bash",  # the quick start's venv/pip/activate steps and the test script
         "ln", "cp", "mkdir", "cd", "git", "apt-get", "export",  # shell steps of the docs pages (not ours to parse)
         "tritonserver", "docker"}
# Cheap enough to run in the test (seconds on a 2-core CPU, no downloads): exact command text.
RUN_FOR_REAL = {"gtasr-upscale samples/ out/", "gtasr-weights list", "gtasr-train training/demo.toml --dry-run"}
# Parameters that name files a command reads (must exist, or be written by an earlier command).
INPUT_PARAMS = {"input_path", "onnx_path", "sr_dir", "gt_dir", "hr_dir", "config", "images"}


def bash_blocks(path: Path = README) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


def readme_commands(path: Path = README) -> list[str]:
    commands = []
    for block in bash_blocks(path):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:  # split at && into single commands
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(shlex.join(words[:cut]))
                words = words[cut + 1:]
    return commands


COMMANDS = readme_commands()
DOC_PAGES = sorted((ROOT / "docs").glob("*.md"))


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
    from gtasr_deploy.upscaler import EMBEDDED_WEIGHTS

    p = ctx.params
    if p["weights"] is not None:
        name = Path(p["weights"]).stem
    elif p["network_config"] is not None or p["preset"] is not None:
        name = Path(p["network_config"]).stem if p["network_config"] is not None else p["preset"]
    else:
        name = EMBEDDED_WEIGHTS.stem
    tile = None if p["tile"] is None else (p["tile"], p["tile"])
    return [p["out_dir"] / graph_file_name(name, tile, precision)
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


def check_commands(commands: list[str], monkeypatch, *, files: bool = True) -> None:
    """Every command is known and parses; with ``files``, it reads only files that exist or that an
    earlier command writes."""
    produced: list[Path] = []

    def available(path: Path) -> bool:
        return (ROOT / path).exists() or any(path == p or p in path.parents for p in produced)

    for text in commands:
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
        assert program in SCRIPTS, f"command with an unknown program: {text}"
        command, ctx = parse(click_main(program), program, args)
        if files:
            for path in _inputs_of(command, ctx):
                assert available(path), f"{text}: reads {path}, which is neither in the repository nor " \
                                        "written by an earlier command"
        produced += _outputs_of(program, command, ctx)


def test_every_readme_command_parses_and_reads_existing_files(fetched_names, monkeypatch):
    check_commands(COMMANDS, monkeypatch)


@pytest.mark.parametrize("page", DOC_PAGES, ids=[p.name for p in DOC_PAGES])
def test_every_docs_command_parses(page, fetched_names, monkeypatch):
    """The docs pages' examples use the real options (their input files are the reader's own)."""
    check_commands(readme_commands(page), monkeypatch, files=False)


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
def test_demo_export_then_onnx_upscale_run_as_typed(tmp_path, monkeypatch, cli_export):
    """The README's demo export writes exactly the graph its ONNX Runtime line reads (the export, about a
    minute, is run as typed in a fresh folder once per session: tests/test_parity.py runs the same one)."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    export_line = next(c for c in COMMANDS if c.startswith("gtasr-export") and "--weights" not in c)
    ort_line = next(c for c in COMMANDS if "--backend onnxruntime" in c and "gtasr_demo" in c)
    program, *args = shlex.split(export_line)
    assert program == "gtasr-export"
    shutil.copytree(cli_export(*args), tmp_path, dirs_exist_ok=True)  # what the export line wrote in its folder
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    monkeypatch.chdir(tmp_path)
    program, *args = shlex.split(ort_line)
    result = CliRunner().invoke(click_main(program), args)
    assert result.exit_code == 0, f"{ort_line}\n{result.output}"
    out = Path(shlex.split(ort_line)[2])
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["chelsea_lr.png", "coffee_lr.png"]


# ---------------------------------------------------------------------------- a fresh virtual environment

CPU_TORCH_LINE = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
# The build machines reach PyPI only (not download.pytorch.org); there this pin resolves to their local
# CPU wheel. It is the one substitution in the set-up lines.
LOCAL_TORCH_LINE = "pip install torch==2.13.0"


def _block_with(first_words: str) -> list[str]:
    block = next(b for b in bash_blocks() if any(line.startswith(first_words) for line in b.splitlines()))
    return [line for line in block.splitlines() if line.strip()]


def _env(clone: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "OMP_WAIT_POLICY")}
    env[reg.DIR_ENV] = str(clone / "weights-cache")
    return env


def _run(clone: Path, line: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    """One README line, as typed, in the clone with its virtual environment active."""
    return subprocess.run(["bash", "-c", f". .venv/bin/activate && {line}"], cwd=clone, env=_env(clone),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    """The repository's files (tracked and new, not ignored) in a new folder, set up with the
    README's set-up lines."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout to copy the repository's files")
    clone = tmp_path_factory.mktemp("fresh-clone")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    setup = _block_with("python3 -m venv")
    assert CPU_TORCH_LINE in setup, "the README's set-up lost the CPU torch line"
    script = "\n".join(LOCAL_TORCH_LINE if line == CPU_TORCH_LINE else line for line in setup)
    done = subprocess.run(["bash", "-e", "-c", script], cwd=clone, env=_env(clone), capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return clone


@pytest.mark.slow
def test_fresh_venv_quick_start(fresh_clone):
    from PIL import Image

    (line,) = _block_with("gtasr-upscale samples/ out/")
    result = _run(fresh_clone, line)
    assert result.returncode == 0, result.stderr[-3000:]
    sizes = {p.name: Image.open(p).size for p in (fresh_clone / "out").glob("*.png")}
    assert sizes == {"chelsea_lr.png": (900, 600), "coffee_lr.png": (1200, 800)}  # what the README says
    assert len(list((fresh_clone / "out" / ".gtasr").glob("*.json"))) == 2
    again = _run(fresh_clone, line)  # the completion records make a re-run skip both
    assert again.returncode == 0 and "2 skipped" in again.stderr, again.stderr[-2000:]


@pytest.mark.slow
def test_fresh_venv_main_commands(fresh_clone):
    for line in _block_with("gtasr-upscale samples/coffee_lr.png"):
        result = _run(fresh_clone, line)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    assert (fresh_clone / "coffee_x2.jpg").is_file() and len(list((fresh_clone / "out_4k").glob("*.png"))) == 2


@pytest.mark.slow
def test_fresh_venv_a_missing_extra_is_one_line(fresh_clone):
    """Before the ONNX block's pip line, its export fails in one line naming the extra, leaving no folder."""
    export_line = next(line for line in _block_with("pip install -e '.[onnx") if line.startswith("gtasr-export"))
    result = _run(fresh_clone, export_line)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'gtasr-deploy[onnx]'" in result.stderr and "Traceback" not in result.stderr
    assert not (fresh_clone / "export").exists()


@pytest.mark.slow
def test_fresh_venv_onnx_block(fresh_clone):
    for line in _block_with("pip install -e '.[onnx"):
        result = _run(fresh_clone, line)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    for out in ("out_onnx", "out_ov"):
        assert sorted(p.name for p in (fresh_clone / out).glob("*.png")) == ["chelsea_lr.png", "coffee_lr.png"]


# the expensive lines of the bench/eval/serve block, with their smallest options
SMALLEST = {"gtasr-bench --quick": "gtasr-bench --quick --backends torch --no-e2e --warmup 0 --repeat 1"}


@pytest.mark.slow
def test_fresh_venv_bench_eval_serve_block(fresh_clone):
    import signal
    import socket

    for line in _block_with("pip install -e '.[bench"):
        command = line.split("#")[0].strip()
        if command.startswith("gtasr-serve http"):
            with socket.socket() as s:  # the README's port may be taken on a shared machine
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            command = command.replace("--port 8000", f"--port {port}")
            proc = subprocess.Popen(["bash", "-c", f". .venv/bin/activate && exec {command}"], cwd=fresh_clone,
                                    env=_env(fresh_clone), stderr=subprocess.PIPE, text=True)
            try:
                lines = []
                for text in proc.stderr:
                    lines.append(text)
                    if "ready on" in text:
                        break
                assert any(f"ready on http://127.0.0.1:{port}/" in t for t in lines), "".join(lines)[-3000:]
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=300) == 130
            finally:
                if proc.poll() is None:
                    proc.kill()
            continue
        result = _run(fresh_clone, SMALLEST.get(command, line))
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
