"""Completion records: proof that an output file is this tool's finished result for one input.

After an output ``<dir>/<name>`` is written, a small JSON record goes to
``<dir>/.gtasr/<sha256(name)[:32]>.json`` (hashed so that a long output name cannot make the
record's name too long), atomically. It holds what identifies the result:

* the output's byte size and mtime (so an output replaced or edited since is not trusted),
* the input's path relative to the input root, byte size, mtime and SHA-256,
* the settings that shape the picture (weights, seed, tiling, format, quality, ...).

Before the image is written a "begun" record (no output stamp) takes the record's place, so an
output whose writer died before finishing is known as this tool's own and redone, while a file
this tool never wrote (no record, or changed since its record) is never replaced silently.

Both kinds of output are put in place through :func:`recording` (an image, written at once) or
:func:`recorded_output` (a video, encoded into a temp file for as long as it takes): the begun
record, the rename and the finished record happen with stop signals held
(:mod:`gtasr_deploy.interrupts`), so a kept output is always a recorded one.

A re-run skips an output only when its record matches all of that for the same input. Re-runs
stay fast: the input is hashed again only when its size or mtime changed (a ``touch``, a copy),
and then a matching hash still counts as the same input.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..atomic import atomic_path, atomic_write_text
from ..interrupts import INTERRUPTS

RECORD_DIR = ".gtasr"
_KIND = "gtasr-upscale completion record"
_VERSION = 1


class Verdict(enum.Enum):
    ABSENT = "absent"  # no output yet: do it
    DONE = "done"  # this tool's finished result for this input and settings: skip it
    STALE = "stale"  # this tool's result, but for another input, settings or an older input: redo it
    FOREIGN = "foreign"  # an output this tool did not write (or that changed since): do not replace it


def record_path(output: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(output.name)).hexdigest()[:32]
    return output.parent / RECORD_DIR / f"{digest}.json"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> dict:
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _normal(settings: Mapping) -> dict:
    """Settings as they read back from JSON (tuples become lists), so comparisons are exact."""
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def _write(output: Path, record: dict) -> None:
    record = {"kind": _KIND, "version": _VERSION, "output": output.name, **record}
    atomic_write_text(record_path(output), json.dumps(record, indent=1, ensure_ascii=True) + "\n")


def begin(output: Path) -> None:
    """Mark ``output`` as being written by this tool, before it is: if the run dies between the
    image and its record, the next run knows the file is its own unfinished one and redoes it."""
    _write(output, {"output_file": None})


def finish(output: Path, source: Path, rel: Path, settings: Mapping) -> None:
    """Record that ``output`` (already written) is the result of ``source`` under ``settings``."""
    _write(output, {"output_file": _stamp(output.stat()), "input": rel.as_posix(),
                    "input_file": _stamp(source.stat()), "input_sha256": file_sha256(source),
                    "settings": _normal(settings)})


@contextlib.contextmanager
def recording(output: Path, source: Path, rel: Path, settings: Mapping) -> Iterator[None]:
    """With stop signals held: :func:`begin`, the block (which puts ``output`` in place, atomically),
    :func:`finish`. An exception in the block leaves the begun record: the output, if any, is
    then known as this tool's unfinished one and redone."""
    with INTERRUPTS.held():
        begin(output)
        yield
        finish(output, source, rel, settings)


@contextlib.contextmanager
def recorded_output(output: Path, source: Path, rel: Path, settings: Mapping) -> Iterator[Path]:
    """A temp path beside ``output`` for a long write (signals are not held meanwhile: a stop
    removes the temp file); on a clean exit it is renamed over ``output`` inside :func:`recording`."""
    with contextlib.ExitStack() as commit:
        with atomic_path(output) as temp:
            yield temp
            commit.enter_context(recording(output, source, rel, settings))


def _read_record(output: Path) -> dict | None:
    try:
        record = json.loads(record_path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("kind") == _KIND and record.get("version") == _VERSION
    return record if ok and record.get("output") == output.name else None


def is_ours(path: Path) -> bool:
    """Whether ``path`` is an output this tool wrote (finished, or begun and not finished)."""
    record = _read_record(path)
    if record is None:
        return False
    try:
        return record.get("output_file") is None or record.get("output_file") == _stamp(path.stat())
    except OSError:
        return False


def check(output: Path, source: Path, rel: Path, settings: Mapping) -> Verdict:
    """What to do with ``output`` for this input and settings (see :class:`Verdict`).

    OSError from stat-ing the output or the input propagates (the caller reports the file)."""
    try:
        out_stat = output.stat()
    except FileNotFoundError:
        return Verdict.ABSENT
    record = _read_record(output)
    if record is None:
        return Verdict.FOREIGN
    if record.get("output_file") is None:  # begun, never finished: ours
        return Verdict.STALE
    if record.get("output_file") != _stamp(out_stat):
        return Verdict.FOREIGN
    if record.get("input") != rel.as_posix() or record.get("settings") != _normal(settings):
        return Verdict.STALE
    in_stat = source.stat()
    if record.get("input_file") == _stamp(in_stat):
        return Verdict.DONE
    if record["input_file"].get("bytes") == in_stat.st_size and record.get("input_sha256") == file_sha256(source):
        return Verdict.DONE  # touched or copied, same bytes
    return Verdict.STALE
