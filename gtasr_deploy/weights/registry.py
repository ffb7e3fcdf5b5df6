"""The known GTASR checkpoints, the local weights cache, and :func:`fetch` — the only download.

The authors publish their checkpoints in the Hugging Face repository ``Blaze-UESTC/GTASR``
(``https://huggingface.co/Blaze-UESTC/GTASR/resolve/main/<file>``). Nothing here touches the
network except :func:`fetch`, which the user runs (``gtasr-weights fetch NAME``); every other
command finds fetched files with :func:`resolve_weights` and, when a name is not fetched, says
which command fetches it.

A fetch downloads into ``<file>.part`` (an interrupted download resumes from there with an HTTP
Range request), loads the file as the network it must be (``torch.load(weights_only=True)``: no
code runs), then renames it to its final name and records its sha256 in ``<file>.json``. A file
with no record is not counted as fetched.

Cache folder: ``$GTASR_WEIGHTS_DIR``, else ``$GTASR_CACHE/weights``, else ``~/.cache/gtasr_deploy/weights``.
``$GTASR_WEIGHTS_URL_BASE`` replaces the Hugging Face address (a mirror, or a test server).
"""

from __future__ import annotations

import datetime
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

from . import EMBEDDED_WEIGHTS
from ..atomic import atomic_path, atomic_write_text
from ..errors import CheckpointError, ConfigError
from ..hashing import file_sha256
from ..paths import cache_root
from ..model import count_parameters, load_model

REPOSITORY = "Blaze-UESTC/GTASR"
URL_BASE = f"https://huggingface.co/{REPOSITORY}/resolve/main"
URL_BASE_ENV = "GTASR_WEIGHTS_URL_BASE"
DIR_ENV = "GTASR_WEIGHTS_DIR"
EMBEDDED = EMBEDDED_WEIGHTS
CHUNK_BYTES = 1 << 20

ProgressFn = Callable[[int, int], None]  # (bytes on disk, total bytes; 0 when the server does not say)


@dataclass(frozen=True, kw_only=True)
class WeightsEntry:
    """One known checkpoint. ``filename`` None: shipped inside the package (nothing to fetch)."""

    name: str
    filename: str | None
    network: str  # the preset (or network JSON) the file must load as
    description: str
    licence: str

    def url(self, base: str | None = None) -> str | None:
        if self.filename is None:
            return None
        base = base or os.environ.get(URL_BASE_ENV) or URL_BASE
        return f"{base.rstrip('/')}/{self.filename}"


_OFFICIAL_LICENCE = f"not restated here: see https://huggingface.co/{REPOSITORY} and the authors' code repository"

REGISTRY: dict[str, WeightsEntry] = {entry.name: entry for entry in (
    WeightsEntry(name="gtasr-final", filename="GTASR_final_phase.pth", network="paper", licence=_OFFICIAL_LICENCE,
                 description="GTASR, final weights (stage II): the paper's model"),
    WeightsEntry(name="gtasr-first", filename="GTASR_first_phase.pth", network="paper", licence=_OFFICIAL_LICENCE,
                 description="GTASR after stage I only (before the stage II fine-tuning)"),
    WeightsEntry(name="ctmsr", filename="CTMSR.pth", network="paper", licence=_OFFICIAL_LICENCE,
                 description="CTMSR, the baseline GTASR builds on (same network)"),
    WeightsEntry(name="demo", filename=None, network="demo",
                 licence="Apache-2.0 with this package (trained on CC0/CC-BY photos; see weights/MODEL_CARD.md)",
                 description="embedded demo weights: a small smoke-test model (1.7M parameters, 82 min on a "
                             "2-core CPU), not the paper's quality; the default when no --weights is given"),
)}


class WeightsFetchError(CheckpointError):
    """A download failed or the downloaded file is not the expected network."""


def default_weights_dir() -> Path:
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV])
    return cache_root() / "weights"


def lookup(name: str) -> WeightsEntry | None:
    """The entry called ``name``, or whose file name is ``name`` (case-insensitive); None if unknown."""
    key = name.casefold()
    for entry in REGISTRY.values():
        if key in (entry.name.casefold(), (entry.filename or "").casefold()):
            return entry
    return None


def entry_or_error(name: str) -> WeightsEntry:
    entry = lookup(name)
    if entry is None:
        raise ConfigError(f"unknown weights {name!r}; known: {', '.join(REGISTRY)} (see gtasr-weights list)")
    return entry


def cached_path(entry: WeightsEntry, weights_dir: str | os.PathLike | None = None) -> Path:
    """Where ``entry`` lives once fetched (the embedded file for the demo weights)."""
    if entry.filename is None:
        return EMBEDDED
    return Path(weights_dir or default_weights_dir()) / entry.filename


def record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def read_record(entry: WeightsEntry, weights_dir: str | os.PathLike | None = None) -> dict | None:
    """The fetch record of ``entry`` when it is fetched (file and record present), else None."""
    path = cached_path(entry, weights_dir)
    if entry.filename is None or not path.is_file() or not record_path(path).is_file():
        return None
    try:
        return json.loads(record_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def resolve_weights(name_or_path: str | os.PathLike | None, *,
                    weights_dir: str | os.PathLike | None = None) -> Path | None:
    """A weights argument as a path: an existing file as it is; a known name (``gtasr-final``, or
    an official file name such as ``GTASR_final_phase.pth``) as its fetched file; None as None.

    ConfigError (one line) when a known name is not fetched — it says ``run gtasr-weights fetch
    NAME`` — or when a bare word is neither a file nor a known name. Any other path is returned
    as given, for the loader to report."""
    if name_or_path is None:
        return None
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = os.fspath(name_or_path)
    entry = lookup(text)
    if entry is not None:
        cached = cached_path(entry, weights_dir)
        if entry.filename is None or read_record(entry, weights_dir) is not None:
            return cached
        raise ConfigError(f"weights {text!r} are not fetched (looked in {cached.parent}); "
                          f"run gtasr-weights fetch {entry.name}")
    if os.sep not in text and "/" not in text and not path.suffix:
        raise ConfigError(f"weights {text!r}: no such file, and not a known weights name "
                          f"({', '.join(REGISTRY)}; see gtasr-weights list)")
    return path


# ---------------------------------------------------------------------------------- fetching


@dataclass(frozen=True, kw_only=True)
class FetchResult:
    entry: WeightsEntry
    path: Path
    sha256: str
    bytes: int
    resumed_from: int = 0  # bytes of the .part file this fetch continued from (the server honoured Range)
    restarted_from: int = 0  # bytes of a .part file discarded: the server ignored Range, the download began again
    already: bool = False  # fetched before; nothing downloaded


def fetch(name: str, *, weights_dir: str | os.PathLike | None = None, url_base: str | None = None,
          progress: ProgressFn | None = None, force: bool = False, timeout_s: float = 60.0) -> FetchResult:
    """Download ``name`` into the cache (resuming a ``.part``), verify it loads as its network,
    record its sha256. WeightsFetchError (one line) when the download or the check fails: an
    interrupted download keeps its ``.part`` for the next try; a file that does not load is deleted."""
    entry = entry_or_error(name)
    final = cached_path(entry, weights_dir)
    record = read_record(entry, weights_dir)
    if entry.filename is None or (record is not None and not force):
        sha = record["sha256"] if record else file_sha256(final)
        return FetchResult(entry=entry, path=final, sha256=sha, bytes=final.stat().st_size, already=True)
    url = entry.url(url_base)
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    had = part.stat().st_size if part.is_file() else 0
    resumed_from = _download(url, part, progress=progress, timeout_s=timeout_s)
    parameters = _verify(entry, part, url)
    sha = file_sha256(part)
    with atomic_path(final) as temp:  # the final name appears only complete and verified
        os.replace(part, temp)
    size = final.stat().st_size
    atomic_write_text(record_path(final), json.dumps({
        "name": entry.name, "file": entry.filename, "url": url, "sha256": sha, "bytes": size,
        "network": entry.network, "parameters": parameters,
        "fetched_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }, indent=1) + "\n")
    return FetchResult(entry=entry, path=final, sha256=sha, bytes=size, resumed_from=resumed_from,
                       restarted_from=had - resumed_from)


def _download(url: str, part: Path, *, progress: ProgressFn | None, timeout_s: float) -> int:
    """Append the rest of ``url`` to ``part`` (HTTP Range); restart when the server ignores Range.
    Returns the bytes of ``part`` kept and continued from (0 when the download began again).

    ``part`` is a staging file written in place on purpose: an atomic temp file would be removed on
    an interrupt, and with it the bytes a resume needs. Only the verified whole file is renamed."""
    offset = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "gtasr-deploy",
                                                   **({"Range": f"bytes={offset}-"} if offset else {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left after offset: the .part is complete
            return offset
        raise WeightsFetchError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        raise WeightsFetchError(f"{url}: cannot connect ({getattr(exc, 'reason', None) or exc})") from None
    with response:
        if response.status != 206 or not _range_starts_at(response.headers.get("Content-Range"), offset):
            offset = 0  # a full answer (200): start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else 0
        done = offset
        try:
            with open(part, "ab" if offset else "wb") as fh:
                while chunk := response.read(CHUNK_BYTES):
                    fh.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except (OSError, HTTPException) as exc:
            raise WeightsFetchError(f"{url}: download interrupted at {done} of {total or '?'} bytes "
                                    f"({exc or type(exc).__name__}); run the same command again to resume") from None
    if total and done < total:
        raise WeightsFetchError(f"{url}: download interrupted at {done} of {total} bytes; "
                                "run the same command again to resume")
    return offset


def _range_starts_at(content_range: str | None, offset: int) -> bool:
    """True when ``Content-Range: bytes START-END/TOTAL`` starts at ``offset``."""
    if not content_range or not content_range.startswith("bytes "):
        return False
    start = content_range[6:].split("-", 1)[0]
    return start.isdigit() and int(start) == offset


def _verify(entry: WeightsEntry, part: Path, url: str) -> int:
    """Load the download as ``entry.network`` (no code execution); delete it when it does not load."""

    try:
        model = load_model(part, network_config=entry.network)
    except (CheckpointError, ConfigError) as exc:
        part.unlink(missing_ok=True)
        detail = str(exc).removeprefix(f"{part}: ")
        raise WeightsFetchError(f"{url}: the downloaded file is not the {entry.network} network's weights "
                                f"({detail}); deleted it") from None
    return count_parameters(model)
