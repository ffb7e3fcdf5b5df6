"""Issue 19, adversarially: no silent wrong output, no batch-wide crash, no lost file.

Every test makes its own inputs. The super-resolution is a fake (nearest x4) wherever the
model does not matter, so every output pixel is predictable and a wrong picture under a name is
caught exactly; the CLI tests run the real command (the tiny fixture network in-process, the
embedded demo weights in the signal tests, which run ``python -m gtasr_deploy.cli.upscale`` as a
subprocess). The signal tests are in test_reliability_signals.py.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from gtasr_deploy.batch import records as completion
from gtasr_deploy.batch.runner import (
    Job,
    check_json_target,
    collect_inputs,
    plan_outputs,
    run_batch,
)
from gtasr_deploy.cli.eval import main as eval_main
from gtasr_deploy.cli.upscale import main as upscale_main
from gtasr_deploy.batch.records import RECORD_DIR, Verdict
from gtasr_deploy.errors import BackendUnavailableError, InputError

FIXTURE = Path(__file__).parent / "data" / "upstream_tiny"
WEIGHTS = ["--weights", str(FIXTURE / "checkpoint.pth"), "--network-config", str(FIXTURE / "network_g.json")]
LOSSLESS = (".png", ".bmp", ".tif", ".tiff", ".webp")


def nearest_x4(rgb: np.ndarray, on_tile=None) -> np.ndarray:
    return np.repeat(np.repeat(rgb, 4, axis=0), 4, axis=1)


class CountingSr:
    """nearest_x4 that records which inputs it ran on (by a fingerprint of their pixels)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, rgb, on_tile=None):
        self.calls += 1
        return nearest_x4(rgb)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"lossless": True} if path.suffix.lower() == ".webp" else {}
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP"}
    PILImage.fromarray(pixels).save(path, format=fmt.get(path.suffix.lower(), "PNG"), **options)
    return path


def pixels(seed: int, h: int = 3, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def decoded(path: Path) -> np.ndarray:
    with PILImage.open(path) as im:
        return np.asarray(im.convert("RGB"))


def plan(src: Path, out: Path, **options) -> list[Job]:
    return plan_outputs(collect_inputs(src), out, **options)


def quiet_run(jobs, sr=nearest_x4, **options):
    err = io.StringIO()
    summary = run_batch(jobs, sr, progress=False, err=err, **options)
    return summary, err.getvalue().splitlines()


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.startswith(".gtasr-")]


def images_in(folder: Path) -> list[str]:
    """Relative paths of the files under ``folder`` except the completion records."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and RECORD_DIR not in p.relative_to(folder).parts)


# ---------------------------------------------------------------------------------- names

# No two of these differ only in case (such twins are the one documented exception: each gets
# a hash of its own path, see test_case_twins_are_all_kept).
UNIVERSE = ["a.png", "a.jpg", "a.jpeg", "a.webp", "a.TIF", "a_jpg.png", "a_jpg.jpg", "a_png.png",
            "a_jpg_png.png", "b x.bmp", "b x_tiff.png", "sub/a.png", "sub/a.jpg", "c.JPG", "c_jpg.PNG",
            "d.tiff", "d_TIF.webp"]


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "same"])
@pytest.mark.parametrize("suffix", ["", "_x4", "_png"])
def test_output_names_depend_only_on_the_input_itself(tmp_path, fmt, suffix):
    """For random subsets of the universe: no two inputs share an output name (case-insensitively),
    and each input's name is the one it gets when every other file is present."""
    out = tmp_path / "out"
    full = {j.rel.as_posix(): j.dst for j in plan_outputs([(tmp_path / r, Path(r)) for r in UNIVERSE], out,
                                                          fmt=fmt, suffix=suffix)}
    rng = np.random.default_rng(len(fmt) * 7 + len(suffix))
    for _ in range(200):
        subset = [r for r in UNIVERSE if rng.random() < 0.5]
        jobs = plan_outputs([(tmp_path / r, Path(r)) for r in sorted(subset)], out, fmt=fmt, suffix=suffix)
        assert len({str(j.dst).casefold() for j in jobs}) == len(jobs) == len(subset)
        for job in jobs:
            assert job.dst == full[job.rel.as_posix()], (job.rel, subset)


def test_case_twins_are_all_kept(tmp_path):
    inputs = [(tmp_path / r, Path(r)) for r in ["a.PNG", "a.png", "A.png"]]
    first = plan_outputs(inputs, tmp_path / "out")
    again = plan_outputs(list(reversed(inputs)), tmp_path / "out")
    assert len({str(j.dst).casefold() for j in first}) == 3
    assert {j.rel: j.dst for j in first} == {j.rel: j.dst for j in again}


# ---------------------------------------------------------------------------------- completion records


def test_adding_a_colliding_input_keeps_both_pictures(tmp_path):
    """The issue's first example: a.jpg upscaled, then a.png added and the folder re-run."""
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.jpg", pixels(1, 6, 4))
    quiet_run(plan(src, out))
    save(src / "a.png", pixels(2, 5, 7))
    summary, lines = quiet_run(plan(src, out))
    assert (summary.written, summary.skipped, summary.exit_code) == (1, 1, 0), lines
    assert np.array_equal(decoded(out / "a.png"), nearest_x4(decoded(src / "a.png")))
    assert np.array_equal(decoded(out / "a_jpg.png"), nearest_x4(decoded(src / "a.jpg")))


def test_random_history_never_leaves_a_wrong_picture_or_skips_a_stale_one(tmp_path):
    """Inputs are added, removed, rewritten (same or other size) and touched at random between
    runs. After every run, every input's output holds exactly its own picture, and the model ran
    exactly for the inputs that are new or whose content changed."""
    src, out = tmp_path / "in", tmp_path / "out"
    names = ["a.png", "a.jpg", "a.bmp", "a_jpg.png", "sub/a.png", "b.tif", "b_tif.png", "c.webp"]
    rng = np.random.default_rng(19)
    present: dict[str, int] = {}  # name -> seed of its current content
    seed = 100
    save(src / "keep.png", pixels(0))  # the folder is never empty
    quiet_run(plan(src, out))
    for step in range(40):
        changed = set()
        for _ in range(int(rng.integers(1, 4))):
            name = names[int(rng.integers(len(names)))]
            action = rng.choice(["write", "remove", "touch"]) if name in present else "write"
            if action == "remove":
                (src / name).unlink()
                del present[name]
                changed.discard(name)
            elif action == "touch":
                os.utime(src / name, ns=(os.stat(src / name).st_atime_ns, os.stat(src / name).st_mtime_ns + 10**9))
            else:
                seed += 1
                h, w = (3, 5) if rng.random() < 0.5 else (int(rng.integers(2, 6)), int(rng.integers(2, 6)))
                save(src / name, pixels(seed, h, w))
                present[name] = seed
                changed.add(name)
        sr = CountingSr()
        jobs = plan(src, out)
        summary, lines = quiet_run(jobs, sr)
        assert summary.failed == 0, (step, lines)
        assert sr.calls == summary.written == len(changed), (step, sorted(changed), lines)
        for job in jobs:
            assert np.array_equal(decoded(job.dst), nearest_x4(decoded(job.src))), (step, job)
        assert not temp_files(out)


def test_same_size_new_content_is_redone_and_a_touched_input_is_not(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", pixels(1))
    quiet_run(plan(src, out))
    stat = os.stat(src / "a.png")
    data = bytearray((src / "a.png").read_bytes())
    save(src / "a.png", pixels(2))  # same dimensions; the file size may or may not match
    os.utime(src / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    summary, _ = quiet_run(plan(src, out))
    assert summary.written == 1
    assert np.array_equal(decoded(out / "a.png"), nearest_x4(pixels(2)))
    (src / "copy").write_bytes(bytes(data))  # a byte-identical copy with a new mtime: same picture
    os.replace(src / "copy", src / "a.png")
    summary, _ = quiet_run(plan(src, out))
    assert summary.written == 1 and np.array_equal(decoded(out / "a.png"), nearest_x4(pixels(1)))
    os.utime(src / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
    sr = CountingSr()
    summary, _ = quiet_run(plan(src, out), sr)
    assert (summary.skipped, sr.calls) == (1, 0)


def test_unchanged_inputs_are_not_hashed_again(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        save(src / f"{i}.png", pixels(i))
    quiet_run(plan(src, out))
    hashed = []
    real = completion.file_sha256
    monkeypatch.setattr(completion, "file_sha256", lambda path, *a: hashed.append(path) or real(path, *a))
    summary, _ = quiet_run(plan(src, out))
    assert summary.skipped == 4 and hashed == []


def test_other_settings_make_outputs_stale(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", pixels(1))
    quiet_run(plan(src, out), settings={"seed": 0})
    assert quiet_run(plan(src, out), settings={"seed": 0})[0].skipped == 1
    assert quiet_run(plan(src, out), settings={"seed": 1})[0].written == 1
    assert quiet_run(plan(src, out), settings={"seed": 1}, quality=80)[0].written == 1


def test_files_this_tool_did_not_write_are_never_replaced_silently(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", pixels(1))
    save(src / "b.png", pixels(2))
    save(out / "a.png", pixels(3))  # someone else's file under the output name
    summary, lines = quiet_run(plan(src, out))
    assert (summary.written, summary.failed, summary.exit_code) == (1, 1, 1)
    assert lines[0].startswith(f"error: {src / 'a.png'}: {out / 'a.png'} exists and is not this tool's")
    assert np.array_equal(decoded(out / "a.png"), pixels(3))
    save(out / "b.png", pixels(4))  # an output edited after it was written
    summary, lines = quiet_run(plan(src, out))
    assert summary.failed == 2 and np.array_equal(decoded(out / "b.png"), pixels(4))
    summary, _ = quiet_run(plan(src, out), overwrite=True)
    assert summary.written == 2
    assert np.array_equal(decoded(out / "a.png"), nearest_x4(pixels(1)))
    assert quiet_run(plan(src, out))[0].skipped == 2


def test_a_writer_that_died_before_its_record_is_redone(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", pixels(1))
    (job,) = plan(src, out)
    out.mkdir()
    completion.begin(job.dst)  # what a SIGKILL right after the image rename leaves
    save(job.dst, pixels(9))
    assert completion.check(job.dst, job.src, job.rel, {}) is Verdict.STALE
    summary, _ = quiet_run([job])
    assert summary.written == 1 and np.array_equal(decoded(job.dst), nearest_x4(pixels(1)))


def test_a_corrupt_record_is_not_trusted(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", pixels(1))
    (job,) = plan(src, out)
    quiet_run([job])
    completion.record_path(job.dst).write_text("{ not json")
    summary, lines = quiet_run([job])
    assert summary.failed == 1 and "exists and is not this tool's" in lines[0]


# ---------------------------------------------------------------------------------- output checks


@pytest.mark.parametrize("bad", ["nan", "inf", "black"])
def test_non_finite_or_constant_output_fails_that_file_and_is_not_kept(tmp_path, bad):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", pixels(1, 8, 8))
    save(src / "b.png", pixels(2, 8, 8))

    def diverged(rgb, on_tile=None):
        sr = nearest_x4(rgb).copy()
        if rgb[0, 0, 0] == pixels(1, 8, 8)[0, 0, 0] / 255:
            if bad == "black":
                return np.zeros_like(sr)
            sr[1, 2, 0] = np.nan if bad == "nan" else np.inf
        return sr

    summary, lines = quiet_run(plan(src, out), diverged)
    assert (summary.written, summary.failed, summary.exit_code) == (1, 1, 1)
    assert len(lines) == 2 and lines[0].startswith(f"error: {src / 'a.png'}: output ")
    assert ("non-finite" if bad != "black" else "one constant colour") in lines[0]
    assert images_in(out) == ["b.png"]
    summary, _ = quiet_run(plan(src, out))  # not skipped as done later
    assert (summary.written, summary.skipped) == (1, 1)


def test_a_flat_input_may_give_a_flat_output(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "grey.png", np.full((4, 4, 3), 128, np.uint8))
    summary, _ = quiet_run(plan(src, out))
    assert summary.written == 1


# ---------------------------------------------------------------------------------- per-file failures


def hostile_folder(src: Path) -> dict[str, Path]:
    """Good images plus one of every kind of bad entry; returns the bad ones by kind."""
    save(src / "good1.png", pixels(1, 8, 8))
    save(src / "sub" / "good2.jpg", pixels(2, 8, 8))
    bad = {"loop": src / "loop.png", "dangling": src / "gone.png", "fifo": src / "pipe.png",
           "long": src / ("x" * 251 + ".jpg"), "newline": src / "two\nlines.png", "empty": src / "empty.png",
           "text": src / "notes.tif"}
    os.symlink("loop.png", bad["loop"])
    os.symlink("nowhere.png", bad["dangling"])
    os.mkfifo(bad["fifo"])
    save(bad["long"], pixels(3, 8, 8))  # its output name, x..x_jpg.png, is over 255 bytes
    bad["newline"].write_text("not an image")
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("II*\x00 not really a TIFF")
    return bad


def test_every_bad_entry_is_one_line_and_the_batch_goes_on(tmp_path):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    bad = hostile_folder(src)
    summary, lines = quiet_run(plan(src, out), json_report=report)
    assert (summary.written, summary.failed, summary.exit_code) == (2, len(bad), 1), lines
    assert len(lines) == len(bad) + 1 and lines[-1] == f"2 written, 0 skipped (done), {len(bad)} failed"
    assert all(line.startswith("error: ") for line in lines[:-1])
    for kind, path in bad.items():
        shown = str(path).replace("\n", "\\n")
        assert sum(line.startswith(f"error: {shown}: ") for line in lines) == 1, (kind, lines)
    reasons = {kind: next(line for line in lines if line.startswith(f"error: {path}: ".replace("\n", "\\n")))
               for kind, path in bad.items()}
    assert "Too many levels of symbolic links" in reasons["loop"]
    assert "No such file or directory" in reasons["dangling"]
    assert "not a regular file (a FIFO)" in reasons["fifo"]
    assert "File name too long" in reasons["long"]
    assert "not an image file" in reasons["newline"]
    assert "empty file" in reasons["empty"]
    data = json.loads(report.read_text())
    assert data["summary"] == {"written": 2, "skipped": 0, "failed": len(bad), "interrupted": False, "exit_code": 1}
    assert {Path(f["input"]).name for f in data["files"] if f["status"] == "failed"} == {p.name for p in bad.values()}
    assert images_in(out) == ["good1.png", "sub/good2_jpg.png"] and not temp_files(out)


@pytest.mark.parametrize("exc", [MemoryError(), RuntimeError("CUDA error: an illegal memory access\nmore"),
                                 BackendUnavailableError("GPU went away"), OSError(5, "Input/output error")])
def test_an_exception_on_one_image_fails_only_that_image(tmp_path, exc):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        save(src / f"{i}.png", pixels(i))

    def sr(rgb, on_tile=None, calls=[]):
        calls.append(1)
        if len(calls) == 2:
            raise exc
        return nearest_x4(rgb)

    summary, lines = quiet_run(plan(src, out), sr)
    assert (summary.written, summary.failed, summary.exit_code) == (2, 1, 1)
    assert len(lines) == 2 and lines[0].startswith(f"error: {src / '1.png'}: ")
    expected = {MemoryError: "out of memory", RuntimeError: "backend error: RuntimeError: CUDA error",
                BackendUnavailableError: "GPU went away", OSError: "Input/output error"}[type(exc)]
    assert expected in lines[0] and "more" not in lines[0]
    assert images_in(out) == ["0.png", "2.png"]


def test_folders_that_cannot_be_listed_count_in_summary_json_and_exit_code(tmp_path):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    save(src / "a.png", pixels(1))
    summary, lines = quiet_run(plan(src, out), json_report=report,
                               unlisted=[(str(src / "locked"), "cannot list folder (Permission denied)")])
    assert lines[0] == f"error: {src / 'locked'}: cannot list folder (Permission denied)"
    assert (summary.written, summary.failed, summary.exit_code) == (1, 1, 1)
    assert json.loads(report.read_text())["summary"]["failed"] == 1


def test_animated_and_multi_page_inputs_say_what_was_left_out(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    frames = [PILImage.fromarray(pixels(i)) for i in range(3)]
    for name, options in [("anim.png", {}), ("anim.webp", {"lossless": True}), ("pages.tif", {})]:
        frames[0].save(src / name, save_all=True, append_images=frames[1:], **options)
    save(src / "still.png", pixels(5))
    summary, lines = quiet_run(plan(src, out))
    assert summary.written == 4 and summary.exit_code == 0
    notes = [line for line in lines if line.startswith("note: ")]
    assert sorted(notes) == sorted(f"note: {src / n}: only the first of its 3 frames/pages was upscaled"
                                   for n in ("anim.png", "anim.webp", "pages.tif"))
    assert np.array_equal(decoded(out / "anim.png"), nearest_x4(pixels(0)))
    # a camera JPEG's extra MPO frames are previews: no note for them
    frames[0].save(src / "camera.jpg", format="MPO", save_all=True, append_images=frames[1:])
    summary, lines = quiet_run(plan(src, out))
    assert summary.written == 1 and not [line for line in lines if line.startswith("note: ")]


def test_float_tiff_and_fifo_get_their_true_reason(tmp_path):
    import cv2

    from gtasr_deploy.media.images import read_image

    cv2.imwrite(str(tmp_path / "f.tif"), np.random.default_rng(0).random((4, 4, 3)).astype(np.float32))
    with pytest.raises(InputError, match="32-bit float samples is not supported"):
        read_image(tmp_path / "f.tif")
    os.mkfifo(tmp_path / "p.png")
    with pytest.raises(InputError, match=r"not a regular file \(a FIFO\)"):
        read_image(tmp_path / "p.png")


# ---------------------------------------------------------------------------------- --json target


@pytest.fixture
def finished(tmp_path):
    """in/a.png, in/b.jpg and in/notes.txt, with out/ holding a finished run (fake model)."""
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", pixels(1, 8, 8))
    save(src / "b.jpg", pixels(2, 8, 8))
    (src / "notes.txt").write_text("my notes")
    quiet_run(plan(src, out))
    return src, out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("target", ["in/a.png", "in/b.jpg", "out/a.png", "out/b_jpg.png", "out/new.png",
                                    "in/notes.txt", "record", "IN/A.PNG"])
def test_json_never_replaces_an_input_an_output_or_a_record(finished, tmp_path, target):
    src, out = finished
    if target == "record":
        path = completion.record_path(out / "a.png")
    else:
        path = tmp_path / target
        if target.isupper():
            path = tmp_path / "in" / "A.PNG"  # the same file on a case-insensitive filesystem
    before = snapshot(tmp_path)
    result = CliRunner().invoke(upscale_main, [str(src), str(out), "-q", *WEIGHTS, "--json", str(path)])
    assert result.exit_code == 2 and result.output.startswith("error: --json "), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert snapshot(tmp_path) == before


def test_json_may_replace_an_earlier_report(finished, tmp_path):
    src, out = finished
    report = tmp_path / "report.json"
    quiet_run(plan(src, out), json_report=report)
    check_json_target(report, plan(src, out))  # no error
    (tmp_path / "empty.json").write_text("")
    check_json_target(tmp_path / "empty.json", plan(src, out))


# ---------------------------------------------------------------------------------- usage errors


def test_a_usage_error_leaves_no_folder_behind(tmp_path):
    src = tmp_path / "in"
    save(src / "a.png", pixels(1))
    out = tmp_path / "new" / "deeper"
    for extra in (["--weights", str(tmp_path / "missing.pth")], ["--json", str(tmp_path / "rep" / "x.png")],
                  ["--tile", "3"]):
        result = CliRunner().invoke(upscale_main, [str(src), str(out), "-q", *extra])
        assert result.exit_code == 2 and "Traceback" not in result.output, (extra, result.output)
        assert not (tmp_path / "new").exists() and not (tmp_path / "rep").exists(), extra
    out.mkdir(parents=True)  # a folder that was there before stays
    result = CliRunner().invoke(upscale_main, [str(src), str(out), "-q", "--weights", str(tmp_path / "missing.pth")])
    assert result.exit_code == 2 and out.is_dir()


@pytest.mark.parametrize("extra", [["--seed", str(2**70)], ["--seed", str(-2**64)], ["--shard", "3/2"],
                                   ["--suffix", "a/b"], ["--json", "{tmp}"], ["--max-pixels", "x"]])
def test_bad_options_are_one_line_usage_errors(tmp_path, extra):
    src = tmp_path / "in"
    save(src / "a.png", pixels(1))
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    result = CliRunner().invoke(upscale_main, [str(src), str(tmp_path / "out"), "-q", *WEIGHTS, *extra])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind, reason", [
    ("loop", "Too many levels of symbolic links"), ("dangling", "is a broken symbolic link"),
    ("fifo", "is a FIFO, not an image file or a folder"), ("device", "is a character device"),
    ("long input", "File name too long"), ("file as output", "is a file, not a folder"),
    ("output loop", "output {out}: Too many levels of symbolic links"), ("long output", "File name too long")])
def test_odd_inputs_and_outputs_are_one_line_with_the_true_reason(tmp_path, kind, reason):
    src, out = tmp_path / "in.png", tmp_path / "out"
    save(tmp_path / "real.png", pixels(1))
    if kind == "loop":
        os.symlink("in.png", src)
    elif kind == "dangling":
        os.symlink("nowhere.png", src)
    elif kind == "fifo":
        os.mkfifo(src)
    elif kind == "device":
        src = Path(os.devnull)
    elif kind == "long input":
        src = tmp_path / ("x" * 300)
    else:
        save(src, pixels(1))
        if kind == "file as output":
            out.write_text("a file")
        elif kind == "output loop":
            os.symlink("out", out)
        else:
            out = tmp_path / ("y" * 300)
    result = CliRunner().invoke(upscale_main, [str(src), str(out), "-q", *WEIGHTS])
    assert result.exit_code == 2 and isinstance(result.exception, (SystemExit, type(None))), result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert reason.format(out=out) in result.output


# ---------------------------------------------------------------------------------- through the real CLI


def test_hostile_folder_through_the_cli(tmp_path):
    src, out, report = tmp_path / "in", tmp_path / "out", tmp_path / "r.json"
    bad = hostile_folder(src)
    result = CliRunner().invoke(upscale_main, [str(src), str(out), "-q", *WEIGHTS, "--json", str(report)])
    assert result.exit_code == 1 and isinstance(result.exception, (SystemExit, type(None)))
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad)
    assert f"2 written, 0 skipped (done), {len(bad)} failed" in result.output
    assert json.loads(report.read_text())["summary"]["exit_code"] == result.exit_code == 1
    assert images_in(out) == ["good1.png", "sub/good2_jpg.png"]
    again = CliRunner().invoke(upscale_main, [str(src), str(out), "-q", *WEIGHTS])
    assert "0 written, 2 skipped (done)" in again.output and again.exit_code == 1


# ---------------------------------------------------------------------------------- gtasr-eval


def test_eval_scores_tiny_pairs_it_can_and_says_why_not_the_rest(tmp_path):
    """Sizes gtasr-upscale itself makes from 1x1 and 2x2 inputs, and smaller, among a normal pair."""
    sr, gt = tmp_path / "sr", tmp_path / "gt"
    sizes = {"s1": (1, 1), "s2": (2, 2), "s4": (4, 4), "s8": (8, 8), "s4x8": (4, 8), "s16": (16, 16),
             "s40": (40, 40), "s128": (128, 128)}
    for i, (stem, (h, w)) in enumerate(sizes.items()):
        save(gt / f"{stem}.png", pixels(i, h, w))
        save(sr / f"{stem}.png", pixels(100 + i, h, w))
    result = CliRunner().invoke(eval_main, [str(sr), "--gt", str(gt), "-q", "--metrics", "psnr,ssim,lpips,lsd,niqe"])
    assert isinstance(result.exception, (SystemExit, type(None))), result.exception
    assert "Traceback" not in result.output and result.exit_code == 1
    assert f"{len(sizes)} image(s), {len(sizes)} paired with a GT" in result.stdout
    psnr = next(line for line in result.stdout.splitlines() if line.strip().startswith("psnr"))
    assert f"(n={len(sizes)})" in psnr and "not scored" not in psnr
    ssim = next(line for line in result.stdout.splitlines() if line.strip().startswith("ssim"))
    assert "(n=3)" in ssim and "too small" in ssim  # 16, 40 and 128 px
    for line in result.output.splitlines():
        if line.startswith("error: "):
            assert "not scored" in line or "unavailable" in line


def test_lpips_refuses_images_its_backbone_cannot_take():
    import torch

    from gtasr_deploy.metrics.lpips import LPIPS, expected_shapes, min_side

    for net in ("alex", "vgg"):
        rng = np.random.default_rng(0)
        weights = {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in expected_shapes(net).items()}
        model = LPIPS(net, weights=weights)
        side = min_side(net)
        assert model(torch.zeros(1, 3, side, side), torch.ones(1, 3, side, side)).shape == (1,)
        with pytest.raises(InputError, match="too small"):
            model(torch.zeros(1, 3, side - 1, side + 5), torch.zeros(1, 3, side - 1, side + 5))


def test_eval_exit_code_and_summary_agree_and_help_says_so(tmp_path):
    sr, gt = tmp_path / "sr", tmp_path / "gt"
    save(sr / "a.png", pixels(1, 20, 20))
    save(gt / "a.png", pixels(2, 20, 20))
    result = CliRunner().invoke(eval_main, [str(sr), "--gt", str(gt), "-q", "--metrics", "psnr,ssim"])
    assert result.exit_code == 0 and "not scored" not in result.output
    save(sr / "b.png", pixels(3, 20, 20))  # no GT for it
    result = CliRunner().invoke(eval_main, [str(sr), "--gt", str(gt), "-q", "--metrics", "psnr,ssim"])
    assert "1 not scored" in result.stdout and result.exit_code == 1
    help_text = CliRunner().invoke(eval_main, ["score", "--help"]).output
    assert "1 something was not scored" in " ".join(help_text.split())


@pytest.mark.parametrize("target", ["sr/a.png", "gt/a.png", "sr/new.png", "sr/notes.txt"])
def test_eval_csv_never_replaces_an_image_or_a_foreign_file(tmp_path, target):
    sr, gt = tmp_path / "sr", tmp_path / "gt"
    save(sr / "a.png", pixels(1, 20, 20))
    save(gt / "a.png", pixels(2, 20, 20))
    (sr / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    result = CliRunner().invoke(eval_main, [str(sr), "--gt", str(gt), "-q", "--metrics", "psnr",
                                            "--csv", str(tmp_path / target)])
    assert result.exit_code == 2 and result.output.startswith("error: --csv "), result.output
    assert snapshot(tmp_path) == before


def test_eval_error_lines_stay_one_line(tmp_path):
    sr, gt = tmp_path / "sr", tmp_path / "gt"
    save(sr / "a.png", pixels(1, 20, 20))
    save(gt / "a.png", pixels(2, 20, 20))
    (sr / "bad\nname.png").write_text("not an image")
    result = CliRunner().invoke(eval_main, [str(sr), "--gt", str(gt), "-q", "--metrics", "psnr"])
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert any("bad\\nname.png" in line for line in errors)
    assert not any(line.startswith("name.png") for line in result.output.splitlines())


def test_compare_refuses_photos_too_small_before_writing_and_reports_what_it_cannot_score(tmp_path):
    hr, out = tmp_path / "hr", tmp_path / "out"
    save(hr / "big.png", pixels(0, 64, 64))
    save(hr / "tiny.png", pixels(1, 2, 2))
    args = ["compare", str(hr), "--out", str(out), "--methods", "bicubic", "--degrade", "bicubic",
            "--metrics", "psnr,ssim", "-q"]
    result = CliRunner().invoke(eval_main, args)
    assert result.exit_code == 2 and "tiny.png: too small for a x4 comparison" in result.output
    assert not out.exists()
    save(hr / "tiny.png", pixels(1, 8, 8))  # x4 -> 2x2 LR, 8x8 SR: PSNR yes, SSIM no
    result = CliRunner().invoke(eval_main, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "- bicubic: ssim: 1 image(s) not scored, e.g. tiny: SSIM: image of 8x8 px is too small" in result.stdout
    assert "error: bicubic: ssim: 1 image(s) not scored" in result.output


def test_a_shard_from_leftover_rank_and_world_size_is_said(tmp_path, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        save(src / f"{i}.png", pixels(i, 8, 8))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(upscale_main, [str(src), str(out), "-q", *WEIGHTS])
    assert result.exit_code == 0, result.output
    assert "note: RANK=1 WORLD_SIZE=2 in the environment: this run does share 1/2 (2 of the files)" in result.output
    assert images_in(out) == ["1.png", "3.png"]


def test_with_output_folder_equal_to_input_only_this_tools_results_are_left_out(tmp_path):
    save(tmp_path / "a.png", pixels(1))
    quiet_run(plan(tmp_path, tmp_path, suffix="_x4"))  # writes a_x4.png with its record
    assert [j.src.name for j in plan(tmp_path, tmp_path, suffix="_x4")] == ["a.png"]
    save(tmp_path / "b.jpg", pixels(2))
    save(tmp_path / "b_jpg_x4.png", pixels(3))  # someone's photo under b.jpg's output name
    with pytest.raises(InputError, match="would replace the input .*b_jpg_x4.png"):
        plan(tmp_path, tmp_path, suffix="_x4")
    assert np.array_equal(decoded(tmp_path / "b_jpg_x4.png"), pixels(3))


def test_eval_odd_entries_are_reported_not_skipped_and_odd_folders_are_one_line(tmp_path):
    sr, gt = tmp_path / "sr", tmp_path / "gt"
    save(sr / "a.png", pixels(1, 20, 20))
    save(gt / "a.png", pixels(2, 20, 20))
    os.mkfifo(sr / "f.png")
    os.symlink("l.png", sr / "l.png")
    result = CliRunner().invoke(eval_main, [str(sr), "--gt", str(gt), "-q", "--metrics", "psnr"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: {sr / 'f.png'}: not a regular file (a FIFO)" in result.output
    assert f"error: {sr / 'l.png'}: cannot open (Too many levels of symbolic links)" in result.output
    os.symlink("loop", tmp_path / "loop")
    for folder in (tmp_path / ("z" * 300), tmp_path / "loop"):
        result = CliRunner().invoke(eval_main, [str(folder), "--gt", str(gt), "-q"])
        assert result.exit_code == 2 and result.output.count("\n") == 1 and "not a folder" in result.output


def test_ctrl_c_while_the_model_loads_is_one_line_130_and_leaves_no_folder(tmp_path, monkeypatch):
    import gtasr_deploy.cli.upscale as upscale_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(upscale_cli, "Upscaler", interrupted)  # the name the command calls
    src, out = tmp_path / "in", tmp_path / "new" / "out"
    save(src / "a.png", pixels(1))
    result = CliRunner().invoke(upscale_main, [str(src), str(out), "-q"])
    assert result.exit_code == 130 and result.output == "interrupted before any file was processed\n"
    assert not (tmp_path / "new").exists()


def test_ctrl_c_in_gtasr_eval_is_one_line_130(tmp_path, monkeypatch):
    import gtasr_deploy.cli.eval as eval_cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_cli, "score_folders", interrupted)  # the name the command calls
    (tmp_path / "sr").mkdir()
    result = CliRunner().invoke(eval_main, [str(tmp_path / "sr"), "-q"])
    assert result.exit_code == 130 and result.output == "interrupted\n"


def test_eval_usage_error_leaves_no_csv_folder(tmp_path):
    (tmp_path / "sr").mkdir()  # no images: a usage error after the CSV folder was proven writable
    result = CliRunner().invoke(eval_main, [str(tmp_path / "sr"), "-q", "--metrics", "niqe",
                                            "--csv", str(tmp_path / "new" / "deeper" / "s.csv")])
    assert result.exit_code == 2 and "no images" in result.output
    assert not (tmp_path / "new").exists()


def test_json_never_replaces_a_video_input_or_output(tmp_path):
    pytest.importorskip("av")
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "a.png", pixels(1))
    (src / "clip.mp4").write_bytes(b"not decoded before the checks")
    before = snapshot(tmp_path)
    for target in (src / "clip.mp4", out / "clip.mp4"):
        result = CliRunner().invoke(upscale_main, [str(src), str(out), "-q", *WEIGHTS, "--json", str(target)])
        assert result.exit_code == 2 and "is a file this run reads or writes" in result.output, result.output
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_compare_seeds_outside_the_range_are_usage_errors(tmp_path, seed):
    save(tmp_path / "hr" / "a.png", pixels(0, 64, 64))
    result = CliRunner().invoke(eval_main, ["compare", str(tmp_path / "hr"), "--out", str(tmp_path / "out"),
                                            "--methods", "bicubic", "--seed", seed, "-q"])
    assert result.exit_code == 2 and "--seed" in result.output and result.exception.__class__ is SystemExit
    assert not (tmp_path / "out").exists()


def test_compare_runs_the_largest_seed(tmp_path):
    save(tmp_path / "hr" / "a.png", pixels(0, 64, 64))
    result = CliRunner().invoke(eval_main, ["compare", str(tmp_path / "hr"), "--out", str(tmp_path / "out"),
                                            "--methods", "bicubic", "--seed", str(2**64 - 1), "--metrics", "psnr",
                                            "-q"])
    assert result.exit_code == 0, result.output


def test_stale_temp_files_in_the_folders_a_run_writes_into_are_removed(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save(src / "sub" / "a.png", pixels(1))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = [out / "sub" / f".gtasr-{dead}-00aa.tmp", out / "sub" / RECORD_DIR / f".gtasr-{dead}-00bb.tmp"]
    live = out / "sub" / f".gtasr-{os.getpid()}-00cc.tmp"  # a running process's: left alone
    for path in (*stale, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    summary, _ = quiet_run(plan(src, out))
    assert summary.written == 1 and not any(p.exists() for p in stale) and live.exists()


# ---------------------------------------------------------------------------------- any library's exception


def _library_errors():
    """An exception of each library a file goes through, raised the way that library raises it."""
    import av
    from PIL import Image as PILImage

    errors = {}
    try:
        cv2.resize(np.zeros((2, 2), np.float32), (0, 0))
    except cv2.error as exc:
        errors["cv2"] = exc
    try:
        PILImage.open(io.BytesIO(b"not an image"))
    except PILImage.UnidentifiedImageError as exc:
        errors["pillow"] = exc
    try:
        np.zeros((2, 3)) @ np.zeros((2, 3))
    except ValueError as exc:
        errors["numpy"] = exc
    errors["av"] = av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
    errors["engine"] = RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code\nline 2")
    errors["zero"] = ZeroDivisionError("division by zero")
    return errors


@pytest.mark.parametrize("where", ["sr", "resize", "write"])
@pytest.mark.parametrize("library", ["cv2", "pillow", "numpy", "av", "engine", "zero"])
def test_any_librarys_exception_fails_only_that_file_with_one_line(tmp_path, monkeypatch, library, where):
    import gtasr_deploy.batch.runner as batch_mod
    from gtasr_deploy.media.resize import OutputSize

    exc = _library_errors()[library]
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        save(src / f"{i}.png", pixels(i))
    calls = []

    def on_second(real):
        def stage(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                raise exc
            return real(*args, **kwargs)
        return stage

    sr = nearest_x4
    if where == "sr":
        sr = on_second(nearest_x4)
    elif where == "resize":
        monkeypatch.setattr(batch_mod, "resize_planes", on_second(batch_mod.resize_planes))
    else:
        monkeypatch.setattr(batch_mod, "write_image", on_second(batch_mod.write_image))
    report = tmp_path / "r.json"
    summary, lines = quiet_run(plan(src, out), sr, output_size=OutputSize(outscale=2) if where == "resize" else None,
                               json_report=report)
    assert (summary.written, summary.failed, summary.exit_code) == (2, 1, 1), lines
    assert len(lines) == 2 and lines[0].startswith(f"error: {src / '1.png'}: ") and lines[1].endswith("1 failed")
    assert "line 2" not in lines[0] and "Traceback" not in lines[0]
    assert json.loads(report.read_text())["summary"]["failed"] == 1
    assert images_in(out) == ["0.png", "2.png"] and not temp_files(out)
