"""The GTASR trainer (SPEC §5). Reads top to bottom: set up, then for each stage build the networks,
then step: batch → degradation → losses → backward → optimizer → EMA → log / validate / checkpoint.

Determinism: every step re-seeds torch's global RNG (dropout) and draws data order, degradation
and loss noise from generators seeded by (seed, stage, step, rank). A resumed run therefore
repeats an uninterrupted one bit for bit (same device and software), independently of workers.

Distributed: launched with torchrun, each process takes its slice of every global batch; the
network is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA). Rank 0 logs,
validates, checkpoints and exports.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..atomic import atomic_write_text
from ..errors import CheckpointError, ConfigError, GtasrError
from ..model import build_model, save_model
from ..model.checkpoint import check_state_dict, read_checkpoint
from ..model.conventions import SIGMA_ONE, to_model_range, to_unit_range
from ..model.schedule import one_step_start, unit_noise, up
from . import checkpoint as ckpt
from .config import StageConfig, TrainConfig
from .data import cached_file_list, check_decodable, make_loader, scan_images, validation_crops, write_file_list
from .degradation import bicubic_lr, degrade, mix_clean
from .distributed import Dist, setup_distributed
from .logs import RunLogger
from .losses import Batch, copy_for_target, ema_update, stage1_losses, stage2_losses
from .precision import autocast_for, precision_note
from ..metrics.fullref import psnr_y
from ..metrics.lpips import LPIPS


class TrainingDivergedError(GtasrError):
    """The loss became NaN/inf; the last good checkpoint is kept."""


def _seed(*parts: object) -> int:
    """A 63-bit seed from the parts; distinct streams for data, degradation, losses and dropout."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "little") >> 1


def load_stage1_weights(path: str | Path) -> tuple[dict, dict]:
    """(θ, EMA) to start stage II from: our stage-I checkpoint or an official .pth (params/params_ema)."""
    if Path(path).is_dir():
        raise ConfigError(f"stage2.init {path} is a folder; expected a stage-I checkpoint file "
                          "(e.g. runs/<name>/checkpoints/stage1_final.pt or GTASR_first_phase.pth)")
    ema, _ = read_checkpoint(path, param_key="params_ema")
    try:
        params, _ = read_checkpoint(path, param_key="params")
    except CheckpointError:
        params = ema  # files with only params_ema (e.g. a published EMA-only release)
    return params, ema


def make_lq(cfg: TrainConfig, stage: int, rank: int, hr: torch.Tensor, step: int) -> torch.Tensor:
    """The training LR of global batch ``step``: the recipe's degradation, then the clean-bicubic
    mix, each drawn from a generator seeded by (seed, stage, step, rank) — the same in the loader's
    workers (``data.lr_in_loader``) as in the step."""
    seed = cfg.run.seed
    lq = degrade(hr, generator=torch.Generator().manual_seed(_seed(seed, "degrade", stage, step, rank)),
                 config=cfg.degradation)
    return mix_clean(hr, lq, cfg.data.clean_prob,
                     generator=torch.Generator().manual_seed(_seed(seed, "clean", stage, step, rank)))


class Trainer:
    """Holds one stage's state: θ (``net``), EMA, θ' (stage II), optimizer, scheduler."""

    def __init__(self, cfg: TrainConfig, stage: StageConfig, env: Dist, perceptual: nn.Module) -> None:
        self.cfg, self.stage, self.env, self.perceptual = cfg, stage, env, perceptual
        torch.manual_seed(_seed(cfg.run.seed, "init"))  # same initial θ on every rank
        self.net = build_model(cfg.model).to(env.device).train()
        self.ema = copy_for_target(self.net)
        self.target = copy_for_target(self.net) if stage.stage == 2 else None
        o = stage.optim
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=list(o.lr_milestones), gamma=o.lr_gamma)
        self.step = 0
        self.autocast, use_scaler = autocast_for(cfg.run.amp, env.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.online: nn.Module = self.net
        if env.world > 1:
            ids = [env.device.index] if env.device.type == "cuda" else None
            self.online = nn.parallel.DistributedDataParallel(self.net, device_ids=ids)

    # --- state ------------------------------------------------------------------------------
    def init_from_stage1(self, params: dict, ema: dict) -> None:
        """θ ← stage-I params; EMA and θ' ← stage-I params_ema (SPEC §5 stage II). A stage I with
        ``stage1.init`` starts the same way (θ and EMA; a weights-only file gives both its EMA)."""
        check_state_dict(self.net, params, "stage-I params")
        check_state_dict(self.net, ema, "stage-I params_ema")
        self.net.load_state_dict(params)
        self.ema.load_state_dict(ema)
        if self.target is not None:
            self.target.load_state_dict(ema)

    def state_dict(self) -> dict:
        state = {"format": ckpt.FORMAT, "config": self.cfg.to_json(), "network_config": self.cfg.model.to_json(),
                 "stage": self.stage.stage, "step": self.step, "params": self.net.state_dict(),
                 "params_ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
                 "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state()}
        if self.target is not None:
            state["params_target"] = self.target.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["params"])
        self.ema.load_state_dict(state["params_ema"])
        if self.target is not None:
            self.target.load_state_dict(state["params_target"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self._follow_recipe_milestones(int(state["step"]))
        self.scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        self.step = int(state["step"])

    def _follow_recipe_milestones(self, step: int) -> None:
        """A resumed stage follows the recipe's LR milestones still ahead of it (the scheduler state
        would otherwise keep the old ones), so lengthening a stage may add a halving later on. The
        milestones already passed must match the checkpoint's: a resume cannot change its past."""
        o = self.stage.optim
        saved = sorted(m for m in self.sched.milestones.elements() if m <= step)
        wanted = sorted(m for m in o.lr_milestones if m <= step)
        if saved != wanted:
            raise ConfigError(f"stage {self.stage.stage}: the recipe's lr_milestones up to step {step} are {wanted}, "
                              f"the checkpoint's are {saved}; a resumed run cannot change LR steps it has passed")
        self.sched.milestones = Counter(o.lr_milestones)
        self.sched.gamma = o.lr_gamma

    # --- one optimizer step -----------------------------------------------------------------
    def losses(self, batch: Batch, generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self.stage.stage == 1:
            return stage1_losses(self.online, batch, step=self.step, total_steps=self.stage.steps,
                                 cfg=self.stage.loss, perceptual=self.perceptual, generator=generator,
                                 ctmsr=self.cfg.recipe == "ctmsr")
        return stage2_losses(self.online, self.target, batch, cfg=self.stage.loss, perceptual=self.perceptual,
                             generator=generator)

    def train_step(self, hr: torch.Tensor, lq: torch.Tensor | None = None) -> dict[str, float]:
        """hr: (B,3,crop,crop) float [0,1] on the device; lq: its (B,3,crop/4,crop/4) [0,1] LR, made
        here by the degradation when None. Returns the logged terms (batch means)."""
        seed, st, rank = self.cfg.run.seed, self.stage.stage, self.env.rank
        if self.target is not None and self.step > 0 and self.step % self.stage.target_refresh == 0:
            # θ' ← θ. Never at step 0: θ' starts as the stage-I params_ema and keeps them until the
            # first refresh (the release: until iteration 1000 with a refresh every 1000).
            self.target.load_state_dict(self.net.state_dict())
        torch.manual_seed(_seed(seed, "dropout", st, self.step, rank))
        if lq is None:
            lq = make_lq(self.cfg, st, rank, hr, self.step)
        loss_gen = torch.Generator().manual_seed(_seed(seed, "loss", st, self.step, rank))
        accum = self.stage.optim.grad_accum
        logged: dict[str, float] = {}
        for micro, (x0, y0) in enumerate(zip(to_model_range(hr).chunk(accum), to_model_range(lq).chunk(accum))):
            last = micro == accum - 1
            sync = contextlib.nullcontext() if last or self.online is self.net else self.online.no_sync()
            with sync, self.autocast():
                out = self.losses(Batch(x0=x0, lq=y0), loss_gen)
            self.scaler.scale(out["loss"] / accum).backward()
            for key, value in out.items():
                if value.numel() == 1:
                    logged[key] = logged.get(key, 0.0) + float(value.detach()) / (1 if key in ("k", "i") else accum)
        self._check_finite(logged["loss"])
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        o = self.stage.optim
        decay = min(o.ema_decay, (1 + self.step) / (10 + self.step)) if o.ema_warmup else o.ema_decay
        ema_update(self.ema, self.net, decay)
        self.step += 1
        logged["lr"] = self.opt.param_groups[0]["lr"]
        return logged

    def _check_finite(self, loss: float) -> None:
        bad = torch.tensor(0.0 if math.isfinite(loss) else 1.0, device=self.env.device)
        if self.env.world > 1:
            dist.all_reduce(bad)
        if bad.item():
            raise TrainingDivergedError(
                f"stage {self.stage.stage} step {self.step}: loss is {loss} (NaN/inf); stopped without saving. "
                f"The last good checkpoint in {self.cfg.run.out_path / 'checkpoints'} is kept: lower the "
                "learning rate (stageN.optim.lr) or, under run.amp = \"fp16\", use \"bf16\" or \"none\"; then --resume"
            )


# --- validation ---------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Validation:
    """Fixed validation inputs: HR (n,3,H,W) [0,1], its degraded LR, the unit noise for x_K, and
    (recipes that train on clean LR too, data.clean_prob > 0) its plain bicubic LR."""

    hr: torch.Tensor
    lq: torch.Tensor
    eps: torch.Tensor
    lq_clean: torch.Tensor | None = None


def make_validation(cfg: TrainConfig, files: list[str]) -> Validation:
    val_files = scan_images(cfg.data.val_roots, "data.val_roots") if cfg.data.val_roots else files
    hr = validation_crops(val_files, crop=cfg.data.val_crop, count=cfg.data.val_images)
    lq = degrade(hr, generator=torch.Generator().manual_seed(_seed(cfg.run.seed, "validation")), config=cfg.degradation)
    return Validation(hr=hr, lq=lq, eps=unit_noise(tuple(hr.shape), _seed(cfg.run.seed, "val-noise") % 2**31),
                      lq_clean=bicubic_lr(hr) if cfg.data.clean_prob > 0 else None)


@torch.no_grad()
def _psnr_of(net: nn.Module, lq: torch.Tensor, val: Validation, device: torch.device) -> tuple[dict[str, float], list]:
    lq = to_model_range(lq.to(device))
    sr = torch.cat([net.eval()(one_step_start(lq[i:i + 1], eps=val.eps[i:i + 1].to(device)), SIGMA_ONE, lq[i:i + 1])
                    for i in range(len(lq))])
    # (x + 1) / 2 is exact, so × 255 rounds once, as (x + 1) × 127.5 would
    to8 = lambda t: (to_unit_range(t.clamp(-1, 1)).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    sr8, bic8, hr8 = to8(sr), to8(up(lq)), to8(to_model_range(val.hr))
    scores = {"val_psnr_y": float(np.mean([psnr_y(s, h) for s, h in zip(sr8, hr8)])),
              "val_psnr_y_bicubic": float(np.mean([psnr_y(b, h) for b, h in zip(bic8, hr8)]))}
    return scores, [np.concatenate([b, s, h], axis=1) for b, s, h in zip(bic8, sr8, hr8)]  # bicubic | SR | HR


def validate(net: nn.Module, val: Validation, device: torch.device, out_png: Path | None) -> dict[str, float]:
    """One-step SR of the validation LR with ``net`` (eval); PSNR-Y of SR and of bicubic vs HR, on
    the degraded LR (``val_psnr_y*``) and, when the validation has one, the clean bicubic LR
    (``val_clean_psnr_y*``)."""
    scores, rows = _psnr_of(net, val.lq, val, device)
    if val.lq_clean is not None:
        clean, clean_rows = _psnr_of(net, val.lq_clean, val, device)
        scores.update({key.replace("val_", "val_clean_"): value for key, value in clean.items()})
        rows = [np.concatenate([d, c], axis=1) for d, c in zip(rows, clean_rows)]
    if out_png is not None:
        import cv2

        out_png.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out_png), np.concatenate(rows, axis=0)[:, :, ::-1])
    return scores


# --- the run ------------------------------------------------------------------------------------
def _save(tr: Trainer, folder: Path, keep: int, name: str | None = None) -> Path:
    path = ckpt.save_atomic(tr.state_dict(), folder / (name or ckpt.checkpoint_name(tr.stage.stage, tr.step)))
    if name is None:
        ckpt.prune_checkpoints(folder, keep)
    return path


def _batches(tr: Trainer, files: list[str], env: Dist):
    """(hr, lq) on the device per step; lq is None when the step makes it (on the device)."""
    cfg = tr.cfg
    transform = functools.partial(make_lq, cfg, tr.stage.stage, env.rank) if cfg.data.lr_in_loader else None
    loader = make_loader(files, crop=cfg.data.crop, batch_size=cfg.data.batch_size,
                         seed=_seed(cfg.run.seed, "data", tr.stage.stage) % 2**31, start_batch=tr.step,
                         num_batches=tr.stage.steps - tr.step, num_workers=cfg.data.num_workers,
                         rank=env.rank, world_size=env.world, augment=cfg.data.augment,
                         cache_images=cfg.data.cache_images, transform=transform)
    try:
        for item in loader:
            hr, lq = item if transform is not None else (item, None)
            yield hr.to(env.device, non_blocking=True), None if lq is None else lq.to(env.device, non_blocking=True)
    except GtasrError as err:
        # A worker's error comes back with the worker's traceback folded into its message; keep the
        # one line that states it ("<module>.<Class>: message", torch's last line).
        lines = str(err).strip().splitlines()
        raise type(err)(lines[-1].split(": ", 1)[-1] if len(lines) > 1 else str(err)) from None


def _val_png(cfg: TrainConfig, stage: int, step: int) -> Path | None:
    return cfg.run.out_path / "val" / f"s{stage}_{step:08d}.png" if cfg.run.val_png else None


class StopRequested(Exception):
    """``stop()`` said so after a step: that step's checkpoint is written, the run ends unfinished."""


def run_stage(tr: Trainer, files: list[str], val: Validation, logger: RunLogger,
              stop: Callable[[], bool] | None = None) -> None:
    cfg, env, st = tr.cfg, tr.env, tr.stage.stage
    folder = cfg.run.out_path / "checkpoints"
    bar = logger.progress(total=tr.stage.steps, initial=tr.step, desc=f"stage {st}")
    t_last = time.perf_counter()
    for hr, lq in _batches(tr, files, env):
        terms = tr.train_step(hr, lq)
        now = time.perf_counter()
        terms["sec_per_step"], t_last = now - t_last, now
        bar.update(1)
        if env.main and (tr.step % cfg.run.log_every == 0 or tr.step == tr.stage.steps):
            logger.log(st, tr.step, terms)
        if env.main and (tr.step % cfg.run.val_every == 0 or tr.step == tr.stage.steps):
            logger.log(st, tr.step, validate(tr.ema, val, env.device, _val_png(cfg, st, tr.step)))
        if env.main and tr.step % cfg.run.ckpt_every == 0 and tr.step < tr.stage.steps:
            _save(tr, folder, cfg.run.keep_checkpoints)
        if stop is not None and tr.step < tr.stage.steps and stop():
            if env.main and tr.step % cfg.run.ckpt_every:
                _save(tr, folder, cfg.run.keep_checkpoints)
            bar.close()
            raise StopRequested(f"stopped at stage {st} step {tr.step}: checkpoint "
                                f"{folder / ckpt.checkpoint_name(st, tr.step)}; --resume continues from it")
        t_last = time.perf_counter()  # seconds/step exclude logging, validation and checkpoints
    bar.close()
    if env.main:
        _save(tr, folder, cfg.run.keep_checkpoints)
        _save(tr, folder, cfg.run.keep_checkpoints, name=ckpt.final_name(st))


def _resume_point(cfg: TrainConfig) -> dict | None:
    path = ckpt.latest_checkpoint(cfg.run.out_path / "checkpoints")
    if path is None:
        return None
    state = ckpt.load_training_checkpoint(path)
    if json.loads(state["network_config"]) != cfg.model.to_dict():
        raise CheckpointError(f"{path}: network config differs from the recipe's; resume with the recipe that wrote it")
    return state


def _log_header(logger: RunLogger, cfg: TrainConfig, env: Dist, num_files: int) -> None:
    stages = " + ".join(f"stage {s.stage} ({s.steps} steps)" for s in cfg.stages)
    logger.info(f"run {cfg.run.name}: recipe {cfg.recipe}, {stages}, {num_files} training images, "
                f"device {env.device}, outputs in {cfg.run.out_path}")
    logger.info(precision_note(cfg.run.amp, env.device))
    if env.world > 1:
        logger.info(f"distributed: sharded {env.rank}/{env.world} by RANK/WORLD_SIZE from the environment: "
                    f"{env.world} processes x data.batch_size {cfg.data.batch_size} = global batch "
                    f"{env.world * cfg.data.batch_size}; this log is rank 0's")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_outputs(cfg: TrainConfig) -> None:
    """run.out_dir and run.export can be written — checked without writing anything."""
    out, export = cfg.run.out_path, cfg.run.export_path
    for key, folder in (("run.out_dir", out), ("run.export", export.parent)):
        base = _nearest_existing(folder)
        if not base.is_dir():
            raise ConfigError(f"{key} {folder}: cannot write there ({base} is a file, not a folder); choose another "
                              f"--out / {key}")
        if not os.access(base, os.W_OK | os.X_OK):
            raise ConfigError(f"{key} {folder}: cannot write there ({base} is not writable); choose another "
                              f"--out / {key} or fix its permissions")
    if export.is_dir():
        raise ConfigError(f"run.export {export} is a folder; expected the path of a .safetensors file")


def _prepare_outputs(cfg: TrainConfig, files: list[str]) -> None:
    """Create run.out_dir with the resolved config and the file list in it, and run.export's folder."""
    out = cfg.run.out_path
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", cfg.to_json())
        write_file_list(out / "files.json", cfg.data.roots, files)
        cfg.run.export_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"run.out_dir {out}: cannot write there ({exc.strerror or exc}); "
                          "choose another --out or fix its permissions") from None


def _check_inputs(cfg: TrainConfig, env: Dist, files: list[str], perceptual: nn.Module | None) -> tuple[nn.Module, Validation]:
    """Everything a run needs that a recipe can get wrong, before anything is written: decodable
    images, the validation set, the perceptual network's weights, the precision, stage II's start."""
    check_decodable(files)
    autocast_for(cfg.run.amp, env.device)
    only = cfg.stages[0]
    if (only.stage == 2 or only.init) and not Path(only.init).is_file():
        load_stage1_weights(only.init)  # raises the reader's one-line reason (missing, a folder)
    if perceptual is None:
        perceptual = LPIPS("vgg")
    return perceptual.to(env.device).eval().requires_grad_(False), make_validation(cfg, files)


def train(cfg: TrainConfig, *, resume: bool = False, perceptual: nn.Module | None = None,
          stop: Callable[[], bool] | None = None) -> Path | None:
    """Run every stage of ``cfg``; return the exported EMA safetensors path (rank 0) or None.

    ``stop``: asked after every optimizer step (single process only); when it returns True the
    current step is checkpointed and :class:`StopRequested` is raised — a run in chunks (a time
    budget, SIGTERM) that ``resume=True`` continues bit for bit."""
    if stop is not None and os.environ.get("WORLD_SIZE", "1") != "1":
        raise ConfigError("stopping after a time budget is for single-process runs; under torchrun stop with Ctrl-C")
    env = setup_distributed(cfg.run.device)
    out = cfg.run.out_path
    if not resume and ckpt.latest_checkpoint(out / "checkpoints") is not None:
        raise ConfigError(f"{out} already holds checkpoints of an earlier run; pass --resume to continue it, "
                          "or choose another --out (or delete the folder) to start over")
    if env.main:
        _check_outputs(cfg)
        files = cached_file_list(cfg.data.roots, out / "files.json", write=False)
        perceptual, val = _check_inputs(cfg, env, files, perceptual)
        _prepare_outputs(cfg, files)
    if env.world > 1:
        dist.barrier()  # the other ranks read the list rank 0 wrote: every rank sees the same files
    if not env.main:
        files = cached_file_list(cfg.data.roots, out / "files.json")
        perceptual, val = _check_inputs(cfg, env, files, perceptual)
    logger = RunLogger(out, enabled=env.main, progress=cfg.run.progress, tensorboard=cfg.run.tensorboard)
    _log_header(logger, cfg, env, len(files))
    state = _resume_point(cfg) if resume else None
    if resume and env.main:
        logger.info(f"resuming from stage {state['stage']} step {state['step']}" if state else "nothing to resume; starting")
    logger.truncate_after(*((state["stage"], state["step"]) if state else (0, 0)))  # no step logged twice
    tr = None
    for stage in cfg.stages:
        if state is not None and stage.stage < state["stage"]:
            continue
        tr = Trainer(cfg, stage, env, perceptual)
        if state is not None and stage.stage == state["stage"]:
            tr.load_state_dict(state)
        elif stage.stage == 2:
            source = stage.init or out / "checkpoints" / ckpt.final_name(1)
            tr.init_from_stage1(*load_stage1_weights(source))
            logger.info(f"stage 2 starts from {source}")
        elif stage.init:  # stage I fine-tunes given weights (e.g. the embedded demo weights)
            tr.init_from_stage1(*load_stage1_weights(stage.init))
            logger.info(f"stage 1 starts from the weights in {stage.init}")
        state = None
        if tr.step < stage.steps:
            if env.main and tr.step == 0:
                logger.log(stage.stage, 0, validate(tr.ema, val, env.device, _val_png(cfg, stage.stage, 0)))
            try:
                run_stage(tr, files, val, logger, stop)
            except StopRequested as stopped:
                logger.close()  # the chunk ends here; the checkpoint is written
                if env.main:  # the weights as of this step, to try or evaluate between chunks
                    path = _export(tr, cfg, {"stopped_at": f"stage {stage.stage} step {tr.step}"})
                    raise StopRequested(f"{stopped}; EMA weights of this step: {path}") from None
                raise
    logger.close()
    if not env.main or tr is None:
        return None
    path = _export(tr, cfg)
    logger.info(f"exported EMA weights to {path}")
    return path


def _export(tr: Trainer, cfg, extra: dict | None = None) -> Path:
    """The EMA weights as safetensors at ``run.export``, the recipe in their metadata."""
    meta = {"recipe": cfg.recipe, "notes": cfg.notes, "data": json.dumps(list(cfg.data.roots)),
            "steps": json.dumps({f"stage{s.stage}": s.steps for s in cfg.stages}), "training_config": cfg.to_json(),
            **(extra or {})}
    return save_model(tr.ema.eval(), cfg.run.export_path, metadata=meta)
