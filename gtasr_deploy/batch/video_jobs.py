"""The video jobs of a batch: a video is a stream of frames, each through the images' call.

:func:`gtasr_deploy.batch.runner.run_batch` gives :class:`VideoJobs` the jobs whose input is a
video, after the skip rule every job goes through (its completion record, with the encoder
settings added to the run's). Each decoded frame goes through
:func:`gtasr_deploy.batch.runner.super_resolve` with the run's ``sr_fn`` (float32 RGB in [0, 1],
the same call and the same checks an image gets), and the video is encoded into a temp file and
put in place with its completion record (:func:`gtasr_deploy.batch.records.recorded_output`), so
a kept video is always a recorded one. Decoding and encoding are :mod:`gtasr_deploy.media.video`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import numpy as np

from . import records as completion
from ..media.video import FrameFn, container_format, is_video, open_video, resolve_codec, transcode
from .plan import Job
from .progress import CountProgress
from .runner import FileRecord, SrFn, super_resolve


def frames_through(sr_fn: SrFn, *, scale: int, src: Path) -> FrameFn:
    """A frame function for :func:`gtasr_deploy.media.video.transcode`: uint8 RGB frame -> float32
    in [0, 1] -> :func:`super_resolve` -> uint8 (what ``Upscaler.upscale`` does to a uint8 image)."""

    def frame(rgb: np.ndarray) -> np.ndarray:
        sr = super_resolve(sr_fn, rgb.astype(np.float32) / 255.0, scale=scale, src=src)
        return np.rint(np.clip(sr, 0.0, 1.0) * 255.0).astype(np.uint8)

    return frame


@dataclass(frozen=True, kw_only=True)
class VideoJobs:
    """The video jobs of a batch (``run_batch(..., handlers=[VideoJobs(...)])``).

    ``codec``/``crf``/``pix_fmt``: the encoder, as :func:`gtasr_deploy.media.video.upscale_video`
    takes them; resolved per output container, they go into each video's completion record."""

    codec: str | None = None
    crf: int | None = None
    pix_fmt: str | None = None

    def handles(self, job: Job) -> bool:
        return is_video(job.src)

    def settings(self, job: Job, base: Mapping) -> dict:
        """The run's settings plus the encoder, as resolved for this output's container."""
        codec, crf, pix_fmt = resolve_codec(self.codec, self.crf, self.pix_fmt, container_format(job.dst))
        return {**base, "video": {"codec": codec, "crf": crf, "pix_fmt": pix_fmt}}

    def process(self, job: Job, sr_fn: SrFn, *, scale: int, settings: Mapping, max_pixels: int | None,
                err: TextIO, progress: bool) -> FileRecord:
        """Upscale a video the skip rule let through; errors propagate to the runner (one line)."""
        fmt = container_format(job.dst)
        codec, crf, pix_fmt = resolve_codec(self.codec, self.crf, self.pix_fmt, fmt)
        bar = CountProgress(job.rel.as_posix(), unit="frame", err=err, enabled=progress)
        try:
            with open_video(job.src, max_pixels=max_pixels) as video, \
                    completion.recorded_output(job.dst, job.src, job.rel, settings) as temp:
                report = transcode(video, temp, frames_through(sr_fn, scale=scale, src=job.src), fmt=fmt,
                                   codec=codec, crf=crf, pix_fmt=pix_fmt, scale=scale, progress=bar)
        finally:
            bar.close()
        report = replace(report, dst=str(job.dst))
        if progress:
            print(report.line(), file=err, flush=True)
        return FileRecord(input=str(job.src), output=str(job.dst), status="written", input_size=report.input_size,
                          output_size=report.output_size, seconds=report.seconds)
