"""Metrics on folders of images (SPEC §6): pair SR and GT files by stem, score each image, summarise.

    report = score_folders("out/gtasr", "out/gt", metrics=("psnr", "ssim", "lpips"))
    write_csv(report, "scores.csv"); print(format_summary(report))

Full-reference metrics (PSNR/SSIM on BT.601 Y without border crop, LPIPS-Alex, LSD of Y) need a GT
with the same stem; an SR image without one (or a folder scored without ``gt_dir``) gets the
no-reference metrics only (NIQE, and the pyiqa metrics when that optional extra is usable).

A metric that cannot run at all (assets not fetched, pyiqa missing) is reported once as
"unavailable: <reason>"; one that cannot run on one image (too small for NIQE, GT of another size)
is NaN for that image with a note. Neither stops the others.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError, ConfigError, GtasrError, InputError
from ..atomic import atomic_write_bytes
from ..media.images import read_image
from ..batch.preflight import check_report_target
from ..metrics.lpips import LPIPS
from ..metrics import fullref
from ..metrics.niqe import niqe
from ..model.conventions import to_model_range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MEAN_ROW = "mean"  # stem of the CSV's last row, which holds the summary


@dataclass(frozen=True, kw_only=True)
class MetricInfo:
    """What a metric needs and how to print it."""

    name: str
    full_reference: bool
    higher_is_better: bool
    digits: int  # decimals in printed tables (the CSV keeps full precision)
    pyiqa_name: str | None = None  # set for the learned metrics that come from the optional pyiqa


METRICS: Mapping[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo(name="psnr", full_reference=True, higher_is_better=True, digits=2),
        MetricInfo(name="ssim", full_reference=True, higher_is_better=True, digits=4),
        MetricInfo(name="lpips", full_reference=True, higher_is_better=False, digits=4),
        MetricInfo(name="lsd", full_reference=True, higher_is_better=False, digits=2),
        MetricInfo(name="niqe", full_reference=False, higher_is_better=False, digits=2),
        MetricInfo(name="clipiqa", full_reference=False, higher_is_better=True, digits=4, pyiqa_name="clipiqa"),
        MetricInfo(name="musiq", full_reference=False, higher_is_better=True, digits=2, pyiqa_name="musiq"),
        MetricInfo(name="maniqa", full_reference=False, higher_is_better=True, digits=4, pyiqa_name="maniqa"),
        MetricInfo(name="liqe", full_reference=False, higher_is_better=True, digits=2, pyiqa_name="liqe"),
        MetricInfo(name="topiq", full_reference=False, higher_is_better=True, digits=4, pyiqa_name="topiq_nr"),
    )
}
DEFAULT_METRICS = ("psnr", "ssim", "lpips", "lsd", "niqe")
PYIQA_METRICS = tuple(name for name, m in METRICS.items() if m.pyiqa_name)


def parse_metrics(text: str | Sequence[str]) -> tuple[str, ...]:
    """'psnr,ssim' (or a sequence) -> validated names in the given order; 'all' = every metric,
    'default' = DEFAULT_METRICS. Raises ConfigError naming the valid choices."""
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    out: list[str] = []
    for name in names:
        expanded = tuple(METRICS) if name == "all" else DEFAULT_METRICS if name == "default" else (name,)
        for n in expanded:
            if n not in METRICS:
                raise ConfigError(f"--metrics: unknown metric {n!r}; expected a comma list of {', '.join(METRICS)} "
                                  "(or all, default)")
            if n not in out:
                out.append(n)
    if not out:
        raise ConfigError(f"--metrics is empty; expected a comma list of {', '.join(METRICS)}")
    return tuple(out)


def list_images(folder: str | Path) -> dict[str, Path]:
    """Image files directly inside ``folder`` (by suffix, not recursive), keyed by stem, sorted.

    Raises InputError when the folder is missing or two files share a stem (pairing would be ambiguous).
    """
    folder = Path(folder)
    if not os.path.isdir(folder):  # os.path: no exception for a name too long or a symlink loop
        raise InputError(f"{folder}: not a folder; expected a folder of images")
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{folder}: cannot list it ({exc.strerror or exc})") from None
    found: dict[str, Path] = {}
    for path in entries:
        # a FIFO, a broken link or a loop named like an image is kept: reading it says what it is
        if os.path.isdir(path) or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise InputError(f"{folder}: {found[path.stem].name} and {path.name} share the stem {path.stem!r}; "
                             "expected one image per stem (rename or remove one)")
        found[path.stem] = path
    return found


# ------------------------------------------------------------------------------- pyiqa (optional)
class _NetworkBlocked(OSError):
    pass


@contextlib.contextmanager
def no_network() -> Iterator[None]:
    """Refuse outgoing connections inside the block: pyiqa downloads missing weights on its own,
    and scoring must never download (only ``gtasr-eval fetch-assets --iqa`` may)."""

    def refuse(*_args, **_kwargs):
        raise _NetworkBlocked("weights not cached and downloads are off; run `gtasr-eval fetch-assets --iqa`")

    saved = socket.socket.connect, socket.create_connection
    socket.socket.connect, socket.create_connection = refuse, refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.create_connection = saved


def create_pyiqa_metric(name: str, *, allow_download: bool = False):
    """A pyiqa metric on CPU, or raise ``GtasrError("unavailable: ...")`` saying why it cannot run.

    ``allow_download`` is only for ``fetch-assets --iqa``; otherwise weights must already be cached.
    """
    try:
        import pyiqa  # optional extra `iqa`; needs torchvision and non-commercial weights
    except ImportError as err:
        raise GtasrError(f"unavailable: pyiqa is not installed ({err}); pip install 'gtasr-deploy[iqa]'") from err
    guard = contextlib.nullcontext() if allow_download else no_network()
    try:
        with guard:
            return pyiqa.create_metric(METRICS[name].pyiqa_name, device="cpu", as_loss=False)
    except Exception as err:  # pyiqa raises many types (download, state-dict, missing deps)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GtasrError(f"unavailable: pyiqa {METRICS[name].pyiqa_name} could not be created ({reason})") from err


# ------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True, kw_only=True)
class ImageScore:
    """One SR image's metrics. ``values``: metric -> float (NaN = not computed, see ``notes``)."""

    stem: str
    sr_path: Path
    gt_path: Path | None
    values: Mapping[str, float]
    notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class FolderReport:
    """All rows of one scored folder plus what could not be scored."""

    metrics: tuple[str, ...]
    rows: tuple[ImageScore, ...]
    unavailable: Mapping[str, str]  # metric -> reason, metrics that ran on no image at all
    gt_without_sr: tuple[str, ...] = ()  # GT stems that have no SR image
    unreadable: tuple[str, ...] = ()  # "<path>: <reason>" for SR/GT files that could not be decoded
    gt_given: bool = False

    def problems(self) -> list[str]:
        """One line per thing not scored: unreadable files, no SR/GT pair at all, GT images without
        an SR, metrics unavailable, and metrics that left images out (an SR image without a GT
        included). Empty exactly when :func:`format_summary` reports nothing as not scored."""
        lines = list(self.unreadable)
        paired = sum(r.gt_path is not None for r in self.rows)
        if self.gt_given and self.rows and not paired:
            lines.append("no SR image pairs with a GT image (files pair by stem)")
        if self.gt_without_sr:
            lines.append(f"GT without SR ({len(self.gt_without_sr)}), not scored: {', '.join(self.gt_without_sr)}")
        for name, (_, count) in self.summary().items():
            if name in self.unavailable:
                lines.append(f"{name}: unavailable: {self.unavailable[name]}")
                continue
            left_out = _left_out(self.rows, name)
            if left_out:
                lines.append(f"{name}: {len(left_out)} image(s) not scored, e.g. {left_out[0]}")
            elif count == 0 and self.rows:
                lines.append(f"{name}: scored no image")
        return lines

    def summary(self) -> dict[str, tuple[float, int]]:
        """metric -> (mean over images where it is not NaN, count); (NaN, 0) when none. inf propagates."""
        out = {}
        for name in self.metrics:
            vals = [r.values[name] for r in self.rows if not math.isnan(r.values.get(name, math.nan))]
            out[name] = (float(np.mean(vals)) if vals else math.nan, len(vals))
        return out


class Scorer:
    """Computes the selected metrics image by image; heavy models are built once, on first use."""

    def __init__(self, metrics: Sequence[str] = DEFAULT_METRICS, *, cache_dir: str | Path | None = None) -> None:
        self.metrics = parse_metrics(metrics)
        self.cache_dir = cache_dir
        self.unavailable: dict[str, str] = {}
        self._models: dict[str, object] = {}

    def _model(self, name: str):
        """The LPIPS / pyiqa module for ``name``, or None after recording why it is unavailable."""
        if name in self.unavailable:
            return None
        if name not in self._models:
            try:
                if name == "lpips":
                    self._models[name] = LPIPS("alex", cache_dir=self.cache_dir)
                else:
                    self._models[name] = create_pyiqa_metric(name)
            except GtasrError as err:
                self.unavailable[name] = str(err).removeprefix("unavailable: ")
                return None
        return self._models[name]

    def _one(self, name: str, sr: np.ndarray, gt: np.ndarray | None) -> float:
        import torch


        if name == "psnr":
            return fullref.psnr_y(sr, gt)
        if name == "ssim":
            return fullref.ssim_y(sr, gt)
        if name == "lsd":
            return fullref.lsd_y(sr, gt)
        if name == "niqe":
            return niqe(sr, cache_dir=self.cache_dir)
        model = self._model(name)
        if model is None:
            return math.nan
        to_t = lambda a: torch.from_numpy(np.array(a.transpose(2, 0, 1), np.float32))[None]  # noqa: E731
        with torch.no_grad():
            if name == "lpips":
                return float(model(to_model_range(to_t(sr)), to_model_range(to_t(gt)))[0])
            with no_network():
                return float(model(to_t(sr)).reshape(-1)[0])

    def score(self, sr: np.ndarray, gt: np.ndarray | None) -> tuple[dict[str, float], dict[str, str]]:
        """Metrics of one float32 (H,W,3) [0,1] SR image against an optional GT of the same shape.

        Returns (metric -> value, metric -> note for the NaN values)."""
        values: dict[str, float] = {}
        notes: dict[str, str] = {}
        for name in self.metrics:
            values[name] = math.nan
            if METRICS[name].full_reference and gt is None:
                notes[name] = "no GT"
            elif METRICS[name].full_reference and gt.shape != sr.shape:
                notes[name] = f"SR {sr.shape[1]}x{sr.shape[0]} vs GT {gt.shape[1]}x{gt.shape[0]}"
            elif name in self.unavailable:
                notes[name] = "unavailable"
            else:
                try:
                    values[name] = self._one(name, sr, gt)
                except CheckpointError as err:  # an asset is missing: no image can be scored
                    self.unavailable[name] = str(err)
                except InputError as err:  # this image only, e.g. NIQE on an image under 96 px
                    notes[name] = str(err)
                except MemoryError:
                    notes[name] = f"out of memory on this {sr.shape[1]}x{sr.shape[0]} image"
                except RuntimeError as err:  # a learned metric's own network refusing this image
                    if name not in self._models:
                        raise
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                    notes[name] = f"{name} failed on this image ({first[:200]})"
                if math.isnan(values[name]) and name in self.unavailable:
                    notes[name] = "unavailable"
        return values, notes


ProgressFn = Callable[[int, int, str], None]  # (done, total, stem)


def score_folders(sr_dir: str | Path, gt_dir: str | Path | None = None, *,
                  metrics: Sequence[str] = DEFAULT_METRICS, cache_dir: str | Path | None = None,
                  scorer: Scorer | None = None, progress: ProgressFn | None = None) -> FolderReport:
    """Score every image of ``sr_dir`` (pairs with ``gt_dir`` by stem when given); see module doc.

    ``scorer`` reuses built models across folders (its metrics then win over ``metrics``).
    Raises InputError for a missing/empty folder; unreadable images are listed in the report's
    ``unreadable`` (see :meth:`FolderReport.problems`) and the others are scored.
    """
    if scorer is None:
        metrics = parse_metrics(metrics)
        if gt_dir is None:  # nothing to pair with: no-reference metrics only
            full = [m for m in metrics if METRICS[m].full_reference]
            metrics = tuple(m for m in metrics if m not in full)
            if not metrics:
                no_ref = ", ".join(m for m in METRICS if not METRICS[m].full_reference)
                raise InputError(f"{', '.join(full)} need{'s' * (len(full) == 1)} a GT folder; "
                                 f"pass --gt GT_DIR or a no-reference metric ({no_ref})")
        scorer = Scorer(metrics, cache_dir=cache_dir)
    srs = list_images(sr_dir)
    if not srs:
        raise InputError(f"{sr_dir}: no images ({', '.join(IMAGE_SUFFIXES)}); expected SR outputs")
    gts = list_images(gt_dir) if gt_dir is not None else {}
    rows, unreadable = [], []
    for i, (stem, sr_path) in enumerate(srs.items()):
        gt_path = gts.get(stem)
        try:
            sr = read_image(sr_path).rgb
            gt = read_image(gt_path).rgb if gt_path is not None else None
        except (InputError, MemoryError) as exc:  # one bad file: say which, score the rest
            unreadable.append(str(exc) if isinstance(exc, InputError)
                              else f"{sr_path}: out of memory decoding it or its GT")
            if progress is not None:
                progress(i + 1, len(srs), stem)
            continue
        values, notes = scorer.score(sr, gt)
        rows.append(ImageScore(stem=stem, sr_path=sr_path, gt_path=gt_path, values=values, notes=notes))
        if progress is not None:
            progress(i + 1, len(srs), stem)
    return FolderReport(metrics=scorer.metrics, rows=tuple(rows), unavailable=dict(scorer.unavailable),
                        gt_without_sr=tuple(s for s in gts if s not in srs), unreadable=tuple(unreadable),
                        gt_given=gt_dir is not None)


# ------------------------------------------------------------------------------------- output
def _cell(value: float) -> str:
    """Full precision that reads back exactly (repr); NaN as an empty cell."""
    return "" if math.isnan(value) else repr(float(value))


def write_csv(report: FolderReport, path: str | Path) -> None:
    """Per-image CSV (stem, sr, gt, metrics..., notes), then one ``mean`` row with the summary.

    Values are written with ``repr`` so ``float(cell)`` gives back the exact number. The file is
    written atomically (an interrupted run leaves no half CSV); InputError when it cannot be."""
    path = Path(path)
    summary = report.summary()
    fh = io.StringIO(newline="")
    writer = csv.writer(fh)
    writer.writerow(["stem", "sr", "gt", *report.metrics, "notes"])
    for row in report.rows:
        notes = "; ".join(f"{k}: {v}" for k, v in row.notes.items())
        writer.writerow([row.stem, str(row.sr_path), str(row.gt_path or ""),
                         *(_cell(row.values[m]) for m in report.metrics), notes])
    unavailable = "; ".join(f"{k}: unavailable: {v}" for k, v in report.unavailable.items())
    writer.writerow([MEAN_ROW, "", "", *(_cell(summary[m][0]) for m in report.metrics), unavailable])
    try:
        if path.parent != Path():
            path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, fh.getvalue().encode("utf-8"))
    except OSError as exc:
        raise InputError(f"--csv {path}: cannot write ({exc.strerror or exc})") from None


def _left_out(rows: Sequence[ImageScore], name: str) -> list[str]:
    """'<stem>: <why>' for each image that metric ``name`` did not score."""
    return [f"{r.stem}: {r.notes[name]}" for r in rows if name in r.notes]


def check_csv_target(path: str | Path, sr_dir: str | Path, gt_dir: str | Path | None) -> None:
    """InputError unless ``--csv`` may be written at ``path``: never over an image of either folder,
    an image name, or an existing file that is not an earlier CSV of this command."""

    images = [*_listed(sr_dir), *(_listed(gt_dir) if gt_dir is not None else [])]
    check_report_target(path, images, option="--csv", is_report=_is_score_csv)


def _listed(folder: str | Path) -> list[Path]:
    try:
        return [p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    except OSError:  # a missing folder is score_folders' error to report
        return []


def _is_score_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return header[:3] == ["stem", "sr", "gt"] and header[-1:] == ["notes"]


def format_value(name: str, value: float) -> str:
    """A metric value with the metric's printed precision; '-' for NaN."""
    if math.isnan(value):
        return "-"
    return f"{value:.{METRICS[name].digits}f}"


def format_summary(report: FolderReport) -> str:
    """Multi-line text: one line per metric (mean, images counted), then what was unavailable."""
    paired = sum(r.gt_path is not None for r in report.rows)
    lines = [f"{len(report.rows)} image(s), {paired} paired with a GT"]
    if report.gt_without_sr:
        lines.append(f"GT without SR ({len(report.gt_without_sr)}): {', '.join(report.gt_without_sr)}")
    for name, (mean, count) in report.summary().items():
        arrow = "↑" if METRICS[name].higher_is_better else "↓"
        if name in report.unavailable:
            lines.append(f"  {name:8s} {arrow}  unavailable: {report.unavailable[name]}")
        else:
            line = f"  {name:8s} {arrow}  {format_value(name, mean):>10s}  (n={count})"
            skipped = _left_out(report.rows, name)
            if skipped:  # say why images were left out, with the first reason
                line += f"  {len(skipped)} not scored, e.g. {skipped[0]}"
            lines.append(line)
    return "\n".join(lines)
