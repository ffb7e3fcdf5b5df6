"""Shared fixtures. Tests run on CPU with few threads; GPU tests skip with a reason."""

from __future__ import annotations

import faulthandler
import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
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


def randomized(model, seed: int = 0):
    """Every weight ~N(0, 1/fan_in), GroupNorm weights around 1: all paths carry signal (the release
    init, conv1 x1e-5, would leave most paths unused)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # biases ~N(0, 0.2²); GroupNorm weights (the only 1-D weights) around 1
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if name.endswith(".weight") else 0.0))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * p[0].numel() ** -0.5)
    return model.eval()


@dataclass(frozen=True)
class Network:
    """A network the graph factory exports: the model and what its sidecar records."""

    model: torch.nn.Module
    name: str  # what the Upscaler and gtasr-export name its graphs
    preset: str | None
    weights_sha256: str | None
    weights: dict  # Upscaler/load_denoiser keyword arguments that load it again (empty for random weights)


class GraphFactory:
    """Exported ONNX graphs, each built once per test session and shared by every module.

    Exporting is the slowest thing the tests do (20 s to 2 min a graph on 2 CPU cores), so a graph is
    keyed by what shapes it: the network (``weights``: "fixture" = the upstream tiny checkpoint,
    "embedded" = the demo weights, "random" = the fixture network with :func:`randomized` weights of
    ``seed``), the precision (fp16 is converted from the fp32 graph of the same key), the static LR
    tile (None: dynamic height and width), the largest batch, the opset and the graph name. The
    results are shared: a test that changes a file works on a copy."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._networks: dict = {}
        self._graphs: dict = {}

    def network(self, weights: str = "fixture", *, seed: int = 0) -> Network:
        key = (weights, seed if weights == "random" else None)
        if key not in self._networks:
            from gtasr_deploy.inference.loader import EMBEDDED_WEIGHTS, load_denoiser
            from gtasr_deploy.model import build_model, from_authors

            if weights == "random":
                model = randomized(build_model(from_authors(FIXTURE / "network_g.json")), seed=seed)
                self._networks[key] = Network(model=model, name="tiny", preset=None, weights_sha256=None, weights={})
            else:
                fixture = dict(weights=FIXTURE / "checkpoint.pth", network_config=FIXTURE / "network_g.json")
                kwargs = {"fixture": fixture, "embedded": dict(weights=EMBEDDED_WEIGHTS)}[weights]
                loaded = load_denoiser(**kwargs)
                self._networks[key] = Network(model=loaded.model, name=loaded.name, preset=loaded.preset,
                                              weights_sha256=loaded.weights_sha256, weights=kwargs)
        return self._networks[key]

    def __call__(self, weights: str = "fixture", *, precision: str = "fp32", tile=None, batch_max: int = 2,
                 opset: int | None = None, seed: int = 0, name: str | None = None):
        """The :class:`~gtasr_deploy.export.onnx.ExportResult` of this graph (``tile``: an int for a
        square tile, (h, w), or None for dynamic height and width)."""
        from gtasr_deploy.export.onnx import DEFAULT_OPSET, export_fp16, export_onnx

        tile = None if tile is None else (tile, tile) if isinstance(tile, int) else tuple(tile)
        opset = DEFAULT_OPSET if opset is None else opset
        net = self.network(weights, seed=seed)
        name = name or net.name
        key = (weights, seed if weights == "random" else None, name, tile, batch_max, opset, precision)
        if key not in self._graphs:
            if precision == "fp16":
                fp32 = self(weights, tile=tile, batch_max=batch_max, opset=opset, seed=seed, name=name)
                self._graphs[key] = export_fp16(fp32, net.model, log=_silent)
            elif precision == "fp32":
                folder = self.root / f"graph{len(self._graphs)}"
                folder.mkdir()
                self._graphs[key] = export_onnx(net.model, folder, name=name, tile_lr=tile, batch_max=batch_max,
                                                opset=opset, weights_sha256=net.weights_sha256, preset=net.preset,
                                                log=_silent)
            else:
                raise ValueError(f"precision {precision!r}: the factory exports fp32 and fp16")
        return self._graphs[key]

    def cached(self, weights: str = "fixture"):
        """The graph cache entry (dynamic fp32, verified with OpenVINO, batch 1) that the default
        Upscaler (backend auto → OpenVINO) fills for this network in GTASR_GRAPH_CACHE: one export per
        session, whichever test or CLI process comes first."""
        pytest.importorskip("openvino", reason="the graph cache runs OpenVINO (pip extra 'openvino')")
        from gtasr_deploy.export.cache import cached_graph

        net = self.network(weights)
        return cached_graph(net.model, name=net.name, runtime="openvino", log=_silent)

    def dynamic(self, weights: str = "fixture") -> Path:
        """An fp32 graph of dynamic height and width (batch 1): the graph cache's entry where OpenVINO is
        installed (shared with the default Upscaler), else one exported here."""
        if importlib.util.find_spec("openvino") is not None:
            return self.cached(weights).onnx_path
        return self(weights, tile=None, batch_max=1).onnx_path


def _silent(*_args) -> None:
    pass


@pytest.fixture(scope="session")
def graph_factory(tmp_path_factory) -> GraphFactory:
    """Exported graphs built once per session (see :class:`GraphFactory`)."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is part of the test install")
    return GraphFactory(tmp_path_factory.mktemp("graphs"))


class CliExports:
    """``gtasr-export`` run as a command (a fresh process, in a fresh folder), once per session for each
    distinct argument list: the README's demo export and the parity test's "export, then ONNX Runtime"
    are the same command (about a minute on 2 CPU cores). Returns the folder the command ran in (its
    relative ``--out``, ``export/`` by default, is inside); a test that changes a file copies it first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._runs: dict = {}

    def __call__(self, *args: str) -> Path:
        if args not in self._runs:
            pytest.importorskip("onnxruntime", reason="gtasr-export needs the onnx extra")
            folder = self.root / f"run{len(self._runs)}"
            folder.mkdir()
            done = subprocess.run([sys.executable, "-m", "gtasr_deploy.cli.export", *args], cwd=folder,
                                  capture_output=True, text=True)
            self._runs[args] = (folder, done)
        folder, done = self._runs[args]
        assert done.returncode == 0, f"gtasr-export {' '.join(args)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        return folder


@pytest.fixture(scope="session")
def cli_export(tmp_path_factory) -> CliExports:
    """The gtasr-export command's output folders, each distinct command run once (see :class:`CliExports`)."""
    return CliExports(tmp_path_factory.mktemp("cli-exports"))


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


# Fixtures whose first use costs tens of seconds on a 2-core CPU: a test that needs one is slow
# (pyproject.toml: "slow"), whichever test of a run happens to pay for it.
_SLOW_FIXTURES = {
    "graph_factory": "exports ONNX graphs",
    "filled_cache": "fills a graph cache (export + verification)",
    "cli_export": "runs gtasr-export",
}
_SLOW_MODULE_FIXTURES = {("test_serve", "service"): "starts Ray Serve"}


# Modules that start Ray inside the pytest process run last: after ray.shutdown() Ray's metrics
# exporter keeps starting threads in this process, and a long run once died with SIGSEGV minutes later
# in an unrelated test (docs/development.md). Their order among themselves is kept.
_RAY_MODULES = ("test_cluster", "test_reliability_cluster", "test_serve")


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        module = item.module.__name__.rsplit(".", 1)[-1] if getattr(item, "module", None) else ""
        if names & set(_SLOW_FIXTURES) or any(m == module and f in names for m, f in _SLOW_MODULE_FIXTURES):
            item.add_marker(pytest.mark.slow)
    ray_last = lambda item: getattr(item, "module", None) is not None and \
        item.module.__name__.rsplit(".", 1)[-1] in _RAY_MODULES  # noqa: E731
    items.sort(key=ray_last)  # stable: everything else keeps its order


# ray.init puts Ray's own handler on SIGSEGV and ray.shutdown() leaves the signal at its default action
# (tests/test_cluster.py and tests/test_serve.py run Ray in the pytest process), so a later crash would
# end the run with exit 139 and no traceback. After every test, faulthandler gets the signals back,
# writing to pytest's copy of stderr.
_CONFIG: list = []


def pytest_configure(config):
    _CONFIG[:] = [config]


def pytest_runtest_logfinish(nodeid, location):
    try:
        from _pytest.faulthandler import fault_handler_stderr_fd_key
    except ImportError:  # another pytest: its faulthandler plugin is left as it is
        return
    fd = _CONFIG[0].stash.get(fault_handler_stderr_fd_key, None) if _CONFIG else None
    if fd is not None:
        faulthandler.disable()  # enable() alone keeps the handlers it believes are still in place
        faulthandler.enable(file=fd, all_threads=True)
