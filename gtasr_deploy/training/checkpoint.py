"""Atomic training checkpoints (SPEC §5): config, stage, step, θ, EMA, θ', optimizer, scheduler, RNG.

A checkpoint is a ``torch.save`` dict of tensors and plain containers only, so it loads with
``torch.load(weights_only=True)`` and ``model.checkpoint.read_checkpoint(path, param_key="params")``
reads its weights like an official file (``params`` = θ, ``params_ema`` = EMA, ``params_target`` = θ').

Files are ``<dir>/ckpt_s<stage>_<step:08d>.pt``, written to a temporary name, fsynced and renamed,
so an interrupted write never leaves a half checkpoint under the real name. ``--resume`` takes the
newest one (highest stage, then step). Stage ends are kept as ``stage<k>_final.pt``, never pruned.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_path
from ..errors import CheckpointError
from ..model.checkpoint import _read_pickle as read_pickle

FORMAT = "gtasr-train/1"
_NAME = re.compile(r"^ckpt_s(\d+)_(\d{8})\.pt$")


def checkpoint_name(stage: int, step: int) -> str:
    return f"ckpt_s{stage}_{step:08d}.pt"


def final_name(stage: int) -> str:
    return f"stage{stage}_final.pt"


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (CPU tensors); CheckpointError when missing, corrupt or not ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: training checkpoint not found")
    obj = read_pickle(path)  # tensors and plain containers only; the unpickler's own reason on failure
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: format {got!r}, expected {FORMAT!r} (a checkpoint written by gtasr-train)")
    return obj


def list_checkpoints(folder: str | Path) -> list[tuple[int, int, Path]]:
    """(stage, step, path) of the periodic checkpoints in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    return sorted(found)


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][2] if found else None


def prune_checkpoints(folder: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints (stage finals are separate files)."""
    for _, _, path in list_checkpoints(folder)[:-keep]:
        path.unlink(missing_ok=True)


# --- RNG state: tensors and plain containers only, so weights_only loading accepts it -----------
def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npd = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": npd["key"].numpy().astype(np.uint32), "pos": npd["pos"]},
        "has_gauss": npd["has_gauss"],
        "gauss": npd["gauss"],
    })
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
