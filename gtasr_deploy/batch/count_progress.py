"""Progress in counted units (video frames, downloaded bytes) for one long item.

On a terminal: a tqdm bar. In a log (file, pipe, job scheduler): a plain line at every tenth of
the total, or every ``every`` units when the total is unknown — no carriage returns, no escape codes.
"""

from __future__ import annotations

import sys
from typing import TextIO


class CountProgress:
    """Callable ``(done, total)``; ``total`` 0 means unknown. Call :meth:`close` when finished."""

    def __init__(self, name: str, *, unit: str, err: TextIO | None = None, enabled: bool = True,
                 every: int = 100, unit_scale: bool = False) -> None:
        self._name, self._unit, self._every, self._unit_scale = name, unit, every, unit_scale
        self._err = sys.stderr if err is None else err
        self._enabled = enabled
        try:
            self._tty = enabled and bool(self._err.isatty())
        except (AttributeError, ValueError, OSError):
            self._tty = False
        self._bar, self._tenth, self._last = None, 1, 0

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        if self._tty:
            if self._bar is None:
                from tqdm import tqdm

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
