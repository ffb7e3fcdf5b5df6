"""ONNX Runtime engine: runs a graph written by ``gtasr-export`` (see :mod:`gtasr_deploy.engines.base`).

The graph's sidecar JSON (``<stem>.json`` next to the ``.onnx``) gives the static LR tile, the
batch range, the size rule and the precision. Inputs and outputs are fp32 host arrays in either
precision (the fp16 graph keeps fp32 I/O). This is the only engine module that imports
``onnxruntime``; execution providers come from :func:`gtasr_deploy.engines.providers.select_providers`
(CPU, or CUDA / TensorRT with onnxruntime-gpu on an NVIDIA machine).
"""

from __future__ import annotations

from pathlib import Path


from ..contract import INPUTS, OUTPUTS, PRECISIONS, graph_feeds, io_shapes, read_onnx_sidecar
from ..errors import BackendUnavailableError, ConfigError
from .base import BackendFacts, Engine, EngineInfo
from .providers import select_providers

CPU_EP = "CPUExecutionProvider"
# runs the graph's own precision, on the CPU or (onnxruntime-gpu) through the CUDA / TensorRT providers
FACTS = BackendFacts(name="onnxruntime", precisions=PRECISIONS, devices=("cpu", "cuda"), extra="onnx",
                     modules=("onnxruntime",), graph=True, graph_precisions=PRECISIONS, precision_from_graph=True)
INSTALL_HINT = FACTS.install_hint


def import_onnxruntime():
    """The ``onnxruntime`` module, or BackendUnavailableError naming the extra to install."""
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError(
            f"onnxruntime backend: the 'onnxruntime' module is not installed; install it with {INSTALL_HINT} "
            "(or 'gtasr-deploy[cuda]' for onnxruntime-gpu)") from err
    return onnxruntime


def _providers(requested: str, sidecar: dict, cache_dir: str | Path) -> list[tuple[str, dict]]:
    """Execution providers for ``requested`` (providers.select_providers)."""
    return select_providers(requested, fp16=sidecar["precision"] == "fp16", cache_dir=cache_dir,
                            onnx_sidecar=sidecar)


class OrtEngine(Engine):
    """D through an ONNX Runtime session over one exported graph (static tile, dynamic batch).

    ``providers``: "auto" (TensorRT EP → CUDA EP → CPU, whatever is installed), "cpu", "cuda" or
    "tensorrt". ``threads``: intra-op threads (None = ONNX Runtime's default, one per core).
    ``cache_dir``: where the TensorRT EP keeps its engines and timing cache."""

    facts = FACTS

    def __init__(self, onnx_path: str | Path, *, providers: str = "auto", threads: int | None = None,
                 cache_dir: str | Path = "engines") -> None:
        ort = import_onnxruntime()
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ConfigError(f"onnxruntime engine: graph {onnx_path} not found; export one with gtasr-export")
        sidecar = read_onnx_sidecar(onnx_path)
        provider_list = _providers(providers, sidecar, cache_dir)
        if any(name == "TensorrtExecutionProvider" for name, _ in provider_list):
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            if threads < 1:
                raise ConfigError(f"onnxruntime engine: threads={threads}, expected >= 1 (or None for the default)")
            options.intra_op_num_threads = int(threads)
        try:
            self._session = ort.InferenceSession(str(onnx_path), sess_options=options,
                                                 providers=[name for name, _ in provider_list],
                                                 provider_options=[opts for _, opts in provider_list])
        except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for bad files
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"onnxruntime engine: cannot load {onnx_path} ({first}); the file is corrupt, "
                              "truncated or not a graph from gtasr-export — re-export it") from None
        tile = None if sidecar["tile_lr"] is None else tuple(sidecar["tile_lr"])
        batch = sidecar["batch"]
        self.info = EngineInfo(backend=self.facts.name, facts=self.facts, device=self._session.get_providers()[0],
                               precision=sidecar["precision"], size_multiple=int(sidecar["size_multiple"]),
                               tile_lr=tile, batch_range=(batch["min"], batch["opt"], batch["max"]),
                               norm_groups=int(sidecar["norm_groups"]), scale=int(sidecar["scale"]))
        self._check_graph(onnx_path)
        self.path = onnx_path

    def _check_graph(self, onnx_path: Path) -> None:
        """The graph must be ours and agree with its sidecar (cheap: no hashing of large files)."""
        got = {i.name: i.shape for i in (*self._session.get_inputs(), *self._session.get_outputs())}
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if sorted(inputs) != sorted(INPUTS) or sorted(outputs) != sorted(OUTPUTS):
            raise ConfigError(f"onnxruntime engine: {onnx_path} has inputs {sorted(inputs)} and outputs "
                              f"{sorted(outputs)}, expected inputs {list(INPUTS)} and outputs {list(OUTPUTS)}; "
                              "re-export with gtasr-export")
        info = self.info
        tile = info.tile_lr or (0, 0)  # dynamic height and width: only the fixed axes are compared
        for name, shape in io_shapes(tile, 1, info.norm_groups, info.scale).items():
            dims = list(got[name])
            if name in ("norm_stats", "norm_mix"):
                fixed, want = dims, list(shape)
            elif info.tile_lr is None and name not in ("sigma", "tile_stats"):
                # channels fixed; height and width named (dynamic) dims
                fixed = [dims[1], *(isinstance(d, str) for d in dims[2:])]
                want = [shape[1], True, True]
            else:
                fixed, want = dims[1:], list(shape[1:])
            if fixed != want:
                described = (f"tile {info.tile_lr[0]}x{info.tile_lr[1]}" if info.tile_lr is not None
                             else "dynamic height and width")
                raise ConfigError(f"onnxruntime engine: {onnx_path} tensor '{name}' is {dims}, but its sidecar "
                                  f"says {described} with {info.norm_groups} norm groups (expected {want} after "
                                  "the batch axis); re-export it")

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        feeds = graph_feeds(x_t, lq, sigma, norm_stats, self.info.norm_groups)
        if want_stats:
            (stats,) = self._session.run(["tile_stats"], feeds)
            return None, stats
        (sr,) = self._session.run(["sr"], feeds)
        return sr, None

    def close(self) -> None:
        self._session = None
