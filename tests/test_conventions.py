"""Each convention is defined once and imported: the x4 scale, the [0, 1] <-> [-1, 1] value range,
x_K and sigma = 1 of one-step inference, PSNR, and ``--device auto``.

The helpers are checked for what they compute; a scan of the package's syntax trees fails when
one of them is written out again outside its home module (a new ``x * 2 - 1`` or ``10 * log10``
or ``"cuda" if torch.cuda.is_available() else "cpu"``), naming the file and line.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gtasr_deploy import contract
from gtasr_deploy.engines import device as device_mod
from gtasr_deploy.engines.base import EngineInfo
from gtasr_deploy.engines.device import resolve_device, wants_cuda
from gtasr_deploy.bench.check import compare_outputs
from gtasr_deploy.metrics.fullref import psnr
from gtasr_deploy.model.config import NetworkConfig
from gtasr_deploy.model.conventions import SCALE, SIGMA_ONE, to_model_range, to_unit_range
from gtasr_deploy.model.schedule import one_step_start, q_sample, unit_noise, up

PACKAGE = Path(__file__).resolve().parents[1] / "gtasr_deploy"
CONVENTIONS = "model/conventions.py"
SCALE_HOME = "contract.py"  # the graph contract, the lowest module (tiling and contract may not import model)
DEVICE = "engines/device.py"
PSNR = "metrics/fullref.py"


# ---------------------------------------------------------------------------- the helpers


def test_value_range_endpoints_and_round_trip():
    assert (to_model_range(0.0), to_model_range(0.5), to_model_range(1.0)) == (-1.0, 0.0, 1.0)
    assert (to_unit_range(-1.0), to_unit_range(0.0), to_unit_range(1.0)) == (0.0, 0.5, 1.0)
    unit = np.random.default_rng(0).random((3, 17, 9), dtype=np.float32)
    model = to_model_range(unit)
    assert model.dtype == np.float32 and model.min() >= -1.0 and model.max() <= 1.0
    np.testing.assert_allclose(to_unit_range(model), unit, rtol=0, atol=1e-7)
    levels = np.arange(256, dtype=np.float32) / 255.0  # 8-bit levels come back exactly
    assert np.array_equal(np.rint(to_unit_range(to_model_range(levels)) * 255.0), np.arange(256))
    t = torch.from_numpy(unit)
    assert torch.equal(to_model_range(t), torch.from_numpy(model)) and to_unit_range(t).dtype == torch.float32


def test_to_unit_range_does_not_clamp():
    assert to_unit_range(np.float32(1.5)) == np.float32(1.25) and to_unit_range(-3.0) == -1.0


def test_the_scale_is_one_number():
    assert SCALE == 4
    assert contract.SCALE == SCALE and NetworkConfig.__dataclass_fields__["scale"].default == SCALE
    assert EngineInfo.__dataclass_fields__["scale"].default == SCALE


def test_one_step_start_is_q_at_sigma_one():
    lq = torch.rand(2, 3, 8, 12) * 2 - 1
    x_k = one_step_start(lq, seed=5)
    assert x_k.shape == (2, 3, 8 * SCALE, 12 * SCALE)
    eps = unit_noise(tuple(x_k.shape), 5)
    assert torch.equal(x_k, up(lq) + eps)
    assert torch.equal(one_step_start(lq, eps=eps), x_k)
    x0 = torch.randn_like(x_k)  # Q at sigma = 1 forgets x0
    torch.testing.assert_close(q_sample(x0, up(lq), SIGMA_ONE, eps), x_k, rtol=0, atol=1e-6)
    assert SIGMA_ONE == 1.0


def test_psnr():
    a = np.random.default_rng(1).random((4, 5, 3))
    assert psnr(a, a) == math.inf
    assert psnr(np.zeros(4), np.full(4, 255.0)) == 0.0
    assert psnr(np.zeros(4), np.full(4, 0.1), peak=1.0) == pytest.approx(20.0)
    same = np.full((2, 2, 3), 0.25, np.float32)
    assert compare_outputs("x", same, same).psnr_db == math.inf
    off = same.copy()
    off[0, 0, 0] += 1 / 255  # one 8-bit level in one of 12 values: mse = 1/12 (8-bit units)
    assert compare_outputs("x", same, off).psnr_db == pytest.approx(10 * math.log10(255**2 * 12))


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("auto", cuda="cuda:2") == "cuda:2"
    assert wants_cuda("auto") and wants_cuda("cuda:1") and not wants_cuda("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and not wants_cuda("auto") and wants_cuda("cuda")
    assert device_mod.cuda_available() is False


# ---------------------------------------------------------------------------- not restated


def _const(node, *values) -> bool:
    return isinstance(node, ast.Constant) and not isinstance(node.value, bool) and node.value in values


def _is_call_to(node, *names: str) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Attribute) and func.attr in names) or (isinstance(func, ast.Name) and func.id in names)


def _cuda_is_available(node) -> bool:
    return (_is_call_to(node, "is_available") and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "cuda")


def _range_conversion(node) -> str | None:
    """``x * 2 - 1``, ``(x + 1) / 2``, ``(x + 1) * 0.5``, ``x.add(1).mul(..)``, ``x.mul(2).sub(1)``."""
    if isinstance(node, ast.BinOp):
        left = node.left
        if (isinstance(node.op, ast.Sub) and _const(node.right, 1) and isinstance(left, ast.BinOp)
                and isinstance(left.op, ast.Mult) and _const(left.right, 2)):
            return "x * 2 - 1"
        if (isinstance(left, ast.BinOp) and isinstance(left.op, ast.Add) and _const(left.right, 1)
                and ((isinstance(node.op, ast.Div) and _const(node.right, 2))
                     or (isinstance(node.op, ast.Mult) and _const(node.right, 0.5)))):
            return "(x + 1) / 2"
    if _is_call_to(node, "mul", "div") and isinstance(node.func, ast.Attribute):
        inner = node.func.value
        if _is_call_to(inner, "add") and inner.args and _const(inner.args[0], 1):
            return "x.add(1).mul/div(..)"
    if _is_call_to(node, "sub") and node.args and _const(node.args[0], 1) and isinstance(node.func, ast.Attribute):
        inner = node.func.value
        if _is_call_to(inner, "mul") and inner.args and _const(inner.args[0], 2):
            return "x.mul(2).sub(1)"
    return None


def _psnr(node) -> str | None:
    if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and _const(node.left, 10)
            and _is_call_to(node.right, "log10")):
        return "10 * log10(..)"
    return None


def _device_picking(node) -> str | None:
    """``"cuda" if torch.cuda.is_available() else ...``, or "auto" and is_available in one expression."""
    if isinstance(node, ast.IfExp) and any(_cuda_is_available(n) for n in ast.walk(node.test)):
        return "... if torch.cuda.is_available() else ..."
    if isinstance(node, ast.BoolOp):
        inside = list(ast.walk(node))
        if any(_cuda_is_available(n) for n in inside) and any(_const(n, "auto") for n in inside):
            return '"auto" resolved with torch.cuda.is_available()'
    return None


def _scale_literal(node) -> str | None:
    """``SCALE = 4``, ``scale: int = 4`` (argument or field default)."""
    if isinstance(node, ast.Assign) and _const(node.value, 4) and any(
            isinstance(t, ast.Name) and t.id.upper().endswith("SCALE") for t in node.targets):
        return "SCALE = 4"
    if (isinstance(node, ast.AnnAssign) and _const(node.value, 4) and isinstance(node.target, ast.Name)
            and node.target.id.lower().endswith("scale")):
        return "scale: int = 4"
    if isinstance(node, ast.arguments):
        positional = node.posonlyargs + node.args
        pairs = list(zip(positional[len(positional) - len(node.defaults):], node.defaults))
        pairs += [(a, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
        if any(a.arg == "scale" and _const(d, 4) for a, d in pairs):
            return "scale=4 default"
    return None


def _sigma_one(node) -> str | None:
    """``{"sigma": np.ones(..)}`` or ``sigma=np.ones(..)`` / ``sigma = torch.ones(..)``: σ = 1 spelled as ones."""
    if isinstance(node, ast.Dict):
        if any(_const(k, "sigma") and _is_call_to(v, "ones") for k, v in zip(node.keys, node.values)):
            return '"sigma": ones(..)'
    if isinstance(node, ast.keyword) and node.arg == "sigma" and _is_call_to(node.value, "ones"):
        return "sigma=ones(..)"
    if (isinstance(node, ast.Assign) and _is_call_to(node.value, "ones")
            and any(isinstance(t, ast.Name) and t.id == "sigma" for t in node.targets)):
        return "sigma = ones(..)"
    return None


RULES = [  # (what, detector, home module: the one file allowed to spell it out)
    ("[0,1] <-> [-1,1] conversion", _range_conversion, CONVENTIONS),
    ("PSNR", _psnr, PSNR),
    ("device picking", _device_picking, DEVICE),
    ("the x4 scale", _scale_literal, SCALE_HOME),
    ("sigma = 1", _sigma_one, CONVENTIONS),
]


def _restatements(detector, home: str) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            what = detector(node)
            if what is not None:
                found.append(f"gtasr_deploy/{rel}:{getattr(node, 'lineno', '?')}: {what}")
    return found


@pytest.mark.parametrize("what, detector, home", RULES, ids=[r[0] for r in RULES])
def test_convention_is_not_restated(what, detector, home):
    found = _restatements(detector, home)
    assert not found, (f"{what} is defined in gtasr_deploy/{home}; import it there instead of restating it:\n  "
                       + "\n  ".join(found))


@pytest.mark.parametrize("source, rule", [
    ("y = x * 2 - 1", 0), ("y = (x + 1.0) / 2.0", 0), ("y = (x + 1) * 0.5", 0), ("y = t.add(1).mul(127.5)", 0),
    ("y = t.mul(2).sub(1)", 0), ("p = 10.0 * math.log10(1 / mse)", 1), ("p = 10 * np.log10(m)", 1),
    ('d = "cuda" if torch.cuda.is_available() else "cpu"', 2),
    ('c = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())', 2),
    ("SCALE = 4", 3), ("def f(x, scale: int = 4): pass", 3), ("def f(x, *, scale=4): pass", 3),
    ('f = {"sigma": np.ones(1, np.float32)}', 4), ("engine(sigma=np.ones(1))", 4),
])
def test_the_scan_sees_each_spelling(source, rule):
    detector = RULES[rule][1]
    assert any(detector(node) for node in ast.walk(ast.parse(source)))


@pytest.mark.parametrize("source", [
    "w = rel * (2 * window - 1)", "k = (n + 1) // 2", "lsd = 20.0 * np.log10(x)", "ok = torch.cuda.is_available()",
    "SKIP_SCALE = 0.5", "def f(scale: int = SCALE): pass", "u = x / scale + 0.5 * (1 - 1 / scale)",
])
def test_the_scan_leaves_other_arithmetic_alone(source):
    assert not any(detector(node) for _, detector, _ in RULES for node in ast.walk(ast.parse(source)))
