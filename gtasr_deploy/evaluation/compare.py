"""`gtasr-eval compare`: make LR from HR photos, run several x4 methods, score and show them.

    result = run_compare("data/photos/heldout", "eval_out", CompareConfig(methods=("bicubic", "gtasr")))

Layout of ``out_dir`` (all images 8-bit PNG):

    gt/<stem>.png        the HR photo cropped (top-left) to a multiple of 4 on each side
    lr/<stem>.png        its x4-smaller input
    <method>/<stem>.png  every method's output
    <method>.csv         per-image metrics of that method (same format as `gtasr-eval --csv`)
    compare.md           the table (also printed), compare.csv the means at full precision
    grid.png             aligned centre crops: LR (nearest x4) | methods... | GT, one row per photo

Scores are computed from the written files with :func:`score_folders`, so
``gtasr-eval <out>/<method> --gt <out>/gt`` gives exactly the table's numbers.

LR making (SPEC §5, §6). ``bicubic``: PIL BICUBIC (antialiased) x1/4. ``realesrgan``: the training
degradation of :mod:`gtasr_deploy.training.degradation`, run on each photo alone (its resize mode,
noise type and order are drawn per batch) with a CPU generator seeded from ``(seed, index)``
(:func:`image_seed`), ``index`` being the photo's position in the stem-sorted folder; a photo's LR
therefore depends only on the seed and its index. Its resize factors are relative to the image, so
whole photos work as 256 crops do (sides >= 56 px).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from ..errors import BackendUnavailableError, ConfigError, InputError
from ..media.images import read_image, write_image
from .folders import (DEFAULT_METRICS, IMAGE_SUFFIXES, METRICS, FolderReport, Scorer, format_value, list_images,
                      parse_metrics, score_folders, write_csv)
from .peers import METHODS, SCALE, Method, MethodOptions, open_method
from ..training.degradation import degrade as realesrgan_degrade

DEGRADATIONS = ("realesrgan", "bicubic")
LogFn = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class CompareConfig:
    """Settings of one comparison. ``crop_px``: side of the grid's HR crops (multiple of 4)."""

    methods: tuple[str, ...] = ("bicubic", "gtasr")
    degrade: str = "realesrgan"
    seed: int = 0
    metrics: tuple[str, ...] = DEFAULT_METRICS
    method_options: MethodOptions = MethodOptions()
    crop_px: int = 128
    cache_dir: str | Path | None = None  # metric assets; None = default cache

    def __post_init__(self) -> None:
        if self.degrade not in DEGRADATIONS:
            raise ConfigError(f"--degrade {self.degrade!r}; expected one of {', '.join(DEGRADATIONS)}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"--methods {','.join(self.methods)!r}; expected a comma list of {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"--methods {','.join(self.methods)!r} names a method twice")
        if self.crop_px < SCALE or self.crop_px % SCALE:
            raise ConfigError(f"grid crop {self.crop_px} px; expected a positive multiple of {SCALE}")
        object.__setattr__(self, "metrics", parse_metrics(self.metrics))


@dataclass(frozen=True, kw_only=True)
class CompareResult:
    """Reports of the methods that ran, reasons of those skipped, and the files written."""

    config: CompareConfig
    out_dir: Path
    stems: tuple[str, ...]
    reports: Mapping[str, FolderReport]
    skipped: Mapping[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------ LR making
def image_seed(seed: int, index: int) -> int:
    """Generator seed of photo ``index`` (a 63-bit int from numpy's SeedSequence of (seed, index))."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return int(state) & (2**63 - 1)


def crop_to_multiple(img: np.ndarray, multiple: int = SCALE) -> np.ndarray:
    """Top-left crop of (H,W,...) so that H and W are multiples of ``multiple``."""
    h, w = img.shape[:2]
    return img[: h - h % multiple, : w - w % multiple]


def make_lr(gt: np.ndarray, *, degrade: str, seed: int = 0, index: int = 0) -> np.ndarray:
    """uint8 (H,W,3) GT, H and W multiples of 4 -> uint8 (H/4,W/4,3) LR (see module doc)."""
    h, w, _ = gt.shape
    if degrade == "bicubic":
        return np.asarray(PILImage.fromarray(gt).resize((w // SCALE, h // SCALE), PILImage.BICUBIC))
    import torch


    gen = torch.Generator().manual_seed(image_seed(seed, index))
    x = torch.from_numpy(np.ascontiguousarray(gt.transpose(2, 0, 1))).float().div(255.0)[None]
    lr = realesrgan_degrade(x, generator=gen, scale=SCALE)[0].numpy().transpose(1, 2, 0)
    return np.rint(lr * 255.0).astype(np.uint8)  # already on the 8-bit grid; rint removes float error


def _to_unit(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


def _check_fresh(out_dir: Path, subdirs: list[str], stems: set[str]) -> None:
    """Refuse output folders holding images of other stems: they would be scored too."""
    for sub in subdirs:
        folder = out_dir / sub
        if not folder.is_dir():
            continue
        stale = [p.name for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in stems]
        if stale:
            raise InputError(f"{folder}: holds {stale[0]} (and {len(stale) - 1} more) from another run; "
                             "expected an empty or matching --out folder (choose a new --out)")


def prepare_inputs(hr_dir: Path, out_dir: Path, config: CompareConfig) -> dict[str, np.ndarray]:
    """Write gt/ and lr/; return stem -> LR uint8 (h,w,3)."""
    hrs = list_images(hr_dir)
    if not hrs:
        raise InputError(f"{hr_dir}: no images ({', '.join(IMAGE_SUFFIXES)}); expected HR photos")
    _check_fresh(out_dir, ["gt", "lr", *config.methods], set(hrs))
    pairs = {}  # every photo checked before anything is written: a bad one is a usage error
    for index, (stem, path) in enumerate(hrs.items()):
        gt = crop_to_multiple(np.rint(read_image(path).rgb * 255.0).astype(np.uint8))
        if min(gt.shape[:2]) < SCALE:
            raise InputError(f"{path}: too small for a x{SCALE} comparison; expected at least {SCALE} px per side")
        try:
            pairs[stem] = gt, make_lr(gt, degrade=config.degrade, seed=config.seed, index=index)
        except InputError as err:
            raise InputError(f"{path}: {err}") from None
    (out_dir / "gt").mkdir(parents=True, exist_ok=True)
    (out_dir / "lr").mkdir(exist_ok=True)
    for stem, (gt, lr) in pairs.items():
        write_image(out_dir / "gt" / f"{stem}.png", _to_unit(gt))
        write_image(out_dir / "lr" / f"{stem}.png", _to_unit(lr))
    return {stem: lr for stem, (_, lr) in pairs.items()}


# ------------------------------------------------------------------------------------ running
def open_methods(config: CompareConfig, log: LogFn) -> tuple[list[Method], dict[str, str]]:
    """Build the requested methods; a peer that is not installed is skipped (name -> reason)."""
    methods, skipped = [], {}
    try:
        for name in config.methods:
            try:
                methods.append(open_method(name, config.method_options))
            except BackendUnavailableError as err:
                skipped[name] = str(err)
                log(f"skipping {name}: {err}")
    except BaseException:
        for method in methods:
            method.close()
        raise
    return methods, skipped


def run_compare(hr_dir: str | Path, out_dir: str | Path, config: CompareConfig = CompareConfig(), *,
                log: LogFn | None = None) -> CompareResult:
    """Make LR, run every method (skipping missing peers), score, write table, CSVs and grid."""
    log = log or (lambda _msg: None)
    hr_dir, out_dir = Path(hr_dir), Path(out_dir)
    methods, skipped = open_methods(config, log)  # first, so bad weights fail before anything is written
    try:
        lrs = prepare_inputs(hr_dir, out_dir, config)
        log(f"{len(lrs)} photo(s) from {hr_dir}, LR by {config.degrade} (seed {config.seed}) -> {out_dir}")
        for method in methods:
            (out_dir / method.name).mkdir(exist_ok=True)
            for i, (stem, lr) in enumerate(lrs.items()):
                log(f"{method.name}: {stem} ({i + 1}/{len(lrs)})")
                write_image(out_dir / method.name / f"{stem}.png", method(lr))
    finally:
        for method in methods:
            method.close()
    ran = [m.name for m in methods]
    scorer = Scorer(config.metrics, cache_dir=config.cache_dir)
    reports = {}
    for name in ran:
        log(f"scoring {name}")
        reports[name] = score_folders(out_dir / name, out_dir / "gt", scorer=scorer)
        write_csv(reports[name], out_dir / f"{name}.csv")
    result = CompareResult(config=config, out_dir=out_dir, stems=tuple(lrs), reports=reports, skipped=skipped)
    (out_dir / "compare.md").write_text(format_table(result), encoding="utf-8")
    _write_means_csv(result, out_dir / "compare.csv")
    if ran:
        write_image(out_dir / "grid.png", make_grid(out_dir, result.stems, ran, crop_px=config.crop_px))
    return result


# ------------------------------------------------------------------------------------ outputs
def problems(result: CompareResult) -> list[str]:
    """'<method>: <what was not scored>' for every method (see FolderReport.problems)."""
    return [f"{name}: {line}" for name, report in result.reports.items() for line in report.problems()]


def format_table(result: CompareResult) -> str:
    """Markdown: settings, one row per method with the metric means, then skipped/unavailable."""
    cfg = result.config
    header = [f"{m.upper()} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in cfg.metrics]
    lines = [
        "# gtasr-eval compare",
        "",
        f"{len(result.stems)} photo(s), GT cropped to multiples of {SCALE}; LR by {cfg.degrade} x1/{SCALE}"
        + (f" (seed {cfg.seed}, per-photo generator from (seed, index))" if cfg.degrade == "realesrgan" else "")
        + "; PSNR/SSIM on Y (BT.601), no border crop; LPIPS-Alex.",
        "",
        "| method | " + " | ".join(header) + " |",
        "|---|" + "---:|" * len(header),
    ]
    for name, report in result.reports.items():
        summary = report.summary()
        lines.append(f"| {name} | " + " | ".join(format_value(m, summary[m][0]) for m in cfg.metrics) + " |")
    notes = {m: r for report in result.reports.values() for m, r in report.unavailable.items()}
    left_out = problems(result)
    if result.skipped or notes or left_out:
        lines.append("")
    lines += [f"- skipped {reason}" for reason in result.skipped.values()]  # the reason starts with the name
    lines += [f"- {m} unavailable: {reason}" for m, reason in notes.items()]
    lines += [f"- {line}" for line in left_out if ": unavailable: " not in line]
    lines += ["", f"Reproduce a row: `gtasr-eval {result.out_dir}/<method> --gt {result.out_dir}/gt`"]
    return "\n".join(lines) + "\n"


def _write_means_csv(result: CompareResult, path: Path) -> None:
    metrics = result.config.metrics
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "images", *metrics])
        for name, report in result.reports.items():
            summary = report.summary()
            cells = ["" if math.isnan(summary[m][0]) else repr(summary[m][0]) for m in metrics]
            writer.writerow([name, len(report.rows), *cells])


_LABEL_PX, _GAP_PX = 14, 2


def make_grid(out_dir: Path, stems: tuple[str, ...], methods: list[str], *, crop_px: int = 128) -> np.ndarray:
    """float32 grid (rows = photos; columns = LR nearest x4 | methods | GT) of aligned centre crops,
    read back from the written PNGs, with a label row on top."""
    columns = ["lr", *methods, "gt"]
    tiles = []
    for stem in stems:
        gt = read_image(out_dir / "gt" / f"{stem}.png").rgb
        h, w = gt.shape[:2]
        c = min(crop_px, h, w) // SCALE * SCALE
        y, x = (h - c) // 2 // SCALE * SCALE, (w - c) // 2 // SCALE * SCALE  # on the LR grid, so crops align
        row = []
        for col in columns:
            img = read_image(out_dir / col / f"{stem}.png").rgb
            if col == "lr":
                img = img[y // SCALE:(y + c) // SCALE, x // SCALE:(x + c) // SCALE].repeat(SCALE, 0).repeat(SCALE, 1)
            else:
                img = img[y:y + c, x:x + c]
            row.append(np.pad(img, ((0, crop_px - c), (0, crop_px - c), (0, 0)), constant_values=1.0))
        tiles.append(row)
    cell = crop_px + _GAP_PX
    grid = np.ones((_LABEL_PX + cell * len(stems), cell * len(columns), 3), np.float32)
    for r, row in enumerate(tiles):
        for k, img in enumerate(row):
            grid[_LABEL_PX + r * cell:_LABEL_PX + r * cell + crop_px, k * cell:k * cell + crop_px] = img
    label = PILImage.fromarray(np.rint(grid[:_LABEL_PX] * 255).astype(np.uint8))
    draw = ImageDraw.Draw(label)
    for k, col in enumerate(columns):
        draw.text((k * cell + 2, 1), {"lr": "LR (nearest)", "gt": "GT"}.get(col, col), fill=(0, 0, 0))
    grid[:_LABEL_PX] = np.asarray(label, np.float32) / 255.0
    return grid
