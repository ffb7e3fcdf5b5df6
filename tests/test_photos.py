"""The offline photo set: the manifest's splits and licences, and the data command on fake
archives (a .deb built with dpkg-deb, a wheel-like zip) — no network."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gtasr_deploy.errors import CheckpointError, GtasrError
from gtasr_deploy.training import photos
from gtasr_deploy.training.photo_manifest import PHOTOS, SOURCES, Photo, Source

HELD_OUT = {"chelsea.png", "coffee.png", "china.jpg", "mate_Storm.png", "lomiri_Picture_1A.png", "lomiri_friends.png",
            "lomiri_Kleiber.png", "plasma_EveningGlow.png", "plasma_Grey.png", "plasma_Path.png"}


def test_manifest_has_40_plus_training_photos_a_fixed_held_out_set_and_licences():
    names = [p.name for p in PHOTOS]
    assert len(names) == len(set(names)) and len(PHOTOS) >= 50
    assert {p.name for p in PHOTOS if p.heldout} == HELD_OUT  # changing it invalidates every held-out table
    assert len(photos.photos_for("train")) >= 40
    assert not {p.name for p in photos.photos_for("train")} & HELD_OUT
    for p in PHOTOS:
        assert p.source in SOURCES and p.license and len(p.sha256) == 64, p.name
        if p.source.kind == "deb":
            assert p.author and p.member.startswith("/usr/share/") and "=" in p.source.pin
    # the photos the embedded demo weights were trained on are not held out (their numbers stay honest)
    demo_train = {"astronaut.png", "color.png", "motorcycle_left.png", "motorcycle_right.png", "hubble_deep_field.jpg",
                  "retina.jpg", "rocket.jpg", "flower.jpg", "grace_hopper.jpg"}
    assert not demo_train & HELD_OUT
    assert {p.source.kind for p in photos.photos_for("all", ("pypi",))} == {"pypi"}
    with pytest.raises(GtasrError, match="expected a comma list of pypi, debian"):
        photos.photos_for("all", ("conda",))


# --- the data command on fake archives --------------------------------------------------------------
def _jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    img = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _build_deb(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    root = folder / f"{name}_root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                                             "Maintainer: t <t@example.org>\nDescription: test\n")
    for member, data in files.items():
        path = root / member.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    deb = folder / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    shutil.rmtree(root)
    return deb


@pytest.fixture
def fake_sources(tmp_path, monkeypatch):
    """A manifest of three photos: two in a fake .deb (one held out), one in a fake wheel."""
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is not installed (not a Debian/Ubuntu machine)")
    archives = tmp_path / "archives"
    archives.mkdir()
    big, small = _jpeg(2000, 1000, 1), _jpeg(300, 200, 2)
    _build_deb(archives, "fake-wallpapers", "1.0-1", {"/usr/share/backgrounds/big.jpg": big,
                                                      "/usr/share/backgrounds/small.jpg": small})
    png = io.BytesIO()
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(png, format="PNG")
    with zipfile.ZipFile(archives / "fakewheel-2.0-py3-none-any.whl", "w") as zf:
        zf.writestr("fakewheel/data/flat.png", png.getvalue())
    deb, wheel = Source(kind="deb", pin="fake-wallpapers=1.0-1"), Source(kind="pypi", pin="fakewheel==2.0")
    sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731
    manifest = (
        Photo(name="deb_big.png", source=deb, member="/usr/share/backgrounds/big.jpg", sha256=sha(big),
              license="CC0-1.0", author="A"),
        Photo(name="deb_small.png", source=deb, member="/usr/share/backgrounds/small.jpg", sha256=sha(small),
              license="GPL-2+", author="B", heldout=True),
        Photo(name="flat.png", source=wheel, member="fakewheel/data/flat.png", sha256=sha(png.getvalue()),
              license="CC0"),
    )
    monkeypatch.setattr(photos, "PHOTOS", manifest)
    return archives, manifest


def test_assemble_offline_reduces_deb_photos_and_records_licences(fake_sources, tmp_path):
    archives, manifest = fake_sources
    out = tmp_path / "photos"
    written = photos.assemble(out, source_dir=archives)
    assert [p.name for p in written["train"]] == ["deb_big.png", "flat.png"]
    assert [p.name for p in written["heldout"]] == ["deb_small.png"]
    big = Image.open(out / "train" / "deb_big.png")
    assert big.format == "PNG" and big.size == (photos.MAX_SIDE, photos.MAX_SIDE // 2)  # long side reduced
    assert Image.open(out / "heldout" / "deb_small.png").size == (300, 200)  # small photos keep their size
    assert (out / "train" / "flat.png").read_bytes() == zipfile.ZipFile(archives / "fakewheel-2.0-py3-none-any.whl").read(
        "fakewheel/data/flat.png")  # wheel photos byte for byte
    licences = (out / "train" / "LICENSES.txt").read_text()
    assert "deb_big.png: CC0-1.0 by A; from fake-wallpapers=1.0-1 (/usr/share/backgrounds/big.jpg)" in licences
    assert "deb_small" not in licences and "GPL-2+ by B" in (out / "heldout" / "LICENSES.txt").read_text()
    record = json.loads((out / "train" / "manifest.json").read_text())["deb_big.png"]
    assert record["sha256"] == manifest[0].sha256 and record["processing"].startswith("lanczos")

    # a second run keeps what matches its pins (no archive needed) ...
    stamp = os.stat(out / "train" / "deb_big.png").st_mtime_ns
    photos.assemble(out, source_dir=tmp_path / "nowhere")
    assert os.stat(out / "train" / "deb_big.png").st_mtime_ns == stamp


def test_a_photo_moved_to_held_out_leaves_the_training_folder(fake_sources, tmp_path, monkeypatch):
    archives, manifest = fake_sources
    out = tmp_path / "photos"
    photos.assemble(out, source_dir=archives)
    moved = tuple(Photo(**{**p.__dict__, "heldout": True}) if p.name == "flat.png" else p for p in manifest)
    monkeypatch.setattr(photos, "PHOTOS", moved)
    photos.assemble(out, source_dir=archives)
    assert not (out / "train" / "flat.png").exists() and (out / "heldout" / "flat.png").is_file()
    assert "flat.png" not in (out / "train" / "LICENSES.txt").read_text()


def test_changed_source_file_is_refused_and_nothing_is_written(fake_sources, tmp_path, monkeypatch):
    archives, manifest = fake_sources
    bad = tuple(Photo(**{**p.__dict__, "sha256": "0" * 64}) if p.name == "deb_big.png" else p for p in manifest)
    monkeypatch.setattr(photos, "PHOTOS", bad)
    with pytest.raises(CheckpointError, match=r"/usr/share/backgrounds/big.jpg from fake-wallpapers=1.0-1 has sha256"):
        photos.assemble(tmp_path / "photos", source_dir=archives)
    assert not (tmp_path / "photos" / "train" / "deb_big.png").exists()


def test_apt_problems_are_one_line_errors_that_say_what_to_do(fake_sources, tmp_path, monkeypatch, capsys):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    apt = fake_bin / "apt-get"
    apt.write_text("#!/bin/sh\necho 'E: Unable to locate package fake-wallpapers' >&2\nexit 100\n")
    apt.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    assert photos.main([str(tmp_path / "p"), "--sources", "debian", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "E: Unable to locate package fake-wallpapers" in err and "apt-get update" in err and "--sources pypi" in err

    monkeypatch.setattr(photos.shutil, "which", lambda name: None)  # not a Debian machine
    assert photos.main([str(tmp_path / "p"), "--sources", "debian", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`apt-get`, which is not installed" in err
    assert not (tmp_path / "p" / "train").exists()


def test_demo_set_is_the_demo_runs_nine_plus_three_and_replaces_the_folder_contents(fake_sources, tmp_path, monkeypatch):
    from gtasr_deploy.training.photo_manifest import DEMO_SET

    demo = [p for p in PHOTOS if p.name in DEMO_SET]
    assert len(demo) == len(DEMO_SET) == 12 and sum(p.heldout for p in demo) == 3
    archives, _ = fake_sources
    out = tmp_path / "photos"
    photos.assemble(out, source_dir=archives)
    monkeypatch.setattr(photos, "DEMO_SET", frozenset({"flat.png", "deb_small.png"}))
    written = photos.assemble(out, source_dir=archives, photo_set="demo")
    assert [p.name for p in written["train"]] == ["flat.png"]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["LICENSES.txt", "flat.png", "manifest.json"]
    assert "deb_big" not in (out / "train" / "LICENSES.txt").read_text()
    photos.assemble(out, source_dir=archives)  # back to the whole set: the removed photo comes back
    assert (out / "train" / "deb_big.png").is_file()
