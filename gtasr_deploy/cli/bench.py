"""`gtasr-bench`: latency and cost of the network per backend, precision, tile and batch.

Every scenario runs in its own process (see :mod:`gtasr_deploy.bench.runner`); the report (JSON
rows, markdown, PNG plot) is built from their rows, and the markdown is also printed on stdout.
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from pathlib import Path

import click

from ..version import __version__
from ..errors import ConfigError, GtasrError
from .weights import weights_callback
from ..model import PRESETS
from ..model import resolve_config
from ..batch.runner import check_device
from ..engines.precision import cpu_features, native_bf16
from ..bench.report import render_markdown
from ..bench.cost import cost_tables
from ..bench.runner import BACKENDS, BenchPlan, estimate_seconds, folder_images, run_scenarios, sample_lr_images
from ..atomic import atomic_write_bytes
from ..batch.runner import check_report_path
from ..engines.threads import busy_cpus
from ..engines.device import resolve_device

EXIT_USAGE = 2
PRECISIONS = ("fp32", "bf16", "fp16")
# --quick: the small demo network at one small tile, torch and ONNX Runtime, few calls (about a minute on
# 2 cores; the first run also exports one small graph). Options given on the command line win.
QUICK = {"preset": "demo", "backends": "torch,onnxruntime", "precision": "fp32", "tile": "64", "repeat": 3}
ROW_HEADER = ("| preset | backend | precision | LR tile | batch | status | median s per call | end-to-end s |\n"
              "|---|---|---|---|---|---|---|---|")


def _split(text: str, what: str, convert=str) -> tuple:
    items = [item.strip() for item in str(text).split(",") if item.strip()]
    if not items:
        raise ConfigError(f"--{what} is empty; give a comma-separated list")
    try:
        return tuple(dict.fromkeys(convert(item) for item in items))
    except ValueError:
        raise ConfigError(f"--{what} {text!r}: expected comma-separated {convert.__name__} values") from None


def _positive(values: tuple[int, ...], what: str, minimum: int = 1) -> tuple[int, ...]:
    bad = [v for v in values if v < minimum]
    if bad:
        raise ConfigError(f"--{what} {bad}: every value must be >= {minimum}")
    return values


def _networks(preset: str, network_config: Path | None, weights: Path | None) -> tuple[tuple[str, object], ...]:
    if network_config is not None:
        networks = (("custom", str(network_config.resolve())),)
    else:
        names = _split(preset, "preset")
        unknown = [n for n in names if n not in PRESETS]
        if unknown:
            raise ConfigError(f"--preset {unknown}: unknown; presets: {', '.join(sorted(PRESETS))}")
        networks = tuple((name, name) for name in names)
    if weights is not None and len(networks) > 1:
        raise ConfigError(f"--weights belongs to one network, but --preset lists {len(networks)}; "
                          "run one preset per --weights file")
    return networks


def _check_tiles(networks, tiles: tuple[int, ...]) -> None:
    for label, network in networks:
        rule = resolve_config(network).size_multiple
        bad = [t for t in tiles if t % rule]
        if bad:
            raise ConfigError(f"--tile {bad}: not multiples of the {label} network's size rule {rule} LR px")


def _device(device: str) -> str:
    check_device(device)
    return resolve_device(device)


def _auto_precisions(device: str) -> tuple[str, ...]:
    if device.startswith("cuda"):
        return PRECISIONS
    return ("fp32", "bf16") if native_bf16(cpu_features()) else ("fp32",)


def _command(params: dict) -> str:
    """The canonical command line that reproduces this run (recorded in the report)."""
    parts = ["gtasr-bench"]
    for name in ("preset", "network_config", "weights", "backends", "precision", "tile", "batch", "warmup",
                 "repeat", "threads", "device", "images", "matmul_size", "cache_dir", "out", "markdown", "plot"):
        value = params.get(name)
        if value is not None:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    if not params["e2e"]:
        parts.append("--no-e2e")
    return shlex.join(parts)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gtasr-bench")
@click.option("--preset", default="paper", show_default=True, help="Comma-separated presets: paper, demo.")
@click.option("--network-config", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="A network JSON (ours or the authors' names) instead of --preset.")
@click.option("--weights", callback=weights_callback,
              help="Weights for the one network benchmarked (a file, or a name fetched with gtasr-weights). "
                   "Default: random (seeded) — latency does not "
                   "depend on weight values.")
@click.option("--backends", default="torch,onnxruntime,openvino,tensorrt", show_default=True,
              help="Comma-separated backends; those that cannot run here are listed as skipped with the reason.")
@click.option("--precision", default="auto", show_default=True,
              help="Comma-separated fp32,bf16,fp16; auto = fp32 plus bf16 on CPUs with native bf16 (AMX-BF16, "
                   "AVX512-BF16), fp32,bf16,fp16 on CUDA. A backend that does not compute a precision is listed "
                   "as skipped. Reduced-precision rows report their PSNR against torch fp32 on a real photo.")
@click.option("--tile", default="64,128", show_default=True, help="Comma-separated square LR tile sizes (px).")
@click.option("--batch", default="1", show_default=True, help="Comma-separated batch sizes (tiles per call).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed calls before timing.")
@click.option("--repeat", type=int, default=5, show_default=True, help="Timed calls per scenario.")
@click.option("--threads", type=int, default=None, help="CPU threads per scenario. Default: all logical CPUs.")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N; auto = cuda when present.")
@click.option("--e2e/--no-e2e", default=True, show_default=True,
              help="Also time an end-to-end folder run (decode, tiling, model, blending, encode) per scenario.")
@click.option("--images", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="LR images for the folder run, used as they are. Default: a real photo (matplotlib's "
                   "grace_hopper.jpg) in two framings at 1.5x each tile.")
@click.option("--cache-dir", default=".cache/bench", show_default=True,
              help="Exported ONNX graphs, reused across runs (keyed by config, weights, tile, batch, precision).")
@click.option("--matmul-size", type=click.IntRange(min=16), default=None,
              help="n of the n×n reference matmul. Default: 2048 on CPU, 8192 on CUDA.")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds per scenario process.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON report here.")
@click.option("--markdown", type=click.Path(dir_okay=False, path_type=Path), help="Write the markdown here.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG of latency and throughput against tile size (needs matplotlib: the bench extra).")
@click.option("--quick", is_flag=True,
              help="About a minute: " + ", ".join(f"--{k} {v}" for k, v in QUICK.items()) + " (options given "
                   "on the command line win).")
def main(**params):
    """Benchmark GTASR per backend, precision, LR tile and batch; print the markdown report.

    Says first roughly how long the chosen scenarios take, prints each scenario's row as it
    finishes, and rewrites --out/--markdown after every scenario, so a stopped run keeps what it
    measured. Exit code: 0 every scenario ran or was skipped (a backend this machine cannot run),
    1 some scenario failed (the report still lists it), 2 usage error, 130 interrupted.
    """
    if params.pop("quick"):
        ctx = click.get_current_context()
        for name, value in QUICK.items():
            if ctx.get_parameter_source(name) is not click.core.ParameterSource.COMMANDLINE:
                params[name] = value
    try:
        report = _run(params)
    except GtasrError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        saved = [str(params[o]) for o in ("out", "markdown") if params[o]]
        click.echo("interrupted" + (f": {' and '.join(saved)} hold the scenarios measured so far" if saved
                                    else ""), err=True)
        sys.exit(130)

    click.echo("")
    click.echo(render_markdown(report), nl=False)
    failed = [row for row in report["rows"] if row.get("status") == "failed"]
    if failed:  # skipped scenarios (a backend this machine cannot run) are not failures
        click.echo(f"error: {len(failed)} scenario(s) failed; first: {failed[0].get('reason')}", err=True)
        sys.exit(1)


def _run(params: dict) -> dict:
    from ..bench.report import build_report, render_markdown, write_json, write_plot

    networks = _networks(params["preset"], params["network_config"], params["weights"])
    backends = _split(params["backends"], "backends")
    if unknown := [b for b in backends if b not in BACKENDS]:
        raise ConfigError(f"--backends {unknown}: unknown; valid: {', '.join(BACKENDS)}")
    device = _device(params["device"])
    precision = params["precision"]
    precisions = _auto_precisions(device) if precision == "auto" else _split(precision, "precision")
    if unknown := [p for p in precisions if p not in PRECISIONS]:
        raise ConfigError(f"--precision {unknown}: unknown; valid: {', '.join(PRECISIONS)}")
    tiles = _positive(_split(params["tile"], "tile", int), "tile")
    batches = _positive(_split(params["batch"], "batch", int), "batch")
    _check_tiles(networks, tiles)
    threads = params["threads"] or os.cpu_count() or 1
    if threads < 1 or params["warmup"] < 0 or params["repeat"] < 1:
        raise ConfigError("--threads and --repeat must be >= 1, --warmup >= 0")

    for option in ("out", "markdown", "plot"):  # before the (long) run, not after it
        if params[option]:
            check_report_path(params[option], f"--{option}")
    with tempfile.TemporaryDirectory(prefix="gtasr-bench-lr-") as lr_dir:
        images = {}
        if params["e2e"]:
            images = {t: folder_images(params["images"]) if params["images"] else
                      sample_lr_images(t, Path(lr_dir) / str(t)) for t in tiles}
        plan = BenchPlan(networks=networks, backends=backends, precisions=precisions, tiles=tiles, batches=batches,
                         warmup=params["warmup"], repeat=params["repeat"], threads=threads, device=device,
                         cache_dir=str(Path(params["cache_dir"]).resolve()),
                         weights=None if params["weights"] is None else str(params["weights"].resolve()),
                         images=images, matmul_size=params["matmul_size"])
        click.echo(_estimate_line(plan, estimate_seconds(plan)), err=True)
        costs, projection = cost_tables(list(networks), list(tiles))
        notes = [("weights: " + str(params["weights"])) if params["weights"] else
                 "weights: random (seeded initialisation); latency does not depend on weight values — use "
                 "--weights for real ones", "latency = one engine call on host float32 arrays (host↔device copies "
                 "included on GPU); median of the timed calls after the warm-up"]
        command = _command({**params, "device": device, "threads": threads})

        def save(result: dict, partial: str | None = None) -> dict:
            report = build_report(result, costs=costs, projection=projection, command=command,
                                  notes=notes + ([partial] if partial else []))
            if params["out"]:
                write_json(report, params["out"])
            if params["markdown"]:
                Path(params["markdown"]).parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(Path(params["markdown"]), render_markdown(report).encode("utf-8"))
            return report

        def on_row(row: dict, partial: dict, done: int, total: int) -> None:
            if done == 1:
                click.echo(ROW_HEADER)
            click.echo(_row_line(row))
            if done < total:
                save(partial, f"PARTIAL: {done} of {total} scenarios measured (the run was stopped or is "
                              "still going)")

        report = save(run_scenarios(plan, timeout_s=params["timeout"], on_row=on_row))
    if params["plot"]:
        write_plot(report, params["plot"])
    return report


def _estimate_line(plan, seconds: float) -> str:
    line = (f"gtasr-bench: {len(plan.scenarios())} scenario(s), roughly {_minutes(seconds)} on an otherwise idle "
            f"{'CPU' if plan.device == 'cpu' else plan.device} (a rough estimate; rows print as they finish)")
    busy = busy_cpus() if plan.device == "cpu" else None
    if busy is not None and busy >= 0.5:
        line += f"; other processes keep {busy:.1f} CPU(s) busy now, so expect longer"
    return line


def _minutes(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min" if seconds >= 90 else f"{max(10, round(seconds, -1)):.0f} s"


def _row_line(row: dict) -> str:
    """One finished scenario as a markdown table row (the header is ROW_HEADER)."""
    status = row["status"] if not row.get("reason") else f"{row['status']}: {row['reason']}"
    median = f"{row['latency']['median_s']:.4g}" if row.get("latency") else "—"
    e2e = f"{row['e2e']['total_s']:.3g}" if row.get("e2e") else "—"
    return (f"| {row['preset']} | {row['backend']} | {row['precision']} | {row['tile']} | {row['batch']} | "
            f"{status} | {median} | {e2e} |")


if __name__ == "__main__":
    main()
