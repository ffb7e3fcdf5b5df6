"""`gtasr-eval targets`: do the GTASR weights beat bicubic on held-out photos? (the weights' bar)

    report = run_targets("data/photos/heldout", TargetsConfig(weights=None))   # None: embedded weights
    print(format_report(report))

For each photo of the folder (stem-sorted), a centre crop of ``crop`` HR px (0 = the whole photo,
cut to a multiple of 4) gets two LRs — ``bicubic`` (PIL BICUBIC x1/4, antialiased) and
``degraded`` (the training degradation: blur, resize, noise and JPEG, twice; seeded per photo as
in `gtasr-eval compare`) — and each LR is upscaled by bicubic and by GTASR. Outputs are rounded
to 8 bit, as a user gets them, then scored against the HR crop:

- PSNR-Y (BT.601, no border crop) and LPIPS-Alex (the project's offline weights);
- colour: the mean of each RGB channel of GTASR's output minus that of bicubic's, in 1/255 units,
  per photo; the report gives the largest absolute difference over photos and channels.

Targets (per LR kind, means over the photos): LPIPS at least ``LPIPS_MARGIN`` below bicubic's,
PSNR-Y at most ``PSNR_SLACK_DB`` below bicubic's, and no photo's channel mean further than
``COLOUR_TOLERANCE`` (2/255) from bicubic's.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from ..media.images import read_image
from ..metrics.fullref import psnr_y
from .compare import crop_to_multiple, make_lr
from .folders import Scorer, list_images
from .peers import SCALE, MethodOptions, open_method

LPIPS_MARGIN = 0.03
PSNR_SLACK_DB = 1.0
COLOUR_TOLERANCE = 2.0  # in 1/255 units
LR_KINDS = {"bicubic": "bicubic", "degraded": "realesrgan"}  # report name -> compare's --degrade
LogFn = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class TargetsConfig:
    crop: int = 256  # HR px of the centre crop; 0 = whole photos
    seed: int = 0  # degradation and GTASR noise
    method_options: MethodOptions = MethodOptions()
    cache_dir: str | Path | None = None  # metric assets

    def __post_init__(self) -> None:
        if self.crop < 0 or self.crop % SCALE:
            raise InputError(f"--crop {self.crop}; expected 0 (whole photos) or a positive multiple of {SCALE}")


@dataclass(frozen=True, kw_only=True)
class KindResult:
    """Means over the photos for one LR kind, per-photo colour differences, and the verdicts."""

    kind: str
    psnr_y: dict[str, float]  # method -> mean PSNR-Y
    lpips: dict[str, float]  # method -> mean LPIPS
    colour: dict[str, list[float]]  # stem -> [dR, dG, dB] of mean(gtasr) - mean(bicubic), 1/255 units
    per_photo: dict[str, dict[str, float]] = field(default_factory=dict)  # stem -> gtasr-minus-bicubic deltas

    @property
    def colour_max(self) -> float:
        return max((abs(v) for values in self.colour.values() for v in values), default=math.nan)

    def verdicts(self) -> dict[str, bool]:
        return {
            "lpips": self.lpips["gtasr"] <= self.lpips["bicubic"] - LPIPS_MARGIN,
            "psnr_y": self.psnr_y["gtasr"] >= self.psnr_y["bicubic"] - PSNR_SLACK_DB,
            "colour": self.colour_max <= COLOUR_TOLERANCE,
        }


@dataclass(frozen=True, kw_only=True)
class TargetsReport:
    config: TargetsConfig
    stems: tuple[str, ...]
    kinds: tuple[KindResult, ...]

    @property
    def met(self) -> bool:
        return all(all(k.verdicts().values()) for k in self.kinds)


def centre_crop(img: np.ndarray, crop: int) -> np.ndarray:
    """The centre ``crop``-px square of (H,W,3) (the whole side where the photo is smaller), then cut
    to multiples of 4; crop 0 = the whole photo."""
    if crop:
        h, w = img.shape[:2]
        top, left = max(0, (h - crop) // 2), max(0, (w - crop) // 2)
        img = img[top:top + crop, left:left + crop]
    return crop_to_multiple(img, SCALE)


def _to8(img: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def load_crops(hr_dir: str | Path, crop: int) -> dict[str, np.ndarray]:
    """stem -> uint8 (H,W,3) HR crop; every photo checked before any method runs."""
    photos = list_images(Path(hr_dir))
    if not photos:
        raise InputError(f"{hr_dir}: no images; expected held-out HR photos (python -m gtasr_deploy.training.photos data/photos)")
    crops = {}
    for stem, path in photos.items():
        gt = centre_crop(_to8(read_image(path).rgb), crop)
        if min(gt.shape[:2]) < SCALE:
            raise InputError(f"{path}: too small for a x{SCALE} evaluation; expected at least {SCALE} px per side")
        crops[stem] = gt
    return crops


def run_targets(hr_dir: str | Path, config: TargetsConfig = TargetsConfig(), *, log: LogFn | None = None) -> TargetsReport:
    log = log or (lambda _msg: None)
    crops = load_crops(hr_dir, config.crop)
    methods = {name: open_method(name, config.method_options) for name in ("bicubic", "gtasr")}
    scorer = Scorer(("lpips",), cache_dir=config.cache_dir)
    kinds = []
    try:
        for kind, degrade in LR_KINDS.items():
            scores = {m: {"psnr_y": [], "lpips": []} for m in methods}
            colour, per_photo = {}, {}
            for index, (stem, gt) in enumerate(crops.items()):
                log(f"{kind}: {stem} ({index + 1}/{len(crops)})")
                lr = make_lr(gt, degrade=degrade, seed=config.seed, index=index)
                gt_f = gt.astype(np.float32) / 255.0
                outs = {}
                for name, method in methods.items():
                    sr8 = _to8(method(lr))
                    outs[name] = sr8
                    sr_f = sr8.astype(np.float32) / 255.0
                    scores[name]["psnr_y"].append(psnr_y(sr8, gt))
                    values, notes = scorer.score(sr_f, gt_f)
                    if math.isnan(values["lpips"]):
                        raise InputError(f"LPIPS unavailable ({notes.get('lpips') or scorer.unavailable.get('lpips')}); "
                                         "run `gtasr-eval fetch-assets`")
                    scores[name]["lpips"].append(values["lpips"])
                means = [outs[m].reshape(-1, 3).astype(np.float64).mean(axis=0) for m in ("gtasr", "bicubic")]
                colour[stem] = [float(v) for v in means[0] - means[1]]
                per_photo[stem] = {"psnr_y": scores["gtasr"]["psnr_y"][-1] - scores["bicubic"]["psnr_y"][-1],
                                   "lpips": scores["gtasr"]["lpips"][-1] - scores["bicubic"]["lpips"][-1]}
            kinds.append(KindResult(kind=kind, psnr_y={m: float(np.mean(s["psnr_y"])) for m, s in scores.items()},
                                    lpips={m: float(np.mean(s["lpips"])) for m, s in scores.items()},
                                    colour=colour, per_photo=per_photo))
    finally:
        for method in methods.values():
            method.close()
    return TargetsReport(config=config, stems=tuple(crops), kinds=tuple(kinds))


def format_report(report: TargetsReport) -> str:
    """Markdown: one row per LR kind with both methods, the differences and the verdicts."""
    cfg = report.config
    where = f"centre {cfg.crop} px crops" if cfg.crop else "whole photos"
    lines = [f"{len(report.stems)} held-out photo(s), {where}, x{SCALE}, seed {cfg.seed}; targets: LPIPS >= "
             f"{LPIPS_MARGIN} below bicubic, PSNR-Y <= {PSNR_SLACK_DB} dB below bicubic, every photo's mean "
             f"colour within {COLOUR_TOLERANCE:g}/255 of bicubic per channel", "",
             "| LR | bicubic PSNR-Y | GTASR PSNR-Y | Δ dB | bicubic LPIPS | GTASR LPIPS | Δ | max colour Δ (/255) | met |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for k in report.kinds:
        v = k.verdicts()
        failed = [name for name, ok in v.items() if not ok]
        lines.append(f"| {k.kind} | {k.psnr_y['bicubic']:.2f} | {k.psnr_y['gtasr']:.2f} | "
                     f"{k.psnr_y['gtasr'] - k.psnr_y['bicubic']:+.2f} | {k.lpips['bicubic']:.4f} | {k.lpips['gtasr']:.4f} | "
                     f"{k.lpips['gtasr'] - k.lpips['bicubic']:+.4f} | {k.colour_max:.2f} | "
                     f"{'yes' if not failed else 'no: ' + ', '.join(failed)} |")
    lines += ["", f"all targets met: {'yes' if report.met else 'no'}"]
    return "\n".join(lines) + "\n"


def report_json(report: TargetsReport) -> str:
    cfg = report.config
    return json.dumps({
        "config": {"crop": cfg.crop, "seed": cfg.seed, "weights": str(cfg.method_options.weights or "embedded")},
        "stems": list(report.stems),
        "kinds": [{**asdict(k), "colour_max": k.colour_max, "verdicts": k.verdicts()} for k in report.kinds],
        "met": report.met,
    }, indent=1)
