"""``gtasr-serve batch``: gtasr-upscale's folder batch on a Ray cluster.

The driver plans exactly as the CLI does (``collect_inputs`` + ``plan_outputs``, or a text file
of paths); each Ray actor holds one Upscaler (on its GPU, or on its share of CPUs) and runs each
job through the CLI's own per-file path, ``run_batch([job])``: same names, same bytes, atomic
writes, completed outputs skipped. Inputs and outputs must be on storage every node sees.

A worker that dies (node lost, OOM kill, preemption) is restarted by Ray and its task retried
(``max_retries``); a write in progress leaves only a temp file, so the retry starts clean.
"""

from __future__ import annotations

import io
import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..batch import runner as batch_mod
from ..batch.runner import BatchSummary, FileRecord, Job
from ..errors import ConfigError, InputError
from ..interrupts import reclaim
from ..inference.options import UpscaleOptions
from .settings import open_upscaler

LIST_SUFFIXES = (".txt", ".lst")


@dataclass(frozen=True, kw_only=True)
class ClusterOptions:
    """Where and how wide: ``address`` local (start Ray here), auto (the cluster this node is in),
    or host:port / ray://host:10001 of a head node."""

    address: str = "local"
    actors: int | None = None  # None: one per GPU, or one per cpus_per_actor CPUs of the cluster
    cpus_per_actor: float = 1
    gpus_per_actor: float = 0
    max_retries: int = 3  # restarts of a dead worker, and retries of the task it was running
    num_cpus: int | None = None  # local only: CPUs the local Ray instance may use


@dataclass(frozen=True, kw_only=True)
class ClusterResult:
    summary: BatchSummary
    worker_pids: frozenset[int] = field(default_factory=frozenset)  # processes that finished jobs


def inputs_from(input_path: Path, output_dir: Path) -> list[tuple[Path, Path]]:
    """(file, relative path) pairs: a folder or image as gtasr-upscale reads it, or a list file.

    A list file (.txt/.lst) holds one path per line (relative ones are relative to the list's
    folder; blank lines and ``#`` comments ignored); outputs mirror the paths below their
    deepest common folder."""
    if input_path.suffix.lower() not in LIST_SUFFIXES or not input_path.is_file():
        return batch_mod.collect_inputs(input_path, exclude=output_dir)
    try:
        lines = input_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{input_path}: cannot read the list of paths ({exc})") from None
    paths = [p if p.is_absolute() else input_path.parent / p
             for p in (Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#"))]
    paths = list(dict.fromkeys(Path(os.path.normpath(p)) for p in paths))
    if not paths:
        raise InputError(f"{input_path}: the list of paths is empty")
    root = Path(os.path.commonpath([p.parent for p in paths]))
    return sorted(((p, p.relative_to(root)) for p in paths), key=lambda item: item[1].as_posix())


class _Worker:
    """A Ray actor: one Upscaler, one job at a time through the CLI's per-file path."""

    def __init__(self, upscale: UpscaleOptions, threads: int, run_options: dict) -> None:
        self.upscaler = open_upscaler(upscale, default_threads=threads)
        # completion records name what shaped the picture, as gtasr-upscale's do
        self.run_options = {**run_options, "settings": batch_mod.picture_settings(
            weights=upscale.weights, onnx=upscale.onnx, network_config=upscale.network_config,
            param_key=upscale.param_key, engine=self.upscaler.engine.info, tiling=self.upscaler.options,
            seed=upscale.seed)}

    def pid(self) -> int:
        return os.getpid()

    def process(self, index: int, job: Job) -> tuple[int, FileRecord, int]:
        result = batch_mod.run_batch([job], lambda rgb: self.upscaler.upscale_float(rgb), progress=False,
                                     summary=False, err=io.StringIO(), handle_sigterm=False, **self.run_options)
        return index, result.records[-1], os.getpid()


def connect(address: str, num_cpus: int | None = None):
    """Initialise Ray (once per process) and return the module."""
    import ray

    if not ray.is_initialized():
        common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning"}
        if address == "local":
            ray.init(num_cpus=num_cpus, **common)
        else:
            ray.init(address=address, **common)
        reclaim()  # ray.init takes SIGTERM over (sys.exit); a batch run stops in order instead
    return ray


def run_on_cluster(jobs: Sequence[Job], upscale: UpscaleOptions, options: ClusterOptions, *,
                   overwrite: bool = False, max_pixels: int | None = None, quality: int = 95,
                   on_file: Callable[[FileRecord], None] | None = None,
                   on_workers: Callable[[list[int]], None] | None = None) -> ClusterResult:
    """Run every job on the cluster's actors; one FileRecord per job, in plan order.

    ``on_file``: called on the driver as each job finishes; ``on_workers``: called with the
    workers' process ids once they have all loaded the model. Interrupted (KeyboardInterrupt:
    Ctrl-C, or SIGTERM/SIGHUP under :func:`gtasr_deploy.interrupts.signals_as_interrupt`), the
    jobs in flight finish and the summary says ``interrupted`` (exit code 130)."""
    ray = connect(options.address, options.num_cpus)
    actor_cls = ray.remote(_Worker).options(
        num_cpus=options.cpus_per_actor, num_gpus=options.gpus_per_actor,
        max_restarts=options.max_retries, max_task_retries=options.max_retries)
    count = max(1, min(len(jobs), options.actors or _default_actors(ray, options)))
    run_options = {"overwrite": overwrite, "max_pixels": max_pixels, "quality": quality}
    threads = upscale.threads or max(1, int(options.cpus_per_actor))
    workers = [actor_cls.remote(upscale, threads, run_options) for _ in range(count)]
    try:
        try:  # model load errors surface here, once
            pids = ray.get([w.pid.remote() for w in workers])
        except ray.exceptions.RayActorError as exc:
            raise ConfigError(f"the workers could not start: {_first_line(exc)}") from None
        if on_workers is not None:
            on_workers(pids)
        records, seen, interrupted = _schedule(ray, workers, jobs, options.max_retries, on_file)
    finally:
        for worker in workers:
            ray.kill(worker)
        batch_mod.remove_run_temps(jobs)  # what a worker killed mid-write left (its process is gone)
    return ClusterResult(summary=BatchSummary(records=tuple(records), interrupted=interrupted),
                         worker_pids=frozenset(seen))


def _default_actors(ray, options: ClusterOptions) -> int:
    resources = ray.cluster_resources()
    if options.gpus_per_actor:
        return max(1, int(resources.get("GPU", 0) / options.gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) / options.cpus_per_actor))


def _schedule(ray, workers, jobs: Sequence[Job], retries: int,
              on_file) -> tuple[list[FileRecord], set[int], bool]:
    """One job in flight per worker; a worker whose restarts ran out is dropped, its job failed.

    Ctrl-C, SIGTERM or SIGHUP (KeyboardInterrupt here): no new job starts, the jobs in flight
    finish (each is one atomic write and its completion record), then the third item is True."""
    from ray.exceptions import RayActorError, RayTaskError

    pending, idle = deque(enumerate(jobs)), list(workers)
    inflight: dict = {}
    records: list[FileRecord | None] = [None] * len(jobs)
    seen: set[int] = set()

    def collect(ref) -> None:
        worker, index = inflight.pop(ref)
        try:
            _, record, pid = ray.get(ref)
            seen.add(pid)
            idle.append(worker)
        except RayActorError as exc:  # restarts exhausted: this worker is dead for good
            record = _failed(jobs[index], f"worker died {retries + 1} times ({_first_line(exc)})")
        except RayTaskError as exc:  # a bug inside the worker; the others go on
            record = _failed(jobs[index], _first_line(exc))
            idle.append(worker)
        records[index] = record
        if on_file is not None:
            on_file(record)

    interrupted = False
    try:
        while pending or inflight:
            while pending and idle:
                worker, (index, job) = idle.pop(), pending.popleft()
                inflight[worker.process.remote(index, job)] = (worker, index)
            if not inflight:  # every worker is gone
                for index, job in pending:
                    records[index] = _failed(job, "no worker left (all died more often than --max-retries)")
                break
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            collect(ref)
    except KeyboardInterrupt:
        interrupted = True
        while inflight:  # the files being written finish; a second signal stops at once
            collect(next(iter(inflight)))
    return [r for r in records if r is not None], seen, interrupted


def _failed(job: Job, reason: str) -> FileRecord:
    return FileRecord(input=str(job.src), output=str(job.dst), status="failed", reason=reason)


def _first_line(exc: BaseException) -> str:
    """The cause's own message from a Ray error (its last line, without the exception's class name)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^[\w.]*(Error|Exception): ", "", text)[:300]
