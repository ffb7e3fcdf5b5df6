"""gtasr-check (and the comparison behind gtasr-export --check): two backends/precisions, one verdict."""

from __future__ import annotations

import math

import numpy as np
from click.testing import CliRunner
from PIL import Image

from gtasr_deploy.cli.check import main
from gtasr_deploy.bench.check import compare_outputs


def test_compare_outputs_counts_levels_psnr_and_non_finite():
    a = np.zeros((4, 4, 3), np.float32)
    b = a.copy()
    b[0, 0, 0] = 2 / 255
    row = compare_outputs("x.png", a, b)
    assert row.max_diff == 2 and math.isclose(row.psnr_db, 10 * math.log10(255**2 * 48 / 4), rel_tol=1e-6)
    assert not row.failed(max_diff=2, min_psnr=None) and row.failed(max_diff=1, min_psnr=None)
    assert compare_outputs("x.png", a, a).psnr_db == math.inf
    b[1, 1, 1] = np.nan
    nan_row = compare_outputs("x.png", a, b)
    assert nan_row.non_finite == 1 and nan_row.failed(max_diff=255, min_psnr=None)


def _image(tmp_path, name="p.png", size=(40, 30)):
    rng = np.random.default_rng(0)
    path = tmp_path / name
    Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_same_backend_and_precision_pass_exactly(tmp_path):
    path = _image(tmp_path)
    result = CliRunner().invoke(main, [str(path), "--backend", "torch", "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    assert "max diff 0/255" in result.output and "1 passed, 0 failed" in result.output


def test_a_reduced_precision_beyond_tolerance_fails_with_exit_1(tmp_path):
    path = _image(tmp_path)
    result = CliRunner().invoke(main, [str(path), "--backend", "torch", "--precision", "fp16", "--max-diff", "0"])
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "0 passed, 1 failed" in result.output


def test_unreadable_image_is_a_failed_row_and_the_rest_is_checked(tmp_path):
    good = _image(tmp_path)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    result = CliRunner().invoke(main, [str(good), str(bad), "--backend", "torch", "--precision", "fp32"])
    assert result.exit_code == 1
    assert "bad.png: error:" in result.output and "1 passed, 1 failed" in result.output


def test_usage_errors_are_one_line(tmp_path):
    path = _image(tmp_path)
    result = CliRunner().invoke(main, [str(path), "--backend", "onnxruntime"])
    assert result.exit_code == 2 and "needs --onnx GRAPH" in result.output
    assert "Traceback" not in result.output


def test_every_backend_is_a_choice_and_graph_backends_need_a_graph(tmp_path):
    """The choices and the graph rule come from the backends' facts: OpenVINO is checked like the others."""
    path = _image(tmp_path)
    for backend in ("openvino", "tensorrt"):
        result = CliRunner().invoke(main, [str(path), "--backend", backend])
        assert result.exit_code == 2 and f"--backend {backend} needs --onnx GRAPH" in result.output
    result = CliRunner().invoke(main, [str(path), "--backend", "torch", "--reference", "openvino"])
    assert result.exit_code == 2 and "--reference openvino needs --reference-onnx GRAPH" in result.output
    help_text = CliRunner().invoke(main, ["--help"]).output
    assert "torch|onnxruntime|openvino|tensorrt" in help_text.replace(" ", "").replace("\n", "")
