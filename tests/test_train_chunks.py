"""Training in chunks (training/photos.toml): stop after any step, resume, and get the run that
never stopped, bit for bit; stage I starting from given weights; clean + degraded validation.
Tiny network on the CPU, a few seconds."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gtasr_deploy.model import build_model, load_model, save_model
from gtasr_deploy.model.checkpoint import read_checkpoint
from gtasr_deploy.training import checkpoint as ckpt
from gtasr_deploy.training import loop
from gtasr_deploy.training.config import config_from_dict, load_config
from gtasr_deploy.training.loop import StopRequested, train

from test_losses import _one_thread  # noqa: F401  (autouse: bit-exactness holds for a fixed thread count)
from test_train_loop import TINY_NET, TinyPerceptual, _raw

REPO = Path(__file__).resolve().parents[1]


def _init_weights(path: Path) -> Path:
    """A tiny network's weights, different from the trainer's own random init."""
    from gtasr_deploy.model.config import NetworkConfig

    torch.manual_seed(1234)
    return save_model(build_model(NetworkConfig.from_dict(TINY_NET)).eval(), path)


def _chunk_raw(root: Path, init: Path, steps: int = 7) -> dict:
    raw = _raw(root)
    del raw["stage2"]
    raw["run"].update(ckpt_every=4, keep_checkpoints=1, val_every=3, val_png=False)
    raw["data"].update(clean_prob=0.5, augment="dihedral", cache_images=True)
    raw["stage1"] = {"steps": steps, "init": str(init), "optim": {"lr": 1e-3},
                     "loss": {"ta_levels": 1, "ct_weight": 0.0, "top_index_prob": 1.0, "k_start": 3, "k_end": 3,
                              "ta_weight": 2.0, "w_lpips": 0.5, "w_charbonnier": 0.5, "lpips_start": 5}}
    return raw


def _stop_after(calls: int):
    """A stop() that says stop on its ``calls``-th question (one question per optimizer step)."""
    asked = []
    return lambda: asked.append(1) or len(asked) >= calls


def _final(out: Path) -> dict:
    return ckpt.load_training_checkpoint(out / "checkpoints" / ckpt.final_name(1))


def test_chunks_stopped_at_any_step_resume_to_the_uninterrupted_run(tmp_path):
    init = _init_weights(tmp_path / "init.safetensors")
    ref_cfg = config_from_dict(_chunk_raw(tmp_path / "a", init))
    train(ref_cfg, perceptual=TinyPerceptual())

    cfg = config_from_dict(_chunk_raw(tmp_path / "b", init))
    folder = cfg.run.out_path / "checkpoints"
    with pytest.raises(StopRequested, match="stage 1 step 3"):  # chunk 1: steps 0-2, between checkpoints
        train(cfg, perceptual=TinyPerceptual(), stop=_stop_after(3))
    assert [p.name for p in folder.iterdir()] == [ckpt.checkpoint_name(1, 3)]
    with pytest.raises(StopRequested, match="stage 1 step 5"):  # chunk 2 crosses the periodic checkpoint at 4
        train(cfg, resume=True, perceptual=TinyPerceptual(), stop=_stop_after(2))
    assert [p.name for p in folder.iterdir()] == [ckpt.checkpoint_name(1, 5)]  # keep_checkpoints = 1
    # a stopped chunk also exports that step's EMA weights, to evaluate between chunks
    weights, meta = read_checkpoint(cfg.run.export_path)
    assert meta["stopped_at"] == "stage 1 step 5"
    step5 = ckpt.load_training_checkpoint(folder / ckpt.checkpoint_name(1, 5))["params_ema"]
    assert weights.keys() == step5.keys() and all(torch.equal(weights[k], step5[k]) for k in weights)
    assert train(cfg, resume=True, perceptual=TinyPerceptual(), stop=_stop_after(99)) is not None  # the last chunk

    a, b = _final(tmp_path / "a" / "run"), _final(tmp_path / "b" / "run")
    assert a["step"] == b["step"] == 7
    for group in ("params", "params_ema"):
        for key, value in a[group].items():
            assert torch.equal(value, b[group][key]), f"{group}.{key} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    # the chunked log equals the uninterrupted one but for the wall-clock columns
    rows = lambda out: [{k: v for k, v in r.items() if k not in ("time", "sec_per_step")}
                        for r in csv.DictReader((out / "log.csv").open())]
    assert rows(tmp_path / "b" / "run") == rows(tmp_path / "a" / "run")


def test_stage1_starts_from_the_init_weights_and_validates_clean_and_degraded(tmp_path, monkeypatch):
    init = _init_weights(tmp_path / "init.safetensors")
    seen = {}

    def capture(tr, files, val, logger, stop=None):
        seen["params"], seen["ema"] = tr.net.state_dict(), tr.ema.state_dict()

    monkeypatch.setattr(loop, "run_stage", capture)
    cfg = config_from_dict(_chunk_raw(tmp_path, init))
    train(cfg, perceptual=TinyPerceptual())
    weights, _ = read_checkpoint(init)
    for group in ("params", "ema"):
        assert all(torch.equal(seen[group][k], v) for k, v in weights.items()), group
    header = (cfg.run.out_path / "log.csv").read_text().splitlines()[0].split(",")
    row0 = next(csv.DictReader((cfg.run.out_path / "log.csv").open()))
    for key in ("val_psnr_y", "val_psnr_y_bicubic", "val_clean_psnr_y", "val_clean_psnr_y_bicubic"):
        assert key in header and float(row0[key]) > 5.0
    # bicubic of the clean LR is closer to the HR than bicubic of the degraded LR
    assert float(row0["val_clean_psnr_y_bicubic"]) > float(row0["val_psnr_y_bicubic"])
    assert not (cfg.run.out_path / "val").exists()  # run.val_png = false


def test_stage1_init_that_does_not_fit_the_network_is_one_clear_error(tmp_path):
    from gtasr_deploy.errors import CheckpointError, GtasrError

    raw = _chunk_raw(tmp_path, tmp_path / "missing.safetensors")
    with pytest.raises(GtasrError, match="missing.safetensors"):
        train(config_from_dict(raw), perceptual=TinyPerceptual())
    wide = dict(TINY_NET, model_channels=16)
    from gtasr_deploy.model.config import NetworkConfig

    other = save_model(build_model(NetworkConfig.from_dict(wide)).eval(), tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError):
        train(config_from_dict(_chunk_raw(tmp_path / "w", other)), perceptual=TinyPerceptual())


def test_chunk_stop_follows_the_budget_and_sigterm():
    """In a fresh process: a real SIGTERM sent to the test process itself crashed pytest (SIGSEGV) once
    libraries loaded by earlier tests of the same run were in it."""
    code = """
import os, signal
from gtasr_deploy.cli.train import _chunk_stop
assert _chunk_stop(None) is None
stop = _chunk_stop(10.0)
assert stop() is False
os.kill(os.getpid(), signal.SIGTERM)  # handled: the run ends at the next step, checkpointed
assert stop() is True
assert _chunk_stop(1e-9)() is True  # budget spent
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_photos_recipe_resolves_and_fine_tunes_the_demo_runs_weights():
    from gtasr_deploy.training.photo_manifest import PHOTOS
    from gtasr_deploy.upscaler import EMBEDDED_WEIGHTS

    cfg = load_config(REPO / "training" / "photos.toml")
    stage = cfg.stage(1)
    init = REPO / stage.init  # the demo run's weights, kept since this recipe's export replaced the embedded file
    assert init.is_file() and init.resolve() != EMBEDDED_WEIGHTS.resolve()
    assert load_model(init).config.to_dict() == cfg.model.to_dict()  # the init fits the network
    assert load_model(EMBEDDED_WEIGHTS).config.to_dict() == cfg.model.to_dict()  # and so does its export
    assert cfg.data.roots == ("data/photos/train",) and cfg.data.val_roots == ("data/photos/heldout",)
    assert cfg.data.num_workers == 0 and cfg.run.amp == "none" and cfg.run.keep_checkpoints == 1
    assert cfg.stage(2) is None and stage.loss.lpips_start > stage.steps  # Charbonnier only, for now
    assert sum(p.heldout for p in PHOTOS) >= 8
