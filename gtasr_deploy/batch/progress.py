"""Progress that reads well both on a terminal and in a log file.

On a terminal the batch shows tqdm bars. Anywhere else (a log file, a pipe, a job scheduler's
capture) a bar's carriage returns and escape codes turn into noise and doubled lines, so the batch
prints one plain line per finished image instead: ``[3/10] sub/photo.jpg: 640x480 -> 2560x1920, 12.4 s``.

Progress in counted units within one long item (a video's frames, a download's bytes):
:class:`CountProgress`, a bar on a terminal, and in a log a plain line at every tenth of the total
(or every ``every`` units when the total is unknown).
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm


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


class CountProgress:
    """Callable ``(done, total)``; ``total`` 0 means unknown. Call :meth:`close` when finished."""

    def __init__(self, name: str, *, unit: str, err: TextIO | None = None, enabled: bool = True,
                 every: int = 100, unit_scale: bool = False) -> None:
        self._name, self._unit, self._every, self._unit_scale = name, unit, every, unit_scale
        self._err = sys.stderr if err is None else err
        self._enabled = enabled
        self._tty = enabled and is_terminal(self._err)
        self._bar, self._tenth, self._last = None, 1, 0

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._tty:
            if self._bar is None:
                self._bar = tqdm(total=total or None, unit=self._unit, unit_scale=self._unit_scale,
                                 desc=self._name, file=self._err, leave=False, dynamic_ncols=True)
            self._bar.total = total or None
            self._bar.update(done - self._bar.n)
        elif total and 10 * done >= self._tenth * total:
            self._line(done, total)
            while self._tenth * total <= 10 * done:
                self._tenth += 1
        elif not total and done - self._last >= self._every:
            self._line(done, total)

    def _line(self, done: int, total: int) -> None:
        self._last = done
        plural = "s" if len(self._unit) > 1 else ""  # frames, but B (bytes)
        print(f"{self._name}: {done}/{total or '?'} {self._unit}{plural}", file=self._err, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
