"""Evaluation on folders of images and side-by-side comparison of x4 methods (SPEC §6).

- :mod:`.folders`: ``score_folders`` (pair by stem, per-image metrics, summary), ``write_csv``
- :mod:`.compare`: ``run_compare`` (make LR, run methods, table, grid), ``CompareConfig``
- :mod:`.peers`: ``open_method`` (bicubic, gtasr, and the optional dat-light / realesrgan peers)

The CLI is ``gtasr-eval`` (:mod:`gtasr_deploy.cli.eval`).
"""

from .compare import CompareConfig, CompareResult, make_lr, run_compare
from .folders import DEFAULT_METRICS, METRICS, FolderReport, Scorer, format_summary, score_folders, write_csv
from .peers import METHODS, MethodOptions, open_method

__all__ = [
    "CompareConfig", "CompareResult", "DEFAULT_METRICS", "FolderReport", "METHODS", "METRICS", "MethodOptions",
    "Scorer", "format_summary", "make_lr", "open_method", "run_compare", "score_folders", "write_csv",
]
