"""gtasr-bench says up front how long it takes, prints each row as it finishes, and keeps what it
measured when stopped; --quick is a small preset. Scenario processes are replaced by stand-in rows."""

from __future__ import annotations

import json

from click.testing import CliRunner

from gtasr_deploy.bench import report, runner
from gtasr_deploy.cli.bench import main

COMMON = ["--preset", "demo", "--precision", "fp32", "--tile", "32", "--threads", "1", "--device", "cpu",
          "--no-e2e"]


def _stub_rows(monkeypatch, stop_at: int | None = None) -> list:
    seen = []

    def run_scenario(scenario, *, timeout_s=0):
        seen.append(scenario)
        if stop_at is not None and len(seen) == stop_at:
            raise KeyboardInterrupt
        return report.skipped_row(scenario, f"stand-in row {len(seen)}")

    monkeypatch.setattr(runner, "run_scenario", run_scenario)
    return seen


def test_rows_print_as_they_finish_and_a_stopped_run_keeps_them(tmp_path, monkeypatch):
    _stub_rows(monkeypatch, stop_at=3)
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    result = CliRunner().invoke(main, [*COMMON, "--backends", "torch,onnxruntime,openvino", "--out", str(out),
                                       "--markdown", str(md)])
    assert result.exit_code == 130, result.output
    assert "3 scenario(s), roughly" in result.output
    assert "| demo | torch | fp32 | 32 | 1 | skipped: stand-in row 1 |" in result.output
    assert "| demo | onnxruntime | fp32 | 32 | 1 | skipped: stand-in row 2 |" in result.output
    assert "hold the scenarios measured so far" in result.output
    saved = json.loads(out.read_text())
    assert [r["reason"] for r in saved["rows"]] == ["stand-in row 1", "stand-in row 2"]
    assert any("PARTIAL: 2 of 3 scenarios measured" in note for note in saved["notes"])
    assert "PARTIAL: 2 of 3" in md.read_text() and "stand-in row 2" in md.read_text()


def test_a_finished_run_is_not_marked_partial(tmp_path, monkeypatch):
    _stub_rows(monkeypatch)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, [*COMMON, "--backends", "torch,onnxruntime", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 2 and not any("PARTIAL" in note for note in saved["notes"])


def test_quick_preset_and_options_given_win(tmp_path, monkeypatch):
    seen = _stub_rows(monkeypatch)
    result = CliRunner().invoke(main, ["--quick", "--no-e2e", "--device", "cpu", "--out", str(tmp_path / "q.json")])
    assert result.exit_code == 0, result.output
    assert {(s.preset, s.backend, s.precision, s.tile, s.repeat) for s in seen} == {
        ("demo", "torch", "fp32", 64, 3), ("demo", "onnxruntime", "fp32", 64, 3)}
    command = json.loads((tmp_path / "q.json").read_text())["command"]
    assert "--preset demo --backends torch,onnxruntime --precision fp32 --tile 64" in command
    seen.clear()
    result = CliRunner().invoke(main, ["--quick", "--tile", "32", "--backends", "torch", "--no-e2e", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert [(s.backend, s.tile) for s in seen] == [("torch", 32)]


def test_estimate_grows_with_the_work_and_skipped_scenarios_cost_nothing(tmp_path):
    def plan(**kw):
        base = dict(networks=(("demo", "demo"),), backends=("torch",), precisions=("fp32",), tiles=(64,),
                    batches=(1,), warmup=1, repeat=3, threads=1, device="cpu", cache_dir=str(tmp_path))
        return runner.BenchPlan(**{**base, **kw})

    small = runner.estimate_seconds(plan())
    assert small > 0
    assert runner.estimate_seconds(plan(repeat=300)) > small
    assert runner.estimate_seconds(plan(networks=(("paper", "paper"),))) > small
    assert runner.estimate_seconds(plan(backends=("torch", "tensorrt"))) == small  # TensorRT: skipped on a CPU
