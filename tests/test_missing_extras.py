"""A missing optional package is one line that names the pip extra, and leaves no folder behind.

Each case runs the real console command in a subprocess with the package hidden
(``sys.modules[name] = None`` makes ``import name`` fail as if it were not installed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gtasr_deploy.extras import EXTRA_OF

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
RUN_HIDDEN = """
import importlib, sys
hide, target, *args = sys.argv[1:]
for name in hide.split(","):
    sys.modules[name] = None
module, _, attr = target.partition(":")
sys.argv = [module, *args]
getattr(importlib.import_module(module), attr)()
"""


def run_hidden(hide: str, target: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", RUN_HIDDEN, hide, target, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_module_names_an_extra_that_installs_it():
    for module, extra in EXTRA_OF.items():
        assert extra in EXTRAS, f"{module}: extra {extra!r} is not in pyproject.toml"
        names = [req.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for req in EXTRAS[extra]]
        wanted = {"ray": "ray", "fastapi": "ray", "starlette": "ray", "av": "av"}.get(module, module)
        assert wanted in names, f"{module}: not installed by the {extra!r} extra ({EXTRAS[extra]})"


CASES = [  # (hidden, command, args, extra named, folders that must not be left behind)
    ("onnxscript", "gtasr_deploy.cli.export:main", ["--fp16"], "onnx", ["export"]),
    ("onnx", "gtasr_deploy.cli.export:main", ["--out", "graphs/demo"], "onnx", ["graphs"]),
    ("onnxruntime", "gtasr_deploy.cli.export:main", [], "onnx", ["export"]),
    ("scipy", "gtasr_deploy.cli.eval:main", ["compare", "samples", "--methods", "bicubic"], "eval", ["eval_out"]),
    ("scipy", "gtasr_deploy.cli.eval:main", ["samples", "--gt", "samples", "--csv", "scores/s.csv"], "eval",
     ["scores"]),
    ("ray", "gtasr_deploy.cli.serve:main", ["batch", "samples", "out_cluster"], "serve", ["out_cluster"]),
    ("ray", "gtasr_deploy.cli.serve:main", ["http", "--port", "8999"], "serve", []),
    ("fastapi", "gtasr_deploy.cli.serve:main", ["http", "--port", "8999"], "serve", []),
    ("av", "gtasr_deploy.cli.upscale:main", ["clip.mp4", "out_video"], "video", ["out_video"]),
    ("matplotlib", "gtasr_deploy.cli.bench:main", ["--preset", "demo", "--backends", "torch", "--tile", "64"],
     "bench", []),
]


@pytest.mark.parametrize("hidden,target,args,extra,folders", CASES,
                         ids=[f"{c[1].split('.')[-1].split(':')[0]}-{c[0]}-{c[2][0] if c[2] else ''}" for c in CASES])
def test_missing_package_is_one_line_naming_the_extra(hidden, target, args, extra, folders, tmp_path):
    (tmp_path / "samples").mkdir()
    for src in (ROOT / "samples").iterdir():
        (tmp_path / "samples" / src.name).write_bytes(src.read_bytes())
    (tmp_path / "clip.mp4").write_bytes(b"\0" * 64)  # never opened: PyAV is checked first
    result = run_hidden(hidden, target, *args, cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and f"pip install 'gtasr-deploy[{extra}]'" in errors[0], result.stderr[-2000:]
    for folder in folders:
        assert not (tmp_path / folder).exists(), f"{folder}/ left behind: {result.stderr[-500:]}"
