"""Checkpoint I/O: the authors' ``.pth`` files and our safetensors format (config in metadata).

Untrusted files are loaded without executing code: ``torch.load(weights_only=True)`` for pickles,
safetensors otherwise. Every problem becomes a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..atomic import atomic_path
from ..errors import CheckpointError, ConfigError
from ..hashing import file_sha256  # noqa: F401  (re-exported: callers hash weights files)
from .config import NetworkConfig, infer_config, resolve_config
from .precond import Denoiser

FORMAT = "gtasr-deploy/1"
PARAM_KEYS = ("params_ema", "params")
_PREFIXES = ("module.", "_orig_mod.")
_IGNORED_SUFFIXES = ("weight_lap",)  # a known extra 3x1x3x3 buffer in some `params` entries


def build_model(preset_or_config: "str | NetworkConfig | Mapping[str, Any] | Path" = "paper") -> Denoiser:
    """A freshly initialised denoiser D in eval mode (release initialisation, SPEC §2)."""
    return Denoiser(resolve_config(preset_or_config)).eval()


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, meta
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None


def _torch_detail(exc: BaseException) -> str:
    """The unpickler's own reason from a torch.load error, one sentence. torch wraps it in generic
    advice (including the unsafe 'retry with weights_only=False'), which must not reach the user."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        reason = ln.split("WeightsUnpickler error:", 1)[1].strip() if "WeightsUnpickler error:" in ln else ln
        if "GLOBAL" in reason or reason.startswith("Unsupported"):
            return reason.split(". ")[0].rstrip(".")
    for ln in lines:
        if "weights_only" not in ln and not ln.startswith(("(", "Check the documentation", "Please file")):
            return ln
    return type(exc).__name__


def _read_pickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings():  # e.g. torch's warning about old pickle protocols
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _torch_detail(exc)
        if "GLOBAL" in detail:
            raise CheckpointError(
                f"{path}: refused to load: the pickle references objects other than tensors and plain containers "
                f"({detail}); loading it could execute code"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {_torch_detail(exc)}") from None


def _select_state(obj: Any, path: Path, param_key: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    if any(k in obj for k in PARAM_KEYS) or param_key in obj:
        if param_key not in obj:
            raise CheckpointError(
                f"{path}: no '{param_key}' entry; available: {sorted(k for k in obj if isinstance(obj[k], Mapping))}"
            )
        obj = obj[param_key]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{path}: holds no tensors under '{param_key}'")
    return state


def clean_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` / ``_orig_mod.`` prefixes, drop known extras, add ``model.`` if missing."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        if key.split(".")[-1] in _IGNORED_SUFFIXES:
            continue
        out[key] = value
    if out and not any(k.startswith("model.") for k in out):
        out = {"model." + k: v for k, v in out.items()}
    return out


def check_state_dict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Compare keys and shapes (not buffer dtypes); name the first mismatch."""
    expected = model.state_dict()
    for key in expected:
        if key not in state:
            raise CheckpointError(f"{source}: missing key '{key}' (the file does not match this network config)")
    for key in state:
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected key '{key}' (the file does not match this network config)")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: key '{key}' has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}"
            )


def read_checkpoint(path: str | Path, *, param_key: str = "params_ema") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(clean state dict, metadata) from a .pth or .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: weights file is empty")
    if _is_safetensors(path):
        state, meta = _read_safetensors(path)
    else:
        state, meta = _select_state(_read_pickle(path), path, param_key), {}
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor '{key}' contains NaN or inf values (damaged or diverged weights)")
    return clean_state_dict(state), meta


def load_model(path: str | Path, *, network_config: "str | NetworkConfig | Mapping[str, Any] | Path | None" = None,
               param_key: str = "params_ema", device: str | torch.device = "cpu") -> Denoiser:
    """Load D from an official ``.pth`` (``params_ema`` by default) or our safetensors, in eval mode.

    The config comes from ``network_config`` (preset name, dict in our or the authors' names, or a
    JSON path), else from the safetensors metadata, else it is inferred from the tensor shapes."""
    state, meta = read_checkpoint(path, param_key=param_key)
    if network_config is not None:  # a bad --network-config is reported as the config's problem
        cfg = resolve_config(network_config)
    else:
        try:
            if "network_config" in meta:
                cfg = NetworkConfig.from_dict(json.loads(meta["network_config"]))
            else:
                cfg = infer_config(state)
        except (ConfigError, KeyError, IndexError, ValueError) as exc:
            raise CheckpointError(f"{path}: cannot determine the network config ({exc}); pass --network-config") from None
    model = Denoiser(cfg)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state)
    return model.eval().to(device)


def save_model(model: Denoiser, path: str | Path, *, metadata: Mapping[str, str] | None = None) -> Path:
    """Write D as safetensors with the network config in the metadata (atomic write)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "network_config": model.config.to_json()}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path
