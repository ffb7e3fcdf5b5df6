"""The batch loop of ``gtasr-upscale``: find inputs, plan outputs, shard, and process each file.

The super-resolution itself is injected (``sr_fn``), so everything here runs without a model.

Rules, stated once:

* Inputs, output names, shards and the settings of a run: :mod:`gtasr_deploy.batch.plan`
  (re-exported here).
* One path for every job, an image or a video: its settings (the run's; a video adds its
  encoder), then the skip rule, then the work, then the output put in place atomically with its
  completion record (:func:`gtasr_deploy.batch.records.recording`). A video is a stream of frames,
  each through the same per-picture call as an image (:func:`super_resolve`, with the same checks);
  :class:`gtasr_deploy.batch.video_jobs.VideoJobs` does its frames.
* The skip rule: an output is skipped only when its completion record
  (:mod:`gtasr_deploy.batch.records`) proves it is this tool's finished result for the same input
  and settings; a stale one of this tool is redone; a file this tool did not write is left alone
  and reported, unless ``overwrite``. So a re-run resumes an interrupted one and never keeps a
  wrong picture or video.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np
from tqdm import tqdm

from . import records as completion
from ..atomic import remove_stale_temps
from .plan import (  # noqa: F401 (the CLIs and serve use these through batch)
    IMAGE_SUFFIXES,
    OUTPUT_FORMATS,
    Job,
    check_json_target,
    collect_inputs,
    local_device_from_env,
    output_name,
    parse_shard,
    picture_settings,
    plan_outputs,
    select_shard,
    shard_from_env,
)
from .records import Verdict
from ..errors import GtasrError, InputError
from ..contract import SCALE
from ..media.images import (
    DEFAULT_MAX_PIXELS,
    atomic_write_bytes,
    format_for_suffix,
    read_image,
    upscale_alpha,
    write_image,
)
from ..interrupts import EXIT_INTERRUPTED, signals_as_interrupt
from .progress import is_terminal, log_line
from ..media.resize import OutputSize, format_problem, resize_planes
from .preflight import (  # noqa: F401 (the CLIs use these through batch)
    header_size,
    check_device,
    check_input_path,
    check_output_dir,
    check_output_path,
    check_output_sizes,
    check_report_path,
    check_report_target,
    missing_dirs,
    remove_empty_dirs,
)

_FLAT_INPUT = 16 / 255  # input value range below which a constant output is plausible, not a divergence
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}

# sr_fn(rgb) -> sr: float32 (H, W, 3) in [0, 1] -> float32 (scale·H, scale·W, 3) in [0, 1].
# With tile_progress=True it is called as sr_fn(rgb, on_tile=callback), callback(done, total).
SrFn = Callable[..., np.ndarray]


@dataclass(frozen=True, kw_only=True)
class FileRecord:
    """What happened to one job; sizes are (width, height), None when not known."""

    input: str
    output: str
    status: str  # "written" | "skipped" | "failed"
    reason: str | None = None  # why skipped/failed; for "written", a note (e.g. frames left out)
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    seconds: float = 0.0


@dataclass(frozen=True, kw_only=True)
class BatchSummary:
    records: tuple[FileRecord, ...] = field(default_factory=tuple)
    interrupted: bool = False
    report_error: str | None = None  # the JSON report could not be written

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)

    @property
    def written(self) -> int:
        return self.count("written")

    @property
    def skipped(self) -> int:
        return self.count("skipped")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def exit_code(self) -> int:
        """130 when interrupted, else 1 when a file failed or the JSON report failed, else 0
        (usage errors, 2, are the CLI's)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return 1 if self.failed or self.report_error else 0

    def line(self) -> str:
        text = f"{self.written} written, {self.skipped} skipped (done), {self.failed} failed"
        return f"interrupted: {text}" if self.interrupted else text

    def to_json(self) -> dict:
        return {"summary": {"written": self.written, "skipped": self.skipped, "failed": self.failed,
                            "interrupted": self.interrupted, "exit_code": self.exit_code},
                "files": [asdict(r) for r in self.records]}


# ---------------------------------------------------------------------------------- running


class JobHandler(Protocol):
    """The work of the jobs that are not still images (videos: :class:`gtasr_deploy.batch.video_jobs.VideoJobs`).

    ``run_batch`` gives it every job it ``handles``; ``settings`` is what goes into that job's
    completion record (the run's settings plus the handler's own). ``process`` is called only for
    a job the skip rule lets through; it runs each picture through :func:`super_resolve` with
    ``sr_fn``, puts the output in place with :func:`gtasr_deploy.batch.records.recording` (or
    ``recorded_output``) and returns the job's record."""

    def handles(self, job: Job) -> bool: ...

    def settings(self, job: Job, base: Mapping) -> Mapping: ...

    def process(self, job: Job, sr_fn: SrFn, *, scale: int, settings: Mapping, max_pixels: int | None,
                err: TextIO, progress: bool) -> FileRecord: ...


class ContractError(ValueError):
    """``sr_fn`` broke its contract (wrong shape): a bug, not a file's problem."""


class FileFailed(Exception):
    """This file fails, for ``reason`` (one line); the batch goes on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def run_batch(jobs: Sequence[Job], sr_fn: SrFn, *, scale: int = SCALE, overwrite: bool = False,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, quality: int = 95, progress: bool = True,
              summary: bool = True, json_report: str | os.PathLike | None = None,
              err: TextIO | None = None, tile_progress: bool = False,
              handle_sigterm: bool = True, settings: Mapping | None = None,
              unlisted: Sequence[tuple[str, str]] = (), output_size: OutputSize | None = None,
              strip_metadata: bool = False, handlers: Sequence[JobHandler] = ()) -> BatchSummary:
    """Decode -> ``sr_fn`` -> check -> bicubic alpha -> atomic write -> completion record, per job.

    A file's problem, whatever raised it (an input, OS error, name too long, out of memory, an
    exception of OpenCV, Pillow, numpy, PyAV or the engine, NaN/Inf or constant output, a
    write/encode error) prints ONE line ``error: <file>: <reason>`` on ``err`` and the batch goes
    on; ``unlisted`` (folder, reason) pairs, folders the search could not enter, count as failed
    too. An output is skipped only when its completion record (gtasr_deploy.batch.records) says it is
    this tool's finished result for the same input and ``settings`` (what shapes the picture;
    ``quality`` is added here). Jobs a ``handlers`` entry handles (videos) take the same path,
    their frames through the same ``sr_fn``. Ctrl-C, SIGTERM and SIGHUP (turned into
    KeyboardInterrupt while this runs on the main thread, gtasr_deploy.interrupts) stop the
    current file after cleaning its temp file, still write the summary and the JSON report (exit
    code 130), then propagate. ``sr_fn`` returning the wrong shape is a bug: :class:`ContractError`
    (a ValueError) propagates.
    ``output_size``: resize the x4 result (resize.py); EXIF/XMP/ICC go to each output unless
    ``strip_metadata`` (EXIF/XMP only: the ICC profile stays, the colours depend on it).
    Progress: bars when ``err`` is a terminal, else one plain line per file (progress.py).
    """
    err = sys.stderr if err is None else err
    base = {**(settings or {}), "scale": scale}
    settings = {**base, "quality": quality}
    if output_size is not None and not output_size.is_model_size:
        settings["output_size"] = {k: v for k, v in vars(output_size).items() if v is not None}
    if strip_metadata:
        settings["strip_metadata"] = True
    records = [FileRecord(input=folder, output="", status="failed", reason=reason) for folder, reason in unlisted]
    for record in records:
        _emit(f"error: {record.input}: {record.reason}", err, False)
    remove_run_temps(jobs)
    bars = progress and is_terminal(err)  # a log file gets plain lines, not escape codes
    bar = tqdm(total=len(jobs), file=err, disable=not bars, unit="img", dynamic_ncols=True)
    interrupted, current = False, None
    try:
        with signals_as_interrupt(handle_sigterm):
            for job in jobs:
                current = job
                bar.set_postfix_str(printable(job.rel.as_posix()), refresh=False)
                handler = next((h for h in handlers if h.handles(job)), None)
                tiles = _TileBar(err, enabled=bars) if tile_progress and handler is None else None
                try:
                    record = _guarded(job, lambda: _run_job(
                        job, handler, sr_fn, scale=scale, overwrite=overwrite, max_pixels=max_pixels,
                        settings=_job_settings(job, handlers, base, settings), quality=quality,
                        on_tile=tiles, output_size=output_size, strip_metadata=strip_metadata, err=err,
                        progress=progress))
                finally:
                    if tiles is not None:
                        tiles.close()
                records.append(record)
                current = None
                if record.status == "failed":
                    _emit(f"error: {job.src}: {record.reason}", err, bars)
                elif record.status == "written" and record.reason:  # e.g. frames left out
                    _emit(f"note: {job.src}: {record.reason}", err, bars)
                elif progress and not bars:
                    print(log_line(len(records) - len(unlisted), len(jobs), printable(job.rel.as_posix()),
                                   status=record.status, input_size=record.input_size,
                                   output_size=record.output_size, seconds=record.seconds,
                                   reason=record.reason), file=err, flush=True)
                bar.update()
    except KeyboardInterrupt:
        interrupted = True
        # a file finished right before the signal (its record written, not yet counted here) counts
        counted = bool(records) and current is not None and records[-1].input == str(current.src)
        if current is not None and not counted and _finished(current, handlers, base, settings):
            records.append(FileRecord(input=str(current.src), output=str(current.dst), status="written"))
        raise
    finally:
        bar.close()
        result = BatchSummary(records=tuple(records), interrupted=interrupted)
        if json_report is not None:
            problem = _write_report(Path(json_report), result, err)
            if problem:
                result = replace(result, report_error=problem)
        if summary:
            print(result.line(), file=err)
    return result


def remove_run_temps(jobs: Sequence[Job]) -> None:
    """Temp files of killed runs in the folders this run writes into (outputs and their records)."""
    folders = {folder for job in jobs for folder in (job.dst.parent, completion.record_path(job.dst).parent)}
    for folder in sorted(folders):
        with contextlib.suppress(OSError):
            remove_stale_temps(folder, recursive=False)


def _job_settings(job: Job, handlers: Sequence[JobHandler], base: Mapping, settings: Mapping) -> Mapping:
    """What goes into ``job``'s completion record: the run's settings, or its handler's."""
    handler = next((h for h in handlers if h.handles(job)), None)
    return settings if handler is None else handler.settings(job, base)


def _finished(job: Job, handlers: Sequence[JobHandler], base: Mapping, settings: Mapping) -> bool:
    try:
        own = _job_settings(job, handlers, base, settings)
        return completion.check(job.dst, job.src, job.rel, own) is Verdict.DONE
    except Exception:  # noqa: BLE001 (an unreadable record or a bad setting: not finished)
        return False


def _run_job(job: Job, handler: JobHandler | None, sr_fn: SrFn, *, scale: int, overwrite: bool,
             max_pixels: int | None, settings: Mapping, quality: int, on_tile: Callable[[int, int], None] | None,
             output_size: OutputSize | None, strip_metadata: bool, err: TextIO, progress: bool) -> FileRecord:
    """One job, an image or a video: the skip rule, then its work (``settings``: the job's own)."""
    skipped = _skip_record(job, settings, overwrite)
    if skipped is not None:
        return skipped
    if handler is not None:
        return handler.process(job, sr_fn, scale=scale, settings=settings, max_pixels=max_pixels, err=err,
                               progress=progress)
    return _process_image(job, sr_fn, scale=scale, max_pixels=max_pixels, quality=quality, on_tile=on_tile,
                          settings=settings, output_size=output_size, strip_metadata=strip_metadata)


def _skip_record(job: Job, settings: Mapping, overwrite: bool) -> FileRecord | None:
    """The one skip rule, for an image or a video (module docstring): the job's record when it is
    not to be done (done earlier, or someone else's file), None when it is to be done."""
    base = {"input": str(job.src), "output": str(job.dst)}
    if os.path.realpath(job.dst) == os.path.realpath(job.src):
        return FileRecord(**base, status="failed", reason=f"output {job.dst} would replace its input; "
                                                            "choose another output")
    verdict = completion.check(job.dst, job.src, job.rel, settings)
    if verdict is Verdict.DONE and not overwrite:
        return FileRecord(**base, status="skipped", reason="done earlier for this input and settings")
    if verdict is Verdict.FOREIGN and not overwrite:
        return FileRecord(**base, status="failed",
                          reason=f"{job.dst} exists and is not this tool's finished result for this input "
                                 "(no completion record, or changed since); --overwrite replaces it")
    return None


def _guarded(job: Job, work: Callable[[], FileRecord]) -> FileRecord:
    """``work()``, with the failures no stage foresaw, whatever library raised them, turned into
    this file's failure. A broken contract (:class:`ContractError`) is a bug and propagates."""
    start = time.perf_counter()
    try:
        return work()
    except ContractError:
        raise
    except FileFailed as exc:
        reason = exc.reason
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EIO... from any stage
        reason = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    except MemoryError:  # numpy's _ArrayMemoryError too
        reason = "out of memory on this file; try a smaller --tile, or a smaller image"
    except GtasrError as exc:
        reason = str(exc).removeprefix(f"{job.src}: ")
    except Exception as exc:  # noqa: BLE001 (cv2.error, PyAV, Pillow, numpy, an engine: this file fails)
        reason = f"{exception_name(exc)}: {_first_line(exc)}"
    return FileRecord(input=str(job.src), output=str(job.dst), status="failed", reason=" ".join(reason.split()),
                      seconds=time.perf_counter() - start)


def exception_name(exc: BaseException) -> str:
    """``cv2.error``, ``av.InvalidDataError``, ``ValueError``: the class with its top package."""
    module = type(exc).__module__.split(".")[0]
    name = type(exc).__qualname__
    return name if module == "builtins" else f"{module}.{name}"


def super_resolve(sr_fn: SrFn, rgb: np.ndarray, *, scale: int, src: Path,
                  on_tile: Callable[[int, int], None] | None = None) -> np.ndarray:
    """``sr_fn`` on one picture, an image or a video frame (float32 (H, W, 3) in [0, 1]), with the
    checks every picture gets: an engine's failure or a NaN/Inf or constant result is
    :class:`FileFailed` (this file fails), a wrong shape is :class:`ContractError` (a bug)."""
    try:
        sr = sr_fn(rgb) if on_tile is None else sr_fn(rgb, on_tile=on_tile)
    except GtasrError as exc:
        raise FileFailed(str(exc)) from None
    except RuntimeError as exc:  # torch / ONNX Runtime / TensorRT failing on this picture
        raise FileFailed(f"backend error: {type(exc).__name__}: {_first_line(exc)}") from None
    expected = (rgb.shape[0] * scale, rgb.shape[1] * scale, 3)
    if sr.shape != expected:
        raise ContractError(f"sr_fn returned shape {sr.shape} for {src}; expected {expected} (x{scale})")
    problem = output_problem(rgb, sr)
    if problem:
        raise FileFailed(problem)
    return sr


def _process_image(job: Job, sr_fn: SrFn, *, scale: int, max_pixels: int | None, quality: int,
                   on_tile: Callable[[int, int], None] | None, settings: Mapping,
                   output_size: OutputSize | None = None, strip_metadata: bool = False) -> FileRecord:
    """An image job the skip rule let through: decode, checks, ``sr_fn``, alpha, resize, write."""
    start = time.perf_counter()
    base = {"input": str(job.src), "output": str(job.dst)}

    def failed(reason: str, **sizes) -> FileRecord:
        return FileRecord(**base, status="failed", reason=reason, seconds=time.perf_counter() - start,
                          **sizes)

    header = header_size(job.src) if output_size is not None else None
    if header is not None:  # an impossible output size fails before the image is even decoded
        try:
            output_size.target(*header, max_pixels=max_pixels)
        except InputError as exc:
            return failed(str(exc), input_size=header)
    try:
        image = read_image(job.src, max_pixels=max_pixels)
    except InputError as exc:
        return failed(str(exc).removeprefix(f"{job.src}: "))
    sizes = {"input_size": image.size}
    try:  # an impossible output size fails before the model runs
        target = None if output_size is None else output_size.target(*image.size, max_pixels=max_pixels)
        problem = format_problem(format_for_suffix(job.dst.suffix), target or (image.size[0] * scale,
                                                                             image.size[1] * scale))
    except InputError as exc:
        return failed(str(exc), **sizes)
    if problem:
        return failed(problem, **sizes)
    try:
        sr = super_resolve(sr_fn, image.rgb, scale=scale, src=job.src, on_tile=on_tile)
    except FileFailed as exc:
        return failed(exc.reason, **sizes)
    alpha = None if image.alpha is None else upscale_alpha(image.alpha, sr.shape[:2])
    if target is not None:
        sr, alpha = resize_planes(sr, alpha, target)
    try:
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        with completion.recording(job.dst, job.src, job.rel, settings):
            write_image(job.dst, sr, alpha=alpha, is_gray=image.is_gray, bit_depth=image.bit_depth,
                        icc_profile=image.icc_profile, fmt=format_for_suffix(job.dst.suffix), quality=quality,
                        metadata=None if strip_metadata else image.metadata)
    except (GtasrError, OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        return failed(f"cannot write {job.dst}: {reason}", **sizes)
    frames = getattr(image, "frames", 1)
    note = f"only the first of its {frames} frames/pages was upscaled" if frames > 1 else None
    return FileRecord(**base, status="written", reason=note, seconds=time.perf_counter() - start,
                      output_size=(sr.shape[1], sr.shape[0]), **sizes)


def output_problem(lq: np.ndarray, sr: np.ndarray) -> str | None:
    """Why ``sr`` must not be written, or None: NaN/Inf values, or one constant colour from an
    input that is not flat (what diverged weights give; a flat input may give a flat result)."""
    if not math.isfinite(float(sr.sum(dtype=np.float64))):
        bad = int(np.count_nonzero(~np.isfinite(sr)))
        return (f"output has {bad:,} non-finite (NaN/Inf) values of {sr.size:,}: the weights or the backend "
                "diverged; nothing written")
    lo, hi = float(sr.min()), float(sr.max())
    if hi - lo < 1 / 255 and float(lq.max()) - float(lq.min()) >= _FLAT_INPUT:
        return (f"output is one constant colour ({lo:.4g}) although the input is not flat: the weights "
                "or the backend diverged; nothing written")
    return None


def printable(text: str) -> str:
    """``text`` with control characters (a newline in a file name...) escaped: one line stays one line."""
    return text.translate(_CONTROL)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else "(no message)"


def _emit(line: str, err: TextIO, progress: bool) -> None:
    """One line on ``err``, printed above the progress bar when there is one."""
    line = printable(line)
    if progress:
        tqdm.write(line, file=err)
    else:
        print(line, file=err)


def _write_report(path: Path, result: BatchSummary, err: TextIO) -> str | None:
    """Write the report atomically; on failure print one line and return it (None on success)."""
    try:
        data = json.dumps(result.to_json(), indent=1, ensure_ascii=False).encode() + b"\n"
    except UnicodeEncodeError:  # a file name that is not valid UTF-8: escape it, keep JSON valid
        data = json.dumps(result.to_json(), indent=1).encode() + b"\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        line = f"error: cannot write the JSON report {path}: {exc.strerror or exc}"
        print(line, file=err)
        return line
    return None


class _TileBar:
    """Second progress bar for one image's tiles; shown only when the image has several tiles."""

    def __init__(self, err: TextIO, *, enabled: bool) -> None:
        self._err, self._enabled, self._bar = err, enabled, None

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled or total <= 1:
            return
        if self._bar is None:
            # counts network passes: with shared GroupNorm statistics a tile takes two (see the run header)
            self._bar = tqdm(total=total, file=self._err, desc="tile passes", unit="pass", position=1,
                             leave=False, dynamic_ncols=True)
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
