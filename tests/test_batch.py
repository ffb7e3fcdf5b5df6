"""The batch loop: inputs, output plan and collisions, shards, bad files, interrupt and resume.

The super-resolution is a fake (nearest x4 via np.repeat), so every output pixel is predictable.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms

from gtasr_deploy.batch.runner import (
    Job,
    check_output_dir,
    collect_inputs,
    local_device_from_env,
    parse_shard,
    plan_outputs,
    run_batch,
    select_shard,
)
from gtasr_deploy.batch.records import RECORD_DIR
from gtasr_deploy.errors import BackendUnavailableError, InputError
from gtasr_deploy.media.images import upscale_alpha

RNG = np.random.default_rng(7)
SRGB_ICC = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def nearest_x4(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)


class CountingSr:
    """nearest_x4 that counts calls and can fail on the n-th call (1-based)."""

    def __init__(self, fail_on: int | None = None, exc: BaseException | None = None):
        self.calls, self.fail_on, self.exc = 0, fail_on, exc

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.exc
        return nearest_x4(rgb)


def image(path: Path, mode: str = "RGB", size=(5, 3), **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    pixels = RNG.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    PILImage.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode).save(path, **options)
    return path


def leftovers(folder: Path) -> list[Path]:
    """Temp files anywhere under ``folder``."""
    return [p for p in folder.rglob("*") if p.name.startswith(".gtasr-")]


def outputs(folder: Path) -> list[str]:
    """Names in ``folder`` but the completion records' folder (temp files would show)."""
    return sorted(p.name for p in folder.iterdir() if p.name != RECORD_DIR)


def plan(src: Path, out: Path, **options) -> list[Job]:
    return plan_outputs(collect_inputs(src), out, **options)


# ---------------------------------------------------------------------------------- inputs


def test_collect_inputs_recursive_sorted_filtered(tmp_path):
    src = tmp_path / "in"
    for rel in ["b.png", "a dir/c.JPG", "a dir/deeper/ü ñ 写真.webp", "z.TIFF", ".hidden.png",
                ".cache/x.png", "notes.txt", "x.bmp", "y.tif", "w.jpeg"]:
        image(src / rel, format="PNG")
    found = collect_inputs(src)
    rels = [rel.as_posix() for _, rel in found]
    assert rels == ["a dir/c.JPG", "a dir/deeper/ü ñ 写真.webp", "b.png", "w.jpeg", "x.bmp", "y.tif",
                    "z.TIFF"]
    assert all(file == src / rel for file, rel in found)


def test_collect_inputs_single_file_missing_and_empty(tmp_path):
    file = image(tmp_path / "one photo.png")
    assert collect_inputs(file) == [(file, Path("one photo.png"))]
    with pytest.raises(InputError, match="does not exist"):
        collect_inputs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        collect_inputs(tmp_path / "empty")


def test_collect_inputs_excludes_output_inside_input(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "out" / "a.png")
    assert [rel.as_posix() for _, rel in collect_inputs(tmp_path, exclude=tmp_path / "out")] == ["a.png"]


# ---------------------------------------------------------------------------------- planning


def test_plan_mirrors_structure_with_format_and_suffix(tmp_path):
    src = tmp_path / "in"
    image(src / "sub" / "a.jpg")
    image(src / "b.png")
    jobs = plan(src, tmp_path / "out", fmt="webp", suffix="_x4")
    assert [j.dst for j in jobs] == [tmp_path / "out" / "b_png_x4.webp", tmp_path / "out" / "sub" / "a_jpg_x4.webp"]
    jobs = plan(src, tmp_path / "out", fmt="same")
    assert [j.dst.name for j in jobs] == ["b.png", "a.jpg"]
    jobs = plan(src, tmp_path / "out", fmt="png")
    assert [j.dst.name for j in jobs] == ["b.png", "a_jpg.png"]  # tagged even with no a.png beside it


def test_plan_collisions_keep_both(tmp_path):
    src = tmp_path / "in"
    for name in ["photo.jpg", "photo.png", "photo.webp", "photo_jpg.png", "Photo.PNG"]:
        image(src / name)
    names = {j.src.name: j.dst.name for j in plan(src, tmp_path / "out", fmt="png")}
    # photo_jpg.png looks tagged, so it is tagged too; Photo.PNG and photo.png differ only in case:
    # each gets the hash of its own path.
    assert names["photo.jpg"] == "photo_jpg.png" and names["photo_jpg.png"] == "photo_jpg_png.png"
    assert names["photo.webp"] == "photo_webp.png"
    assert names["Photo.PNG"].startswith("Photo_") and names["photo.png"].startswith("photo_")
    assert len({n.casefold() for n in names.values()}) == len(names)
    names = {j.src.name: j.dst.name for j in plan(src, tmp_path / "out", fmt="jpg")}
    assert names["photo.jpg"] == "photo.jpg" and names["photo_jpg.png"] == "photo_jpg_png.jpg"
    assert len({n.casefold() for n in names.values()}) == len(names)


def test_plan_refuses_to_replace_inputs_and_bad_options(tmp_path):
    image(tmp_path / "a.png")
    with pytest.raises(InputError, match="would replace its input"):
        plan(tmp_path, tmp_path, fmt="same")
    assert plan(tmp_path, tmp_path, fmt="same", suffix="_x4")[0].dst == tmp_path / "a_x4.png"
    with pytest.raises(InputError, match="--format 'gif'"):
        plan(tmp_path, tmp_path / "o", fmt="gif")
    with pytest.raises(InputError, match="path separator"):
        plan(tmp_path, tmp_path / "o", suffix="../x")


# ---------------------------------------------------------------------------------- shards


def jobs_n(n: int) -> list[Job]:
    return [Job(src=Path(f"{i}.png"), rel=Path(f"{i}.png"), dst=Path(f"o/{i}.png")) for i in range(n)]


@pytest.mark.parametrize("n_shards", [1, 2, 3, 7])
def test_shards_are_disjoint_covering_and_deterministic(n_shards):
    jobs = jobs_n(10)
    shards = [select_shard(jobs, (k, n_shards), env={}) for k in range(n_shards)]
    assert sorted(j.src.name for s in shards for j in s) == sorted(j.src.name for j in jobs)
    assert sum(len(s) for s in shards) == len(jobs)
    assert shards == [select_shard(jobs, (k, n_shards), env={}) for k in range(n_shards)]
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def test_shard_from_environment_and_precedence():
    jobs = jobs_n(6)
    assert select_shard(jobs, None, env={"RANK": "1", "WORLD_SIZE": "3"}) == [jobs[1], jobs[4]]
    assert select_shard(jobs, (0, 2), env={"RANK": "1", "WORLD_SIZE": "3"}) == [jobs[0], jobs[2], jobs[4]]
    assert select_shard(jobs, None, env={}) == jobs
    with pytest.raises(InputError, match="RANK/WORLD_SIZE"):
        select_shard(jobs, None, env={"RANK": "3", "WORLD_SIZE": "3"})
    with pytest.raises(InputError, match="not integers"):
        select_shard(jobs, None, env={"RANK": "a", "WORLD_SIZE": "3"})


@pytest.mark.parametrize("text", ["1", "a/b", "4/4", "-1/4", "0/0", "1/2/3"])
def test_parse_shard_rejects(text):
    with pytest.raises(InputError):
        parse_shard(text)


def test_parse_shard_and_local_device():
    assert parse_shard("3/4") == (3, 4)
    assert local_device_from_env({"LOCAL_RANK": "2"}) == "cuda:2"
    assert local_device_from_env({}) == "cuda"
    assert local_device_from_env({}, default="cpu") == "cpu"
    with pytest.raises(InputError, match="LOCAL_RANK"):
        local_device_from_env({"LOCAL_RANK": "x"})


# ---------------------------------------------------------------------------------- output folder


def test_check_output_dir(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deep").is_dir()
    assert list((tmp_path / "new" / "deep").iterdir()) == []  # probe removed
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="is not writable"):
        check_output_dir(tmp_path / "file.txt" / "sub")
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "file.txt")


# ---------------------------------------------------------------------------------- running


def make_mixed_folder(src: Path) -> None:
    image(src / "rgb.png", size=(5, 3))
    image(src / "gray.png", "L", size=(4, 4))
    image(src / "alpha.png", "RGBA", size=(3, 2), icc_profile=SRGB_ICC)
    image(src / "sub dir" / "photo ü.jpg", size=(6, 2))
    (src / "empty.png").write_bytes(b"")
    (src / "text.png").write_text("not an image")
    full = image(src / "cut.png", size=(12, 12)).read_bytes()
    (src / "cut.png").write_bytes(full[: len(full) // 2])
    image(src / "huge.png", size=(20, 20))


def test_run_batch_mixed_folder(tmp_path):
    src, out, err = tmp_path / "in", tmp_path / "out", io.StringIO()
    make_mixed_folder(src)
    report = tmp_path / "report.json"
    summary = run_batch(plan(src, out), nearest_x4, max_pixels=399, progress=False, json_report=report,
                        err=err)
    lines = err.getvalue().splitlines()
    assert sorted(lines[:-1]) == sorted([
        f"error: {src / 'cut.png'}: truncated or corrupt image data (image file is truncated)",
        f"error: {src / 'empty.png'}: empty file (0 bytes)",
        f"error: {src / 'huge.png'}: image is 20x20 = 400 pixels, over the limit of 399 "
        "(raise it with --max-pixels if the file is trusted)",
        f"error: {src / 'text.png'}: not an image file (expected PNG, JPEG, WebP, BMP or TIFF)"])
    assert lines[-1] == "4 written, 0 skipped (done), 4 failed"
    assert "Traceback" not in err.getvalue()
    assert (summary.written, summary.failed, summary.exit_code) == (4, 4, 1)
    with PILImage.open(out / "rgb.png") as im:
        assert (im.mode, im.size) == ("RGB", (20, 12))
    with PILImage.open(out / "gray.png") as im:
        assert (im.mode, im.size) == ("L", (16, 16))
    with PILImage.open(out / "alpha.png") as im:
        assert (im.mode, im.size, im.info["icc_profile"]) == ("RGBA", (12, 8), SRGB_ICC)
    assert (out / "sub dir" / "photo ü_jpg.png").is_file()
    assert not (out / "cut.png").exists() and not leftovers(out)
    data = json.loads(report.read_text())
    assert data["summary"] == {"written": 4, "skipped": 0, "failed": 4, "interrupted": False, "exit_code": 1}
    by_name = {Path(r["input"]).name: r for r in data["files"]}
    assert by_name["rgb.png"]["status"] == "written"
    assert by_name["rgb.png"]["input_size"] == [5, 3] and by_name["rgb.png"]["output_size"] == [20, 12]
    assert by_name["rgb.png"]["seconds"] >= 0
    assert (by_name["empty.png"]["status"], by_name["empty.png"]["reason"]) == ("failed", "empty file (0 bytes)")


def test_run_batch_exact_pixels_16bit_and_same_format(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    gray16 = RNG.integers(0, 65536, (3, 2), dtype=np.uint16)
    src.mkdir()
    PILImage.fromarray(gray16).save(src / "g16.tif")
    rgb = image(src / "c.bmp")
    rgba16 = RNG.integers(0, 65536, (2, 3, 4), dtype=np.uint16)
    cv2.imwrite(str(src / "c16.png"), rgba16[..., [2, 1, 0, 3]])
    summary = run_batch(plan(src, out, fmt="same"), nearest_x4, progress=False, err=io.StringIO())
    assert summary.exit_code == 0
    decoded = cv2.imread(str(out / "c16.png"), cv2.IMREAD_UNCHANGED)[..., [2, 1, 0, 3]]
    assert decoded.dtype == np.uint16 and decoded.shape == (8, 12, 4)
    np.testing.assert_array_equal(decoded[..., :3], nearest_x4(rgba16[..., :3]))
    alpha = upscale_alpha((rgba16[..., 3] / 65535.0).astype(np.float32), 4)  # alpha is bicubic, not sr_fn
    np.testing.assert_array_equal(decoded[..., 3], np.rint(alpha * 65535))
    with PILImage.open(out / "g16.tif") as im:
        assert im.mode.startswith("I;16")
        np.testing.assert_array_equal(np.asarray(im), nearest_x4(gray16[..., None])[..., 0])
    with PILImage.open(out / "c.bmp") as im, PILImage.open(rgb) as source:
        np.testing.assert_array_equal(np.asarray(im), nearest_x4(np.asarray(source)))


def test_collision_pair_writes_both(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    image(src / "photo.jpg", size=(2, 2))
    image(src / "photo.png", size=(3, 3))
    summary = run_batch(plan(src, out), nearest_x4, progress=False, err=io.StringIO())
    assert summary.written == 2
    with PILImage.open(out / "photo.png") as a, PILImage.open(out / "photo_jpg.png") as b:
        assert (a.size, b.size) == ((12, 12), (8, 8))


def test_existing_outputs_skipped_unless_overwrite(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for name in "abc":
        image(src / f"{name}.png")
    jobs = plan(src, out)
    run_batch(jobs, nearest_x4, progress=False, err=io.StringIO())
    sr, err = CountingSr(), io.StringIO()
    summary = run_batch(jobs, sr, progress=False, err=err)
    assert (summary.skipped, sr.calls, summary.exit_code) == (3, 0, 0)
    assert err.getvalue() == "0 written, 3 skipped (done), 0 failed\n"
    summary = run_batch(jobs, sr, overwrite=True, progress=False, summary=False, err=io.StringIO())
    assert (summary.written, sr.calls) == (3, 3)


# The SIGTERM case runs its interrupted batch in a fresh process: a real SIGTERM sent to the pytest
# process itself, with the native libraries of earlier tests loaded, is how the fast tier once died with
# SIGSEGV (tests/test_train_chunks.py did the same).
_SIGTERM_RUN = """
import io, os, signal, sys
from pathlib import Path
import numpy as np
from gtasr_deploy.batch.runner import collect_inputs, plan_outputs, run_batch
src, out, report = (Path(a) for a in sys.argv[1:4])
calls = []
def interrupt_on_third(rgb):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises on the next bytecode
        raise AssertionError("SIGTERM did not interrupt the batch")
    return np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)
previous = signal.getsignal(signal.SIGTERM)
err = io.StringIO()
try:
    run_batch(plan_outputs(collect_inputs(src), out), interrupt_on_third, progress=False, json_report=report, err=err)
except KeyboardInterrupt:
    print("KeyboardInterrupt")
print("handler restored" if signal.getsignal(signal.SIGTERM) is previous else "handler not restored")
print(err.getvalue().splitlines()[-1])
"""


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_run_then_resume_completes_the_set(tmp_path, how):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    names = [f"img{i}.png" for i in range(5)]
    for name in names:
        image(src / name)
    jobs = plan(src, out)
    last_line = "interrupted: 2 written, 0 skipped (done), 0 failed"

    if how == "sigterm":
        path = os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])
        result = subprocess.run([sys.executable, "-c", _SIGTERM_RUN, str(src), str(out), str(report)],
                                capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": path})
        assert result.returncode == 0, result.stderr[-2000:]
        assert result.stdout.splitlines() == ["KeyboardInterrupt", "handler restored", last_line], result.stderr[-2000:]
    else:
        def interrupt_on_third(rgb, calls=[]):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return nearest_x4(rgb)

        previous_handler = signal.getsignal(signal.SIGTERM)
        err = io.StringIO()
        with pytest.raises(KeyboardInterrupt):
            run_batch(jobs, interrupt_on_third, progress=False, json_report=report, err=err)
        assert signal.getsignal(signal.SIGTERM) is previous_handler
        assert err.getvalue().splitlines()[-1] == last_line
    assert outputs(out) == names[:2]  # complete files only, no temp files
    assert json.loads(report.read_text())["summary"]["interrupted"] is True

    resumed = CountingSr()
    summary = run_batch(jobs, resumed, progress=False, err=io.StringIO())
    assert (summary.skipped, summary.written, resumed.calls, summary.exit_code) == (2, 3, 3, 0)
    assert outputs(out) == names
    for name in names:
        with PILImage.open(out / name) as im:
            assert im.size == (20, 12)


def test_sr_errors_fail_one_file_and_bugs_propagate(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for name in "abc":
        image(src / f"{name}.png")
    err = io.StringIO()
    summary = run_batch(plan(src, out), CountingSr(fail_on=2, exc=BackendUnavailableError("GPU went away")),
                        progress=False, err=err)
    assert err.getvalue().splitlines()[0] == f"error: {src / 'b.png'}: GPU went away"
    assert (summary.written, summary.failed, summary.exit_code) == (2, 1, 1)
    with pytest.raises(ValueError, match="sr_fn returned shape"):
        run_batch(plan(src, out), lambda rgb: rgb, overwrite=True, progress=False, err=io.StringIO())


def test_write_failure_is_one_line(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    image(src / "a.png")
    image(src / "b.png")
    out.mkdir()
    (out / "a.png").mkdir()  # a folder where the output file should go; overwrite forces the write
    err = io.StringIO()
    summary = run_batch(plan(src, out), nearest_x4, overwrite=True, progress=False, err=err)
    first = err.getvalue().splitlines()[0]
    assert first.startswith(f"error: {src / 'a.png'}: cannot write {out / 'a.png'}: ")
    assert (summary.written, summary.failed) == (1, 1) and not leftovers(out)


def test_shards_together_produce_the_whole_set(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(7):
        image(src / f"{i}.png")
    jobs = plan(src, out)
    written = [run_batch(select_shard(jobs, (k, 3), env={}), nearest_x4, progress=False,
                         err=io.StringIO()).written for k in range(3)]
    assert written == [3, 2, 2]
    assert outputs(out) == [f"{i}.png" for i in range(7)]


def test_progress_bars_and_tile_callback(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    image(src / "a.png")
    seen = []

    def tiled_sr(rgb, *, on_tile):
        for done in range(1, 5):
            on_tile(done, 4)
            seen.append(done)
        return nearest_x4(rgb)

    class Terminal(io.StringIO):  # bars are drawn only on a terminal (plain lines elsewhere)
        def isatty(self):
            return True

    err = Terminal()
    summary = run_batch(plan(src, out), tiled_sr, progress=True, tile_progress=True, err=err)
    assert summary.written == 1 and seen == [1, 2, 3, 4]
    assert "img" in err.getvalue() and "tile" in err.getvalue()


def test_recorded_output_puts_the_file_in_place_with_its_record_or_nothing(tmp_path):
    """The commit every batch output goes through (a video's path; an image's is ``recording``):
    a failure while writing leaves neither the file, a temp file nor a record; success leaves the
    file and a record that proves it done."""
    from gtasr_deploy.batch import records

    src, rel, dst = tmp_path / "in.bin", Path("in.bin"), tmp_path / "out" / "o.bin"
    src.write_bytes(b"input")
    with pytest.raises(RuntimeError):
        with records.recorded_output(dst, src, rel, {"k": 1}) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("encoder died")
    assert not dst.exists() and not records.record_path(dst).exists()
    assert [p.name for p in dst.parent.iterdir()] == []
    with records.recorded_output(dst, src, rel, {"k": 1}) as temp:
        temp.write_bytes(b"whole")
    assert dst.read_bytes() == b"whole"
    assert records.check(dst, src, rel, {"k": 1}) is records.Verdict.DONE
    assert records.check(dst, src, rel, {"k": 2}) is records.Verdict.STALE
    with pytest.raises(OSError):  # the rename fails: the begun record stays, so the file is redone
        with records.recorded_output(tmp_path / "out" / "dir", src, rel, {"k": 1}) as temp:
            (tmp_path / "out" / "dir").mkdir()
            (tmp_path / "out" / "dir" / "x").write_bytes(b"")
            temp.write_bytes(b"x")
    assert records.is_ours(tmp_path / "out" / "dir")
