"""A Triton Inference Server model repository for an exported graph (``gtasr-export --triton-repo DIR``).

    DIR/<stem>/config.pbtxt, 1/model.onnx            the graph as exported (onnxruntime backend)
    DIR/<stem>_tile/config.pbtxt, 1/model.onnx       the per-tile graph, dynamic batching
    DIR/<stem>_trt/config.pbtxt, 1/model.plan        a TensorRT engine built from it, where one exists

Why two ONNX models: Triton's dynamic batching stacks requests along a first batch axis that every
input and output must have. The graph's ``norm_stats`` (2, S) and ``norm_mix`` (1,) are per call,
not per sample (:mod:`gtasr_deploy.contract`), so the graph as exported is served with
``max_batch_size: 0`` (explicit batch axis -1; one request is one engine call of up to the graph's
batch of tiles, either normalisation mode, exactly what the pipeline sends). The ``_tile`` model is
the same graph with those two inputs fixed to per-tile statistics (``norm_mix`` 0, as
``gtasr-upscale --norm tile``): every remaining tensor is per sample, so Triton batches tiles of
concurrent requests (``max_batch_size`` = the graph's largest batch). The TensorRT engine keeps the
full I/O, like the exported graph.

Dims come from the graph's sidecar (:func:`gtasr_deploy.contract.io_shapes`); a graph with dynamic
spatial axes (sidecar ``tile_lr`` null) gets -1 for height and width.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import contract
from ..atomic import TEMP_PREFIX
from ..errors import ConfigError

PER_TILE_SUFFIX, TENSORRT_SUFFIX = "_tile", "_trt"
NORM_INPUTS = ("norm_stats", "norm_mix")
SPATIAL = {"x_t": 2, "lq": 2, "sr": 2}  # tensors whose last two axes are height and width
DEFAULT_QUEUE_DELAY_US = 2000


@dataclass(frozen=True, kw_only=True)
class TritonOptions:
    """``instances`` model copies per device of ``kind`` (``KIND_GPU`` / ``KIND_CPU``; ``KIND_AUTO``
    lets Triton pick); ``queue_delay_us``: how long the per-tile model waits to fill a batch."""

    instances: int = 1
    kind: str = "KIND_AUTO"
    queue_delay_us: int = DEFAULT_QUEUE_DELAY_US

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ConfigError(f"Triton instances {self.instances}, expected >= 1")
        if self.kind not in ("KIND_AUTO", "KIND_GPU", "KIND_CPU"):
            raise ConfigError(f"Triton instance kind {self.kind!r}, expected KIND_AUTO, KIND_GPU or KIND_CPU")
        if self.queue_delay_us < 0:
            raise ConfigError(f"Triton queue delay {self.queue_delay_us} us, expected >= 0")


def tensor_dims(sidecar: Mapping) -> dict[str, list[int]]:
    """Every graph tensor's dims without the batch axis (-1 for dynamic height/width)."""
    tile = sidecar.get("tile_lr")
    shapes = contract.io_shapes(tuple(tile) if tile else (1, 1), 1, int(sidecar["norm_groups"]),
                                int(sidecar.get("scale", contract.SCALE)))
    dims = {}
    for name, shape in shapes.items():
        per_sample = list(shape[1:]) if name not in NORM_INPUTS else list(shape)
        if not tile and name in SPATIAL:
            per_sample[-2:] = [-1, -1]
        dims[name] = per_sample
    return dims


def _tensor(name: str, dims: list[int], *, reshape: bool = False) -> str:
    text = f'  {{\n    name: "{name}"\n    data_type: TYPE_FP32\n    dims: [ {", ".join(map(str, dims))} ]\n'
    if reshape:  # a batched scalar: one element per sample on the wire, shape (N,) in the graph
        text += "    reshape: { shape: [ ] }\n"
    return text + "  }"


def _block(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def model_config(name: str, sidecar: Mapping, *, platform: str, batched: bool, options: TritonOptions) -> str:
    """config.pbtxt text. ``batched``: the per-tile graph (no norm inputs) with dynamic batching;
    else the full graph I/O with an explicit batch axis and ``max_batch_size: 0``."""
    dims = tensor_dims(sidecar)
    batch = sidecar["batch"]
    backend = 'backend: "onnxruntime"' if platform == "onnxruntime" else 'platform: "tensorrt_plan"'
    lines = [f'name: "{name}"', backend]
    if batched:
        inputs = [_tensor("x_t", dims["x_t"]), _tensor("lq", dims["lq"]), _tensor("sigma", [1], reshape=True)]
        outputs = [_tensor("sr", dims["sr"]), _tensor("tile_stats", dims["tile_stats"])]
        preferred = sorted({int(batch["opt"]), int(batch["max"])})
        lines.append(f"max_batch_size: {int(batch['max'])}")
        extra = (f"dynamic_batching {{\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]\n"
                 f"  max_queue_delay_microseconds: {options.queue_delay_us}\n}}\n")
    else:
        inputs = [_tensor(n, [-1, *dims[n]] if n not in NORM_INPUTS else dims[n]) for n in contract.INPUTS]
        outputs = [_tensor(n, [-1, *dims[n]]) for n in contract.OUTPUTS]
        lines.append("max_batch_size: 0")
        extra = ""
    groups = f"instance_group [\n  {{\n    count: {options.instances}\n    kind: {options.kind}\n  }}\n]\n"
    return "\n".join(lines) + "\n" + _block("input", inputs) + _block("output", outputs) + groups + extra


def per_tile_graph(onnx_path: Path, out_path: Path, norm_groups: int) -> None:
    """The graph with ``norm_stats``/``norm_mix`` turned into constants: per-tile statistics."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path))
    kept = [i for i in graph.graph.input if i.name not in NORM_INPUTS]
    if len(kept) != len(graph.graph.input) - len(NORM_INPUTS):
        raise ConfigError(f"{onnx_path}: expected inputs {list(contract.INPUTS)}, got "
                          f"{[i.name for i in graph.graph.input]}; re-export the graph with gtasr-export")
    del graph.graph.input[:]
    graph.graph.input.extend(kept)
    graph.graph.initializer.extend([
        numpy_helper.from_array(np.zeros((2, norm_groups), np.float32), "norm_stats"),
        numpy_helper.from_array(np.zeros(1, np.float32), "norm_mix"),
    ])
    large = graph.ByteSize() > 1.8e9  # protobuf's 2 GB limit
    onnx.save(graph, str(out_path), save_as_external_data=large, location="model.onnx.data")


def _publish(folder: Path, final: Path) -> None:
    """Replace ``final`` by the finished ``folder`` (nothing half-written under the final name)."""
    if final.exists():
        old = final.with_name(f"{TEMP_PREFIX}{os.getpid()}-old-{final.name}")
        os.replace(final, old)
        shutil.rmtree(old)
    os.replace(folder, final)


def _write_model(repo: Path, name: str, config: str, files: Mapping[str, callable]) -> Path:
    staging = repo / f"{TEMP_PREFIX}{os.getpid()}-{name}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "1").mkdir(parents=True)
    (staging / "config.pbtxt").write_text(config, encoding="utf-8")
    for file_name, write in files.items():
        write(staging / "1" / file_name)
    _publish(staging, repo / name)
    return repo / name


def write_triton_repo(onnx_path: str | Path, repo: str | Path, *, engine_path: str | Path | None = None,
                      options: TritonOptions | None = None, name: str | None = None) -> list[Path]:
    """Write (or replace) the models of ``onnx_path`` under ``repo``; returns their folders."""
    onnx_path, repo = Path(onnx_path), Path(repo)
    options = options or TritonOptions()
    sidecar = contract.read_onnx_sidecar(onnx_path)
    name = name or onnx_path.stem
    repo.mkdir(parents=True, exist_ok=True)
    external = onnx_path.with_name(onnx_path.name + ".data")

    def copy_graph(dst: Path) -> None:
        shutil.copyfile(onnx_path, dst)
        if external.exists():  # the graph names its external data file: keep that name
            shutil.copyfile(external, dst.with_name(external.name))

    written = [
        _write_model(repo, name, model_config(name, sidecar, platform="onnxruntime", batched=False, options=options),
                     {"model.onnx": copy_graph}),
        _write_model(repo, name + PER_TILE_SUFFIX,
                     model_config(name + PER_TILE_SUFFIX, sidecar, platform="onnxruntime", batched=True,
                                  options=options),
                     {"model.onnx": lambda dst: per_tile_graph(onnx_path, dst, int(sidecar["norm_groups"]))}),
    ]
    if engine_path is not None:
        engine_path = Path(engine_path)
        if not engine_path.is_file():
            raise ConfigError(f"TensorRT engine {engine_path} not found")
        trt = name + TENSORRT_SUFFIX
        written.append(_write_model(repo, trt, model_config(trt, sidecar, platform="tensorrt", batched=False,
                                                            options=options),
                                    {"model.plan": lambda dst: shutil.copyfile(engine_path, dst)}))
    return written
