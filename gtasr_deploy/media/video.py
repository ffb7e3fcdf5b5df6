"""Video in, video out: every frame through ``frame_fn`` (x4), everything else kept (PyAV).

    upscale_video("in.mp4", "out.mp4", upscaler.upscale) -> VideoReport

What is kept, stated once:

* Frame count, frame rate and each frame's timestamp: one output frame per decoded frame, with
  the decoded frame's pts and time base, and the encoder runs on the input's time base.
* Audio and subtitle streams are remuxed packet for packet (no re-encoding) when the output
  container can hold their codec. Audio it cannot hold (AAC into WebM) is re-encoded to the
  container's usual codec and the report says so; a subtitle or data stream it cannot hold is left
  out and the report says so (``.mkv`` holds every codec).
* Container and stream tags (title, language...) are copied, and so is the display rotation of
  phone clips (the pixels stay as stored; the player turns them, as it did the input).
* Colour: frames are turned into RGB with the input's own matrix and range (BT.709 for most HD
  video) and back with the same ones, and the output carries the input's colour tags, so a
  player shows the colours it showed for the input (a BT.601 round trip would shift them).
* Never a broken file under the final name: :func:`upscale_video` writes to a temp file in the
  output folder (:func:`gtasr_deploy.atomic.atomic_path`) and renames it only when the file is
  complete; an error or an interrupt removes the temp file.

This module is media only: frames in (:func:`open_video`: probe and decode), frames out
(:func:`transcode`: encode them, copy or re-encode the other streams). What a frame becomes is
``frame_fn``'s business; in a folder run the batch (:mod:`gtasr_deploy.batch.video_jobs`) passes
its per-picture super-resolution call, writes the result atomically with its completion record
and applies the same skip rule as for images.

Noise: ``frame_fn`` is called with the same arguments for every frame; the CLI's call
(``Upscaler.upscale_float``, the one its images use) draws noise as a function of (seed, image size)
only, so every frame gets the same noise and static content stays still (identical frames give
identical output frames).

PyAV (``pip install 'gtasr-deploy[video]'``) is imported only when a video is processed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..errors import BackendUnavailableError, ConfigError, InputError
from ..contract import SCALE

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".webm", ".avi"})
CONTAINER_FORMATS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm", ".avi": "avi"}
DEFAULT_CODEC = {"webm": "libvpx-vp9"}  # WebM holds VP8/VP9/AV1 only; every other container: libx264
FALLBACK_AUDIO = {"webm": "libopus", "mp4": "aac", "mov": "aac", "avi": "libmp3lame", "matroska": "aac"}
CRF_CODECS = frozenset({"libx264", "libx265", "libvpx-vp9", "libvpx", "libaom-av1", "libsvtav1"})
DEFAULT_CRF = 18
DEFAULT_PIX_FMT = "yuv420p"
COLOUR_TAGS = ("colorspace", "color_primaries", "color_trc", "color_range")
_UNSPECIFIED_COLORSPACE = 2  # AVCOL_SPC_UNSPECIFIED

FrameFn = Callable[[np.ndarray], np.ndarray]  # (H, W, 3) uint8 RGB -> (4H, 4W, 3) uint8 RGB
ProgressFn = Callable[[int, int], None]  # (frames done, frames expected; 0 when unknown)


@dataclass(frozen=True, kw_only=True)
class VideoReport:
    """What one video run did. Sizes are (width, height); ``fps`` is the input's average rate."""

    src: str
    dst: str
    frames: int
    fps: Fraction | None
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    codec: str
    crf: int | None  # None: the codec has no CRF (ffv1 is lossless)
    pix_fmt: str
    copied: tuple[str, ...] = ()  # "audio #1 (aac)": remuxed as they were
    reencoded: tuple[str, ...] = ()  # "audio #1 (aac -> libopus)"
    dropped: tuple[str, ...] = ()  # "subtitle #2 (subrip): webm cannot hold it"
    seconds: float = 0.0

    def line(self) -> str:
        kept = [f"copied {', '.join(self.copied)}"] if self.copied else []
        kept += [f"re-encoded {', '.join(self.reencoded)}"] if self.reencoded else []
        kept += [f"left out {', '.join(self.dropped)}"] if self.dropped else []
        quality = f" crf {self.crf}" if self.crf is not None else ""
        return (f"{self.dst}: {self.frames} frames {self.output_size[0]}x{self.output_size[1]} "
                f"{self.codec}{quality} {self.pix_fmt}" + (f"; {'; '.join(kept)}" if kept else ""))


def import_av() -> Any:
    """PyAV, or a one-line error naming the extra to install."""
    try:
        import av
    except ImportError:
        raise BackendUnavailableError("video needs PyAV: pip install 'gtasr-deploy[video]' (or pip install av)") from None
    return av


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def container_format(path: str | Path) -> str:
    """FFmpeg muxer name for an output file name (the temp file's own name says nothing)."""
    suffix = Path(path).suffix.lower()
    if suffix not in CONTAINER_FORMATS:
        raise InputError(f"{path}: not a video file name; expected one of {', '.join(sorted(CONTAINER_FORMATS))}")
    return CONTAINER_FORMATS[suffix]


def resolve_codec(codec: str | None, crf: int | None, pix_fmt: str | None, fmt: str) -> tuple[str, int | None, str]:
    """(codec, crf or None, pix_fmt) checked against PyAV's encoders; ConfigError names the fix."""
    av = import_av()
    codec = codec or DEFAULT_CODEC.get(fmt, "libx264")
    pix_fmt = pix_fmt or DEFAULT_PIX_FMT
    try:
        encoder = av.Codec(codec, "w")
    except Exception:  # PyAV raises UnknownCodecError / ValueError depending on the version
        raise ConfigError(f"--video-codec {codec!r}: no such encoder in this FFmpeg build "
                          "(e.g. libx264, libx265, libvpx-vp9, ffv1)") from None
    if encoder.type != "video":
        raise ConfigError(f"--video-codec {codec!r} is a {encoder.type} encoder, not a video encoder")
    formats = [f.name for f in encoder.video_formats or ()]
    if formats and pix_fmt not in formats:
        raise ConfigError(f"--pix-fmt {pix_fmt!r} is not supported by {codec}; supported: {', '.join(formats)}")
    if crf is not None and not 0 <= crf <= 63:
        raise ConfigError(f"--crf {crf} is out of range (0 best .. 51 for x264/x265, 63 for VP9/AV1)")
    return codec, (DEFAULT_CRF if crf is None else crf) if codec in CRF_CODECS else None, pix_fmt


def _label(stream: Any) -> str:
    return f"{stream.type} #{stream.index} ({stream.codec_context.name})"


def _open_input(av: Any, src: Path) -> Any:
    try:
        return av.open(str(src))
    except (av.error.FFmpegError, OSError) as exc:
        raise InputError(f"{src}: cannot read the video ({getattr(exc, 'strerror', None) or exc})") from None


def _display_rotation(av: Any, src: Path) -> int:
    """Degrees (counter-clockwise) of the display matrix a phone writes; 0 when none. Read from the
    first frame of a second reader: the output header (written at the first packet, often audio)
    must carry it before any video frame of the main loop is decoded."""
    with av.open(str(src)) as probe:
        for frame in probe.decode(video=0):
            return int(getattr(frame, "rotation", 0) or 0)
    return 0


def _video_stream(out: Any, vin: Any, *, codec: str, crf: int | None, pix_fmt: str, size: tuple[int, int],
                  rotation: int = 0) -> Any:
    rate = vin.average_rate or vin.guessed_rate or Fraction(25)
    vout = out.add_stream(codec, rate=rate)
    vout.width, vout.height = size
    vout.pix_fmt = pix_fmt
    # The input's time base keeps every frame's pts exactly (variable frame rate included). AVI
    # stores no timestamps, only a frame rate, and B-frames scramble them on reading: one tick per
    # frame there, and no B-frames.
    if out.format.name == "avi":
        vout.codec_context.time_base = Fraction(1) / rate
    else:
        vout.codec_context.time_base = vin.time_base or Fraction(1) / rate
    vout.time_base = vout.codec_context.time_base
    options = {}
    if crf is not None:
        options["crf"] = str(crf)
        if codec.startswith("libvpx"):
            options["b"] = "0"  # constant quality needs the bit-rate cap off
    if out.format.name == "avi":
        options["bf"] = "0"
    if codec == "libx265":
        options["x265-params"] = "log-level=error"
    vout.options = options
    vout.metadata.update(vin.metadata)
    for tag in COLOUR_TAGS:  # unspecified stays unspecified
        value = getattr(vin.codec_context, tag, None)
        if value not in (None, 0, 2) or (tag == "color_range" and value):
            setattr(vout.codec_context, tag, value)
    if rotation:
        vout.set_display_rotation(rotation)
    return vout


def _audio_encoder(out: Any, ain: Any, fmt: str) -> Any:
    """A stream that re-encodes ``ain`` to the container's usual audio codec, at a rate it allows."""
    av = import_av()
    name = FALLBACK_AUDIO[fmt]
    rates = av.Codec(name, "w").audio_rates
    rate = ain.rate if not rates or ain.rate in rates else min(rates, key=lambda r: (abs(r - ain.rate), -r))
    aout = out.add_stream(name, rate=rate)
    aout.layout = ain.layout.name if ain.layout.nb_channels <= 2 else "stereo"
    aout.metadata.update(ain.metadata)
    return aout


def _plan_streams(inp: Any, out: Any, vin: Any, fmt: str) -> tuple[dict[int, Any], dict[int, Any], list[str], list[str], list[str]]:
    """Decide per non-video stream: copy, re-encode (audio) or leave out; returns the mappings."""
    supported = out.supported_codecs
    copy, encode = {}, {}
    copied, reencoded, dropped = [], [], []
    for stream in inp.streams:
        if stream.index == vin.index:
            continue
        name = stream.codec_context.name if stream.codec_context is not None else None
        if stream.type in ("audio", "subtitle") and name in supported:
            copy[stream.index] = out.add_stream_from_template(stream)
            copy[stream.index].metadata.update(stream.metadata)
            copied.append(_label(stream))
        elif stream.type == "audio":
            encode[stream.index] = _audio_encoder(out, stream, fmt)
            reencoded.append(f"audio #{stream.index} ({name} -> {encode[stream.index].codec_context.name}: "
                             f"{fmt} cannot hold {name})")
        elif stream.type == "video":
            dropped.append(f"video #{stream.index} ({name}): only the first video stream is upscaled")
        else:
            dropped.append(f"{stream.type} #{stream.index} ({name or 'unknown'}): {fmt} cannot hold it; use .mkv")
    return copy, encode, copied, reencoded, dropped


@dataclass(frozen=True)
class VideoInput:
    """An opened input (from :func:`open_video`): its container, first video stream and frame size."""

    path: Path
    container: Any
    stream: Any
    size: tuple[int, int]  # (width, height)


@contextlib.contextmanager
def open_video(src: str | Path, *, max_pixels: int | None = None) -> Iterator[VideoInput]:
    """Open ``src`` for :func:`transcode`; InputError when it is unreadable, has no video stream or
    has frames of more than ``max_pixels`` pixels. Closed on leaving the block."""
    av = import_av()
    src = Path(src)
    inp = _open_input(av, src)
    try:
        if not inp.streams.video:
            raise InputError(f"{src}: has no video stream")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        width, height = vin.codec_context.width, vin.codec_context.height
        if max_pixels and width * height > max_pixels:
            raise InputError(f"{src}: frames of {width}x{height} exceed --max-pixels {max_pixels}")
        yield VideoInput(path=src, container=inp, stream=vin, size=(width, height))
    finally:
        inp.close()


def upscale_video(src: str | Path, dst: str | Path, frame_fn: FrameFn, *, codec: str | None = None,
                  crf: int | None = None, pix_fmt: str | None = None, scale: int = SCALE,
                  progress: ProgressFn | None = None, max_pixels: int | None = None) -> VideoReport:
    """Upscale every frame of ``src`` with ``frame_fn`` into ``dst`` (container from its suffix), atomically.

    ``codec``: FFmpeg encoder (default libx264; libvpx-vp9 for .webm); ``crf``: constant quality
    for the codecs that have one (default 18); ``pix_fmt``: default yuv420p. InputError for an
    unreadable input, ConfigError for an unusable codec setting; ``dst`` is then untouched.
    """
    dst = Path(dst)
    fmt = container_format(dst)
    codec, crf, pix_fmt = resolve_codec(codec, crf, pix_fmt, fmt)
    with open_video(src, max_pixels=max_pixels) as video, atomic_path(dst) as temp:
        report = transcode(video, temp, frame_fn, fmt=fmt, codec=codec, crf=crf, pix_fmt=pix_fmt, scale=scale,
                           progress=progress)
    return replace(report, dst=str(dst))


def transcode(video: VideoInput, path: str | Path, frame_fn: FrameFn, *, fmt: str, codec: str, crf: int | None,
              pix_fmt: str, scale: int = SCALE, progress: ProgressFn | None = None) -> VideoReport:
    """Write ``video`` with every frame through ``frame_fn`` to ``path`` as a ``fmt`` container
    (the name of ``path`` is not looked at: a temp file's says nothing). ``codec``, ``crf``,
    ``pix_fmt``: as :func:`resolve_codec` returns them. Not atomic: the caller owns ``path``.
    An exception of ``frame_fn`` propagates; an FFmpeg error is an InputError naming the input."""
    av = import_av()
    start = time.perf_counter()
    (width, height), vin = video.size, video.stream
    frames, copied, reencoded, dropped = _transcode(
        av, video.container, vin, Path(path), fmt, frame_fn, codec=codec, crf=crf, pix_fmt=pix_fmt,
        size=(width * scale, height * scale), progress=progress, src=video.path)
    return VideoReport(src=str(video.path), dst=str(path), frames=frames, fps=vin.average_rate,
                       input_size=(width, height), output_size=(width * scale, height * scale), codec=codec,
                       crf=crf, pix_fmt=pix_fmt, copied=tuple(copied), reencoded=tuple(reencoded),
                       dropped=tuple(dropped), seconds=time.perf_counter() - start)


def _expected_frames(inp: Any, vin: Any) -> int:
    """Frame count from the header, else estimated from the duration (MKV/WebM store none); 0: unknown."""
    if vin.frames:
        return int(vin.frames)
    rate = vin.average_rate
    if vin.duration and vin.time_base and rate:
        return int(round(float(vin.duration * vin.time_base * rate)))
    if inp.duration and rate:  # container duration in microseconds
        return int(round(inp.duration / 1_000_000 * float(rate)))
    return 0


def _transcode(av: Any, inp: Any, vin: Any, temp: Path, fmt: str, frame_fn: FrameFn, *, codec: str,
               crf: int | None, pix_fmt: str, size: tuple[int, int], progress: ProgressFn | None,
               src: Path) -> tuple[int, list[str], list[str], list[str]]:
    out = av.open(str(temp), "w", format=fmt)
    try:
        if codec not in out.supported_codecs:
            raise ConfigError(f"--video-codec {codec} cannot go into a {fmt} file; choose another codec or container")
        rotation = _display_rotation(av, src)
        if rotation and not hasattr(av.video.stream.VideoStream, "set_display_rotation"):
            raise BackendUnavailableError(f"{src} is displayed rotated by {rotation} degrees, and this PyAV "
                                          f"{av.__version__} cannot write that; pip install -U av")
        vout = _video_stream(out, vin, codec=codec, crf=crf, pix_fmt=pix_fmt, size=size, rotation=rotation)
        copy, encode, copied, reencoded, dropped = _plan_streams(inp, out, vin, fmt)
        out.metadata.update(inp.metadata)
        total, done, last_pts = _expected_frames(inp, vin), 0, None
        period = Fraction(1) / (vin.average_rate or Fraction(25))
        for packet in inp.demux():
            index = packet.stream.index
            if index == vin.index:
                for frame in packet.decode():
                    last_pts = _encode_frame(out, vout, frame, frame_fn, last_pts, period, src)
                    done += 1
                    if progress is not None:
                        progress(done, max(total, done) if total else 0)
            elif index in copy and packet.dts is not None:  # dts None: the demuxer's flush packet
                packet.stream = copy[index]
                out.mux(packet)
            elif index in encode:
                for frame in packet.decode():
                    frame.pts = None  # the encoder counts samples from 0 (a new codec's own priming)
                    out.mux(encode[index].encode(frame))
        for stream in (vout, *encode.values()):
            out.mux(stream.encode(None))
    except av.error.FFmpegError as exc:
        raise InputError(f"{src}: video processing failed ({exc})") from None
    finally:
        out.close()
    return done, copied, reencoded, dropped


def _encode_frame(out: Any, vout: Any, frame: Any, frame_fn: FrameFn, last_pts: Fraction | None, period: Fraction,
                  src: Path) -> Fraction:
    """Upscale and encode one frame; returns its time in seconds (the next frame must come later)."""
    range_ = frame.color_range or None  # 0: unspecified (limited), 1: limited, 2: full
    rgb = frame.to_ndarray(format="rgb24", src_color_range=range_)  # the frame's own matrix
    sr = np.ascontiguousarray(frame_fn(rgb))
    expected = (vout.height, vout.width, 3)
    if sr.shape != expected or sr.dtype != np.uint8:
        raise ValueError(f"frame_fn returned {sr.dtype} {sr.shape} for a frame of {src}; expected uint8 {expected}")
    new = av_frame_from(sr)
    if frame.colorspace != _UNSPECIFIED_COLORSPACE or range_:  # back with the same matrix and range
        new = new.reformat(format=vout.pix_fmt, dst_colorspace=frame.colorspace, dst_color_range=range_)
    time_base = frame.time_base or vout.codec_context.time_base
    seconds = frame.pts * time_base if frame.pts is not None else None
    if seconds is None or (last_pts is not None and seconds <= last_pts):
        # No pts, or one out of order (AVI with B-frames): the nominal rate after the previous frame.
        seconds = Fraction(0) if last_pts is None else last_pts + period
    new.time_base = time_base
    new.pts = int(round(seconds / time_base))
    out.mux(vout.encode(new))
    return seconds


def av_frame_from(rgb: np.ndarray) -> Any:
    return import_av().VideoFrame.from_ndarray(rgb, format="rgb24")
