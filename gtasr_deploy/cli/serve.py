"""`gtasr-serve http` (the HTTP service and web page), `gtasr-serve batch` (folders on a Ray cluster) and
`gtasr-serve triton` (Triton Inference Server through PyTriton).

The model options are gtasr-upscale's (same names, defaults and help), declared once in ``cli/_options.py``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import click

from ..version import __version__
from ..errors import GtasrError
from ..extras import require_all
from ..inference.options import UpscaleOptions
from ..serve.settings import ServiceOptions, open_upscaler
from ._options import (
    format_option,
    max_pixels_option,
    model_options,
    options_from_flags,
    overwrite_option,
    quality_option,
    suffix_option,
)
from ..serve import cluster
from ..serve.triton import TritonServeOptions, serve
from ..batch import runner as batch_mod
from ..atomic import atomic_write_text
from ..interrupts import signals_as_interrupt
from ..serve.cluster import ClusterOptions, inputs_from, run_on_cluster

EXIT_USAGE = 2
SERVICE_MAX_PIXELS = 4_000_000  # x4 output of 4 MP is 64 MP: ~0.8 GB of float32 per request in memory
_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _options(kw: dict) -> UpscaleOptions:
    """The upscale options from the model flags in ``kw`` (removed from it); a bad one is a usage error."""
    try:
        return options_from_flags(kw, device_here=False)  # the model may run on other nodes
    except GtasrError as exc:
        _fail(str(exc))


def _preflight(upscale: UpscaleOptions, threads: int) -> None:
    """Open the model here once: bad weights or options are one line, not a Ray worker's traceback."""
    try:
        open_upscaler(upscale, default_threads=max(1, threads)).close()
    except GtasrError as exc:
        _fail(str(exc))


def _require(*modules: str) -> None:
    """Ray Serve / FastAPI present, or one line naming the serve extra (before any work)."""

    try:
        require_all(modules, "gtasr-serve")
    except GtasrError as exc:
        _fail(str(exc))


def _quiet_shutdown() -> None:
    """serve.shutdown() drains the replicas, then Serve's controller kills itself, and the raylet reports
    that as a failed `ServeController.graceful_shutdown` task on the driver's console although the
    stop went as planned. That one report is left out; anything else Ray prints still shows."""
    import ray._private.worker as ray_worker
    from ray import serve

    original = getattr(ray_worker, "print_to_stdstream", None)
    if original is not None:
        def filtered(data, ignore_prefix: bool):
            if not any("ServeController.graceful_shutdown" in str(line) for line in data.get("lines", ())):
                original(data, ignore_prefix)

        ray_worker.print_to_stdstream = filtered
    serve.shutdown()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _address_option(f):
    return click.option("--address", default="local", show_default=True,
                        help="Ray cluster: local (start one here), auto (the cluster this machine belongs to), "
                             "or HEAD:6379 / ray://HEAD:10001.")(f)


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, prog_name="gtasr-serve")
def main():
    """Serve the x4 upscaler over HTTP, or run gtasr-upscale's batch on a Ray cluster (pip extra: serve),
    or serve it on Triton Inference Server (pip extra: triton)."""


@main.command(context_settings=_CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (0.0.0.0 for all interfaces).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@_address_option
@click.option("--replicas", type=click.IntRange(min=1), default=1, show_default=True, help="Model copies (Serve replicas).")
@click.option("--cpus-per-replica", type=click.FloatRange(min=0), default=None,
              help="CPUs reserved per replica (also its default --threads). Default: all CPUs of this machine.")
@click.option("--gpus-per-replica", type=click.FloatRange(min=0), default=0, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Tiles merged into one engine call across concurrent requests.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=10, show_default=True,
              help="How long the first tile of a batch waits for tiles of other requests.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.001), default=32, show_default=True,
              help="Uploads larger than this are refused (413).")
@click.option("--max-ongoing-requests", type=click.IntRange(min=1), default=8, show_default=True,
              help="Requests one replica works on at once (each holds its image and x4 result in memory: "
                   "~0.8 GB at --max-pixels 4 MP); more wait in Serve's queue.")
@model_options
@max_pixels_option(SERVICE_MAX_PIXELS)
def http(host, port, address, replicas, cpus_per_replica, gpus_per_replica, max_batch_size, batch_wait_ms,
         max_upload_mb, max_ongoing_requests, **kw):
    """Serve POST /v1/upscale, GET /health and the web page on http://HOST:PORT/ until Ctrl-C."""
    _require("ray.serve", "fastapi")
    upscale = _options(kw)
    if upscale.batch > max_batch_size:
        _fail(f"--batch {upscale.batch} is larger than --max-batch-size {max_batch_size}")

    options = ServiceOptions(max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=kw["max_pixels"] or None,
                             max_batch_size=max_batch_size, batch_wait_s=batch_wait_ms / 1000,
                             max_ongoing_requests=max_ongoing_requests)
    cpus = cpus_per_replica if cpus_per_replica is not None else float(len(os.sched_getaffinity(0)))
    if address == "local":
        _preflight(upscale, int(cpus))
    cluster.connect(address)
    try:
        from ..serve.service import deploy  # Ray Serve and FastAPI: the 'serve' extra, checked above

        deploy(upscale, options, host=host, port=port, replicas=replicas, cpus_per_replica=cpus,
               gpus_per_replica=gpus_per_replica)
    except RuntimeError as exc:  # Serve reports a replica that could not start this way
        _fail(" ".join(str(exc).split())[:500])
    # stop as Ctrl-C does (a service manager, a closed terminal); installed before "ready" is printed,
    # so a signal sent as soon as the service says it is ready is not met by Ray's own SIGTERM handler
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN or signum == signal.SIGTERM:  # nohup keeps SIGHUP off
            signal.signal(signum, _interrupt)
    try:  # "ready" inside: a signal sent the moment it is read still stops in order
        click.echo(f"gtasr-serve: ready on http://{host}:{port}/ (Ctrl-C stops)", err=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("gtasr-serve: stopping (requests in progress finish first)", err=True)
        _quiet_shutdown()
        click.echo("gtasr-serve: stopped", err=True)
        sys.exit(130)


@main.command(context_settings=_CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True, help="Listen address (0.0.0.0 for all interfaces).")
@click.option("--http-port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--grpc-port", type=click.IntRange(1, 65535), default=8001, show_default=True)
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=8002, show_default=True)
@click.option("--max-batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Requests Triton's dynamic batcher hands to one call (each image still runs on its own).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=10, show_default=True,
              help="How long the first request of a batch waits for others.")
@model_options
@max_pixels_option(SERVICE_MAX_PIXELS)
def triton(host, http_port, grpc_port, metrics_port, max_batch_size, batch_wait_ms, max_pixels, **kw):
    """Serve model 'gtasr' (image file bytes in, PNG bytes out) on Triton Inference Server via PyTriton
    (pip extra: triton, in its own virtual environment) until Ctrl-C. See docs/integrations.md."""

    upscale = _options(kw)
    try:
        upscaler = open_upscaler(upscale)
        options = TritonServeOptions(host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                                     max_batch_size=max_batch_size, queue_delay_us=int(batch_wait_ms * 1000),
                                     max_pixels=max_pixels or None)
        stops = []

        def stop(signum, frame):  # SIGINT and SIGTERM stop Triton cleanly (SIGINT even where it was ignored)
            stops.append(signum)
            raise KeyboardInterrupt(f"signal {signum}")

        previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            serve(upscaler, options, on_ready=lambda line: click.echo(line, err=True))
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    except GtasrError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    if stops:  # PyTriton ends serve() quietly on an interrupt
        sys.exit(130)
    click.echo("error: Triton Inference Server or the model stopped on its own; see its log above", err=True)
    sys.exit(1)


@main.command(context_settings=_CONTEXT)
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.argument("output_dir", metavar="OUTPUT", type=click.Path(path_type=Path))
@_address_option
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="Workers (each loads the model once). Default: one per GPU, or per --cpus-per-actor CPUs.")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0.01), default=1, show_default=True,
              help="CPUs reserved per worker (also its default --threads).")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0, show_default=True,
              help="GPUs per worker; 1 = one GPU worker per GPU of the cluster.")
@click.option("--max-retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="A dead worker is restarted and its task retried this many times.")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None, help="--address local only: CPUs Ray may use.")
@click.option("--json", "json_report", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a JSON report of every file (status, sizes, seconds).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@model_options
@format_option
@quality_option
@suffix_option
@overwrite_option
@max_pixels_option()
def batch(input_path, output_dir, address, actors, cpus_per_actor, gpus_per_actor, max_retries, num_cpus,
          json_report, quiet, fmt, quality, suffix, overwrite, max_pixels, **kw):
    """Upscale INPUT (a folder, an image, or a .txt list of paths) into OUTPUT on a Ray cluster.

    Output names, bytes and skip rules are gtasr-upscale's (give the same --threads on CPUs).
    Every node must see INPUT and OUTPUT at the same paths. Exit code: 0 ok, 1 some files failed, 2 usage,
    130 interrupted (Ctrl-C, SIGTERM, SIGHUP: the files in flight finish, no partial ones; run again to resume).
    """
    _require("ray")

    # Ctrl-C, SIGTERM and SIGHUP: the files in flight finish, then the summary and exit 130
    click.get_current_context().with_resource(signals_as_interrupt())
    upscale = _options(kw)
    try:
        jobs = batch_mod.plan_outputs(inputs_from(input_path, output_dir), output_dir, fmt=fmt, suffix=suffix)
        batch_mod.check_output_dir(output_dir)
        if json_report is not None:
            batch_mod.check_report_path(json_report)
    except GtasrError as exc:
        _fail(str(exc))
    try:
        if address == "local":
            _preflight(upscale, int(cpus_per_actor))
    except KeyboardInterrupt:
        click.echo("interrupted before any file was processed", err=True)
        sys.exit(batch_mod.EXIT_INTERRUPTED)
    options = ClusterOptions(address=address, actors=actors, cpus_per_actor=cpus_per_actor,
                             gpus_per_actor=gpus_per_actor, max_retries=max_retries, num_cpus=num_cpus)
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="img", disable=quiet or not sys.stderr.isatty(), dynamic_ncols=True)

    def on_file(record):
        if record.status == "failed":
            tqdm.write(f"error: {record.input}: {record.reason}", file=sys.stderr)
        bar.update()

    def on_workers(pids):
        if not quiet:
            tqdm.write(f"gtasr-serve batch: {len(jobs)} file(s) on {len(pids)} worker(s), Ray at {address}",
                       file=sys.stderr)

    try:
        result = run_on_cluster(jobs, upscale, options, overwrite=overwrite, max_pixels=max_pixels or None,
                                quality=quality, on_file=on_file, on_workers=on_workers)
    except GtasrError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        click.echo("interrupted: finished files are kept; run the same command again to resume", err=True)
        sys.exit(batch_mod.EXIT_INTERRUPTED)
    finally:
        bar.close()
    summary = result.summary
    click.echo(summary.line(), err=True)
    if summary.interrupted:
        click.echo("finished files are kept, none half-written; run the same command again to resume", err=True)
    if json_report is not None:
        import json

        atomic_write_text(json_report, json.dumps(summary.to_json(), indent=1) + "\n")
    sys.exit(summary.exit_code)


if __name__ == "__main__":
    main()
