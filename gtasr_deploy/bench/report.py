"""Benchmark rows and reports: JSON rows, the paper comparison, target checks, markdown, PNG plot.

A row is one scenario (preset, backend, precision, LR tile, batch) on one device. Every row is
self-contained: it carries its device, its figures, the library versions and the git revision.
``status`` is "ok", "skipped" (the backend cannot run here; ``reason`` says why) or "failed".
The markdown and the plot are rendered from the report dict alone, so what the files say is what
the JSON says.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError
from ..atomic import atomic_write_bytes
from .cost import PAPER_DEVICE, PAPER_SECONDS_128
from .timing import load_average
from ..model import resolve_config

SCHEMA = "gtasr-bench/1"
STATUSES = ("ok", "skipped", "failed")
IDENTITY_KEYS = ("preset", "backend", "precision", "tile", "batch", "device", "device_name", "threads")
FIGURE_KEYS = ("latency", "throughput_mpix_s", "params", "gmacs_per_call", "achieved_gflops", "matmul_peak_gflops",
               "fraction_of_matmul_peak", "peak_rss_bytes", "device_memory", "e2e")
ROW_KEYS = ("schema", "status", "reason", *IDENTITY_KEYS, "network_config", "weights", "versions", "git",
            *FIGURE_KEYS)
LATENCY_KEYS = ("samples_s", "min_s", "median_s", "p90_s", "mean_s")
DISTRIBUTIONS = ("gtasr-deploy", "torch", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "onnxscript",
                 "tensorrt", "opencv-python-headless", "pillow", "matplotlib")
TARGETS = {"fraction_of_matmul_peak": 0.90, "speedup_vs_torch": 1.15, "e2e_overhead": 0.10}
BENCH_EXTRA_HINT = "pip install 'gtasr-deploy[bench]'"


# ---------------------------------------------------------------------------- environment


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    """Installed versions of the package and the libraries that decide its speed (None: absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


@functools.lru_cache(maxsize=1)
def git_revision() -> dict[str, Any]:
    """{"revision": HEAD or None, "dirty": tracked files modified?} of the checkout holding this package."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    revision = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if revision else None
    return {"revision": revision, "dirty": None if status is None else bool(status)}


@functools.lru_cache(maxsize=4)
def device_name(device: str) -> str:
    """Human name of the device: the GPU's name, or the CPU model from /proc/cpuinfo."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return "CPU " + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU " + (platform.processor() or platform.machine())


def environment(*, device: str, threads: int) -> dict[str, Any]:
    """Where and with what the benchmark ran (the report's header)."""
    import os


    return {"device": device, "device_name": device_name(device), "threads": threads, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "versions": versions(), "git": git_revision(),
            "load_average_start": load_average()}


# ---------------------------------------------------------------------------- rows


def _base_row(scenario: Any, status: str, reason: str | None) -> dict[str, Any]:
    weights = scenario.weights or f"random (seeded initialisation, seed {scenario.seed})"
    row = {"schema": SCHEMA, "status": status, "reason": reason, "preset": scenario.preset,
           "backend": scenario.backend, "precision": scenario.precision, "tile": scenario.tile,
           "batch": scenario.batch, "device": scenario.device, "device_name": device_name(scenario.device),
           "threads": scenario.threads, "network_config": resolve_config(scenario.network).to_dict(),
           "weights": weights, "versions": versions(), "git": git_revision()}
    row.update(dict.fromkeys(FIGURE_KEYS))
    return row


def skipped_row(scenario: Any, reason: str, *, status: str = "skipped") -> dict[str, Any]:
    """A row without figures that says why the scenario did not run."""
    if status not in ("skipped", "failed"):
        raise ValueError(f"skipped_row: status {status!r}, expected 'skipped' or 'failed'")
    return _base_row(scenario, status, reason)


def result_row(scenario: Any, *, engine_device: str, stats: Any, macs: int, params: int,
               matmul_peaks: dict[str, float], matmul_precision: str, peak_rss_bytes: int, device_memory: dict,
               e2e: dict | None, load_start: Any, load_end: Any, quality: dict | None = None) -> dict[str, Any]:
    """A measured row. ``stats`` is a timing.LatencyStats of one call of ``scenario.batch`` tiles."""
    row = _base_row(scenario, "ok", None)
    out_px = scenario.batch * (4 * scenario.tile) ** 2
    achieved = 2.0 * macs / stats.median_s / 1e9
    peak = max(matmul_peaks.values())
    row.update({"engine_device": engine_device, "warmup": scenario.warmup, "repeat": scenario.repeat,
                "latency": asdict(stats), "throughput_mpix_s": out_px / stats.median_s / 1e6, "params": params,
                "gmacs_per_call": macs / 1e9, "achieved_gflops": achieved, "matmul_peak_gflops": peak,
                "matmul_peaks_by_library": matmul_peaks, "matmul_precision": matmul_precision,
                "fraction_of_matmul_peak": achieved / peak,
                "peak_rss_bytes": peak_rss_bytes, "device_memory": device_memory, "e2e": e2e,
                "load_average_start": load_start, "load_average_end": load_end, "quality": quality})
    row["latency"]["samples_s"] = list(row["latency"]["samples_s"])
    return row


def validate_row(row: dict[str, Any]) -> None:
    """Raise ValueError naming the first problem of a row (missing key, bad status, missing figures)."""
    missing = [key for key in ROW_KEYS if key not in row]
    if missing:
        raise ValueError(f"bench row: missing keys {missing}")
    if row["status"] not in STATUSES:
        raise ValueError(f"bench row: status {row['status']!r}, expected one of {list(STATUSES)}")
    if row["status"] != "ok":
        if not row["reason"]:
            raise ValueError(f"bench row: status {row['status']!r} needs a reason")
        return
    absent = [key for key in FIGURE_KEYS if key != "e2e" and row[key] is None]
    if absent or sorted(row["latency"]) != sorted(LATENCY_KEYS):
        raise ValueError(f"bench row: an 'ok' row lacks figures {absent or 'latency keys'}")


def ok_rows(rows: list[dict]) -> list[dict]:
    return [row for row in rows if row["status"] == "ok"]


# ---------------------------------------------------------------------------- derived sections


def paper_comparison(rows: list[dict]) -> list[dict[str, Any]]:
    """Paper preset, 128×128 LR, batch 1: each row's ratio to the paper's 0.08 s and where it ran."""
    out = []
    for row in ok_rows(rows):
        if row["preset"] != "paper" or row["tile"] != 128 or row["batch"] != 1:
            continue
        like = "4090" in row["device_name"]
        label = ("same GPU model as the paper (RTX 4090)" if like else
                 f"NOT like-for-like: measured on {row['device_name']}, the paper used an {PAPER_DEVICE}")
        out.append({"backend": row["backend"], "precision": row["precision"], "device_name": row["device_name"],
                    "median_s": row["latency"]["median_s"], "ratio_to_paper": row["latency"]["median_s"] /
                    PAPER_SECONDS_128, "like_for_like": like, "label": label})
    return out


def check_targets(rows: list[dict]) -> list[dict[str, Any]]:
    """The issue's CPU targets for the paper preset, read off the rows (never asserted in tests)."""
    paper = [r for r in ok_rows(rows) if r["preset"] == "paper" and r["device"] == "cpu"]
    groups: dict[tuple, list[dict]] = {}
    for row in paper:
        groups.setdefault((row["precision"], row["tile"], row["batch"]), []).append(row)
    out = []
    for (precision, tile, batch), group in sorted(groups.items()):
        scope = f"paper {precision} tile {tile} batch {batch}"
        fastest = min(group, key=lambda r: r["latency"]["median_s"])
        out.append(_target(f"fastest backend ({fastest['backend']}) vs matmul peak", scope,
                           fastest["fraction_of_matmul_peak"], TARGETS["fraction_of_matmul_peak"]))
        torch_rows = [r for r in group if r["backend"] == "torch"]
        if torch_rows:
            speedup = torch_rows[0]["latency"]["median_s"] / fastest["latency"]["median_s"]
            out.append(_target(f"fastest backend ({fastest['backend']}) speed-up vs torch eager", scope, speedup,
                               TARGETS["speedup_vs_torch"]))
    for row in paper:
        if row["e2e"] and row["e2e"]["overhead_vs_model_only"] is not None:
            out.append(_target(f"end-to-end overhead vs model-only ({row['backend']})",
                               f"paper {row['precision']} tile {row['tile']} batch {row['batch']}",
                               row["e2e"]["overhead_vs_model_only"], TARGETS["e2e_overhead"], at_most=True))
    return out


def _target(name: str, scope: str, value: float, threshold: float, *, at_most: bool = False) -> dict[str, Any]:
    met = value <= threshold if at_most else value >= threshold
    return {"target": name, "scope": scope, "value": value, "threshold": threshold,
            "comparison": "<=" if at_most else ">=", "met": bool(met)}


def build_report(result: dict[str, Any], *, costs: list[dict], projection: list[dict],
                 command: str, notes: list[str] | None = None) -> dict[str, Any]:
    """The full report: environment, rows, cost table, paper comparison, projection, targets."""
    for row in result["rows"]:
        validate_row(row)
    return {"schema": SCHEMA, "command": command, "environment": result["environment"], "notes": notes or [],
            "rows": result["rows"], "costs": costs, "paper_comparison": paper_comparison(result["rows"]),
            "projection": projection, "targets": check_targets(result["rows"])}


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(report, indent=1, sort_keys=False) + "\n").encode("utf-8"))
    return path


# ---------------------------------------------------------------------------- plot


def write_plot(report: dict[str, Any], path: str | Path) -> Path:
    """PNG: median latency and throughput against LR tile size, one line per preset/backend/precision/batch."""
    try:
        import matplotlib
    except ImportError:
        raise BackendUnavailableError(f"gtasr-bench --plot: matplotlib is not installed; install it with "
                                      f"{BENCH_EXTRA_HINT}, or leave out --plot") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    series: dict[str, list[dict]] = {}
    for row in ok_rows(report["rows"]):
        key = f"{row['preset']} {row['backend']} {row['precision']} b{row['batch']}"
        series.setdefault(key, []).append(row)
    fig, (ax_lat, ax_tp) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, rows in sorted(series.items()):
        rows = sorted(rows, key=lambda r: r["tile"])
        tiles = [r["tile"] for r in rows]
        ax_lat.plot(tiles, [r["latency"]["median_s"] for r in rows], marker="o", label=key)
        ax_tp.plot(tiles, [r["throughput_mpix_s"] for r in rows], marker="o", label=key)
    all_tiles = sorted({r["tile"] for rows in series.values() for r in rows})
    for ax, ylabel in ((ax_lat, "median latency per call (s)"), (ax_tp, "throughput (output MP/s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(all_tiles, [str(t) for t in all_tiles])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.set_yscale("log")
        ax.set_xlabel("LR tile (px, square)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_tp.legend(fontsize=7, loc="best")
    env = report["environment"]
    fig.suptitle(f"gtasr-bench on {env['device_name']} ({env['threads']} threads) — model-only", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- markdown


def _f(value: Any, digits: int = 3) -> str:
    """Compact number: 3 significant digits; '—' for missing."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell if isinstance(cell, str) else _f(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def _mem(row: dict) -> str:
    memory = row["device_memory"] or {}
    if memory.get("torch_peak_bytes") is not None or memory.get("device_used_growth_bytes") is not None:
        value = memory.get("torch_peak_bytes") or memory.get("device_used_growth_bytes")
        return f"{value / 2**30:.2f} GiB GPU"
    return f"{row['peak_rss_bytes'] / 2**30:.2f} GiB RSS"


def _peak(row: dict) -> str:
    by = row.get("matmul_peaks_by_library") or {}
    best = max(by, key=by.get) if by else "?"
    return f"{_f(row['matmul_peak_gflops'])} ({best})"


def _quality(row: dict) -> str:
    """PSNR of a reduced-precision row against torch fp32 (embedded weights, a real photo); fp32 rows: —."""
    q = row.get("quality")
    if not q:
        return "—"
    psnr = q["psnr_db"]
    return ("identical" if psnr == float("inf") else f"{psnr:.1f} dB") + f" (max {q['max_diff_255']}/255)"


def _header(report: dict) -> list[str]:
    env = report["environment"]
    git = env["git"]
    revision = (git["revision"] or "unknown")[:12] + (" (+ uncommitted changes)" if git["dirty"] else "")
    libs = ", ".join(f"{name} {ver}" for name, ver in env["versions"].items() if ver)
    busy = env.get("other_processes_cores")
    lines = ["# gtasr-bench report", "", f"Regenerate: `{report['command']}`", "",
             f"- device: **{env['device_name']}** (`{env['device']}`), {env['threads']} threads, "
             f"{env['cpu_count']} logical CPUs; {env['platform']}",
             f"- git revision {revision}; {libs}",
             f"- load average (1/5/15 min) at start {env['load_average_start']}, at end {env.get('load_average_end')}; "
             f"other processes kept {_f(busy, 2)} cores busy on average during the run "
             "(measured from /proc/stat minus the benchmark's own CPU time; per scenario in the JSON)"]
    return lines + [f"- {note}" for note in report["notes"]] + [""]


def _model_section(rows: list[dict]) -> list[str]:
    body = [[r["preset"], r["backend"], r["precision"], r["tile"], r["batch"], r["latency"]["min_s"],
             r["latency"]["median_s"], r["latency"]["p90_s"], r["throughput_mpix_s"], r["gmacs_per_call"],
             r["achieved_gflops"], _peak(r), f"{100 * r['fraction_of_matmul_peak']:.0f}%", _mem(r),
             r.get("other_processes_cores"), _quality(r)] for r in ok_rows(rows)]
    header = ["preset", "backend", "precision", "LR tile", "batch", "min s", "median s", "p90 s", "out MP/s",
              "GMAC/call", "GFLOP/s", "matmul peak GFLOP/s (by, same precision)", "of peak", "peak memory",
              "other load (cores)", "PSNR vs torch fp32"]
    return ["## Model only (warm-up, then timed calls; one process per row)", "", *_table(header, body)]


def _skipped_section(rows: list[dict]) -> list[str]:
    body = [[r["preset"], r["backend"], r["precision"], r["tile"], r["batch"], r["status"], r["reason"]]
            for r in rows if r["status"] != "ok"]
    if not body:
        return []
    return ["## Skipped or failed", "", *_table(["preset", "backend", "precision", "LR tile", "batch", "status",
                                                 "reason"], body)]


def _e2e_section(rows: list[dict]) -> list[str]:
    body = []
    for r in ok_rows(rows):
        e = r["e2e"]
        if not e:
            continue
        whole = e.get("pipeline_over_whole_call")
        body.append([r["preset"], r["backend"], r["precision"], r["batch"], e.get("norm", "tile"),
                     e["images"], e.get("tiles", "—"), e["calls"],
                     e["total_s"], e["decode_s"], e["tiling_blend_s"], e["model_s"], e["encode_s"],
                     e["model_only_s"], f"{100 * e['overhead_vs_model_only']:+.1f}%",
                     f"{e['executed_over_output_px']:.2f}x",
                     "—" if e.get("whole_image_call_s") is None else e["whole_image_call_s"],
                     "—" if whole is None else f"{whole:.2f}x"])
    if not body:
        return []
    header = ["preset", "backend", "precision", "batch", "norm", "images", "tiles", "calls", "total s", "decode s",
              "tiling+blend s", "model s", "encode s", "model-only s of those calls", "overhead vs model-only",
              "executed / output LR px", "one whole-image call s", "pipeline / whole-image call"]
    return ["## End to end (folder run: decode, tiling, model, blending, encode)", "",
            "The pipeline is the CLI's default (tile auto): each image in one network call when the memory model "
            "says it fits, else the largest tiles that fit plus one statistics call on the image downscaled. "
            "Overhead = total / (calls × model-only median) − 1: the cost outside the network. Executed / output "
            "LR px counts padding, overlap and the statistics pass; the last two columns time one engine call on "
            "each whole padded image (where the engine takes any shape) and the pipeline's time against it.", "",
            *_table(header, body)]


def _paper_section(report: dict) -> list[str]:
    body = [[p["backend"], p["precision"], p["device_name"], p["median_s"], f"{p['ratio_to_paper']:.1f}x",
             p["label"]] for p in report["paper_comparison"]]
    lines = ["## Paper comparison (paper preset, 128×128 LR, batch 1; paper: 0.08 s on one RTX 4090)", ""]
    if not body:
        return lines + ["No paper-preset row at tile 128, batch 1 in this run.", ""]
    return lines + _table(["backend", "precision", "device", "median s", "time / 0.08 s", "comparability"], body)


def _cost_section(report: dict) -> list[str]:
    costs = [[c["preset"], c["tile"], c["params"], c["gmacs"]] for c in report["costs"]]
    proj = [[p["preset"], p["gpu"], p["precision"], p["peak_tflops"], p["compute_bound_s"], p["weight_traffic_s"],
             p["floor_s"], p["floor_vs_paper"]] for p in report["projection"]]
    sources = sorted({p["source"] for p in report["projection"]})
    lines = ["## Cost (counted with torch FlopCounterMode, batch 1)", "",
             *_table(["preset", "LR tile", "parameters", "GMAC"], costs)]
    if proj:
        lines += ["## Roofline PROJECTION (not a measurement; 128×128 LR, batch 1)", "",
                  "Floor = max(2·MAC / datasheet peak, weights / bandwidth) at 100% of peak; activation traffic is "
                  "not modelled, so real kernels are slower. Datasheet figures used (dense, no sparsity):", "",
                  *[f"- {s}" for s in sources], "",
                  *_table(["preset", "GPU", "precision", "peak TFLOP/s", "compute s", "weights s", "floor s",
                           "floor / 0.08 s"], proj)]
    return lines


def _targets_section(report: dict) -> list[str]:
    body = [[t["target"], t["scope"], t["value"], f"{t['comparison']} {t['threshold']}",
             "met" if t["met"] else "NOT met"] for t in report["targets"]]
    lines = ["## Targets (paper preset on CPU; checked from this report)", ""]
    if not body:
        return lines + ["No paper-preset CPU rows in this run.", ""]
    return lines + _table(["target", "scope", "value", "threshold", "result"], body)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown, rendered from the report dict only."""
    rows = report["rows"]
    lines = [*_header(report), *_model_section(rows), *_skipped_section(rows), *_e2e_section(rows),
             *_paper_section(report), *_targets_section(report), *_cost_section(report)]
    return "\n".join(lines).rstrip() + "\n"
