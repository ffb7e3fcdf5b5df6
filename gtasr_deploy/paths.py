"""Where the package keeps what it downloads and builds: ``$GTASR_CACHE``, else ``~/.cache/gtasr_deploy``;
exported graphs of ``--backend auto`` in ``$GTASR_GRAPH_CACHE``, else ``<cache>/graphs``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (weights, metric assets, exported graphs); not created here."""
    return Path(os.environ.get("GTASR_CACHE") or Path.home() / ".cache" / "gtasr_deploy")


def graph_cache_root() -> Path:
    """The graph cache of ``--backend auto`` (:mod:`gtasr_deploy.export.cache`); not created here."""
    return Path(os.environ.get("GTASR_GRAPH_CACHE") or cache_root() / "graphs")
