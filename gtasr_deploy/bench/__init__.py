"""Benchmarks: model-only and end-to-end latency, counted cost, roofline projection, reports.

Entry point: ``gtasr-bench`` (:mod:`gtasr_deploy.cli.bench`). Library pieces::

    from gtasr_deploy.bench import count_model_macs, percentile, LatencyStats, render_markdown
"""

from .cost import GPU_PEAKS, count_macs, count_model_macs, roofline_projection
from .report import build_report, render_markdown, validate_row, write_json, write_plot
from .timing import LatencyStats, matmul_peak_gflops, matmul_peaks, percentile, time_calls

__all__ = [
    "GPU_PEAKS", "count_macs", "count_model_macs", "roofline_projection", "build_report", "render_markdown",
    "validate_row", "write_json", "write_plot", "LatencyStats", "matmul_peak_gflops", "matmul_peaks",
    "percentile", "time_calls",
]
