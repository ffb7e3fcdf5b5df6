"""Shared fixtures. Tests run on CPU with few threads; GPU tests skip with a reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "upstream_tiny"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
