"""Video: frames through frame_fn, rate/count/timestamps kept, audio and subtitles carried, no broken file."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner

from gtasr_deploy.errors import ConfigError, InputError
from gtasr_deploy.media.video import upscale_video

RATE = Fraction(25, 2)  # 12.5 fps
W, H, N = 32, 24, 8
SAMPLE_RATE = 44100


def nearest4(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)


def frame_image(i: int) -> np.ndarray:
    """A moving gradient, so frames differ and a wrong order or a lost frame shows."""
    y, x = np.mgrid[0:H, 0:W]
    return np.stack([(x * 8 + i * 20) % 256, (y * 10) % 256, np.full_like(x, 40 + i * 25)], -1).astype(np.uint8)


def make_video(path: Path, *, fmt: str = "mp4", codec: str = "libx264", images=None, audio: bool = True,
               pix_fmt: str = "yuv420p") -> None:
    images = [frame_image(i) for i in range(N)] if images is None else images
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream(codec, rate=RATE)
        video.width, video.height, video.pix_fmt = W, H, pix_fmt
        sound = out.add_stream("aac", rate=SAMPLE_RATE) if audio else None
        if sound is not None:
            sound.layout = "mono"
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = i, 1 / RATE
            out.mux(video.encode(frame))
        if sound is not None:
            total = int(SAMPLE_RATE * len(images) / RATE)
            for start in range(0, total, 1024):
                t = np.arange(start, min(start + 1024, total)) / SAMPLE_RATE
                chunk = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                                   format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = SAMPLE_RATE, start
                out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
        out.mux(video.encode(None))


def add_subtitles(src: Path, dst: Path, srt_path: Path) -> None:
    """Remux src plus an SRT file into an MKV (how a user's file with subtitles looks)."""
    srt_path.write_text("1\n00:00:00,000 --> 00:00:00,400\nhello\n\n2\n00:00:00,400 --> 00:00:00,640\nworld\n")
    with av.open(str(src)) as a, av.open(str(srt_path)) as s, av.open(str(dst), "w") as out:
        streams = {st.index: out.add_stream_from_template(st) for st in a.streams}
        sub = out.add_stream_from_template(s.streams[0])
        sub.metadata["language"] = "eng"
        for packet in a.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
        for packet in s.demux():
            if packet.dts is not None:
                packet.stream = sub
                out.mux(packet)


def probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        info = {"rate": v.average_rate, "size": (v.codec_context.width, v.codec_context.height),
                "types": [s.type for s in c.streams], "codecs": [s.codec_context.name for s in c.streams]}
        if c.streams.audio:
            a = c.streams.audio[0]
            info["sample_rate"] = a.rate
            info["audio_samples"] = a.duration * a.time_base * a.rate if a.duration else None
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        info["times"] = [float(f.pts * f.time_base) for f in frames]
        info["frames"] = [f.to_ndarray(format="rgb24") for f in frames]
    with av.open(str(path)) as c:
        info["audio_packets"] = [bytes(p) for p in c.demux(audio=0) if p.size] if c.streams.audio else []
    with av.open(str(path)) as c:
        info["subtitles"] = [bytes(p) for p in c.demux(subtitles=0) if p.size] if c.streams.subtitles else []
    return info


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    make_video(path)
    return path


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / max(mse, 1e-12))


def test_mp4_keeps_rate_count_timestamps_and_copies_audio(clip, tmp_path):
    calls = []
    report = upscale_video(clip, tmp_path / "out.mp4", nearest4, progress=lambda d, t: calls.append((d, t)))
    src, out = probe(clip), probe(tmp_path / "out.mp4")
    assert report.frames == N == len(out["frames"])
    assert out["rate"] == src["rate"] == RATE
    assert out["times"] == pytest.approx(src["times"], abs=1e-6)
    assert out["size"] == report.output_size == (4 * W, 4 * H)
    assert out["types"] == ["video", "audio"]
    assert out["sample_rate"] == src["sample_rate"] == SAMPLE_RATE
    assert out["audio_samples"] == src["audio_samples"]
    assert out["audio_packets"] == src["audio_packets"]  # remuxed, not re-encoded
    assert report.copied == ("audio #1 (aac)",) and not report.reencoded
    for sr, lr in zip(out["frames"], src["frames"]):  # frame_fn was applied to each frame, in order
        assert psnr(sr, nearest4(lr)) > 30
    assert calls == [(i, N) for i in range(1, N + 1)]
    assert report.crf == 18 and report.codec == "libx264" and report.pix_fmt == "yuv420p"


def test_mkv_copies_subtitles_and_mp4_says_it_cannot(clip, tmp_path):
    src = tmp_path / "subs.mkv"
    add_subtitles(clip, src, tmp_path / "subs.srt")
    report = upscale_video(src, tmp_path / "out.mkv", nearest4, codec="libx265", crf=28)
    out, before = probe(tmp_path / "out.mkv"), probe(src)
    assert out["types"] == ["video", "audio", "subtitle"] and out["codecs"][0] == "hevc"
    assert out["subtitles"] == before["subtitles"] == [b"hello", b"world"]
    assert out["audio_packets"] == before["audio_packets"]
    assert out["times"] == pytest.approx(before["times"], abs=1e-3)  # mkv stores milliseconds
    with av.open(str(tmp_path / "out.mkv")) as c:
        assert c.streams.subtitles[0].metadata.get("language") == "eng"
    report = upscale_video(src, tmp_path / "out.mp4", nearest4)
    assert report.dropped == ("subtitle #2 (srt): mp4 cannot hold it; use .mkv",)
    assert probe(tmp_path / "out.mp4")["types"] == ["video", "audio"]


def test_webm_reencodes_audio_and_says_so(clip, tmp_path):
    report = upscale_video(clip, tmp_path / "out.webm", nearest4)
    out, src = probe(tmp_path / "out.webm"), probe(clip)
    assert report.codec == "libvpx-vp9" and out["codecs"] == ["vp9", "opus"]
    assert report.reencoded == ("audio #1 (aac -> libopus: webm cannot hold aac)",)
    assert len(out["frames"]) == N and out["times"] == pytest.approx(src["times"], abs=1e-3)
    with av.open(str(tmp_path / "out.webm")) as c:
        decoded = sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].rate
    assert decoded == pytest.approx(N / RATE, abs=0.03)  # same duration, at Opus's 48 kHz


@pytest.mark.parametrize("suffix", [".mov", ".avi"])
def test_other_containers_keep_frame_count_and_rate(clip, tmp_path, suffix):
    upscale_video(clip, tmp_path / f"out{suffix}", nearest4)
    out = probe(tmp_path / f"out{suffix}")
    assert len(out["frames"]) == N and out["rate"] == RATE and out["types"] == ["video", "audio"]


@pytest.mark.slow
def test_identical_frames_give_identical_outputs_with_the_real_upscaler(tmp_path):
    """One fixed noise per video: static content stays still (lossless codec end to end)."""
    from gtasr_deploy import Upscaler

    a, b = frame_image(0), frame_image(3)
    src = tmp_path / "static.mkv"
    make_video(src, fmt="matroska", codec="ffv1", pix_fmt="yuv444p", images=[a, a, b, b], audio=False)
    upscaler = Upscaler(seed=3)
    report = upscale_video(src, tmp_path / "out.mkv", upscaler.upscale, codec="ffv1", pix_fmt="yuv444p")
    assert report.crf is None  # ffv1 is lossless: no CRF
    frames = probe(tmp_path / "out.mkv")["frames"]
    assert len(frames) == 4
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(frames[2], frames[3])
    assert not np.array_equal(frames[0], frames[2])
    # ... and the noise is really there: another seed gives another frame
    assert not np.array_equal(Upscaler(seed=4).upscale(a), upscaler.upscale(a))


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("error", [Boom, KeyboardInterrupt])
def test_failure_or_interrupt_leaves_no_file(clip, tmp_path, error):
    seen = []

    def failing(rgb):
        seen.append(1)
        if len(seen) == 5:
            raise error("stop")
        return nearest4(rgb)

    with pytest.raises(error):
        upscale_video(clip, tmp_path / "out.mp4", failing)
    assert list(tmp_path.iterdir()) == []  # neither the final name nor a temp file
    (tmp_path / "keep.mp4").write_bytes(b"old")
    with pytest.raises(error):
        seen.clear()
        upscale_video(clip, tmp_path / "keep.mp4", failing)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.mp4"]
    assert (tmp_path / "keep.mp4").read_bytes() == b"old"


def test_bad_inputs_are_one_line_errors(clip, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError, match="junk.mp4: cannot read the video"):
        upscale_video(junk, tmp_path / "o.mp4", nearest4)
    with pytest.raises(ConfigError, match="no such encoder"):
        upscale_video(clip, tmp_path / "o.mp4", nearest4, codec="nope264")
    with pytest.raises(ConfigError, match="libx264 cannot go into a webm file"):
        upscale_video(clip, tmp_path / "o.webm", nearest4, codec="libx264")
    with pytest.raises(ConfigError, match="--pix-fmt 'rgb48le' is not supported by libx264"):
        upscale_video(clip, tmp_path / "o.mp4", nearest4, pix_fmt="rgb48le")
    with pytest.raises(InputError, match="exceed --max-pixels 100"):
        upscale_video(clip, tmp_path / "o.mp4", nearest4, max_pixels=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.mp4"]


def test_cli_video_file_and_folder(clip, tmp_path):
    """The real CLI with the embedded demo weights: file -> file, folder of videos + image -> folder."""
    from PIL import Image

    from gtasr_deploy.cli.upscale import main

    runner = CliRunner()
    result = runner.invoke(main, [str(clip), str(tmp_path / "x4.mp4"), "--crf", "20"])
    assert result.exit_code == 0, result.output
    out = probe(tmp_path / "x4.mp4")
    assert len(out["frames"]) == N and out["size"] == (4 * W, 4 * H) and out["types"] == ["video", "audio"]
    assert out["audio_packets"] == probe(clip)["audio_packets"]
    assert "8/8 frames" in result.output and "crf 20" in result.output

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.mp4").write_bytes(clip.read_bytes())
    Image.fromarray(frame_image(1)).save(folder / "still.png")
    result = runner.invoke(main, [str(folder), str(tmp_path / "out"), "--suffix", "_x4",
                                  "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert "1 file(s) + 1 video(s)" in result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert sorted((Path(f["output"]).name, f["status"], tuple(f["output_size"])) for f in report["files"]) == [
        ("a_x4.mp4", "written", (4 * W, 4 * H)), ("still_x4.png", "written", (4 * W, 4 * H))]
    assert (tmp_path / "out" / "still_x4.png").is_file()
    assert len(probe(tmp_path / "out" / "sub" / "a_x4.mp4")["frames"]) == N
    result = runner.invoke(main, [str(folder), str(tmp_path / "out"), "--suffix", "_x4"])  # re-run: skipped
    assert result.exit_code == 0 and "2 skipped" in result.output

    result = runner.invoke(main, [str(clip), str(tmp_path / "x4.png")])
    assert result.exit_code == 2 and "is an image file name, but the input" in result.output
    result = runner.invoke(main, [str(clip), str(tmp_path / "y.mp4"), "--video-codec", "nope264"])
    assert result.exit_code == 1 and "no such encoder" in result.output
    assert not (tmp_path / "y.mp4").exists()


def test_variable_frame_rate_timestamps_are_kept(tmp_path):
    """Irregular frame times (a phone's VFR clip) come out at the same times, not re-timed to a rate."""
    ticks = [0, 1, 3, 4, 7, 8]
    src = tmp_path / "vfr.mkv"
    with av.open(str(src), "w", format="matroska") as out:
        video = out.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        for i, tick in enumerate(ticks):
            frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
            frame.pts, frame.time_base = tick, 1 / RATE
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    upscale_video(src, tmp_path / "out.mkv", nearest4)
    before, after = probe(src)["times"], probe(tmp_path / "out.mkv")["times"]
    assert len(after) == len(ticks)
    assert [t - after[0] for t in after] == pytest.approx([t - before[0] for t in before], abs=1e-3)
    assert before[1] - before[0] == pytest.approx(0.08) and before[2] - before[1] == pytest.approx(0.16)


def test_display_rotation_of_phone_clips_is_carried(tmp_path):
    src = tmp_path / "phone.mp4"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        video.set_display_rotation(90)
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(frame_image(i), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    for suffix in (".mp4", ".mkv"):
        upscale_video(src, tmp_path / f"out{suffix}", nearest4)
        with av.open(str(tmp_path / f"out{suffix}")) as c:
            frame = next(c.decode(video=0))
            assert frame.rotation == 90 and (frame.width, frame.height) == (4 * W, 4 * H)


def test_no_rotation_where_the_input_has_none(clip, tmp_path):
    upscale_video(clip, tmp_path / "out.mp4", nearest4)
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert next(c.decode(video=0)).rotation == 0


@pytest.mark.parametrize("color_range", [1, 2])  # limited (TV) and full (JPEG) range
def test_bt709_colours_and_tags_survive(tmp_path, color_range):
    """HD video is BT.709: decoded and re-encoded with that matrix and tagged so, colours do not shift."""
    image = np.zeros((H, W, 3), np.uint8)
    image[:, : W // 2], image[:, W // 2:] = (200, 30, 40), (30, 180, 60)
    src = tmp_path / "hd.mp4"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=RATE)
        video.width, video.height, video.pix_fmt = W, H, "yuv420p"
        for tag in ("colorspace", "color_primaries", "color_trc"):
            setattr(video.codec_context, tag, 1)  # BT.709
        video.codec_context.color_range = color_range
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="itu709", dst_color_range=color_range)
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    upscale_video(src, tmp_path / "out.mp4", nearest4)
    with av.open(str(tmp_path / "out.mp4")) as c:
        cc = c.streams.video[0].codec_context
        assert (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range) == (1, 1, 1, color_range)
        frame = next(c.decode(video=0))
        rgb = frame.to_ndarray(format="rgb24", src_color_range=frame.color_range)
    inner = rgb[8:-8, 8:-8].astype(int)  # away from the colour edge (chroma subsampling blurs it)
    assert np.abs(inner[:, : 4 * W // 2 - 16] - (200, 30, 40)).max() <= 6
    assert np.abs(inner[:, 4 * W // 2:] - (30, 180, 60)).max() <= 6


# ---------------------------------------------------------------------------------- videos in run_batch


def _batch_folder(clip: Path, root: Path) -> tuple[Path, list]:
    from PIL import Image

    from gtasr_deploy.batch.plan import collect_inputs, collect_videos, plan_outputs, plan_video_jobs

    src = root / "in"
    src.mkdir()
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        (src / name).write_bytes(clip.read_bytes())
    Image.fromarray(frame_image(2)).save(src / "still.png")
    out = root / "out"
    jobs = plan_outputs(collect_inputs(src), out) + plan_video_jobs(collect_videos(src), out)
    return out, jobs


def _nearest4_float(rgb):
    """The batch's sr_fn: float32 (H, W, 3) in [0, 1], for images and video frames alike."""
    return nearest4(rgb)


@pytest.mark.parametrize("library", ["cv2", "av", "numpy", "engine"])
def test_a_video_whose_frames_fail_is_one_line_and_the_batch_goes_on(clip, tmp_path, library):
    import io

    import cv2

    from gtasr_deploy.batch.runner import run_batch
    from gtasr_deploy.batch.video_jobs import VideoJobs

    errors = {"cv2": cv2.error("OpenCV(4) resize.cpp: error: (-215:Assertion failed) !ssize.empty()"),
              "av": av.error.InvalidDataError(1094995529, "Invalid data found when processing input"),
              "numpy": np.linalg.LinAlgError("Singular matrix"), "engine": RuntimeError("CUDA error: boom\nmore")}
    out, jobs = _batch_folder(clip, tmp_path)
    frames = []

    def sr_fn(rgb):  # one call for the image and every frame (the image comes first)
        frames.append(1)
        if len(frames) == 1 + N + 3:  # the third frame of the second video
            raise errors[library]
        return nearest4(rgb)

    err, report = io.StringIO(), tmp_path / "r.json"
    summary = run_batch(jobs, sr_fn, handlers=[VideoJobs()], progress=False, err=err, json_report=report)
    lines = err.getvalue().splitlines()
    assert (summary.written, summary.failed, summary.exit_code) == (3, 1, 1), lines
    assert lines[0].startswith(f"error: {jobs[2].src}: ") and "more" not in lines[0]
    assert lines[-1] == "3 written, 0 skipped (done), 1 failed"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["a.mp4", "c.mp4", "still.png"]
    assert not list(tmp_path.rglob(".gtasr-*.tmp"))
    assert json.loads(report.read_text())["summary"]["failed"] == 1


def test_videos_resume_by_completion_record(clip, tmp_path):
    """Finished videos are skipped; other settings redo them; a file this tool did not write is left alone."""
    import io

    from gtasr_deploy.batch.runner import run_batch
    from gtasr_deploy.batch.video_jobs import VideoJobs

    out, jobs = _batch_folder(clip, tmp_path)
    calls = []

    def sr_fn(rgb):
        calls.append(rgb.shape)
        return nearest4(rgb)

    def run(**options):
        calls.clear()
        return run_batch(jobs, sr_fn, handlers=[VideoJobs(**options)], progress=False, err=io.StringIO())

    assert run().written == 4 and len(calls) == 3 * N + 1
    again = run()
    assert (again.written, again.skipped, len(calls)) == (0, 4, 0)
    other = run(crf=30)  # the encoder settings are in the record: the videos are redone, the image is not
    assert (other.written, other.skipped, len(calls)) == (3, 1, 3 * N)
    (out / "b.mp4").write_bytes(b"someone else's file")
    foreign = run(crf=30)
    assert foreign.failed == 1 and "not this tool's finished result" in foreign.records[2].reason
    assert (out / "b.mp4").read_bytes() == b"someone else's file"
    assert run_batch(jobs, sr_fn, handlers=[VideoJobs(crf=30)], overwrite=True,
                     progress=False, err=io.StringIO()).written == 4


def test_a_corrupt_video_is_one_line(clip, tmp_path):
    import io

    from gtasr_deploy.batch.runner import run_batch
    from gtasr_deploy.batch.video_jobs import VideoJobs

    out, jobs = _batch_folder(clip, tmp_path)
    data = clip.read_bytes()
    jobs[1].src.write_bytes(data[: len(data) // 2])  # cut in the middle
    jobs[3].src.write_bytes(b"\0" * 5000)
    err = io.StringIO()
    summary = run_batch(jobs, _nearest4_float, handlers=[VideoJobs()], progress=False, err=err)
    lines = [line for line in err.getvalue().splitlines() if line.startswith("error:")]
    assert summary.failed == len(lines) >= 1 and all("\n" not in line for line in lines)
    assert (out / "still.png").is_file() and (out / "b.mp4").is_file() and not list(tmp_path.rglob(".gtasr-*.tmp"))


def _video_only(clip: Path, root: Path) -> tuple[Path, list]:
    from gtasr_deploy.batch.plan import collect_videos, plan_video_jobs

    src = root / "in"
    src.mkdir()
    (src / "v.mp4").write_bytes(clip.read_bytes())
    out = root / "out"
    return out, plan_video_jobs(collect_videos(src), out)


def _run_videos(jobs, sr_fn, *, settings=None, overwrite=False, **encoder):
    import io

    from gtasr_deploy.batch.runner import run_batch
    from gtasr_deploy.batch.video_jobs import VideoJobs

    return run_batch(jobs, sr_fn, handlers=[VideoJobs(**encoder)], settings=settings, overwrite=overwrite,
                     progress=False, err=io.StringIO())


def test_video_frames_go_through_the_images_sr_fn(clip, tmp_path):
    """The batch's one per-picture call: float32 RGB in [0, 1] for every frame, as for an image."""
    out, jobs = _video_only(clip, tmp_path)
    seen = []

    def sr_fn(rgb):
        seen.append((rgb.dtype, rgb.shape, float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0))
        return nearest4(rgb)

    assert _run_videos(jobs, sr_fn, codec="ffv1", pix_fmt="yuv444p").written == 1
    assert seen == [(np.float32, (H, W, 3), True)] * N
    frames = probe(out / "v.mp4")["frames"]
    assert len(frames) == N and frames[0].shape == (4 * H, 4 * W, 3)


def test_a_finished_video_with_its_record_is_skipped_on_rerun(clip, tmp_path):
    out, jobs = _video_only(clip, tmp_path)
    calls = []

    def sr_fn(rgb):
        calls.append(1)
        return nearest4(rgb)

    assert _run_videos(jobs, sr_fn, settings={"seed": 1}).written == 1 and len(calls) == N
    stamp = (out / "v.mp4").stat().st_mtime_ns, (out / "v.mp4").read_bytes()
    calls.clear()
    again = _run_videos(jobs, sr_fn, settings={"seed": 1})
    assert (again.skipped, again.written, len(calls)) == (1, 0, 0)
    assert again.records[0].reason == "done earlier for this input and settings"
    assert ((out / "v.mp4").stat().st_mtime_ns, (out / "v.mp4").read_bytes()) == stamp


def test_a_video_output_without_its_record_is_not_silently_skipped(clip, tmp_path):
    """Same rule as images: a video under the output name that no record proves ours is reported
    (and left alone), whether it is this tool's earlier result whose record is gone or another
    program's video; --overwrite redoes it."""
    from gtasr_deploy.batch.records import record_path

    out, jobs = _video_only(clip, tmp_path)
    assert _run_videos(jobs, nearest4).written == 1
    record_path(out / "v.mp4").unlink()  # a finished video, its record lost
    before = (out / "v.mp4").read_bytes()
    calls = []

    def sr_fn(rgb):
        calls.append(1)
        return nearest4(rgb)

    lost = _run_videos(jobs, sr_fn)
    assert (lost.skipped, lost.failed, len(calls)) == (0, 1, 0)
    assert "not this tool's finished result" in lost.records[0].reason
    assert (out / "v.mp4").read_bytes() == before

    other = tmp_path / "other.mp4"  # a real video another program wrote under the output name
    upscale_video(clip, other, nearest4, crf=40)
    other.replace(out / "v.mp4")
    foreign = _run_videos(jobs, sr_fn)
    assert (foreign.skipped, foreign.failed, len(calls)) == (0, 1, 0)

    redone = _run_videos(jobs, sr_fn, overwrite=True)
    assert (redone.written, len(calls)) == (1, N)
    assert _run_videos(jobs, sr_fn).skipped == 1  # recorded again: skipped from now on


def test_a_changed_setting_redoes_a_finished_video(clip, tmp_path):
    """A stale video of this tool (other picture settings, other encoder, or a begun record of a run
    that died) is redone, as an image is."""
    from gtasr_deploy.batch import records as completion

    out, jobs = _video_only(clip, tmp_path)
    calls = []

    def sr_fn(rgb):
        calls.append(1)
        return nearest4(rgb)

    def run(**options):
        calls.clear()
        return _run_videos(jobs, sr_fn, **options)

    assert run(settings={"seed": 1}).written == 1
    assert (run(settings={"seed": 2}).written, len(calls)) == (1, N)  # a picture setting changed
    assert (run(settings={"seed": 2}).skipped, len(calls)) == (1, 0)
    assert (run(settings={"seed": 2}, crf=25).written, len(calls)) == (1, N)  # an encoder setting changed
    completion.begin(out / "v.mp4")  # a run killed between the rename and the finished record
    assert (run(settings={"seed": 2}, crf=25).written, len(calls)) == (1, N)


def test_media_does_not_import_batch():
    """Arrows: batch -> media, never back."""
    import ast

    import gtasr_deploy.media as media

    for path in Path(media.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "batch" not in (node.module or "").split("."), f"{path.name} imports {node.module}"


def test_videos_are_planned_as_images_are(clip, tmp_path):
    """Output folder = input folder: an earlier result with its record is left out of the inputs;
    a video under an output name without one is someone's video: the plan refuses to replace it."""
    from gtasr_deploy.batch.plan import collect_videos, plan_video_jobs

    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(clip.read_bytes())
    jobs = plan_video_jobs(collect_videos(folder), folder, suffix="_x4")
    assert [job.dst.name for job in jobs] == ["a_x4.mp4"]
    assert _run_videos(jobs, nearest4).written == 1
    again = plan_video_jobs(collect_videos(folder), folder, suffix="_x4")
    assert [job.src.name for job in again] == ["a.mp4"]  # a_x4.mp4 is a result, not an input
    assert _run_videos(again, nearest4).skipped == 1
    (folder / "b.mp4").write_bytes(clip.read_bytes())
    (folder / "b_x4.mp4").write_bytes(clip.read_bytes())  # not ours
    with pytest.raises(InputError, match="b_x4.mp4 of .*b.mp4 would replace the input"):
        plan_video_jobs(collect_videos(folder), folder, suffix="_x4")
