"""The prepared GPU-day script (benchmarks/tensorrt_gpu_day.py): its dry run and its black-tile rule, on CPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tensorrt_gpu_day.py"
spec = importlib.util.spec_from_file_location("tensorrt_gpu_day", SCRIPT)
day = importlib.util.module_from_spec(spec)
spec.loader.exec_module(day)


def test_dry_run_prints_the_plan_without_a_gpu(capsys, tmp_path):
    assert day.main(["--dry-run", "--report", str(tmp_path / "r.md")]) == 0
    out = capsys.readouterr().out
    assert "photos: 2 under" in out and f"report: {tmp_path / 'r.md'}" in out
    assert "would run: gtasr-export --fp16 --tile 128 --batch 1" in out
    assert "would run: gtasr-bench --preset paper --backends torch,tensorrt --precision fp32,fp16 --tile 128" in out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_dry_run_without_photos_is_one_line(capsys, tmp_path):
    assert day.main(["--dry-run", "--photos", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no images found in {tmp_path}") and err.count("\n") == 1


def test_black_tiles_count_only_tiles_with_reference_content():
    ref = np.full((8, 8, 3), 0.5, np.float32)
    ref[:4, 4:] = 0.0  # a genuinely black region
    sr = ref.copy()
    sr[4:, :4] = 0.0  # a tile the engine blacked out
    sr[:4, 4:] = 0.0
    assert day.black_tiles(sr, ref, 4) == 1
    sr[4:, 4:] = np.nan  # NaN is caught by the NaN count, not as black
    assert day.black_tiles(sr, ref, 4) == 1
