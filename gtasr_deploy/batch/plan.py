"""Finding the inputs of ``gtasr-upscale`` and planning their outputs, shards and settings.

Rules, stated once:

* Inputs: a single file (any name), or a folder searched recursively for ``IMAGE_SUFFIXES``
  (case-insensitive) and, by :func:`collect_videos`, for ``VIDEO_SUFFIXES``; hidden files and
  folders (leading ``.``) are skipped; order is the relative POSIX path, sorted — the same on every
  machine, which sharding relies on. An image and a video are both a :class:`Job`.
* Outputs mirror the relative structure, and each name depends on its own input only (never on
  which other files are present), so adding or removing inputs never moves a name:
  an input already in the output format keeps its name, ``<stem><suffix>.<ext>``
  (``photo.png`` -> ``photo.png``); any other gets its own extension as a tag,
  ``<stem>_<srcext><suffix>.<ext>`` (``photo.jpg`` -> ``photo_jpg.png``); and an own-format input
  whose stem already ends in such a tag is tagged too (``photo_jpg.png`` -> ``photo_jpg_png.png``),
  so two inputs can never meet on one name. Names are compared case-insensitively (safe on
  case-insensitive filesystems); inputs whose names differ only in case (``a.PNG``, ``a.png``)
  each get ``_<8 hex of the SHA-256 of their relative path>``. A video keeps its name and
  container: ``<stem><suffix><ext>`` (:func:`plan_video_jobs`).
* An input that is another input's output and carries this tool's completion record is a result
  of an earlier run (output folder = input folder): it is left out, image or video.
* Sharding: ``K/N`` with 0-based K (like torchrun's RANK) takes the jobs whose index in the
  sorted plan is ≡ K mod N; without ``--shard``, RANK/WORLD_SIZE from the environment do the same.
* Settings: what shapes a picture (:func:`picture_settings`), kept in each output's completion
  record (:mod:`gtasr_deploy.batch.records`); running the plan is :mod:`gtasr_deploy.batch.runner`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

from . import records as completion
from ..errors import InputError
from ..media.images import IMAGE_SUFFIXES
from ..media.video import VIDEO_SUFFIXES, is_video
from .preflight import check_input_path, check_report_target
from ..version import __version__

_TAGS = tuple(sorted(s.lstrip(".") for s in IMAGE_SUFFIXES))
OUTPUT_FORMATS = ("png", "jpg", "webp", "same")


@dataclass(frozen=True, kw_only=True)
class Job:
    """One input file and where its result goes."""

    src: Path
    rel: Path  # src relative to the input root (just the file name for a single-file input)
    dst: Path


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
        raise InputError(f"--suffix {suffix!r} must not contain a path separator or a NUL character")
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
    return _check_replaced(_without_results(jobs), "choose another output folder, a --suffix or another --format")


def _without_results(jobs: list[Job]) -> list[Job]:
    """``jobs`` less the inputs that are another input's output and carry this tool's completion
    record (output folder = input folder, an earlier run): results, not inputs, so re-runs do not
    upscale their own outputs. One without a record is someone's file: kept."""
    output_of = {_real(job.dst): _real(job.src) for job in jobs}
    return [job for job in jobs if output_of.get(_real(job.src), _real(job.src)) == _real(job.src)
            or not completion.is_ours(job.src)]


def _check_replaced(jobs: list[Job], fix: str) -> list[Job]:
    """``jobs``, or InputError when an output would replace an input of the plan."""
    inputs_by_path = {_real(job.src): job.src for job in jobs}
    for job in jobs:
        other = inputs_by_path.get(_real(job.dst))
        if other is not None:
            whose = "its input" if other == job.src else f"the input {other}"
            raise InputError(f"output {job.dst} of {job.src} would replace {whose}; {fix}")
    return jobs


def collect_videos(input_path: str | os.PathLike, *, exclude: str | os.PathLike | None = None) -> list[tuple[Path, Path]]:
    """[(video, path relative to the input root)], sorted; [] when the input has none.

    Same walk rules as :func:`collect_inputs`: recursive, hidden entries skipped, ``exclude``
    (the output folder) left out."""
    root = Path(input_path)
    if root.is_file():
        return [(root, Path(root.name))] if is_video(root) else []
    skip = Path(exclude).resolve() if exclude is not None else None
    found = []
    for path in sorted(root.rglob("*")) if root.is_dir() else ():
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not is_video(path) or not path.is_file():
            continue
        if skip is not None and skip in path.resolve().parents:
            continue
        found.append((path, rel))
    return sorted(found, key=lambda item: item[1].as_posix())


def plan_video_jobs(inputs: Sequence[tuple[Path, Path]], output: str | os.PathLike, *, single: bool = False,
                    suffix: str = "") -> list[Job]:
    """Jobs for the videos ``inputs``. ``single`` (the input is one file) with a video file name as
    ``output``: that file. Otherwise ``output`` is a folder: ``<output>/<rel dir>/<stem><suffix><ext>``.
    Results of an earlier run among the inputs are left out as for images."""
    output = Path(output)
    kind = None if output.is_dir() else output.suffix.lower()
    if single and kind in IMAGE_SUFFIXES:
        raise InputError(f"output {output} is an image file name, but the input {inputs[0][0]} is a video; "
                         f"give a video file name ({', '.join(sorted(VIDEO_SUFFIXES))}) or a folder")
    if not single and kind in VIDEO_SUFFIXES:
        raise InputError(f"output {output} is a video file name, but the input is a folder; give a folder "
                         "for the results")
    as_file = single and kind in VIDEO_SUFFIXES
    jobs = [Job(src=src, rel=rel, dst=output if as_file else output / rel.with_name(f"{rel.stem}{suffix}{rel.suffix}"))
            for src, rel in inputs]
    return _check_replaced(_without_results(jobs), "choose another output or a --suffix")


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
