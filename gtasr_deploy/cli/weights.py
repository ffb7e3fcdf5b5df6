"""`gtasr-weights list | fetch NAME [--dir DIR]`: the official checkpoints, fetched on request.

    gtasr-weights list                      # known checkpoints, where they come from, licence, fetched?
    gtasr-weights fetch gtasr-final         # download (resumable), verify, record sha256
    gtasr-upscale in/ out/ --weights gtasr-final

Nothing downloads unless `fetch` is run. Also holds the `--weights` callback the other commands
share, so a fetched name works wherever a weights file does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..version import __version__
from ..batch.progress import CountProgress
from ..errors import GtasrError
from ..weights.registry import resolve_weights
from ..weights.registry import REGISTRY, cached_path, read_record
from ..weights.registry import WeightsFetchError, entry_or_error, fetch as fetch_weights

EXIT_USAGE = 2
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def weights_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """click callback for --weights: a path, or a name fetched with `gtasr-weights fetch`."""

    if value is None or ctx.resilient_parsing:
        return Path(value) if value is not None else None
    try:
        return resolve_weights(value)
    except GtasrError as exc:
        click.echo(f"error: {exc}", err=True)
        ctx.exit(EXIT_USAGE)


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, prog_name="gtasr-weights")
def main() -> None:
    """Official GTASR checkpoints: `list` what is known, `fetch NAME` downloads one into the cache
    ($GTASR_WEIGHTS_DIR, else ~/.cache/gtasr_deploy/weights); then `--weights NAME` works in
    gtasr-upscale, gtasr-export, gtasr-bench and gtasr-eval."""


@main.command("list", context_settings=_CONTEXT)
@click.option("--dir", "weights_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Cache folder to look in. Default: $GTASR_WEIGHTS_DIR or ~/.cache/gtasr_deploy/weights.")
def list_cmd(weights_dir: Path | None) -> None:
    """Known checkpoints: name, file, what it is, where it comes from, licence, and whether it is fetched."""

    for entry in REGISTRY.values():
        record = read_record(entry, weights_dir)
        if entry.filename is None:
            state = f"embedded: {cached_path(entry)}"
        elif record is not None:
            state = f"fetched: {cached_path(entry, weights_dir)} (sha256 {record.get('sha256', '?')})"
        else:
            state = f"not fetched (gtasr-weights fetch {entry.name})"
        click.echo(f"{entry.name}  {entry.filename or '(in the package)'}\n"
                   f"    {entry.description}\n"
                   f"    network: {entry.network}; source: {entry.url() or 'this package'}\n"
                   f"    licence: {entry.licence}\n"
                   f"    {state}")


@main.command(context_settings=_CONTEXT)
@click.argument("name")
@click.option("--dir", "weights_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Download into this folder. Default: $GTASR_WEIGHTS_DIR or ~/.cache/gtasr_deploy/weights "
                   "(--weights NAME looks there; set GTASR_WEIGHTS_DIR to use another folder by name).")
@click.option("--force", is_flag=True, help="Download again even when already fetched.")
@click.option("-q", "--quiet", is_flag=True, help="No progress.")
def fetch(name: str, weights_dir: Path | None, force: bool, quiet: bool) -> None:
    """Download NAME (see `list`; an official file name works too), resuming an interrupted
    download; check it loads as the expected network (no code runs); record its sha256.

    Exit code: 0 fetched (or already there), 1 download or check failed, 2 unknown name."""

    try:
        entry = entry_or_error(name)
    except GtasrError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    progress = CountProgress(entry.filename or entry.name, unit="B", enabled=not quiet, every=1 << 26,
                             unit_scale=True)
    try:
        result = fetch_weights(entry.name, weights_dir=weights_dir, progress=progress, force=force)
    except (WeightsFetchError, GtasrError) as exc:
        progress.close()
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        progress.close()
        click.echo("interrupted: the partial download is kept; run the same command again to resume", err=True)
        sys.exit(130)
    progress.close()
    if result.already:
        click.echo(f"{entry.name}: already at {result.path} (sha256 {result.sha256})")
    else:
        resumed = f", resumed at {result.resumed_from} bytes" if result.resumed_from else ""
        if result.restarted_from:
            resumed = (f", downloaded again from the start: the server ignored the request to resume at "
                       f"{result.restarted_from} bytes (no HTTP Range support)")
        click.echo(f"{entry.name}: {result.path} ({result.bytes} bytes{resumed}), loads as the {entry.network} "
                   f"network, sha256 {result.sha256}")


if __name__ == "__main__":
    main()
