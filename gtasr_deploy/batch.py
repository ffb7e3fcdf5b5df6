"""The batch loop of ``gtasr-upscale``: find inputs, plan outputs, shard, and process each file.

The super-resolution itself is injected (``sr_fn``), so everything here runs without a model.

Rules, stated once:

* Inputs: a single file (any name), or a folder searched recursively for ``IMAGE_SUFFIXES``
  (case-insensitive); hidden files and folders (leading ``.``) are skipped; order is the
  relative POSIX path, sorted — the same on every machine, which sharding relies on.
* Outputs mirror the relative structure: ``<out>/<rel dir>/<stem><suffix>.<ext>``.
  Collisions (``photo.jpg`` and ``photo.png`` both -> ``photo.png``; compared case-insensitively
  so case-insensitive filesystems are safe too): the input whose own extension already is the
  output extension keeps the plain name (else the first in sorted order); every other one gets
  its source extension added, ``photo_jpg.png``, then ``_2``, ``_3``... if that is taken too.
* Sharding: ``K/N`` with 0-based K (like torchrun's RANK) takes the jobs whose index in the
  sorted plan is ≡ K mod N; without ``--shard``, RANK/WORLD_SIZE from the environment do the same.
* Existing outputs are skipped unless ``overwrite``; so a re-run resumes an interrupted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TextIO

import numpy as np
from tqdm import tqdm

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

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
OUTPUT_FORMATS = ("png", "jpg", "webp", "same")

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
    reason: str | None = None
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
        """0 when no file failed, 1 when some did or the JSON report failed (usage errors, 2, are the CLI's)."""
        return 1 if self.failed or self.report_error else 0

    def line(self) -> str:
        text = f"{self.written} written, {self.skipped} skipped (exists), {self.failed} failed"
        return f"interrupted: {text}" if self.interrupted else text

    def to_json(self) -> dict:
        return {"summary": {"written": self.written, "skipped": self.skipped, "failed": self.failed,
                            "interrupted": self.interrupted, "exit_code": self.exit_code},
                "files": [asdict(r) for r in self.records]}


# ---------------------------------------------------------------------------------- planning


def collect_inputs(input_path: str | os.PathLike, *, exclude: str | os.PathLike | None = None,
                   unreadable: list[str] | None = None) -> list[tuple[Path, Path]]:
    """[(file, path relative to the input root)] sorted by relative path.

    ``exclude``: a folder to leave out (the output folder when it lies inside the input folder,
    so a re-run does not upscale its own results). ``unreadable``: receives one line per folder
    that could not be listed (the walk goes on). InputError when nothing usable is found.
    """
    root = Path(input_path)
    if root.is_file():
        return [(root, Path(root.name))]
    if not root.is_dir():
        raise InputError(f"input {root} does not exist (expected an image file or a folder)")
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    def on_error(exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append(f"{exc.filename}: cannot list folder ({exc.strerror or exc})")

    for folder, dirs, files in os.walk(root, onerror=on_error, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs
                   if not d.startswith(".") and (skip is None or (here / d).resolve() != skip)]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append((here / name, (here / name).relative_to(root)))
    if not found:
        raise InputError(f"no images found in {root} (looked recursively for "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return sorted(found, key=lambda item: item[1].as_posix())


def plan_outputs(inputs: Sequence[tuple[Path, Path]], out_dir: str | os.PathLike, *, fmt: str = "png",
                 suffix: str = "") -> list[Job]:
    """Mirror the relative structure under ``out_dir``; resolve collisions (module docstring)."""
    if fmt not in OUTPUT_FORMATS:
        raise InputError(f"--format {fmt!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    if any(sep in suffix for sep in ("/", "\\", "\0")) or suffix in (".", ".."):
        raise InputError(f"--suffix {suffix!r} must not contain a path separator")
    out_dir = Path(out_dir)
    natural = [_natural_name(rel, fmt, suffix) for _, rel in inputs]
    groups: dict[str, list[int]] = {}
    for i, rel_out in enumerate(natural):
        groups.setdefault(_key(rel_out), []).append(i)
    names: dict[int, Path] = {}
    for members in groups.values():
        own = [i for i in members if inputs[i][1].suffix.lower() == natural[i].suffix.lower()]
        names[(own or members)[0]] = natural[(own or members)[0]]
    taken = {_key(p) for p in names.values()}
    for i, (_, rel) in enumerate(inputs):
        if i in names:
            continue
        base = natural[i].with_name(f"{natural[i].stem}_{rel.suffix.lstrip('.').lower()}")
        candidate, n = base.with_suffix(natural[i].suffix), 2
        while _key(candidate) in taken:
            candidate, n = base.with_name(f"{base.name}_{n}{natural[i].suffix}"), n + 1
        names[i] = candidate
        taken.add(_key(candidate))
    jobs = [Job(src=src, rel=rel, dst=out_dir / names[i]) for i, (src, rel) in enumerate(inputs)]
    # An input that is another input's output (output folder = input folder, an earlier run) is a
    # result, not a photo: leave it out so re-runs do not upscale their own outputs.
    output_of = {job.dst.resolve(): job.src.resolve() for job in jobs}
    jobs = [job for job in jobs if output_of.get(job.src.resolve(), job.src.resolve()) == job.src.resolve()]
    for job in jobs:
        if job.dst.resolve() == job.src.resolve():
            raise InputError(f"output {job.dst} would replace its input; choose another output "
                             "folder, a --suffix or another --format")
    return jobs


def _natural_name(rel: Path, fmt: str, suffix: str) -> Path:
    ext = rel.suffix if fmt == "same" else "." + fmt
    return rel.with_name(f"{rel.stem}{suffix}{ext}")


def _key(rel: Path) -> str:
    return rel.as_posix().casefold()


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
    if shard is None and "WORLD_SIZE" in env:
        try:
            shard = (int(env.get("RANK", "0")), int(env["WORLD_SIZE"]))
        except ValueError:
            raise InputError(f"RANK={env.get('RANK')!r} / WORLD_SIZE={env['WORLD_SIZE']!r} are not "
                             "integers") from None
        _check_shard(shard, "RANK/WORLD_SIZE environment")
    if shard is None:
        return list(jobs)
    _check_shard(shard, "shard")
    k, n = shard
    return [job for i, job in enumerate(jobs) if i % n == k]


def local_device_from_env(env: Mapping[str, str] = os.environ, default: str = "cuda") -> str:
    """'cuda:<LOCAL_RANK>' under torchrun (one GPU per local process), else ``default``."""
    local_rank = env.get("LOCAL_RANK")
    if local_rank is None or local_rank == "":
        return default
    if not local_rank.isdigit():
        raise InputError(f"LOCAL_RANK={local_rank!r} is not a non-negative integer")
    return f"cuda:{int(local_rank)}"


def check_device(device: str) -> None:
    """InputError unless ``device`` names a torch device that exists here (``auto`` always does)."""
    if device == "auto":
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a device; expected cpu, cuda or cuda:N") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")


def _prove_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write + remove a probe file in it; OSError when that fails."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".gtasr-write-probe-{os.getpid()}"
    atomic_write_bytes(probe, b"")
    probe.unlink()


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and prove it writable with a probe file — before any work."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output {out_dir} is a file, not a folder; give a folder for the results")
    try:
        _prove_writable(out_dir)
    except OSError as exc:
        raise InputError(f"output folder {out_dir} is not writable ({exc.strerror or exc}); choose "
                         "another folder or fix its permissions") from None
    return out_dir


def check_report_path(path: str | os.PathLike, option: str = "--json") -> Path:
    """Prove a report file's folder exists or can be made, and is writable — before any work."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder; give a file name for the report")
    try:
        _prove_writable(path.parent)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


# ---------------------------------------------------------------------------------- running


def run_batch(jobs: Sequence[Job], sr_fn: SrFn, *, scale: int = 4, overwrite: bool = False,
              max_pixels: int | None = DEFAULT_MAX_PIXELS, quality: int = 95, progress: bool = True,
              summary: bool = True, json_report: str | os.PathLike | None = None,
              err: TextIO | None = None, tile_progress: bool = False,
              handle_sigterm: bool = True, output_size: OutputSize | None = None,
              strip_metadata: bool = False) -> BatchSummary:
    """Decode -> ``sr_fn`` -> bicubic alpha -> resize to ``output_size`` -> atomic write, per job in order.

    ``output_size``: resize the x4 result (resize.py); EXIF/XMP/ICC go to each output unless
    ``strip_metadata`` (EXIF/XMP only: the ICC profile stays, the colours depend on it).
    Progress: bars when ``err`` is a terminal, else one plain line per image (progress.py).

    A file's problem (input, GtasrError from ``sr_fn``, write/encode error) prints ONE line
    ``error: <file>: <reason>`` on ``err`` and the batch goes on. Ctrl-C (and SIGTERM, turned
    into KeyboardInterrupt while this runs on the main thread) stops after cleaning the current
    temp file, still writes the summary and the JSON report, then propagates.
    ``sr_fn`` returning the wrong shape is a bug and raises ValueError.
    """
    err = sys.stderr if err is None else err
    records: list[FileRecord] = []
    bars = progress and is_terminal(err)  # a log file gets plain lines, not escape codes
    bar = tqdm(total=len(jobs), file=err, disable=not bars, unit="img", dynamic_ncols=True)
    interrupted = False
    try:
        with _sigterm_as_interrupt(handle_sigterm):
            for job in jobs:
                bar.set_postfix_str(job.rel.as_posix(), refresh=False)
                tiles = _TileBar(err, enabled=bars) if tile_progress else None
                try:
                    record = _process(job, sr_fn, scale=scale, overwrite=overwrite,
                                      max_pixels=max_pixels, quality=quality, on_tile=tiles,
                                      output_size=output_size, strip_metadata=strip_metadata)
                finally:
                    if tiles is not None:
                        tiles.close()
                records.append(record)
                if record.status == "failed":
                    _emit(f"error: {job.src}: {record.reason}", err, bars)
                elif progress and not bars:
                    print(log_line(len(records), len(jobs), job.rel.as_posix(),
                                   status=record.status, input_size=record.input_size,
                                   output_size=record.output_size, seconds=record.seconds,
                                   reason=record.reason), file=err, flush=True)
                bar.update()
    except KeyboardInterrupt:
        interrupted = True
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


def _process(job: Job, sr_fn: SrFn, *, scale: int, overwrite: bool, max_pixels: int | None,
             quality: int, on_tile: Callable[[int, int], None] | None,
             output_size: OutputSize | None = None, strip_metadata: bool = False) -> FileRecord:
    start = time.perf_counter()
    base = {"input": str(job.src), "output": str(job.dst)}

    def failed(reason: str, **sizes) -> FileRecord:
        return FileRecord(**base, status="failed", reason=reason, seconds=time.perf_counter() - start,
                          **sizes)

    if not overwrite and job.dst.exists():
        return FileRecord(**base, status="skipped", reason="exists")
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
    expected = (image.rgb.shape[0] * scale, image.rgb.shape[1] * scale, 3)
    if sr.shape != expected:
        raise ValueError(f"sr_fn returned shape {sr.shape} for {job.src}; expected {expected} (x{scale})")
    alpha = None if image.alpha is None else upscale_alpha(image.alpha, sr.shape[:2])
    if target is not None:
        sr, alpha = resize_planes(sr, alpha, target)
    try:
        job.dst.parent.mkdir(parents=True, exist_ok=True)
        write_image(job.dst, sr, alpha=alpha, is_gray=image.is_gray, bit_depth=image.bit_depth,
                    icc_profile=image.icc_profile, fmt=format_for_suffix(job.dst.suffix), quality=quality,
                    metadata=None if strip_metadata else image.metadata)
    except (GtasrError, OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
        return failed(f"cannot write {job.dst}: {reason}", **sizes)
    return FileRecord(**base, status="written", seconds=time.perf_counter() - start,
                      output_size=(sr.shape[1], sr.shape[0]), **sizes)


def _emit(line: str, err: TextIO, progress: bool) -> None:
    """One line on ``err``, printed above the progress bar when there is one."""
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
            self._bar = tqdm(total=total, file=self._err, unit="tile", position=1, leave=False,
                             dynamic_ncols=True)
        self._bar.n = done
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def _sigterm_as_interrupt(enabled: bool) -> Iterator[None]:
    """Turn SIGTERM (kill, job schedulers) into KeyboardInterrupt so temp files get cleaned."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
