"""`gtasr-upscale INPUT OUTPUT`: x4 super-resolution of an image or a folder of images."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from ..version import __version__
from ..engines.threads import choose_threads
from ..errors import GtasrError
from ..extras import require
from ._options import (
    format_option,
    max_pixels_option,
    model_options,
    options_from_flags,
    overwrite_option,
    quality_option,
    suffix_option,
)
from ..batch.runner import check_device, local_device_from_env
from ..batch import runner as batch_mod
from ..interrupts import signals_as_interrupt
from ..batch.video_jobs import VideoJobs
from ..upscaler import Upscaler
from ..inference.estimate import describe, image_sizes, seconds_per_lr_px, total_work
from ..media.video import is_video
from ..batch.plan import collect_videos, plan_video_jobs
from ..batch.runner import collect_inputs
from ..media.resize import OutputSize
from ..batch.runner import IMAGE_SUFFIXES
from ..media.images import format_for_suffix
from ..engines.device import resolve_device

EXIT_USAGE = 2


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _resolve_device(device: str) -> str:
    check_device(device)
    if device != "auto":
        return device
    resolved = resolve_device(device)
    return local_device_from_env(default=resolved) if resolved == "cuda" else resolved


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gtasr-upscale")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_dir", metavar="OUTPUT", type=click.Path(path_type=Path))
@click.option("--scale", type=int, default=4, show_default=True, help="Upscaling factor; GTASR is x4 only.")
@model_options
@format_option
@quality_option
@click.option("--outscale", type=click.FloatRange(min=0, min_open=True), default=None, metavar="F",
              help="Output scale relative to the input (any factor > 0, e.g. 2, 1.5, 8; images): x4 by the "
                   "model, then a Lanczos resize to round(F·W) x round(F·H) (antialiased when shrinking). "
                   "Alpha and 16-bit data are resized the same way, in float32. Default: 4.")
@click.option("--width", type=click.IntRange(min=1), default=None, metavar="PX",
              help="Output width in pixels; height from the aspect ratio (x4, then resized as --outscale).")
@click.option("--height", type=click.IntRange(min=1), default=None, metavar="PX",
              help="Output height in pixels; width from the aspect ratio.")
@click.option("--long-side", type=click.IntRange(min=1), default=None, metavar="PX",
              help="Output long side in pixels, e.g. 3840; the other side from the aspect ratio. "
                   "--outscale, --width, --height and --long-side exclude each other.")
@click.option("--strip-metadata", is_flag=True,
              help="Do not copy EXIF and XMP (camera, date, GPS...) to the outputs. By default they are "
                   "copied where the format holds them (PNG, JPEG, WebP, 8-bit TIFF), with orientation 1 "
                   "and the new size. The ICC colour profile is always kept.")
@click.option("--video-codec", default=None,
              help="Video encoder for video inputs (.mp4 .mkv .mov .webm .avi): libx264 (default; libvpx-vp9 for "
                   ".webm), libx265, libvpx-vp9, ffv1 (lossless), ... Audio/subtitles are copied as they are.")
@click.option("--crf", type=click.IntRange(0, 63), default=None,
              help="Video constant quality (lower is better) for libx264/libx265/VP9/AV1. Default: 18.")
@click.option("--pix-fmt", default=None, help="Video pixel format. Default: yuv420p (plays everywhere).")
@suffix_option
@overwrite_option
@max_pixels_option()
@click.option("--shard", default=None, metavar="K/N",
              help="Process the K-th of N deterministic shares (0-based). Default: RANK/WORLD_SIZE if set.")
@click.option("--json", "json_report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JSON report of every file (status, sizes, seconds).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output (bars, or per-image lines in a log).")
def main(input_path, output_dir, scale, fmt, quality, suffix, overwrite, max_pixels, shard, json_report, quiet,
         video_codec, crf, pix_fmt, outscale, width, height, long_side, strip_metadata, **flags):
    """Upscale INPUT (an image file or a folder, searched recursively) x4 into the folder OUTPUT.

    Writes <name>.png per input (mirroring sub-folders; an input in another format is tagged,
    photo.jpg -> photo_jpg.png, so names never depend on which other files exist). An output is
    skipped only when its completion record (OUTPUT/.gtasr/) shows it was finished for the same
    input file and settings; a stale one is redone; a file this tool did not write is left alone
    and reported unless --overwrite. For a single
    image INPUT, an OUTPUT ending in .png/.jpg/.jpeg/.webp/.bmp/.tif/.tiff is that file (format
    from its suffix). Without a terminal (a log), progress is one plain line per image.
    Videos (.mp4 .mkv .mov .webm .avi; a file, or those in a folder; the video extra): every frame
    x4 with one fixed noise, frame count/rate/timestamps kept, audio and subtitles copied; a video
    OUTPUT name writes that file. See --video-codec, --crf, --pix-fmt.
    Exit code: 0 all succeeded, 1 some files failed, 2 usage error (nothing done), 130 interrupted
    (Ctrl-C, SIGTERM, SIGHUP: finished files are kept, no partial ones).
    """

    # Ctrl-C, SIGTERM and SIGHUP: one orderly stop (exit 130) from here to the end of the command
    click.get_current_context().with_resource(signals_as_interrupt())
    if scale != 4:
        _fail(f"--scale {scale} is not available: GTASR models are x4 only (use --scale 4)")
    try:  # the true reason for an INPUT/OUTPUT that cannot even be looked at (loop, name too long)
        options = options_from_flags(flags)
        batch_mod.check_input_path(input_path)
        batch_mod.check_output_path(output_dir)
    except GtasrError as exc:
        _fail(str(exc))
    output_size = _output_size(outscale, width, height, long_side)
    image_file = _is_image_file_output(input_path, output_dir, fmt, suffix)
    unreadable: list[tuple[str, str]] = []  # (folder, reason): folders the search could not enter
    # folders a usage error must not leave behind (created by the checks below)
    made = batch_mod.missing_dirs([output_dir.parent if image_file else output_dir,
                                   *([json_report.parent] if json_report is not None else [])])
    try:
        video_jobs = _plan_videos(input_path, output_dir, suffix)
        inputs = [] if video_jobs and input_path.is_file() else _collect_images(
            input_path, output_dir, unreadable, allow_none=bool(video_jobs))
        if video_jobs and not inputs:  # only videos: PyAV missing is a usage error, before any work
            require("av", "video input")
        jobs = ([batch_mod.Job(src=src, rel=rel, dst=output_dir) for src, rel in inputs] if image_file
                else batch_mod.plan_outputs(inputs, output_dir, fmt=fmt, suffix=suffix))
        if json_report is not None:  # every shard's inputs and outputs, videos too, not only this one's
            batch_mod.check_json_target(json_report, [*jobs, *video_jobs])
        if len(jobs) < len(inputs) and not quiet:
            click.echo(f"note: {len(inputs) - len(jobs)} file(s) left out: they are outputs of other inputs "
                       "(the output folder is inside the input folder)", err=True)
        jobs = batch_mod.select_shard(jobs, batch_mod.parse_shard(shard) if shard else None)
        video_jobs = batch_mod.select_shard(video_jobs, batch_mod.parse_shard(shard) if shard else None)
        if shard is None and batch_mod.shard_from_env() is not None:  # a leftover export must not go unseen
            k, n = batch_mod.shard_from_env()
            click.echo(f"note: RANK={k} WORLD_SIZE={n} in the environment: this run does share {k}/{n} "
                       f"({len(jobs)} of the files); --shard 0/1 does them all", err=True)
        batch_mod.check_output_sizes([job.src for job in jobs], output_size, max_pixels)
        batch_mod.check_output_dir((output_dir.parent if image_file else output_dir) if jobs or not video_jobs else video_jobs[0].dst.parent)
        if json_report is not None:
            batch_mod.check_report_path(json_report)
        thread_note, threads = None, options.threads
        device = _resolve_device(options.device)
        if threads is None and device == "cpu":
            choice = choose_threads()
            threads, thread_note = choice.threads, choice.describe()
        if threads:
            import torch

            torch.set_num_threads(threads)
        options = replace(options, device=device, threads=threads)
        upscaler = Upscaler(options=options, log=lambda line: click.echo(line, err=True))
    except GtasrError as exc:
        batch_mod.remove_empty_dirs(made)
        _fail(str(exc))
    except KeyboardInterrupt:  # Ctrl-C while the model loads: nothing was written yet
        batch_mod.remove_empty_dirs(made)
        click.echo("interrupted before any file was processed", err=True)
        sys.exit(batch_mod.EXIT_INTERRUPTED)

    def sr_fn(rgb, on_tile=None):
        return upscaler.upscale_float(rgb, progress=on_tile)


    try:  # one run for images and videos: one skip rule, one interrupt path, one summary and report
        if not quiet:
            videos = f" + {len(video_jobs)} video(s)" if video_jobs else ""
            click.echo(f"gtasr-upscale: {len(jobs)} file(s){videos}; {_header(upscaler)}", err=True)
            if thread_note:
                click.echo(thread_note, err=True)
        if not quiet and jobs:
            _estimate(upscaler, jobs)
        if not quiet and output_size is not None:
            click.echo(output_size.describe() + ("; videos stay x4" if video_jobs else ""), err=True)
        result = batch_mod.run_batch([*jobs, *video_jobs], sr_fn, overwrite=overwrite, max_pixels=max_pixels,
                                     quality=quality, progress=not quiet, json_report=json_report,
                                     tile_progress=not quiet, unlisted=unreadable,
                                     output_size=output_size, strip_metadata=strip_metadata,
                                     handlers=[VideoJobs(codec=video_codec, crf=crf, pix_fmt=pix_fmt)],
                                     settings=batch_mod.picture_settings(
                                         weights=options.weights, onnx=options.onnx,
                                         network_config=options.network_config, param_key=options.param_key,
                                         engine=upscaler.engine.info, tiling=upscaler.options, seed=options.seed))
    except KeyboardInterrupt:
        click.echo("interrupted: finished files are kept; run the same command again to resume", err=True)
        sys.exit(batch_mod.EXIT_INTERRUPTED)
    finally:
        upscaler.close()
    sys.exit(result.exit_code)


LONG_RUN_CALLS = 32  # estimate the duration before runs of more engine calls than this


def _estimate(upscaler, jobs) -> None:
    """Before a long run, one line: LR pixels the network will run and the estimated duration."""

    calls, pixels = total_work(upscaler.pipeline, image_sizes(job.src for job in jobs))
    if calls <= LONG_RUN_CALLS:
        return
    seconds = seconds_per_lr_px(upscaler.pipeline) * pixels
    click.echo(f"estimate: {calls} network calls over {pixels / 1e6:.2f} M LR px (one call timed now) ≈ "
               f"{describe(seconds)} for the images", err=True)


def _header(upscaler) -> str:
    """What the run uses, in words: weights, backend (and why), precision (and why), tiles (and why), norm."""
    info, opts = upscaler.engine.info, upscaler.options
    if opts.tile is None:
        tile = f"tiles {upscaler.tile_reason}"
    elif opts.tile == 0:
        tile = "whole image"
    else:
        tile = f"tile {opts.tile} ({upscaler.tile_reason}) overlap {opts.overlap}"
    norm = ("GroupNorm statistics of the whole image shared by its tiles" if opts.norm == "shared"
            else "per-tile GroupNorm statistics")
    choice = upscaler.backend_choice
    return (f"{upscaler.weights_label}; backend {info.backend} on {info.device} ({choice.reason}); precision "
            f"{upscaler.precision_choice.header()}; {tile}, batch {opts.batch}; {norm}; seed {upscaler.seed}")


def _plan_videos(input_path: Path, output: Path, suffix: str) -> list:
    """Video jobs of INPUT (a video file, or the videos in a folder); [] when there are none."""

    if input_path.is_file() and not is_video(input_path):
        return []
    videos = collect_videos(input_path, exclude=output)
    return plan_video_jobs(videos, output, single=input_path.is_file(), suffix=suffix) if videos else []


def _collect_images(input_path: Path, output: Path, unreadable: list, *, allow_none: bool) -> list:
    """The image inputs; a folder holding only videos has none (not an error then)."""

    try:
        return collect_inputs(input_path, exclude=output, unreadable=unreadable)
    except GtasrError:  # "no images found" (the folder exists: it holds videos)
        if allow_none:
            return []
        raise


def _output_size(outscale, width, height, long_side):
    """The requested output size, or None for the model's x4; usage error for two at once or a bad value."""

    given = {"--outscale": outscale, "--width": width, "--height": height, "--long-side": long_side}
    named = [name for name, value in given.items() if value is not None]
    if len(named) > 1:
        _fail(f"{' and '.join(named)} exclude each other; give one output size")
    if not named:
        return None
    try:
        return OutputSize(outscale=outscale, width=width, height=height, long_side=long_side)
    except GtasrError as exc:
        _fail(f"{named[0]} {given[named[0]]}: {exc}")


def _is_image_file_output(input_path: Path, output: Path, fmt: str, suffix: str) -> bool:
    """True when OUTPUT names one image file: an image suffix and not an existing folder.

    Usage error for a folder INPUT with such an OUTPUT, an OUTPUT that is INPUT itself, a --format
    that contradicts the suffix, or a --suffix (it names files inside an output folder).
    """

    if output.suffix.lower() not in IMAGE_SUFFIXES or output.is_dir():
        return False
    if input_path.is_dir():
        _fail(f"OUTPUT {output} is an image file name, but INPUT {input_path} is a folder; give a folder "
              "for the results")
    if os.path.realpath(output) == os.path.realpath(input_path):
        _fail(f"OUTPUT {output} is INPUT itself; give another file name (the input is never replaced)")
    if suffix:
        _fail(f"--suffix {suffix!r} names files in an output folder; OUTPUT {output} is already a file name")
    from_suffix = format_for_suffix(output.suffix)
    source = click.get_current_context().get_parameter_source("fmt")
    if source is click.core.ParameterSource.COMMANDLINE and fmt not in ("same", from_suffix):
        _fail(f"--format {fmt} contradicts OUTPUT {output} (a {from_suffix} file name); drop --format, "
              "the suffix decides")
    return True


if __name__ == "__main__":
    main()
