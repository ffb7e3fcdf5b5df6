"""Progress that reads well both on a terminal and in a log file.

On a terminal the batch shows tqdm bars. Anywhere else (a log file, a pipe, a job scheduler's
capture) a bar's carriage returns and escape codes turn into noise and doubled lines, so the batch
prints one plain line per finished image instead: ``[3/10] sub/photo.jpg: 640x480 -> 2560x1920, 12.4 s``.
"""

from __future__ import annotations

from typing import TextIO


def is_terminal(stream: TextIO) -> bool:
    """True when ``stream`` is an interactive terminal (tqdm bars), False for files and pipes."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def log_line(index: int, total: int, name: str, *, status: str, input_size: tuple[int, int] | None = None,
             output_size: tuple[int, int] | None = None, seconds: float = 0.0,
             reason: str | None = None) -> str:
    """One line for the ``index``-th (1-based) of ``total`` images, from its result fields."""
    head = f"[{index}/{total}] {name}:"
    if status == "written":
        sizes = f" {_size(input_size)} -> {_size(output_size)}," if input_size and output_size else ""
        return f"{head}{sizes} {seconds:.1f} s"
    if status == "skipped":
        return f"{head} skipped ({reason or 'exists'})"
    return f"{head} {status}{f' ({reason})' if reason else ''}"


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
