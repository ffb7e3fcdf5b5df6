"""The graph cache behind ``--backend auto``: export a model's graph once, reuse it on every later run.

    entry = cached_graph(loaded, runtime="openvino", log=print)   # first run: export + verify (minutes)
    OpenVinoEngine(entry.onnx_path, cache_dir=entry.folder)        # later runs: nothing to redo

An entry is ``<graph cache>/<name>-<key>/`` holding the fp32 graph with dynamic height and width,
its sidecar and ``manifest.json``. The key is a sha256 over everything that shapes the graph:
the weights (a checksum of the parameters themselves, so a different ``param_key`` or a retrained
file is another entry), the network config, the graph contract, the opset, this package's
version, the torch version that traced it and the runtime (and its version) that will run it. An
entry is used only when its manifest has that key and its graph has the checksum recorded when it
was written; anything else — a truncated file, a foreign or older manifest, a graph someone
replaced — is removed and rebuilt, never trusted. Fills are serialised by a lock file, so two
processes starting at once export once. ``<graph cache>`` is ``$GTASR_GRAPH_CACHE``, else
``graphs`` in ``$GTASR_CACHE`` or ``~/.cache/gtasr_deploy``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ..version import __version__
from ..atomic import atomic_write_bytes
from ..contract import FORMAT, read_onnx_sidecar
from ..errors import ConfigError
from ..hashing import file_sha256
from ..model.precond import Denoiser
from ..paths import graph_cache_root
from .onnx import DEFAULT_OPSET, export_onnx, graph_file_name
from .verify import runtime_version

MANIFEST = "manifest.json"
Log = Callable[[str], None]


@dataclass(frozen=True, kw_only=True)
class CachedGraph:
    folder: Path  # the entry (a runtime may keep its own compiled-model cache inside it)
    onnx_path: Path
    filled_s: float | None  # seconds this call spent exporting; None when the entry was reused


def parameters_sha256(model: Denoiser) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in state-dict order."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")
    return digest.hexdigest()


def cache_key(model: Denoiser, runtime: str) -> dict:
    """Every setting that shapes a cached graph (the manifest stores it; its sha256 names the entry)."""
    return {"contract": FORMAT, "package": __version__, "torch": torch.__version__, "opset": DEFAULT_OPSET,
            "runtime": runtime, "runtime_version": runtime_version(runtime), "precision": "fp32",
            "network_config": model.config.to_dict(), "parameters_sha256": parameters_sha256(model)}


def _key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _problem(folder: Path, name: str, key: dict) -> str | None:
    """Why the entry in ``folder`` cannot be used (None: it can)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"its manifest is unreadable ({type(err).__name__})"
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return "it was written for other weights or versions"
    graph = folder / graph_file_name(name, None, "fp32")
    try:
        sidecar = read_onnx_sidecar(graph)
        if not graph.is_file() or file_sha256(graph) != sidecar["onnx_sha256"] or manifest.get("onnx_sha256") != \
                sidecar["onnx_sha256"]:
            return "its graph does not match the checksum recorded when it was written"
    except (ConfigError, OSError) as err:
        return f"its graph or sidecar is unreadable ({str(err).splitlines()[0]})"
    return None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def cached_graph(model: Denoiser, *, name: str, runtime: str = "openvino", root: str | Path | None = None,
                 log: Log = print) -> CachedGraph:
    """The verified fp32 graph (dynamic height and width) of ``model`` for ``runtime``, exported on first use."""
    key = cache_key(model, runtime)
    folder = Path(root or graph_cache_root()) / f"{name}-{_key_digest(key)[:16]}"
    graph = folder / graph_file_name(name, None, "fp32")
    with _locked(folder):
        if folder.exists():
            problem = _problem(folder, name, key)
            if problem is None:
                return CachedGraph(folder=folder, onnx_path=graph, filled_s=None)
            log(f"graph cache: {folder} cannot be used ({problem}); rebuilding it")
            shutil.rmtree(folder)
        log(f"graph cache: exporting the {name} network for {runtime} into {folder} (once; later runs reuse it)")
        start = time.perf_counter()
        result = export_onnx(model, folder, name=name, tile_lr=None, verify_with=runtime,
                             weights_sha256=key["parameters_sha256"], log=lambda _line: None)
        manifest = {"key": key, "onnx_sha256": result.sidecar["onnx_sha256"]}
        atomic_write_bytes(folder / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
        return CachedGraph(folder=folder, onnx_path=result.onnx_path, filled_s=time.perf_counter() - start)
