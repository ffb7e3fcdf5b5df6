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
import re
try:
    import tomllib
except ImportError:  # Python 3.10: the same parser from PyPI
    import tomli as tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from ..model.config import NetworkConfig, resolve_config
from .config_types import checked_values
from .data import AUGMENTS
from .degradation import DegradationConfig
from .losses import StageIConfig, StageIIConfig

RECIPES = ("gtasr", "ctmsr")
AMP_MODES = ("none", "bf16", "fp16")
MAX_CROP = 4096  # HR px per side; the paper trains at 256, and one 4096 px sample already takes 200 MB in fp32
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def _build(cls: type, data: Mapping[str, Any], where: str, **extra: Any) -> Any:
    """cls(**data) refusing unknown keys (listing the valid ones) and values of the wrong type;
    lists become tuples."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: got {data!r}; expected a table")
    valid = {f.name for f in fields(cls)} - set(extra)
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {sorted(valid)}")
    kwargs = checked_values(cls, data, where)
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
    device: str = "auto"  # auto = cuda when available; else cpu, cuda or cuda:N
    # Precision. "none": fp32, as the release trains (SPEC §5); on CUDA with PyTorch's defaults, as
    # the release ran: cuDNN convolutions may use TF32, matmuls stay full fp32. "bf16" (CPU or CUDA) /
    # "fp16" (CUDA): autocast over the networks and the losses — an explicit, stated option only: on
    # CPU bf16 moved the input gradient of ω·LPIPS(x̂0, sg(x̂0 − Δ)), the DTM/Stab signal, by 26–48%
    # (cosine 0.89–0.97; issue 21) and 26–111% (cosine 0.60–0.97) when re-measured with
    # `python -m gtasr_deploy.training.precision` on the held-out photos; over a whole stage-II
    # step (`--step`) the DTM / Stab parameter gradients moved by 49–54% / 101–141%.
    amp: str = "none"
    log_every: int = 10
    val_every: int = 1000
    ckpt_every: int = 5000
    keep_checkpoints: int = 2
    export: str = ""  # EMA weights of the last stage, safetensors; default <out_dir>/<name>_ema.safetensors
    tensorboard: bool = False  # also log to TensorBoard when it is installed
    progress: bool = True
    val_png: bool = True  # write <out_dir>/val/s<stage>_<step>.png (bicubic | SR | HR rows) at each validation

    def __post_init__(self) -> None:
        if self.amp == "auto":
            raise ConfigError('run.amp "auto" (bf16 autocast on CUDA) was removed: training defaults to fp32 as '
                              'released; write amp = "none", or amp = "bf16" to choose reduced precision')
        if self.amp not in AMP_MODES:
            raise ConfigError(f"run.amp is {self.amp!r}; expected one of {list(AMP_MODES)}")
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f'run.device is {self.device!r}; expected "auto", "cpu", "cuda" or "cuda:N"')
        if self.amp == "fp16" and self.device == "cpu":
            raise ConfigError('run.amp "fp16" needs CUDA (a GradScaler on the GPU); on the CPU use "bf16" or "none"')
        if not self.name or any(c in self.name for c in "/\\") or self.name in (".", ".."):
            raise ConfigError(f"run.name is {self.name!r}; expected a plain name (it names files: <out_dir>/<name>_ema.safetensors)")
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
            if not 4 <= getattr(self, name) <= MAX_CROP or getattr(self, name) % 4:
                raise ConfigError(f"data.{name} is {getattr(self, name)}; expected a positive multiple of 4 (scale x4), "
                                  f"at most {MAX_CROP}")
        if not 1 <= self.batch_size <= 65536 or not 0 <= self.num_workers <= 256 or not 1 <= self.val_images <= 1024:
            raise ConfigError(f"data: batch_size {self.batch_size}, num_workers {self.num_workers}, "
                              f"val_images {self.val_images}; expected 1..65536, 0..256, 1..1024")


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
        if (not self.lr > 0 or len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas) or self.eps < 0
                or self.weight_decay < 0 or not self.lr_gamma > 0 or not 0 <= self.ema_decay < 1 or self.grad_accum < 1):
            raise ConfigError(f"optim: invalid values {self}; expected lr > 0, two betas in [0, 1), eps >= 0, "
                              "weight_decay >= 0, lr_gamma > 0, 0 <= ema_decay < 1, grad_accum >= 1")


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """One training stage. ``loss`` is the StageIConfig / StageIIConfig of training.losses."""

    stage: int
    steps: int
    optim: OptimConfig = OptimConfig()
    loss: Any = None
    target_refresh: int = 1000  # stage II: θ' ← θ at steps k > 0 with k % target_refresh == 0 (θ' = stage-I EMA before)
    # stage II alone: stage-I training checkpoint or official .pth; stage I: weights to fine-tune
    # (θ and EMA ← the file's params / params_ema, or its only weights), instead of a random init
    init: str = ""

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


def _network_values(table: Mapping[str, Any]) -> dict[str, Any]:
    """An inline [model.network] table, type-checked: every size in a network is a positive integer,
    dropout a probability, the other numbers positive."""
    values = checked_values(NetworkConfig, {k: v for k, v in table.items() if k in _NETWORK_DEFAULTS}, "model.network")
    for key, value in values.items():
        if isinstance(_NETWORK_DEFAULTS[key], float):
            ok, expected = (0 <= value < 1, "a probability in [0, 1)") if key == "dropout" else (0 < value < math.inf, "a positive number")
        else:
            ok = all(1 <= v <= 65536 for v in (value if isinstance(value, tuple) else (value,)))
            expected = "positive integers up to 65536"
        if not ok:
            raise ConfigError(f"model.network.{key} is {list(value) if isinstance(value, tuple) else value}; expected {expected}")
    return {**table, **values}  # unknown keys stay for NetworkConfig.from_dict to name


def _group_norm_rules(net: NetworkConfig) -> NetworkConfig:
    """The channel counts model/network.py's GroupNorms can split (Swin: 32 groups; UNet: min(32,
    C/4)), checked at load time so that an inline network fails here, not at its first forward."""
    if net.swin_embed_dim % 32:
        raise ConfigError(f"model.network.swin_embed_dim is {net.swin_embed_dim}; expected a multiple of 32 "
                          "(the Swin layers' GroupNorm has 32 groups)")
    for mult in net.channel_mult:
        channels = net.model_channels * mult
        if channels % min(32, channels // 4):
            raise ConfigError(f"model.network: model_channels {net.model_channels} x channel_mult {mult} = {channels} "
                              f"channels cannot be split into GroupNorm's min(32, C/4) = {min(32, channels // 4)} groups")
    return net


_NETWORK_DEFAULTS = NetworkConfig().to_dict()
_TOP_KEYS = ("recipe", "notes", "run", "model", "data", "degradation", "stage1", "stage2")


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """TrainConfig from the parsed TOML tables; raises ConfigError naming unknown keys."""
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"recipe: unknown top-level keys {unknown}; valid keys: {list(_TOP_KEYS)}")
    recipe = raw.get("recipe", "gtasr")
    model_tbl = raw.get("model", {})
    if not isinstance(model_tbl, Mapping):
        raise ConfigError(f"model: got {model_tbl!r}; expected a table with preset = \"paper\" | \"demo\" or [model.network]")
    if not isinstance(model_tbl.get("network", {}), Mapping):
        raise ConfigError(f"model.network: got {model_tbl['network']!r}; expected a table of network config fields")
    unknown = sorted(set(model_tbl) - {"preset", "network"})
    if unknown:
        raise ConfigError(f"model: unknown keys {unknown}; valid keys: ['network', 'preset']")
    if "network" in model_tbl:  # an inline table of NetworkConfig fields
        network, spec = _group_norm_rules(NetworkConfig.from_dict(_network_values(model_tbl["network"]))), "inline"
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
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; expected a TOML recipe file (e.g. training/demo.toml)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML recipe (not UTF-8 text; a binary file?)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                break  # not a table: config_from_dict names the problem
        else:
            node[leaf] = value
    try:
        return config_from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
