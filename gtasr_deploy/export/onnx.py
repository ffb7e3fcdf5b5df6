"""Export D to ONNX (SPEC §4): dynamic batch and dynamic LR height and width (or one static LR tile),
sidecar JSON, validation.

The graph contract (inputs, outputs, shapes, sidecar) is :mod:`gtasr_deploy.contract`: D with
c_skip/c_out inside, GroupNorm statistics as an input (shared across tiles) and an output (each
tile's own), traced through the same :class:`~gtasr_deploy.model.shared_norm.NormIO` the torch
engine runs. N dynamic; h and w dynamic multiples of the size rule (traced as ``size_multiple × k``
so the Swin window partition stays exact), or static for a ``--tile`` graph; the intended
min/opt/max batch and LR shape (a TensorRT optimisation profile) in the sidecar. The dynamo exporter is used: the TorchScript exporter stops on
this network (SPEC §4). Every node traced inside a GroupNorm carries that class in its metadata,
which is how the fp16 pass (:mod:`gtasr_deploy.export.fp16`) keeps them in fp32.

Nothing is replaced until it is complete and valid: graph and sidecar are written under temp
names, checked (onnx.checker, contract, ONNX Runtime against torch in :mod:`.verify`) and only
then renamed over ``<out>/<name>_<fp32|fp16>.onnx`` (``<name>_tile<N>_…`` for a static tile) and its
sidecar ``<same stem>.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..version import __version__
from ..atomic import TEMP_PREFIX, atomic_path, atomic_write_bytes
from ..contract import example_inputs
from ..contract import FORMAT, INPUTS, OUTPUTS, lr_range_for, sidecar_path_for, validate_onnx_sidecar
from ..errors import ConfigError, EngineBuildError
from ..hashing import file_sha256
from ..model.precond import Denoiser
from ..model.shared_norm import NormIO
from .verify import check_against_torch
from .fp16 import convert_to_fp16
from .verify import check_fp16, check_shapes

DEFAULT_OPSET = 18  # what torch's dynamo exporter writes; lower opsets are converted (and may fail)
DEFAULT_LR_OPT = 128  # LR px: the paper's benchmark input (SPEC §6); a TensorRT profile is tuned for it
DEFAULT_LR_MAX = 512  # LR px: the largest side a graph's profile covers by default (2048 px output)
PROTOBUF_LIMIT = 2 * 1024**3
BATCH_INPUTS = ("x_t", "lq", "sigma")  # the inputs with a (dynamic) batch axis
Log = Callable[[str], None]


class GraphIO(nn.Module):
    """The exported signature (:mod:`gtasr_deploy.contract`), D inside; trace it inside ``norm_io.installed()``."""

    def __init__(self, denoiser: Denoiser) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.norm_io = NormIO(denoiser)

    def forward(self, x_t: torch.Tensor, lq: torch.Tensor, sigma: torch.Tensor, norm_stats: torch.Tensor,
                norm_mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.norm_io.call(norm_stats, norm_mix):
            sr = self.denoiser(x_t, sigma, lq)
            return sr, self.norm_io.tile_statistics()


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    onnx_path: Path
    sidecar_path: Path
    sidecar: dict
    max_abs_error: dict[int, float]  # batch size → max |ORT − torch| (fp32); vs the fp32 graph (fp16)
    photo_psnr_db: float | None = None  # fp16 only: PSNR of fp16 vs fp32 output on a real photo


def check_tile(tile_lr: tuple[int, int], size_multiple: int) -> tuple[int, int]:
    """Static LR tile (h, w); both sides positive multiples of the size rule, else ConfigError."""
    h, w = (int(v) for v in tile_lr)
    if h < 1 or w < 1 or h % size_multiple or w % size_multiple:
        nearest = max(size_multiple, h // size_multiple * size_multiple)
        raise ConfigError(f"export: tile {h}x{w} LR px is not a multiple of this network's size rule "
                          f"{size_multiple}; pick a tile that is (e.g. {nearest})")
    return h, w


def graph_file_name(name: str, tile_lr: tuple[int, int] | None, precision: str) -> str:
    if tile_lr is None:
        return f"{name}_{precision}.onnx"
    h, w = tile_lr
    tile = f"{h}" if h == w else f"{h}x{w}"
    return f"{name}_tile{tile}_{precision}.onnx"


def dynamic_example_tile(size_multiple: int) -> tuple[int, int]:
    """The LR shape a dynamic graph is traced at: two different block counts, so neither side is
    specialised to a constant (nor to 1, which the exporter treats as static)."""
    return 2 * size_multiple, 3 * size_multiple


def _trace_feeds(model: Denoiser, tile_lr: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    feeds = example_inputs(tile_lr, 2)  # batch 2: a size-1 example would be specialised to static
    groups = NormIO(model).size
    stats = np.stack([np.zeros(groups), np.ones(groups)]).astype(np.float32)
    return (*(torch.from_numpy(feeds[name]) for name in BATCH_INPUTS), torch.from_numpy(stats),
            torch.zeros(1))


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's chatter (missing torchvision ops, opset 18 → 17 conversion notes):
    what matters (opset written, errors) is read back and reported by this module."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _dynamic_shapes(size_multiple: int, scale: int, spatial: bool) -> dict:
    """torch.export dims: batch, and (``spatial``) LR h = size_multiple·k_h, w = size_multiple·k_w."""
    batch = torch.export.Dim("batch", min=1)
    dims: dict = {"x_t": {0: batch}, "lq": {0: batch}, "sigma": {0: batch}, "norm_stats": None, "norm_mix": None}
    if spatial:
        blocks_h = torch.export.Dim("blocks_h", min=1, max=65536 // size_multiple)
        blocks_w = torch.export.Dim("blocks_w", min=1, max=65536 // size_multiple)
        dims["lq"].update({2: size_multiple * blocks_h, 3: size_multiple * blocks_w})
        dims["x_t"].update({2: scale * size_multiple * blocks_h, 3: scale * size_multiple * blocks_w})
    return dims


def export_fp32_graph(model: Denoiser, onnx_path: str | Path, *, tile_lr: tuple[int, int] | None,
                      opset: int = DEFAULT_OPSET) -> Path:
    """Trace D with the dynamo exporter (dynamic batch; dynamic h, w when ``tile_lr`` is None); write the .onnx."""
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = GraphIO(model).eval()
    multiple = model.config.size_multiple
    args = _trace_feeds(model, tile_lr or dynamic_example_tile(multiple))
    dynamic = _dynamic_shapes(multiple, model.config.scale, spatial=tile_lr is None)
    with torch.inference_mode(False), torch.no_grad(), _quiet_exporter(), wrapper.norm_io.installed():
        try:
            program = torch.onnx.export(wrapper, args, dynamo=True, opset_version=opset, input_names=list(INPUTS),
                                        output_names=list(OUTPUTS), optimize=True, verbose=False,
                                        dynamic_shapes=dynamic)
        except Exception as err:  # the exporter raises many types; all mean the same to a user
            raise EngineBuildError(f"export: torch.onnx.export(dynamo=True) failed: {type(err).__name__}: "
                                   f"{str(err).splitlines()[0] if str(err) else ''}") from err
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    _save_atomic(lambda path, external: program.save(str(path), external_data=external), onnx_path, size)
    return onnx_path


def _save_atomic(save: Callable[[Path, bool], None], onnx_path: Path, size_bytes: int) -> None:
    """Write through a temp file + rename. Graphs near the 2 GB protobuf limit go to external data
    (``<name>.data`` beside it, written in place: its name is recorded inside the graph). GTASR paper
    (~660 MB fp32) stays one self-contained file."""
    if size_bytes > PROTOBUF_LIMIT * 0.9:
        save(onnx_path, True)
        return
    with atomic_path(onnx_path) as tmp:
        save(tmp, False)


def check_graph(onnx_path: Path, *, spatial: bool = False) -> tuple[int, list[str], list[str]]:
    """onnx.checker on the path (works for external data); (opset written, inputs, outputs).

    Also requires the batch axis (and with ``spatial`` the height and width) to be dynamic (named
    dims), else EngineBuildError."""
    import onnx

    try:
        onnx.checker.check_model(str(onnx_path))
    except onnx.checker.ValidationError as err:
        raise EngineBuildError(f"export: {onnx_path} fails onnx.checker: {str(err).splitlines()[0]}") from err
    model = onnx.load(str(onnx_path), load_external_data=False)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs != list(INPUTS) or outputs != list(OUTPUTS):
        raise EngineBuildError(f"export: {onnx_path} has inputs {inputs} / outputs {outputs}, "
                               f"expected {list(INPUTS)} / {list(OUTPUTS)}")
    for vi in (*model.graph.input, *model.graph.output):
        if vi.name not in (*BATCH_INPUTS, *OUTPUTS):
            continue
        dims = vi.type.tensor_type.shape.dim
        for axis in ((0, 2, 3) if spatial and vi.name != "sigma" and vi.name != "tile_stats" else (0,)):
            if not dims[axis].dim_param:
                raise EngineBuildError(f"export: the dynamo exporter made axis {axis} of '{vi.name}' static "
                                       f"({dims[axis].dim_value}); a dynamic axis is required (SPEC §4)")
    return opset, inputs, outputs


def write_sidecar(onnx_path: Path, *, model: Denoiser, tile_lr: tuple[int, int] | None, batch_max: int,
                  precision: str, weights_sha256: str | None, preset: str | None,
                  lr_range: dict[str, list[int]]) -> dict:
    """Write ``<stem>.json`` next to the graph (validated with the TensorRT builder's own checker)."""
    opset, inputs, outputs = check_graph(onnx_path, spatial=tile_lr is None)
    sidecar = {
        "format": FORMAT,
        "onnx_sha256": file_sha256(onnx_path),
        "weights_sha256": weights_sha256,
        "preset": preset,
        "network_config": model.config.to_dict(),
        "size_multiple": model.config.size_multiple,
        "scale": model.config.scale,
        "tile_lr": None if tile_lr is None else list(tile_lr),
        "lr_range": lr_range,
        "batch": {"min": 1, "opt": 1, "max": int(batch_max)},
        "opset": opset,
        "precision": precision,
        "package_version": __version__,
        "norm_groups": NormIO(model).size,
        "inputs": inputs,
        "outputs": outputs,
    }
    validate_onnx_sidecar(sidecar, where=f"export sidecar for {onnx_path}")
    path = sidecar_path_for(onnx_path)
    atomic_write_bytes(path, (json.dumps(sidecar, indent=2) + "\n").encode("utf-8"))
    return sidecar


@contextlib.contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A private folder inside ``out_dir`` for graphs being written and checked; removed afterwards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}export-{os.getpid()}-", dir=out_dir))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _publish(staged: Path, final: Path) -> tuple[Path, Path]:
    """Move a checked graph and its sidecar over the final names (graph first, then the sidecar)."""
    os.replace(staged, final)
    data = staged.with_name(staged.name + ".data")
    if data.exists():  # external data: the graph records this file name
        os.replace(data, final.with_name(final.name + ".data"))
    os.replace(sidecar_path_for(staged), sidecar_path_for(final))
    return final, sidecar_path_for(final)


def export_onnx(model: Denoiser, out_dir: str | Path, *, name: str, tile_lr: tuple[int, int] | None = None,
                batch_max: int = 1, opset: int = DEFAULT_OPSET, weights_sha256: str | None = None,
                preset: str | None = None, lr_opt: int = DEFAULT_LR_OPT, lr_max: int = DEFAULT_LR_MAX,
                verify_with: str = "onnxruntime", log: Log = print) -> ExportResult:
    """Export the fp32 graph + sidecar, check it, and compare with torch at batch 1 (and 2 if allowed).

    ``tile_lr`` None: dynamic LR height and width (``lr_opt``/``lr_max``: the profile the sidecar
    records, rounded to the size rule); else one static tile. ``model`` is D in eval mode on the
    CPU. ``verify_with``: the runtime that checks the graph against torch (onnxruntime | openvino).
    Raises EngineBuildError when it differs from torch by more than
    :data:`~gtasr_deploy.export.verify.FP32_TOLERANCE`; an existing graph of the same name is only
    replaced by one that passed every check."""

    if batch_max < 1:
        raise ConfigError(f"export: --batch {batch_max}, expected >= 1 (the largest batch the graph is meant for)")
    multiple = model.config.size_multiple
    if tile_lr is not None:
        tile_lr = check_tile(tile_lr, multiple)
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        raise ConfigError("export: pass the fp32 model on the CPU (load_model(..., device='cpu')); "
                          "the fp16 graph is derived from the fp32 one")
    opt = max(multiple, -(-lr_opt // multiple) * multiple)
    biggest = max(opt, -(-lr_max // multiple) * multiple)
    lr_range = lr_range_for(tile_lr, size_multiple=multiple, opt=(opt, opt), max_lr=(biggest, biggest))
    model = model.eval()
    out_dir = Path(out_dir)
    final = out_dir / graph_file_name(name, tile_lr, "fp32")
    shape = (f"LR tile {tile_lr[0]}x{tile_lr[1]}" if tile_lr is not None else
             f"any LR size (multiples of {multiple}; profile {multiple}..{biggest} px)")
    log(f"exporting {final} ({shape}, batch 1..{batch_max})")
    with _staging(out_dir) as stage:
        staged = stage / final.name
        export_fp32_graph(model, staged, tile_lr=tile_lr, opset=opset)
        sidecar = write_sidecar(staged, model=model, tile_lr=tile_lr, batch_max=batch_max, precision="fp32",
                                weights_sha256=weights_sha256, preset=preset, lr_range=lr_range)
        errors = check_against_torch(model, staged, batches=(1, 2) if batch_max >= 2 else (1,), runtime=verify_with,
                                     log=log)
        onnx_path, sidecar_path = _publish(staged, final)
    return ExportResult(onnx_path=onnx_path, sidecar_path=sidecar_path, sidecar=sidecar, max_abs_error=errors)


def export_fp16(fp32: ExportResult, model: Denoiser, *, log: Log = print) -> ExportResult:
    """Convert the exported fp32 graph to fp16 with fp32 islands; write graph + sidecar; check it runs
    on ORT CPU and report fp16-vs-fp32 PSNR on a real photo. ``max_abs_error`` is vs the fp32 graph."""
    import onnx


    side = fp32.sidecar
    tile_lr = None if side["tile_lr"] is None else tuple(side["tile_lr"])
    final = fp32.onnx_path.with_name(fp32.onnx_path.name.replace("_fp32.onnx", "_fp16.onnx"))
    graph, report = convert_to_fp16(onnx.load(str(fp32.onnx_path)))
    log(f"fp16 graph: {report.fp16_nodes} fp16 nodes, {report.fp32_nodes} fp32 island nodes {report.islands}, "
        f"{report.casts} casts")
    with _staging(final.parent) as stage:
        staged = stage / final.name
        _save_atomic(lambda path, external: onnx.save(graph, str(path), save_as_external_data=external),
                     staged, graph.ByteSize())
        sidecar = write_sidecar(staged, model=model, tile_lr=tile_lr, batch_max=side["batch"]["max"],
                                precision="fp16", weights_sha256=side["weights_sha256"], preset=side["preset"],
                                lr_range={k: list(v) for k, v in side["lr_range"].items()})
        error, psnr = check_fp16(fp32.onnx_path, staged, check_shapes(side)[-1], log=log)
        onnx_path, sidecar_path = _publish(staged, final)
    return ExportResult(onnx_path=onnx_path, sidecar_path=sidecar_path, sidecar=sidecar,
                        max_abs_error={1: error}, photo_psnr_db=psnr)
