"""Checks made before any work: devices, output folders, report paths, output sizes (usage errors, exit 2).

A usage error must leave nothing behind, so the folders these checks create are listed first
(:func:`missing_dirs`) and removed again, when still empty, if a later check fails
(:func:`remove_empty_dirs`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..atomic import atomic_write_bytes, remove_stale_temps
from ..errors import InputError
from ..media.resize import OutputSize
from ..media.images import IMAGE_SUFFIXES, file_kind

def check_device(device: str) -> None:
    """InputError unless ``device`` names a torch device that exists here (``auto`` always does)."""
    if device == "auto":
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a device; expected cpu, cuda or cuda:N") from None
    if parsed.type not in ("cpu", "cuda"):  # mps, xpu, meta...: torch devices this package does not run on
        raise InputError(f"--device {device!r}: this package runs on cpu or cuda (cuda:N), not on {parsed.type!r}; "
                         "use --device cpu, cuda or auto")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available here (torch.cuda.is_available() is False); "
                         "use --device cpu or auto")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s) here; "
                         f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")


def check_input_path(path: str | os.PathLike) -> None:
    """InputError with the true reason unless ``path`` is an existing file or folder."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        what = "is a broken symbolic link" if os.path.islink(path) else "does not exist"
        raise InputError(f"input {path} {what} (expected an image file or a folder)") from None
    except OSError as exc:  # ELOOP, ENAMETOOLONG, EACCES on a parent...
        raise InputError(f"input {path}: {exc.strerror or exc} (expected an image file or a folder)") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise InputError(f"input {path} is {file_kind(mode)}, not an image file or a folder")


def check_output_path(path: str | os.PathLike) -> None:
    """InputError when ``path`` cannot even be looked at (symlink loop, name too long); a
    missing path is fine (it will be created)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InputError(f"output {path}: {exc.strerror or exc}; choose another output") from None


def _prove_writable(folder: Path) -> None:
    """Create ``folder`` if needed and write + remove a probe file in it; OSError when that fails."""
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".gtasr-write-probe-{os.getpid()}"
    atomic_write_bytes(probe, b"")
    probe.unlink()


def check_output_dir(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and prove it writable with a probe file — before any work.

    Temp files left directly in it by killed runs of this tool (``.gtasr-<pid>-<hex>.tmp`` of a
    dead pid) are removed here; the batch cleans each folder it writes into the same way."""
    out_dir = Path(out_dir)
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise InputError(f"output {out_dir} is a file, not a folder; give a folder for the results")
        _prove_writable(out_dir)
        remove_stale_temps(out_dir, recursive=False)  # not a walk: OUTPUT may be a big tree
    except OSError as exc:
        raise InputError(f"output folder {out_dir} is not writable ({exc.strerror or exc}); choose "
                         "another folder or fix its permissions") from None
    return out_dir


def check_report_path(path: str | os.PathLike, option: str = "--json") -> Path:
    """Prove a report file's folder exists or can be made, and is writable — before any work."""
    path = Path(path)
    try:
        if path.is_dir():
            raise InputError(f"{option} {path} is a folder; give a file name for the report")
        _prove_writable(path.parent)
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def check_report_target(path: str | os.PathLike, protected: Iterable[Path], *, option: str,
                        is_report: Callable[[Path], bool]) -> None:
    """InputError unless writing a report at ``path`` replaces nothing it must not.

    Refused: an image name (a report never is one), any path in ``protected`` (the run's inputs,
    outputs and records, compared resolved and case-insensitively), and an existing non-empty
    file that ``is_report`` does not recognise as an earlier report of the same kind."""

    path = Path(path)
    if path.suffix.lower() in IMAGE_SUFFIXES:  # a report is never an image: that is an input or output
        raise InputError(f"{option} {path}: that is an image name; give the report a name such as "
                         f"report{'.json' if option == '--json' else '.csv'}")
    key = os.path.realpath(path).casefold()
    for other in protected:
        if os.path.realpath(other).casefold() == key:
            raise InputError(f"{option} {path} is a file this run reads or writes ({other}); "
                             "give the report another name")
    try:
        existing = path.is_file() and path.stat().st_size > 0
    except OSError:
        existing = False
    if existing and not is_report(path):
        raise InputError(f"{option} {path} exists and is not an earlier report; refusing to replace "
                         "it (remove it or give another name)")


def missing_dirs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The folders that do not exist yet among ``paths`` and their parents, deepest first."""
    missing: list[Path] = []
    for path in paths:
        folder = Path(os.path.abspath(path))
        while not os.path.exists(folder) and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
    return sorted(set(missing), key=lambda p: len(p.parts), reverse=True)


def remove_empty_dirs(folders: Iterable[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty; others stay as they are."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def header_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) of an image as it will be upscaled (EXIF orientation applied), read from
    its header without decoding a pixel; None when the header cannot be read (the file's own
    decode then says why)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            width, height = im.size
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # rotated 90°: sides swap
    except Exception:  # noqa: BLE001 (any reader failure: unknown here, reported by the decode)
        return None
    return (height, width) if turned else (width, height)


def check_output_sizes(sources: Sequence[Path], output_size: OutputSize | None, max_pixels: int | None) -> None:
    """InputError (a usage error: nothing can be done) when ``output_size`` makes every one of
    ``sources`` too large (a side over MAX_SIDE, or an area over ``max_pixels``), judged from the
    headers. An input whose header does not read, or that fits, lets the run go on: the files
    that do not fit then fail one by one (``OutputSize.target`` in the batch)."""
    if output_size is None or output_size.is_model_size or not sources:
        return
    problems = []
    for path in sources:
        size = header_size(path)
        if size is None:
            return
        try:
            output_size.target(*size, max_pixels=max_pixels)
            return
        except InputError as exc:
            problems.append((path, str(exc)))
    first, reason = problems[0]
    more = f" (and {len(problems) - 1} other input(s))" if len(problems) > 1 else ""
    raise InputError(f"no input can be made that size: {first}: {reason}{more}")
