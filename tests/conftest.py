"""Shared fixtures. Tests run on CPU with few threads; GPU tests skip with a reason."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

import pytest
import torch

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "upstream_tiny"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# The graph cache of --backend auto (OpenVINO's exported graph of the embedded weights): one per test
# session, shared by every test and the CLI processes they start, so it is filled once and never
# touches the user's cache.
_GRAPH_CACHE = tempfile.TemporaryDirectory(prefix="gtasr-test-graph-cache-")
os.environ["GTASR_GRAPH_CACHE"] = _GRAPH_CACHE.name


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture(scope="session")
def fixture_model():
    from gtasr_deploy.model import load_model

    return load_model(FIXTURE / "checkpoint.pth", network_config=FIXTURE / "network_g.json")


@pytest.fixture(scope="session")
def fixture_cases():
    from safetensors.torch import load_file

    return load_file(str(FIXTURE / "cases.safetensors"))


TID_NAMES = ("I03", "I04", "I06", "I08", "I19")


@pytest.fixture(scope="session")
def tid_pairs(tmp_path_factory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """pyiqa 0.1.16's five TID2013 (distorted, reference) pairs as (H,W,3) uint8 RGB (fetched from PyPI)."""
    from PIL import Image

    from gtasr_deploy.metrics.assets import AssetFetchError, pip_download

    folder = tmp_path_factory.mktemp("pyiqa")
    try:
        wheel = pip_download("pyiqa==0.1.16", folder, wheel=True)
    except AssetFetchError as err:
        pytest.skip(f"PyPI unavailable: {err}")
    with zipfile.ZipFile(wheel) as zf:
        def load(kind, name):
            return np.asarray(Image.open(io.BytesIO(zf.read(f"ResultsCalibra/{kind}/{name}.bmp"))).convert("RGB"))

        return {n: (load("dist_dir", n), load("ref_dir", n)) for n in TID_NAMES}
