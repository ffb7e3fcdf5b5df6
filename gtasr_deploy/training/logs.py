"""Run logging: one line per logged step on stdout, ``<out>/log.csv``, optional TensorBoard, a tqdm bar.

The CSV has one row per (stage, step, kind of record); its columns are the union of every key seen
so far (stage I and II log different loss terms), so the file is rewritten when a new key appears —
it holds a few thousand rows at most. On resume, rows after the resume point are dropped so the
file never holds the same step twice.
"""

from __future__ import annotations

import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from ..atomic import atomic_write_text

_FIRST = ("time", "stage", "step")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class RunLogger:
    def __init__(self, out_dir: str | Path, *, enabled: bool = True, progress: bool = True, tensorboard: bool = False) -> None:
        self.enabled, self.show_progress = enabled, progress
        self.csv_path = Path(out_dir) / "log.csv"
        self.rows: list[dict[str, Any]] = []
        self.columns: list[str] = list(_FIRST)
        self._bar: tqdm | None = None
        self._tb = None
        if enabled and self.csv_path.is_file():
            with open(self.csv_path, newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = list(reader.fieldnames or _FIRST)
                self.rows = list(reader)
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"))
            except ImportError:
                self.info("tensorboard is not installed; logging to stdout and log.csv only")

    def info(self, message: str) -> None:
        if self.enabled:
            (tqdm.write if self._bar is not None else print)(message, file=sys.stdout)

    def progress(self, *, total: int, initial: int, desc: str):
        if not (self.enabled and self.show_progress):
            return _NoBar()
        self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=sys.stderr)
        return self._bar

    def truncate_after(self, stage: int, step: int) -> None:
        """Drop rows later than (stage, step) — used when a run starts or resumes there."""
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if (int(r["stage"]), int(r["step"])) <= (stage, step)]
        self._rewrite()

    def log(self, stage: int, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"time": f"{time.time():.3f}", "stage": stage, "step": step, **{k: _fmt(v) for k, v in values.items()}}
        self.info(f"[stage {stage} step {step}] " + " ".join(f"{k}={row[k]}" for k in values))
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
        else:
            with open(self.csv_path, "a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.columns).writerow(row)
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"stage{stage}/{key}", float(value), step)

    def _rewrite(self) -> None:
        buffer = io.StringIO(newline="")
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.csv_path, buffer.getvalue())

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _fmt(value: float) -> str:
    value = float(value)
    return f"{value:.6g}"
