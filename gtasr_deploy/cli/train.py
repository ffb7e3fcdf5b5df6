"""``gtasr-train CONFIG``: train GTASR (stage I, stage II or both) from a TOML recipe (SPEC §5).

Single process: ``gtasr-train training/demo.toml``. Several GPUs:
``torchrun --nproc_per_node=8 -m gtasr_deploy.cli.train training/stage1.toml``.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click

from ..version import __version__
from ..errors import GtasrError
from ..training.config import load_config
from ..training.loop import StopRequested, train


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gtasr-train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in <out>/checkpoints.")
@click.option("--dry-run", is_flag=True, help="Print the resolved config and exit.")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Override every stage's step count.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Override run.out_dir.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Train one chunk: after this much wall time (or on SIGTERM) checkpoint the current step "
                   "and exit 0; --resume continues bit for bit. Single process only.")
def main(config: str, resume: bool, dry_run: bool, steps: int | None, out_dir: str | None,
         max_minutes: float | None) -> None:
    """Train from the TOML recipe CONFIG; export the EMA weights as safetensors for gtasr-upscale."""

    try:
        cfg = load_config(config)
        overrides = {}
        if steps is not None:
            overrides.update({f"stage{s.stage}.steps": steps for s in cfg.stages})
        if out_dir is not None:
            overrides["run.out_dir"] = out_dir
            if cfg.run.export:  # keep the export next to the other outputs
                overrides["run.export"] = str(Path(out_dir) / Path(cfg.run.export).name)
        if overrides:
            cfg = load_config(config, overrides=overrides)
        if dry_run:
            click.echo(cfg.to_json())
            return

        try:
            path = train(cfg, resume=resume, stop=_chunk_stop(max_minutes))
        except StopRequested as done:
            click.echo(f"gtasr-train: {done}")
            return
    except GtasrError as err:
        click.echo(f"gtasr-train: error: {err}", err=True)
        sys.exit(1)
    except MemoryError:
        click.echo("gtasr-train: error: out of memory; lower data.batch_size (or use stageN.optim.grad_accum), "
                   "data.crop or data.num_workers", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("gtasr-train: interrupted; the checkpoints in <out>/checkpoints are kept, --resume continues "
                   "from the newest", err=True)
        sys.exit(130)
    if path is not None:
        click.echo(f"weights: {path}")


def _chunk_stop(max_minutes: float | None):
    """None without --max-minutes; else a stop() that is True once the budget is spent or after a
    SIGTERM (which then ends the run at the next step boundary, checkpointed, instead of killing it)."""
    if max_minutes is None:
        return None
    deadline = time.monotonic() + 60.0 * max_minutes
    asked = []
    signal.signal(signal.SIGTERM, lambda signum, frame: asked.append(signum))
    return lambda: bool(asked) or time.monotonic() >= deadline


if __name__ == "__main__":
    main()
