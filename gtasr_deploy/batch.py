"""The batch loop of ``gtasr-upscale``: find inputs, plan outputs, shard, and process each file.

The super-resolution itself is injected (``sr_fn``), so everything here runs without a model.

Rules, stated once:

* Inputs: a single file (any name), or a folder searched recursively for ``IMAGE_SUFFIXES``
  (case-insensitive); hidden files and folders (leading ``.``) are skipped; order is the
  relative POSIX path, sorted — the same on every machine, which sharding relies on.
* Outputs mirror the relative structure, and each name depends on its own input only (never on
  which other files are present), so adding or removing inputs never moves a name:
  an input already in the output format keeps its name, ``<stem><suffix>.<ext>``
  (``photo.png`` -> ``photo.png``); any other gets its own extension as a tag,
  ``<stem>_<srcext><suffix>.<ext>`` (``photo.jpg`` -> ``photo_jpg.png``); and an own-format input
  whose stem already ends in such a tag is tagged too (``photo_jpg.png`` -> ``photo_jpg_png.png``),
  so two inputs can never meet on one name. Names are compared case-insensitively (safe on
  case-insensitive filesystems); inputs whose names differ only in case (``a.PNG``, ``a.png``)
  each get ``_<8 hex of the SHA-256 of their relative path>``.
* Sharding: ``K/N`` with 0-based K (like torchrun's RANK) takes the jobs whose index in the
  sorted plan is ≡ K mod N; without ``--shard``, RANK/WORLD_SIZE from the environment do the same.
* An output is skipped only when its completion record (:mod:`gtasr_deploy.completion`) proves it
  is this tool's finished result for the same input and settings; a stale one of this tool is
  redone; a file this tool did not write is left alone and reported, unless ``overwrite``.
  So a re-run resumes an interrupted one and never keeps a wrong picture.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

from . import completion
from .completion import Verdict
from .errors import GtasrError, InputError
from .imageio import (
    DEFAULT_MAX_PIXELS,
    atomic_write_bytes,
    format_for_suffix,
    read_image,
    upscale_alpha,
    write_image,
)
from .progress import is_terminal, log_line
from .resize import OutputSize, resize_planes
from .preflight import (  # noqa: F401 (the CLIs use these through batch)
    check_device,
    check_input_path,
    check_output_dir,
    check_output_path,
    check_report_path,
    check_report_target,
    missing_dirs,
    remove_empty_dirs,
)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
_TAGS = tuple(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
_FLAT_INPUT = 16 / 255  # input value range below which a constant output is plausible, not a divergence
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}
OUTPUT_FORMATS = ("png", "jpg", "webp", "same")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C

# sr_fn(rgb) -> sr: float32 (H, W, 3) in [0, 1] -> float32 (scale·H, scale·W, 3) in [0, 1].
# With tile_progress=True it is called as sr_fn(rgb, on_tile=callback), callback(done, total).
SrFn = Callable[..., np.ndarray]


@dataclass(frozen=True, kw_only=True)
class Job:
    """One input file and where its result goes."""

    src: Path
    rel: Path  # src relative to the input root (just the file name for a single-file input)
    dst: Path


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


# ---------------------------------------------------------------------------------- planning


def collect_inputs(input_path: str | os.PathLike, *, exclude: str | os.PathLike | None = None,
                   unreadable: list[tuple[str, str]] | None = None) -> list[tuple[Path, Path]]:
    """[(file, path relative to the input root)] sorted by relative path.

    ``exclude``: a folder to leave out (the output folder when it lies inside the input folder,
    so a re-run does not upscale its own results). ``unreadable``: receives (folder, reason) per
    folder that could not be listed (the walk goes on). InputError when nothing usable is found.
    """
    root = Path(input_path)
    check_input_path(root)
    if root.is_file():
        return [(root, Path(root.name))]
    skip = _real(Path(exclude)) if exclude is not None else None
    found = []
    def on_error(exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append((str(exc.filename), f"cannot list folder ({exc.strerror or exc})"))

    for folder, dirs, files in os.walk(root, onerror=on_error, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs
                   if not d.startswith(".") and (skip is None or _real(here / d) != skip)]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((here / name, (here / name).relative_to(root)))
    if not found:
        raise InputError(f"no images found in {root} (looked recursively for "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(found, key=lambda item: item[1].as_posix())


def plan_outputs(inputs: Sequence[tuple[Path, Path]], out_dir: str | os.PathLike, *, fmt: str = "png",
                 suffix: str = "") -> list[Job]:
    """Mirror the relative structure under ``out_dir``; name each output by its own input only."""
    if fmt not in OUTPUT_FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    if any(sep in suffix for sep in ("/", "\\", "\0")) or suffix in (".", ".."):
        raise InputError(f"--suffix {suffix!r} must not contain a path separator")
    out_dir = Path(out_dir)
    names = [output_name(rel, fmt, suffix) for _, rel in inputs]
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(_key(name), []).append(i)
    for members in groups.values():
        if len(members) > 1:  # names differing only in case (a.PNG, a.png): each gets its own hash
            for i in members:
                digest = hashlib.sha256(os.fsencode(inputs[i][1].as_posix())).hexdigest()[:8]
                names[i] = names[i].with_name(f"{names[i].stem}_{digest}{names[i].suffix}")
    if len({_key(n) for n in names}) != len(names):
        raise InputError("two inputs still share an output name after disambiguation; rename one")
    jobs = [Job(src=src, rel=rel, dst=out_dir / names[i]) for i, (src, rel) in enumerate(inputs)]
    # An input that is another input's output and carries this tool's completion record
    # (output folder = input folder, an earlier run) is a result, not a photo: leave it out so
    # re-runs do not upscale their own outputs. One without a record is someone's photo: kept.
    output_of = {_real(job.dst): _real(job.src) for job in jobs}
    jobs = [job for job in jobs if output_of.get(_real(job.src), _real(job.src)) == _real(job.src)
            or not completion.is_ours(job.src)]
    inputs_by_path = {_real(job.src): job.src for job in jobs}
    for job in jobs:
        other = inputs_by_path.get(_real(job.dst))
        if other is not None:
            whose = "its input" if other == job.src else f"the input {other}"
            raise InputError(f"output {job.dst} of {job.src} would replace {whose}; choose another output "
                             "folder, a --suffix or another --format")
    return jobs


def check_json_target(path: str | os.PathLike, jobs: Sequence[Job]) -> None:
    """InputError when ``--json`` would replace an input, an output or a completion record of the
    plan (pass every shard's jobs), an image, or an existing file that is not such a report."""
    protected = [p for job in jobs for p in (job.src, job.dst, completion.record_path(job.dst))]
    check_report_target(path, protected, option="--json", is_report=_is_batch_report)


def picture_settings(*, weights: Path | None, onnx: Path | None, network_config: str | None,
                     param_key: str, engine: object, tiling: object, seed: int) -> dict:
    """What shapes an output picture, for the completion records: a file by path, size and mtime
    (hashing multi-GB weights on every run would be slow), the engine's backend and precision
    (not the device: the same settings on another GPU or CPU agree to float rounding), the tile
    options and the seed. Anything that changes here makes earlier outputs stale."""
    def file_id(path) -> object:
        if path is None or not os.path.isfile(path):
            return None if path is None else str(path)
        st = os.stat(path)
        return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}

    from . import __version__

    return {"weights": file_id(weights) or f"embedded demo weights of gtasr-deploy {__version__}",
            "onnx": file_id(onnx), "network_config": file_id(network_config), "param_key": param_key,
            "backend": getattr(engine, "backend", None), "precision": getattr(engine, "precision", None),
            "tiling": asdict(tiling) if is_dataclass(tiling) else repr(tiling), "seed": seed}


def _is_batch_report(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and set(data) == {"summary", "files"}


def output_name(rel: Path, fmt: str, suffix: str) -> Path:
    """The output path (relative) of one input, from its own name only (module docstring)."""
    ext = rel.suffix if fmt == "same" else "." + fmt
    stem, tag = rel.stem, rel.suffix.lstrip(".").lower()
    # A tagged stem (photo_jpg) is reserved for other-format inputs; an own-format input whose
    # stem already looks tagged gets its own tag too, so no two inputs can meet on one name.
    looks_tagged = fmt != "same" and any(stem.lower().endswith(f"_{t}") for t in _TAGS)
    if rel.suffix.lower() != ext.lower() or looks_tagged:
        stem = f"{stem}_{tag}"
    return rel.with_name(stem + suffix + ext)


def _key(rel: Path) -> str:
    return rel.as_posix().casefold()


def _real(path: Path) -> str:
    """Resolved path; os.path.realpath, unlike Path.resolve on 3.11, does not raise on symlink loops."""
    return os.path.realpath(path)


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (0-based K) -> (K, N); InputError when malformed or out of range."""
    try:
        k_text, n_text = text.split("/")
        shard = (int(k_text), int(n_text))
    except ValueError:
        raise InputError(f"--shard {text!r} is not K/N (0-based, e.g. 0/4)") from None
    _check_shard(shard, f"--shard {text}")
    return shard


def _check_shard(shard: tuple[int, int], origin: str) -> None:
    k, n = shard
    if n < 1 or not 0 <= k < n:
        raise InputError(f"{origin}: expected 0 <= K < N with N >= 1, got K={k}, N={n}")


def select_shard(jobs: Sequence[Job], shard: tuple[int, int] | None = None,
                 env: Mapping[str, str] = os.environ) -> list[Job]:
    """This process's deterministic share: jobs whose plan index ≡ K (mod N).

    ``shard`` wins; else RANK and WORLD_SIZE from ``env`` (torchrun, or set per job-array task);
    else everything. Shards are disjoint and together cover the plan.
    """
    if shard is None:
        shard = shard_from_env(env)
    if shard is None:
        return list(jobs)
    _check_shard(shard, "shard")
    k, n = shard
    return [job for i, job in enumerate(jobs) if i % n == k]


def shard_from_env(env: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) when WORLD_SIZE is set (torchrun, job arrays), else None."""
    if "WORLD_SIZE" not in env:
        return None
    try:
        shard = (int(env.get("RANK", "0")), int(env["WORLD_SIZE"]))
    except ValueError:
        raise InputError(f"RANK={env.get('RANK')!r} / WORLD_SIZE={env['WORLD_SIZE']!r} are not "
                         "integers") from None
    _check_shard(shard, "RANK/WORLD_SIZE environment")
    return shard


def local_device_from_env(env: Mapping[str, str] = os.environ, default: str = "cuda") -> str:
    """'cuda:<LOCAL_RANK>' under torchrun (one GPU per local process), else ``default``."""
    local_rank = env.get("LOCAL_RANK")
    if local_rank is None or local_rank == "":
        return default
    if not local_rank.isdigit():
        raise InputError(f"LOCAL_RANK={local_rank!r} is not a non-negative integer")
    return f"cuda:{int(local_rank)}"


# ---------------------------------------------------------------------------------- running


def run_batch(jobs: Sequence[Job], sr_fn: SrFn, *, scale: int = 4, overwrite: bool = False,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, quality: int = 95, progress: bool = True,
              summary: bool = True, json_report: str | os.PathLike | None = None,
              err: TextIO | None = None, tile_progress: bool = False,
              handle_sigterm: bool = True, settings: Mapping | None = None,
              unlisted: Sequence[tuple[str, str]] = (), output_size: OutputSize | None = None,
              strip_metadata: bool = False) -> BatchSummary:
    """Decode -> ``sr_fn`` -> check -> bicubic alpha -> atomic write -> completion record, per job.

    A file's problem (input, OS error, name too long, out of memory, GtasrError or RuntimeError
    from ``sr_fn``, NaN/Inf or constant output, write/encode error) prints ONE line
    ``error: <file>: <reason>`` on ``err`` and the batch goes on; ``unlisted`` (folder, reason)
    pairs, folders the search could not enter, count as failed too. An output is skipped only
    when its completion record (gtasr_deploy.completion) says it is this tool's finished result
    for the same input and ``settings`` (what shapes the picture; ``quality`` is added here).
    Ctrl-C, SIGTERM and SIGHUP (turned into KeyboardInterrupt while this runs on the main thread)
    stop after cleaning the current temp file, still write the summary and the JSON report
    (exit code 130), then propagate. ``sr_fn`` returning the wrong shape is a bug: ValueError.
    ``output_size``: resize the x4 result (resize.py); EXIF/XMP/ICC go to each output unless
    ``strip_metadata`` (EXIF/XMP only: the ICC profile stays, the colours depend on it).
    Progress: bars when ``err`` is a terminal, else one plain line per image (progress.py).
    """
    err = sys.stderr if err is None else err
    settings = {**(settings or {}), "quality": quality, "scale": scale}
    if output_size is not None and not output_size.is_model_size:
        settings["output_size"] = {k: v for k, v in vars(output_size).items() if v is not None}
    if strip_metadata:
        settings["strip_metadata"] = True
    records = [FileRecord(input=folder, output="", status="failed", reason=reason) for folder, reason in unlisted]
    for record in records:
        _emit(f"error: {record.input}: {record.reason}", err, False)
    bars = progress and is_terminal(err)  # a log file gets plain lines, not escape codes
    bar = tqdm(total=len(jobs), file=err, disable=not bars, unit="img", dynamic_ncols=True)
    interrupted, current = False, None
    try:
        with _signals_as_interrupt(handle_sigterm):
            for job in jobs:
                current = job
                bar.set_postfix_str(printable(job.rel.as_posix()), refresh=False)
                tiles = _TileBar(err, enabled=bars) if tile_progress else None
                try:
                    record = _guarded(job, sr_fn, scale=scale, overwrite=overwrite, max_pixels=max_pixels,
                                      quality=quality, on_tile=tiles, settings=settings,
                                      output_size=output_size, strip_metadata=strip_metadata)
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
        if current is not None and _finished(current, settings):  # interrupted right after its record
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


def _finished(job: Job, settings: Mapping) -> bool:
    try:
        return completion.check(job.dst, job.src, job.rel, settings) is Verdict.DONE
    except OSError:
        return False


def _guarded(job: Job, sr_fn: SrFn, **options) -> FileRecord:
    """:func:`_process`, with the failures no stage foresaw turned into this file's failure."""
    start = time.perf_counter()
    try:
        return _process(job, sr_fn, **options)
    except OSError as exc:  # ENAMETOOLONG, ELOOP, EIO... from any stage
        reason = f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    except MemoryError:
        reason = "out of memory on this image; try a smaller --tile, or a smaller image"
    return FileRecord(input=str(job.src), output=str(job.dst), status="failed", reason=reason,
                      seconds=time.perf_counter() - start)


def _process(job: Job, sr_fn: SrFn, *, scale: int, overwrite: bool, max_pixels: int | None,
             quality: int, on_tile: Callable[[int, int], None] | None, settings: Mapping,
             output_size: OutputSize | None = None, strip_metadata: bool = False) -> FileRecord:
    start = time.perf_counter()
    base = {"input": str(job.src), "output": str(job.dst)}

    def failed(reason: str, **sizes) -> FileRecord:
        return FileRecord(**base, status="failed", reason=reason, seconds=time.perf_counter() - start,
                          **sizes)

    if _real(job.dst) == _real(job.src):
        return failed(f"output {job.dst} would replace its input; choose another output")
    verdict = completion.check(job.dst, job.src, job.rel, settings)
    if verdict is Verdict.DONE and not overwrite:
        return FileRecord(**base, status="skipped", reason="done earlier for this input and settings")
    if verdict is Verdict.FOREIGN and not overwrite:
        return failed(f"{job.dst} exists and is not this tool's finished result for this input "
                      "(no completion record, or changed since); --overwrite replaces it")
    try:
        image = read_image(job.src, max_pixels=max_pixels)
    except InputError as exc:
        return failed(str(exc).removeprefix(f"{job.src}: "))
    sizes = {"input_size": image.size}
    try:  # an impossible output size fails before the model runs
        target = None if output_size is None else output_size.target(*image.size)
    except InputError as exc:
        return failed(str(exc), **sizes)
    try:
        sr = sr_fn(image.rgb) if on_tile is None else sr_fn(image.rgb, on_tile=on_tile)
    except GtasrError as exc:
        return failed(str(exc), **sizes)
    except RuntimeError as exc:  # torch / ONNX Runtime / TensorRT failing on this image
        return failed(f"backend error: {type(exc).__name__}: {_first_line(exc)}", **sizes)
    expected = (image.rgb.shape[0] * scale, image.rgb.shape[1] * scale, 3)
    if sr.shape != expected:
        raise ValueError(f"sr_fn returned shape {sr.shape} for {job.src}; expected {expected} (x{scale})")
    problem = output_problem(image.rgb, sr)
    if problem:
        return failed(problem, **sizes)
    alpha = None if image.alpha is None else upscale_alpha(image.alpha, sr.shape[:2])
    if target is not None:
        sr, alpha = resize_planes(sr, alpha, target)
    try:
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        with _INTERRUPTS.held():
            completion.begin(job.dst)
            write_image(job.dst, sr, alpha=alpha, is_gray=image.is_gray, bit_depth=image.bit_depth,
                        icc_profile=image.icc_profile, fmt=format_for_suffix(job.dst.suffix), quality=quality,
                        metadata=None if strip_metadata else image.metadata)
            completion.finish(job.dst, job.src, job.rel, settings)
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


class _Interrupts:
    """Ctrl-C, SIGTERM (kill, job schedulers) and SIGHUP (a closed terminal) as KeyboardInterrupt,
    so temp files get cleaned; inside :meth:`held` (an output and its completion record being
    written) the interrupt waits until both are done, so a kept output is always a recorded one."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: int | None = None

    def handler(self, signum, frame) -> None:
        if self.depth:
            self.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth and self.pending is not None:
                signum, self.pending = self.pending, None
                raise KeyboardInterrupt(f"signal {signum}")


_INTERRUPTS = _Interrupts()


@contextlib.contextmanager
def _signals_as_interrupt(enabled: bool) -> Iterator[None]:
    """Route SIGINT, SIGTERM and SIGHUP to :data:`_INTERRUPTS` while the batch runs (main thread
    only). A signal set to be ignored (``nohup``) stays ignored; a custom SIGINT handler stays."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is None:
            continue
        current = signal.getsignal(signum)
        if current is signal.SIG_DFL or current is signal.default_int_handler:
            previous[signum] = signal.signal(signum, _INTERRUPTS.handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
