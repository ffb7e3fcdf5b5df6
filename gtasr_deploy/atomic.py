"""The one way this package writes a file: temp file in the same folder, fsync, rename.

An interrupt at any point leaves either the old file or the new one, never a partial one. The
temp file is removed on any exception; only SIGKILL or power loss can leave one behind, and every
temp file is named ``.gtasr-<pid>-<random>.tmp`` so :func:`remove_stale_temps` can find leftovers of
dead processes without touching anything else.

    atomic_write_bytes(path, data)              # bytes
    with atomic_path(path) as tmp: save(tmp)    # a writer that wants a path (torch.save, onnx.save)
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".gtasr-"
TEMP_SUFFIX = ".tmp"
_TEMP_RE = re.compile(r"^\.gtasr-(\d+)-[0-9a-f]+\.tmp$")


def _new_temp(folder: Path) -> Path:
    return folder / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}{TEMP_SUFFIX}"


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; best effort (not every OS/filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit fsync it and rename it over ``path``.

    The writer may create the temp file itself (``torch.save(obj, tmp)``). On any exception the
    temp file is removed and ``path`` is untouched."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    temp = _new_temp(path.parent)
    try:
        yield temp
        # 0o666 through the umask, as a normal file would get (a writer's 0o600 would hide outputs)
        umask = os.umask(0)
        os.umask(umask)
        with contextlib.suppress(OSError):
            os.chmod(temp, 0o666 & ~umask)
        with open(temp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(temp, path)
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mkdir: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with atomic_path(path, mkdir=mkdir) as temp:
        with open(temp, "xb") as fh:
            fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, *, mkdir: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mkdir=mkdir)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, *, recursive: bool = True) -> list[Path]:
    """Delete this package's temp files in ``folder`` whose writing process is gone; return them.

    Only names that match ``.gtasr-<pid>-<hex>.tmp`` with a dead pid are removed, so a concurrent
    run's temp file in the same folder is left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for root, _, files in walker:
        for name in files:
            match = _TEMP_RE.match(name)
            if match and not _pid_alive(int(match.group(1))):
                temp = Path(root) / name
                with contextlib.suppress(OSError):
                    temp.unlink()
                    removed.append(temp)
    return removed
