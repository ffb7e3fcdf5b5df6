"""Training loop, data, configs, checkpoints and the gtasr-train CLI, on a tiny network (CPU, seconds).

The perceptual distance is a fixed random conv feature distance standing in for LPIPS-VGG, whose
weights need a fetch step; the loop only needs an ``(a, b) -> (N,)`` differentiable callable.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from click.testing import CliRunner
from PIL import Image
from torch import nn

from gtasr_deploy.errors import ConfigError
from gtasr_deploy.hashing import file_sha256
from gtasr_deploy.model import load_model
from gtasr_deploy.model.checkpoint import read_checkpoint
from gtasr_deploy.training import checkpoint as ckpt
from gtasr_deploy.training.config import config_from_dict, load_config
from gtasr_deploy.training.data import StepSampler, cached_file_list, dihedral, make_loader, random_crop, reflect_pad_to
from gtasr_deploy.training.degradation import bicubic_lr, degrade, mix_clean
from gtasr_deploy.training.loop import Dist, Trainer, TrainingDivergedError, _seed, train
from gtasr_deploy.training.losses import Batch

REPO = Path(__file__).resolve().parents[1]
TINY_NET = {"img_resolution": 16, "model_channels": 8, "channel_mult": [1], "num_blocks": 1,
            "attn_resolutions": [16], "swin_embed_dim": 32, "swin_num_heads": 1, "swin_window_size": 4}


class TinyPerceptual(nn.Module):
    """Fixed random 3→8 conv features, per-sample mean squared difference: (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.3)
            self.conv.bias.zero_()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ((torch.tanh(self.conv(a)) - torch.tanh(self.conv(b))) ** 2).mean(dim=(1, 2, 3))


class NaNPerceptual(TinyPerceptual):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return super().forward(a, b) * float("nan")


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:90, 0:110]
    for k in range(3):
        img = np.stack([np.sin(xx / (5 + k)), np.cos(yy / (7 + k)), np.sin((xx + yy) / 9)], axis=-1)
        img = ((img + 1) * 100 + rng.integers(0, 50, img.shape)).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{k}.png"), img)
    cv2.imwrite(str(folder / "sub_small.jpg"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))  # < crop
    (folder / "broken.png").write_bytes(b"not an image")


def _raw(tmp_path: Path, **stage_overrides) -> dict:
    data = tmp_path / "hr"
    if not data.exists():
        _write_images(data)
    raw = {
        "recipe": "gtasr",
        "run": {"name": "t", "out_dir": str(tmp_path / "run"), "seed": 3, "device": "cpu", "amp": "none",
                "log_every": 1, "val_every": 100, "ckpt_every": 2, "keep_checkpoints": 2, "progress": False},
        "model": {"network": TINY_NET},
        "data": {"roots": [str(data)], "crop": 64, "batch_size": 2, "num_workers": 0, "val_crop": 64, "val_images": 2},
        "stage1": {"steps": 4, "optim": {"lr": 1e-3}, "loss": {"ta_levels": 1}},
        "stage2": {"steps": 4, "target_refresh": 2, "optim": {"lr": 1e-3}},
    }
    for key, value in stage_overrides.items():
        raw[key] = value
    return raw


# --- losses go down ------------------------------------------------------------------------------
def _fixed_batch(tmp_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    files = cached_file_list([tmp_path / "hr"], None)[:3]
    hr = next(iter(make_loader(files, crop=64, batch_size=2, seed=1, start_batch=0, num_batches=1)))
    return hr, degrade(hr, generator=torch.Generator().manual_seed(5))


def _eval_loss(tr: Trainer, hr: torch.Tensor, lq: torch.Tensor) -> float:
    """Mean loss over fixed (dropout, noise) seeds, so before/after differ only by the weights."""
    total = 0.0
    with torch.no_grad():
        for seed in range(4):
            torch.manual_seed(seed)
            total += float(tr.losses(Batch(x0=hr * 2 - 1, lq=lq * 2 - 1), torch.Generator().manual_seed(seed))["loss"])
    return total / 4


@pytest.mark.parametrize("stage_number", [1, pytest.param(2, marks=pytest.mark.slow)])  # II: ~11 s, 2 busy cores
def test_few_steps_reduce_loss_on_fixed_batch(tmp_path, stage_number):
    raw = _raw(tmp_path)
    raw[f"stage{stage_number}"]["optim"]["lr"] = 5e-4
    # the loss itself must not change during the test: K stays 4 (stage I), θ' stays put (stage II)
    raw[f"stage{stage_number}"].update(steps=1000, target_refresh=1000)
    cfg = config_from_dict(raw)
    tr = Trainer(cfg, cfg.stage(stage_number), Dist(), TinyPerceptual())
    hr, lq = _fixed_batch(tmp_path)
    before = _eval_loss(tr, hr, lq)
    for _ in range(20):
        terms = tr.train_step(hr, lq)
        assert np.isfinite(terms["loss"])
    after = _eval_loss(tr, hr, lq)
    assert after < 0.9 * before, (before, after)


def _stage1_result(tr: Trainer) -> tuple[dict, dict]:
    """A stage-I (params, params_ema) pair for ``tr``'s network, with the EMA distinct from θ."""
    params = {k: v.clone() for k, v in tr.net.state_dict().items()}
    gen = torch.Generator().manual_seed(11)
    ema = {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
           for k, v in params.items()}
    return params, ema


def _same(state: dict, reference: dict) -> bool:
    return all(torch.equal(value, reference[key]) for key, value in state.items())


def test_stage2_target_keeps_the_stage1_ema_until_the_first_refresh(tmp_path):
    """θ' starts as the stage-I params_ema (SPEC §5) and keeps them for steps 0..R-1: no refresh at
    step 0. At step R it becomes θ as it enters that step, then stays put until 2R."""
    cfg = config_from_dict(_raw(tmp_path, stage2={"steps": 8, "target_refresh": 3, "optim": {"lr": 1e-3}}))
    tr = Trainer(cfg, cfg.stage(2), Dist(), TinyPerceptual())
    params, ema = _stage1_result(tr)
    tr.init_from_stage1(params, ema)
    hr, lq = _fixed_batch(tmp_path)
    for _ in range(3):  # steps 0, 1, 2 < target_refresh
        tr.train_step(hr, lq)
        assert _same(tr.target.state_dict(), ema), f"θ' left the stage-I EMA before step {tr.step}"
    assert not _same(tr.net.state_dict(), params)  # θ did move meanwhile
    assert not tr.target.training and not any(p.requires_grad for p in tr.target.parameters())
    entering = {k: v.clone() for k, v in tr.net.state_dict().items()}
    tr.train_step(hr, lq)  # step 3 = target_refresh: θ' ← θ (the weights entering step 3)
    assert _same(tr.target.state_dict(), entering) and not _same(tr.target.state_dict(), ema)
    tr.train_step(hr, lq)  # step 4: no refresh while θ moves on
    assert _same(tr.target.state_dict(), entering) and not _same(tr.net.state_dict(), entering)


def test_stage2_first_step_uses_the_stage1_ema_as_target(tmp_path):
    """The stage-II loss at step 0 is computed against θ' = params_ema, not θ."""
    cfg = config_from_dict(_raw(tmp_path))
    tr = Trainer(cfg, cfg.stage(2), Dist(), TinyPerceptual())
    params, ema = _stage1_result(tr)
    tr.init_from_stage1(params, ema)
    seen = []
    original = tr.losses
    tr.losses = lambda batch, gen: (seen.append({k: v.clone() for k, v in tr.target.state_dict().items()}),
                                    original(batch, gen))[1]
    tr.train_step(*_fixed_batch(tmp_path))
    assert len(seen) == 1 and _same(seen[0], ema)


# --- end to end, resume, divergence --------------------------------------------------------------
def _final_state(out: Path) -> dict:
    return ckpt.load_training_checkpoint(out / "checkpoints" / ckpt.final_name(2))


def _assert_same_state(a: dict, b: dict) -> None:
    for group in ("params", "params_ema", "params_target"):
        for key, value in a[group].items():
            assert torch.equal(value, b[group][key]), f"{group}.{key} differs"
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])


@pytest.mark.slow  # ~8 s on 2 busy cores
def test_resume_after_interruption_is_bit_exact(tmp_path, monkeypatch):
    ref = train(config_from_dict(_raw(tmp_path / "a")), perceptual=TinyPerceptual())
    assert ref is not None and load_model(ref).config.model_channels == 8  # loads like any weights file

    raw = _raw(tmp_path / "b")
    raw["data"]["num_workers"] = 1  # a worker process must not change the data order
    cfg = config_from_dict(raw)
    original = Trainer.train_step

    def interrupted(self, hr, lq=None):
        if self.stage.stage == 2 and self.step == 3:  # after the stage-II checkpoint at step 2
            raise KeyboardInterrupt
        return original(self, hr, lq)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, perceptual=TinyPerceptual())
    assert ckpt.latest_checkpoint(cfg.run.out_path / "checkpoints").name == ckpt.checkpoint_name(2, 2)
    monkeypatch.setattr(Trainer, "train_step", original)
    with pytest.raises(ConfigError, match="pass --resume"):  # a fresh start must not mix with the old run
        train(cfg, perceptual=TinyPerceptual())
    train(cfg, resume=True, perceptual=TinyPerceptual())
    _assert_same_state(_final_state(tmp_path / "a" / "run"), _final_state(tmp_path / "b" / "run"))
    # the log holds each training step once after the resume
    rows = (cfg.run.out_path / "log.csv").read_text().splitlines()
    loss_rows = [r.split(",")[1:3] for r in rows[1:] if r.split(",")[rows[0].split(",").index("loss")]]
    assert len(loss_rows) == len(set(map(tuple, loss_rows))) == 8


def test_lengthened_stage_by_resume_equals_one_run_of_the_final_recipe(tmp_path):
    """How the demo weights were made: a finished stage I resumed with more steps, a pinned K
    schedule and a later LR halving must give what one run of the final recipe gives."""
    def recipe(root: Path, steps: int, milestones: list[int]) -> dict:
        raw = _raw(root)
        del raw["stage2"]
        raw["stage1"] = {"steps": steps, "optim": {"lr": 1e-3, "lr_milestones": milestones},
                         "loss": {"ta_levels": 1, "k_schedule_steps": 4}}
        return raw

    train(config_from_dict(recipe(tmp_path / "a", 6, [5])), perceptual=TinyPerceptual())
    train(config_from_dict(recipe(tmp_path / "b", 4, [])), perceptual=TinyPerceptual())
    with pytest.raises(ConfigError, match="cannot change LR steps it has passed"):
        train(config_from_dict(recipe(tmp_path / "b", 6, [3])), resume=True, perceptual=TinyPerceptual())
    train(config_from_dict(recipe(tmp_path / "b", 6, [5])), resume=True, perceptual=TinyPerceptual())
    a, b = (ckpt.load_training_checkpoint(r / "run" / "checkpoints" / ckpt.final_name(1)) for r in (tmp_path / "a", tmp_path / "b"))
    assert a["step"] == b["step"] == 6
    for group in ("params", "params_ema"):
        for key, value in a[group].items():
            assert torch.equal(value, b[group][key]), f"{group}.{key} differs"
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-4)


class _LoaderStop(Exception):
    """Raised in a loader worker; module-level so the worker can send it back (pickle)."""


@pytest.mark.slow
def test_lr_made_in_the_loader_workers_trains_exactly_like_lr_made_in_the_step(tmp_path, monkeypatch):
    from gtasr_deploy.training import loop

    ref = train(config_from_dict(_raw(tmp_path / "a")), perceptual=TinyPerceptual())
    assert ref is not None
    in_step = []
    original = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, hr, lq=None: (in_step.append(lq is None),
                                                                           original(self, hr, lq))[1])
    raw = _raw(tmp_path / "b")
    raw["data"].update(lr_in_loader=True, num_workers=2)
    cfg = config_from_dict(raw)
    real_make_lq = loop.make_lq

    def interrupted(*args):  # the loader's LR for stage-II batch 3 (in a worker): stop there, then resume
        if args[1] == 2 and args[4] == 3:
            raise _LoaderStop("interrupted")
        return real_make_lq(*args)

    monkeypatch.setattr(loop, "make_lq", interrupted)
    with pytest.raises(_LoaderStop):
        train(cfg, perceptual=TinyPerceptual())
    assert ckpt.latest_checkpoint(cfg.run.out_path / "checkpoints").name == ckpt.checkpoint_name(2, 2)
    monkeypatch.setattr(loop, "make_lq", real_make_lq)
    train(cfg, resume=True, perceptual=TinyPerceptual())
    assert in_step and not any(in_step)  # every step got its LR from the loader
    _assert_same_state(_final_state(tmp_path / "a" / "run"), _final_state(tmp_path / "b" / "run"))


def test_recipe_degradation_table_reaches_the_training_lr(tmp_path):
    from gtasr_deploy.training.loop import make_lq

    raw = _raw(tmp_path)
    raw["degradation"] = {"first": {"jpeg_quality_range": [10, 10]}, "second": {"jpeg_quality_range": [10, 10]}}
    cfg, default = config_from_dict(raw), config_from_dict(_raw(tmp_path))
    assert cfg.degradation != default.degradation
    hr = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    lq = make_lq(cfg, 1, 0, hr, 7)
    seed_of = lambda tag: torch.Generator().manual_seed(_seed(cfg.run.seed, tag, 1, 7, 0))
    assert torch.equal(lq, degrade(hr, generator=seed_of("degrade"), config=cfg.degradation))
    assert not torch.equal(lq, make_lq(default, 1, 0, hr, 7))


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    raw = _raw(tmp_path)
    del raw["stage2"]
    cfg = config_from_dict(raw)
    train(cfg, perceptual=TinyPerceptual())
    latest = ckpt.latest_checkpoint(cfg.run.out_path / "checkpoints")
    before = latest.read_bytes()
    cfg_more = config_from_dict({**raw, "stage1": {**raw["stage1"], "steps": 6}})
    with pytest.raises(TrainingDivergedError, match="NaN/inf.*last good checkpoint"):
        train(cfg_more, resume=True, perceptual=NaNPerceptual())
    assert ckpt.latest_checkpoint(cfg.run.out_path / "checkpoints") == latest
    assert latest.read_bytes() == before


def test_stage2_starts_from_stage1_checkpoint(tmp_path):
    raw = _raw(tmp_path)
    stage2 = raw.pop("stage2")
    train(config_from_dict(raw), perceptual=TinyPerceptual())
    stage1_file = tmp_path / "run" / "checkpoints" / ckpt.final_name(1)
    raw2 = _raw(tmp_path)
    del raw2["stage1"]
    raw2["stage2"] = {**stage2, "init": str(stage1_file)}
    raw2["run"]["out_dir"] = str(tmp_path / "run2")
    cfg = config_from_dict(raw2)
    tr = Trainer(cfg, cfg.stage(2), Dist(), TinyPerceptual())
    from gtasr_deploy.training.loop import load_stage1_weights

    params, ema = load_stage1_weights(stage1_file)
    tr.init_from_stage1(params, ema)
    s1 = ckpt.load_training_checkpoint(stage1_file)
    for key, value in tr.net.state_dict().items():
        assert torch.equal(value, s1["params"][key])
        assert torch.equal(tr.ema.state_dict()[key], s1["params_ema"][key])
        assert torch.equal(tr.target.state_dict()[key], s1["params_ema"][key])
    assert not all(torch.equal(s1["params"][k], s1["params_ema"][k]) for k in s1["params"])
    # our checkpoint reads like an official .pth
    state, _ = read_checkpoint(stage1_file, param_key="params")
    assert state.keys() == s1["params"].keys()


# --- distributed ---------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, raw: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from gtasr_deploy.training import loop

    original = loop.run_stage

    def run_and_record(tr, *args):  # every rank's θ at the end of each stage
        original(tr, *args)
        torch.save(tr.net.state_dict(), Path(out) / f"rank{rank}_s{tr.stage.stage}.pt")

    loop.run_stage = run_and_record
    try:
        loop.train(config_from_dict(raw), perceptual=TinyPerceptual())
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_two_processes(tmp_path):
    raw = _raw(tmp_path)
    raw["stage1"]["steps"] = 2
    raw["stage2"]["steps"] = 2  # stage II "gtasr" runs the online net twice per backward (x̂0 and Rect)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, raw, str(tmp_path)), nprocs=2, join=True)
    out = tmp_path / "run"
    assert _final_state(out)["step"] == 2 and (out / "t_ema.safetensors").is_file()
    initial = Trainer(config_from_dict(raw), config_from_dict(raw).stage(1), Dist(), TinyPerceptual()).net.state_dict()
    for stage in (1, 2):
        r0 = torch.load(tmp_path / f"rank0_s{stage}.pt")
        r1 = torch.load(tmp_path / f"rank1_s{stage}.pt")
        # each rank saw different data and noise; averaged gradients keep θ identical
        assert all(torch.equal(r0[k], r1[k]) for k in r0)
        assert not all(torch.equal(r0[k], initial[k]) for k in r0)


# --- data, config, CLI ---------------------------------------------------------------------------
def test_sampler_is_deterministic_and_ranks_disjoint():
    a = StepSampler(10, 3, seed=7, start_batch=5)
    b = StepSampler(10, 3, seed=7, start_batch=0)
    assert a.batch(5) == b.batch(5) == next(iter(a))
    r0 = StepSampler(10, 3, seed=7, rank=0, world_size=2).batch(4)
    r1 = StepSampler(10, 3, seed=7, rank=1, world_size=2).batch(4)
    assert not set(s for _, s in r0) & set(s for _, s in r1)
    files = [f for b_ in range(10) for f, _ in StepSampler(10, 1, seed=7).batch(b_)]
    assert sorted(files) == list(range(10))  # one epoch visits every file once


def test_data_pads_small_images_and_skips_unreadable(tmp_path, caplog):
    _write_images(tmp_path / "hr")
    files = cached_file_list([tmp_path / "hr"], tmp_path / "files.json")
    assert len(files) == 5 and (tmp_path / "files.json").is_file()
    assert cached_file_list([tmp_path / "hr"], tmp_path / "files.json") == files
    assert reflect_pad_to(np.zeros((40, 50, 3), np.uint8), 64).shape == (64, 64, 3)
    assert reflect_pad_to(np.zeros((1, 1, 3), np.uint8), 8).shape == (8, 8, 3)
    loader = make_loader(files, crop=64, batch_size=5, seed=0, start_batch=0, num_batches=2)
    batches = list(loader)
    assert all(b.shape == (5, 3, 64, 64) and 0 <= b.min() and b.max() <= 1 for b in batches)
    assert "broken.png" in caplog.text


def test_cached_images_give_the_same_crops_with_one_decode_per_file(tmp_path, monkeypatch):
    from gtasr_deploy.training import data

    _write_images(tmp_path / "hr")
    files = cached_file_list([tmp_path / "hr"], None)
    plain = list(make_loader(files, crop=64, batch_size=5, seed=3, start_batch=0, num_batches=3, augment="dihedral"))
    decoded = []
    real_read = data.read_rgb8
    monkeypatch.setattr(data, "read_rgb8", lambda path: decoded.append(path) or real_read(path))
    cached = list(make_loader(files, crop=64, batch_size=5, seed=3, start_batch=0, num_batches=3, augment="dihedral",
                              cache_images=True))
    assert all(torch.equal(a, b) for a, b in zip(plain, cached)) and len(cached) == 3
    # 15 crops from 5 files: each readable file decoded once; the unreadable one is tried once, then skipped
    assert sorted(decoded) == sorted(set(decoded)) and set(decoded) == set(files)


def test_config_rejects_unknown_keys_and_bad_sizes(tmp_path):
    raw = _raw(tmp_path)
    raw["stage1"]["optim"]["momentum"] = 0.9
    with pytest.raises(ConfigError, match=r"stage1.optim: unknown keys \['momentum'\]; valid keys: .*'lr'"):
        config_from_dict(raw)
    raw = _raw(tmp_path)
    raw["model"] = {"preset": "demo"}  # size rule 32 LR px: crop 64 → LR 16 is refused
    with pytest.raises(ConfigError, match="multiple of 128"):
        config_from_dict(raw)
    raw = _raw(tmp_path)
    raw["recipe"] = "ctmsr"
    with pytest.raises(ConfigError, match="ctmsr"):
        config_from_dict(raw)


@pytest.mark.parametrize("name", ["stage1", "stage2", "ctmsr_stage1", "ctmsr_stage2", "demo", "photos"])
def test_recipes_dry_run(name):
    result = CliRunner().invoke(__import__("gtasr_deploy.cli.train", fromlist=["main"]).main,
                                [str(REPO / "training" / f"{name}.toml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    cfg = load_config(REPO / "training" / f"{name}.toml")
    if name in ("stage1", "stage2"):
        assert cfg.model.model_channels == 192 and cfg.data.crop == 256
        st = cfg.stages[0]
        assert (st.optim.lr, st.optim.betas, st.optim.weight_decay, st.optim.ema_decay) == (5e-5, (0.9, 0.9), 0.0, 0.999)
    assert '"recipe"' in result.output


def test_unwritable_out_dir_is_a_one_line_error(tmp_path):
    raw = _raw(tmp_path)
    (tmp_path / "afile").write_text("x")
    raw["run"]["out_dir"] = str(tmp_path / "afile" / "run")  # under a file: cannot be created
    with pytest.raises(ConfigError, match="run.out_dir .*cannot write there"):
        train(config_from_dict(raw), perceptual=TinyPerceptual())


def test_cli_reports_config_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nroots = ["x"]\ncrop = 30\n[stage1]\nsteps = 1\n')
    from gtasr_deploy.cli.train import main

    result = CliRunner().invoke(main, [str(bad), "--dry-run"])
    assert result.exit_code == 1
    assert "data.crop is 30" in result.output and "Traceback" not in result.output


# --- small-data recipe options: dihedral augmentation, clean-bicubic mixing, d_I weights ----------
def test_dihedral_augment_is_one_of_eight_seeded_transforms_of_the_plain_crop():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)
    seen = set()
    for seed in range(40):
        plain = random_crop(img, 32, seed)
        aug = random_crop(img, 32, seed, "dihedral")
        assert np.array_equal(aug, random_crop(img, 32, seed, "dihedral"))  # a function of the seed
        matches = [k for k in range(8) if np.array_equal(aug, dihedral(plain, k))]
        assert len(matches) == 1  # same position, exactly one of the 8 transforms
        seen.add(matches[0])
    assert seen == set(range(8))
    # the 8 transforms are distinct and k = 0 is the identity
    assert np.array_equal(dihedral(img, 0), img)
    assert len({dihedral(img[:32, :32], k).tobytes() for k in range(8)}) == 8
    with pytest.raises(ConfigError, match="augment 'mirror' is unknown"):
        random_crop(img, 32, 0, "mirror")


def test_mix_clean_replaces_the_drawn_samples_by_antialiased_bicubic():
    gt = torch.rand(64, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    lq = degrade(gt, generator=torch.Generator().manual_seed(1))
    assert mix_clean(gt, lq, 0.0, generator=torch.Generator().manual_seed(2)) is lq
    clean = bicubic_lr(gt)
    assert torch.equal(clean, (clean * 255).round() / 255) and clean.shape == lq.shape
    pil = np.stack([np.asarray(Image.fromarray((g.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
                               .resize((16, 16), Image.BICUBIC)) for g in gt[:4]])
    ours = (bicubic_lr(((gt[:4] * 255).round() / 255)) * 255).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - pil).max() <= 2  # PIL BICUBIC's antialiased filter, to rounding
    mixed = mix_clean(gt, lq, 0.3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(mixed, mix_clean(gt, lq, 0.3, generator=torch.Generator().manual_seed(2)))
    is_clean = [torch.equal(m, c) for m, c in zip(mixed, clean)]
    is_degraded = [torch.equal(m, d) for m, d in zip(mixed, lq)]
    assert all(a != b for a, b in zip(is_clean, is_degraded))
    assert 8 <= sum(is_clean) <= 32  # 64 coins at p = 0.3
    assert all(torch.equal(m, c) for m, c in zip(mix_clean(gt, lq, 1.0, generator=torch.Generator()), clean))


def test_recipe_options_reach_the_batches_and_are_validated(tmp_path):
    raw = _raw(tmp_path)
    raw["data"].update(augment="dihedral", clean_prob=1.0)
    raw["stage1"]["loss"].update(w_lpips=0.0, w_charbonnier=1.0)
    cfg = config_from_dict(raw)
    tr = Trainer(cfg, cfg.stages[0], Dist(), TinyPerceptual())
    seen = []
    original = tr.losses
    tr.losses = lambda batch, gen: (seen.append(batch), original(batch, gen))[1]
    hr = torch.rand(2, 3, 64, 64)
    tr.train_step(hr)
    assert torch.equal(seen[0].lq, bicubic_lr(hr) * 2 - 1)  # clean_prob = 1: every LR is plain bicubic
    for key, value, match in [("augment", "flip", "data.augment"), ("clean_prob", 1.5, "data.clean_prob")]:
        bad = _raw(tmp_path)
        bad["data"][key] = value
        with pytest.raises(ConfigError, match=match):
            config_from_dict(bad)
    bad = _raw(tmp_path)
    bad["stage1"]["loss"].update(w_lpips=0.0, w_charbonnier=0.0)
    with pytest.raises(ConfigError, match="w_lpips=0.0, w_charbonnier=0.0"):
        config_from_dict(bad)


def test_the_demo_runs_weights_were_trained_by_the_committed_demo_recipe():
    """The model card's reproduce command for run 1 is `gtasr-train training/demo.toml`: the demo run's
    weights (embedded until run 2 replaced them; run 2's stage1.init) must carry exactly that recipe
    (the trainer writes it into the safetensors metadata)."""
    import json

    from safetensors import safe_open

    run1 = REPO / "training" / "init" / "gtasr_demo_run1.safetensors"
    with safe_open(str(run1), "pt") as f:
        meta = f.metadata()
    stored = json.loads(meta["training_config"])
    recipe = json.loads(load_config(REPO / "training" / "demo.toml").to_json())
    # options the trainer gained after these weights were trained: absent from their record, so the
    # recipe must leave them at the defaults (= the behaviour that trained the weights)
    later = {("data", "cache_images"): False, ("data", "lr_in_loader"): False,
             ("stage1", "loss", "ct_weight"): 1.0, ("stage1", "loss", "top_index_prob"): None,
             ("run", "val_png"): True, ("stage1", "init"): ""}
    for (*section, key), default in later.items():
        held, wanted = stored, recipe
        for name in section:
            held, wanted = held[name], wanted[name]
        if key not in held:
            assert wanted.pop(key) == default, f"training/demo.toml sets {'.'.join(section)}.{key}"
    assert stored == recipe
    steps = json.loads(meta["steps"])
    card = (REPO / "gtasr_deploy" / "weights" / "MODEL_CARD.md").read_text()
    assert f"stage I {steps['stage1']} + stage II {steps['stage2']} optimizer steps" in card
    assert file_sha256(run1) in card


def test_embedded_weights_are_the_committed_photos_checkpoints_ema():
    """The embedded weights are the EMA of the committed photos-run checkpoint, with that recipe and
    the step it stopped at in their metadata, and the model card names their checksum and step."""
    import json

    from safetensors import safe_open

    from gtasr_deploy.model.checkpoint import read_checkpoint
    from gtasr_deploy.upscaler import EMBEDDED_WEIGHTS

    with safe_open(str(EMBEDDED_WEIGHTS), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["training_config"]) == json.loads(load_config(REPO / "training" / "photos.toml").to_json())
    step = int(meta["stopped_at"].removeprefix("stage 1 step "))
    (checkpoint,) = sorted((REPO / "training" / "runs" / "photos" / "checkpoints").glob("ckpt_s1_*.pt"))
    committed = int(checkpoint.stem.rsplit("_", 1)[1])
    assert committed >= step  # later chunks may go on without replacing the embedded weights
    if committed == step:
        ema, _ = read_checkpoint(checkpoint, param_key="params_ema")
        weights, _ = read_checkpoint(EMBEDDED_WEIGHTS)
        assert weights.keys() == ema.keys() and all(torch.equal(weights[k], ema[k]) for k in weights)
    card = (REPO / "gtasr_deploy" / "weights" / "MODEL_CARD.md").read_text()
    assert file_sha256(EMBEDDED_WEIGHTS) in card and f"step {step}" in card
