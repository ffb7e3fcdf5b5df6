"""sha256 of files (weights, graphs, fetched assets), read in chunks: files can be hundreds of MB."""

from __future__ import annotations

import hashlib
import os


def file_sha256(path: str | os.PathLike, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
