"""Training recipes: a TOML file → frozen keyword-only dataclasses (SPEC §5).

A recipe has a ``[run]``, ``[model]``, ``[data]`` and optional ``[degradation]`` table, and one or
both of ``[stage1]`` / ``[stage2]``. Each stage has its own step count, ``[stageN.optim]`` and
``[stageN.loss]``. When both are present they run in order and stage II starts from this run's
stage-I result; a stage-II-only recipe names its start in ``stage2.init`` (our training checkpoint
or an official ``.pth`` with ``params`` / ``params_ema``). Unknown keys are refused with the list
of valid ones; relative paths are resolved against the current directory (run from the repo root).
"""

from __future__ import annotations

import json
import math
try:
    import tomllib
except ImportError:  # Python 3.10: the same parser from PyPI
    import tomli as tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from ..model.config import NetworkConfig, resolve_config
from .data import AUGMENTS
from .degradation import DegradationConfig

RECIPES = ("gtasr", "ctmsr")
AMP_MODES = ("auto", "none", "bf16", "fp16")


def _build(cls: type, data: Mapping[str, Any], where: str, **extra: Any) -> Any:
    """cls(**data) refusing unknown keys (listing the valid ones); lists become tuples."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: got {data!r}; expected a table")
    valid = {f.name for f in fields(cls)} - set(extra)
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {sorted(valid)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**kwargs, **extra)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Where outputs go and how often things happen (counted in optimizer steps)."""

    name: str = "gtasr"
    out_dir: str = ""  # default runs/<name>
    seed: int = 0
    device: str = "auto"  # auto = cuda when available
    amp: str = "auto"  # auto = bf16 on CUDA, none on CPU
    log_every: int = 10
    val_every: int = 1000
    ckpt_every: int = 5000
    keep_checkpoints: int = 2
    export: str = ""  # EMA weights of the last stage, safetensors; default <out_dir>/<name>_ema.safetensors
    tensorboard: bool = False  # also log to TensorBoard when it is installed
    progress: bool = True

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ConfigError(f"run.amp is {self.amp!r}; expected one of {list(AMP_MODES)}")
        for name in ("log_every", "val_every", "ckpt_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"run.{name} is {getattr(self, name)}; expected >= 1")

    @property
    def out_path(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    @property
    def export_path(self) -> Path:
        return Path(self.export) if self.export else self.out_path / f"{self.name}_ema.safetensors"


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """HR image folders, random ``crop``-pixel crops (LR = crop/4), batch per process."""

    roots: tuple[str, ...] = ()
    crop: int = 256
    batch_size: int = 32  # per optimizer step and process, before gradient accumulation splits it
    num_workers: int = 4
    val_roots: tuple[str, ...] = ()  # fixed validation images (centre crops); default: training images
    val_crop: int = 256
    val_images: int = 4
    # Small-data recipe choices (the release uses neither): "dihedral" flips/rotates each crop;
    # clean_prob is the chance that a sample's LR is plain bicubic x4 (antialiased, 8-bit) instead
    # of the Real-ESRGAN degradation.
    augment: str = "none"
    clean_prob: float = 0.0
    # Keep decoded training images in memory (each loader worker holds its own copy): for a few
    # photos, not for large datasets.
    cache_images: bool = False
    # Make each batch's LR (degradation + clean mix) in the loader's worker processes, on the CPU,
    # while the device runs the previous step; off: in the training step, on the device. Same
    # draws either way; the LR differs only by device round-off.
    lr_in_loader: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "roots", tuple(str(r) for r in self.roots))
        if self.augment not in AUGMENTS:
            raise ConfigError(f"data.augment is {self.augment!r}; expected one of {list(AUGMENTS)}")
        if not 0.0 <= self.clean_prob <= 1.0:
            raise ConfigError(f"data.clean_prob is {self.clean_prob}; expected a probability in [0, 1]")
        object.__setattr__(self, "val_roots", tuple(str(r) for r in self.val_roots))
        if not self.roots:
            raise ConfigError("data.roots is empty; expected at least one folder of HR images")
        for name in ("crop", "val_crop"):
            if getattr(self, name) < 4 or getattr(self, name) % 4:
                raise ConfigError(f"data.{name} is {getattr(self, name)}; expected a positive multiple of 4 (scale x4)")
        if self.batch_size < 1 or self.num_workers < 0 or self.val_images < 1:
            raise ConfigError(f"data: batch_size {self.batch_size}, num_workers {self.num_workers}, "
                              f"val_images {self.val_images}; expected >= 1, >= 0, >= 1")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW as released (SPEC §5): not PyTorch's default weight decay; LR halved at 50k."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.9)
    eps: float = 1e-8
    weight_decay: float = 0.0
    lr_milestones: tuple[int, ...] = (50_000,)
    lr_gamma: float = 0.5
    grad_accum: int = 1  # micro-batches per optimizer step; batch_size must divide by it
    ema_decay: float = 0.999
    # Small-compute option (not in the release): decay min(ema_decay, (1+k)/(10+k)) so a short
    # run's EMA is not dominated by the random initialisation.
    ema_warmup: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_milestones", tuple(int(m) for m in self.lr_milestones))
        if not self.lr > 0 or len(self.betas) != 2 or not 0 <= self.ema_decay < 1 or self.grad_accum < 1:
            raise ConfigError(f"optim: invalid values {self}; expected lr > 0, two betas, 0 <= ema_decay < 1, grad_accum >= 1")


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """One training stage. ``loss`` is the StageIConfig / StageIIConfig of training.losses."""

    stage: int
    steps: int
    optim: OptimConfig = OptimConfig()
    loss: Any = None
    target_refresh: int = 1000  # stage II: θ' ← θ at steps k > 0 with k % target_refresh == 0 (θ' = stage-I EMA before)
    init: str = ""  # stage II alone: stage-I training checkpoint or official .pth

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"stage{self.stage}.steps is {self.steps}; expected >= 1")
        if self.target_refresh < 1:
            raise ConfigError(f"stage{self.stage}.target_refresh is {self.target_refresh}; expected >= 1")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    recipe: str = "gtasr"  # gtasr | ctmsr (stage I with L_CT only; stage II with the CTMSR loss)
    run: RunConfig = RunConfig()
    model: NetworkConfig = field(default_factory=NetworkConfig)
    model_spec: str = "paper"  # the preset name / file the model came from, for the record
    data: DataConfig
    degradation: DegradationConfig = DegradationConfig()
    stages: tuple[StageConfig, ...]
    notes: str = ""  # free text stating what the recipe changes from the paper

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"recipe is {self.recipe!r}; expected one of {list(RECIPES)}")
        if not self.stages:
            raise ConfigError("the recipe has no [stage1] or [stage2] table")
        lr_side = self.data.crop // 4
        m = self.model.size_multiple
        for name, side in (("data.crop", lr_side), ("data.val_crop", self.data.val_crop // 4)):
            if side % m:
                raise ConfigError(f"{name}/4 = {side} LR px is not a multiple of the network's size rule {m}; "
                                  f"use a crop that is a multiple of {4 * m}")
        for st in self.stages:
            if self.data.batch_size % st.optim.grad_accum:
                raise ConfigError(f"data.batch_size {self.data.batch_size} is not divisible by "
                                  f"stage{st.stage}.optim.grad_accum {st.optim.grad_accum}")
        stage1 = self.stage(1)
        if stage1 is not None and self.recipe == "ctmsr" and stage1.loss.ct_weight == 0:
            raise ConfigError("recipe \"ctmsr\" trains stage I with L_CT alone: stage1.loss.ct_weight must be > 0")
        stage2 = self.stage(2)
        if stage2 is not None and (self.recipe == "ctmsr") != (getattr(stage2.loss, "recipe", "") == "ctmsr"):
            raise ConfigError(f"recipe {self.recipe!r} with stage2.loss.recipe {stage2.loss.recipe!r}; "
                              "CTMSR needs both set to \"ctmsr\", GTASR neither")
        if len(self.stages) == 1 and self.stages[0].stage == 2 and not self.stages[0].init:
            raise ConfigError("stage2.init is empty; a stage-II-only recipe needs the stage-I checkpoint to start from")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (the resolved config), JSON-serialisable."""
        out = {"recipe": self.recipe, "notes": self.notes, "run": asdict(self.run),
               "model": {"spec": self.model_spec, "network": self.model.to_dict()},
               "data": _plain(asdict(self.data)), "degradation": self.degradation.to_dict()}
        for st in self.stages:
            d = {k: v for k, v in asdict(st).items() if k not in ("optim", "loss", "stage")}
            d["optim"] = _plain(asdict(st.optim))
            d["loss"] = _plain(asdict(st.loss)) if is_dataclass(st.loss) else st.loss
            out[f"stage{st.stage}"] = d
        return _plain(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def stage(self, number: int) -> StageConfig | None:
        return next((s for s in self.stages if s.stage == number), None)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _loss_config(stage: int, data: Mapping[str, Any], where: str) -> Any:
    from .losses import StageIConfig, StageIIConfig

    cls = StageIConfig if stage == 1 else StageIIConfig
    return _build(cls, data, where)


def _stage(number: int, data: Mapping[str, Any]) -> StageConfig:
    where = f"stage{number}"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: got {data!r}; expected a table")
    data = dict(data)
    optim = _build(OptimConfig, data.pop("optim", {}), f"{where}.optim")
    loss = _loss_config(number, data.pop("loss", {}), f"{where}.loss")
    return _build(StageConfig, data, where, stage=number, optim=optim, loss=loss)


_TOP_KEYS = ("recipe", "notes", "run", "model", "data", "degradation", "stage1", "stage2")


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """TrainConfig from the parsed TOML tables; raises ConfigError naming unknown keys."""
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"recipe: unknown top-level keys {unknown}; valid keys: {list(_TOP_KEYS)}")
    recipe = raw.get("recipe", "gtasr")
    model_tbl = dict(raw.get("model", {}))
    unknown = sorted(set(model_tbl) - {"preset", "network"})
    if unknown:
        raise ConfigError(f"model: unknown keys {unknown}; valid keys: ['network', 'preset']")
    if "network" in model_tbl:  # an inline table of NetworkConfig fields
        network, spec = NetworkConfig.from_dict(model_tbl["network"]), "inline"
    else:
        spec = str(model_tbl.get("preset", "paper"))
        network = resolve_config(spec)
    stages = tuple(_stage(n, raw[f"stage{n}"]) for n in (1, 2) if f"stage{n}" in raw)
    return TrainConfig(
        recipe=recipe,
        notes=str(raw.get("notes", "")),
        run=_build(RunConfig, raw.get("run", {}), "run"),
        model=network,
        model_spec=spec,
        data=_build(DataConfig, raw.get("data", {}), "data"),
        degradation=DegradationConfig.from_dict(raw.get("degradation", {})),
        stages=stages,
    )


def load_config(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a TOML recipe. ``overrides`` maps dotted keys to values (``{"stage1.steps": 10}``)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
