"""Export D to ONNX (SPEC §4): one graph per static LR tile, dynamic batch, sidecar JSON, validation.

Graph contract: inputs ``x_t`` (N,3,4h,4w) f32, ``lq`` (N,3,h,w) f32, ``sigma`` (N,) f32 in that
order; output ``sr`` (N,3,4h,4w) f32 = D(x_t, sigma, lq) with c_skip/c_out inside. h, w static
(the Swin window partition is traced for that shape); N dynamic, the intended min/opt/max in the
sidecar. The dynamo exporter is used: the TorchScript exporter stops on this network (SPEC §4).
Dynamo lowers every GroupNorm as Reshape → InstanceNormalization → Reshape → Mul → Add, the form
the fp16 pass (:mod:`gtasr_deploy.export.fp16`) keeps in fp32; that pass refuses any other form.

Files: ``<out>/<name>_tile<N>_<fp32|fp16>.onnx`` and the sidecar ``<same stem>.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ConfigError, EngineBuildError
from ..atomic import atomic_path, atomic_write_bytes
from ..model.precond import Denoiser
from .trt_cache import file_sha256, sidecar_path_for, validate_onnx_sidecar

FORMAT = "gtasr-onnx/1"
INPUTS = ("x_t", "lq", "sigma")
OUTPUTS = ("sr",)
DEFAULT_OPSET = 17
FP32_TOLERANCE = 1e-4  # max abs error vs torch (SPEC §4)
PROTOBUF_LIMIT = 2 * 1024**3
Log = Callable[[str], None]


class GraphIO(nn.Module):
    """The exported signature: ``(x_t, lq, sigma) -> sr`` (the graph's input order), D inside."""

    def __init__(self, denoiser: Denoiser) -> None:
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x_t: torch.Tensor, lq: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x_t, sigma, lq)


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


def graph_file_name(name: str, tile_lr: tuple[int, int], precision: str) -> str:
    h, w = tile_lr
    tile = f"{h}" if h == w else f"{h}x{w}"
    return f"{name}_tile{tile}_{precision}.onnx"


def example_inputs(tile_lr: tuple[int, int], batch: int, *, seed: int = 0, scale: int = 4) -> dict[str, np.ndarray]:
    """Random float32 feeds: x_t ~ N(0,1)+up-ish content, lq in [-1,1], sigma spread over (0.2, 1]."""
    rng = np.random.default_rng(seed)
    h, w = tile_lr
    lq = rng.uniform(-1.0, 1.0, (batch, 3, h, w)).astype(np.float32)
    x_t = rng.standard_normal((batch, 3, h * scale, w * scale)).astype(np.float32)
    # sigma = 1 barely exercises the noise embedding (SPEC §1); mix in other levels
    sigma = np.linspace(1.0, 0.2, batch, dtype=np.float32) if batch > 1 else np.array([1.0], np.float32)
    return {"x_t": x_t, "lq": lq, "sigma": sigma}


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


def export_fp32_graph(model: Denoiser, onnx_path: str | Path, *, tile_lr: tuple[int, int],
                      opset: int = DEFAULT_OPSET) -> Path:
    """Trace D with the dynamo exporter at a static tile and a dynamic batch axis; write the .onnx."""
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = GraphIO(model).eval()
    feeds = example_inputs(tile_lr, 2)  # batch 2: a size-1 example would be specialised to static
    args = tuple(torch.from_numpy(feeds[name]) for name in INPUTS)
    batch = torch.export.Dim("batch", min=1)
    with torch.inference_mode(False), torch.no_grad(), _quiet_exporter():
        try:
            program = torch.onnx.export(wrapper, args, dynamo=True, opset_version=opset, input_names=list(INPUTS),
                                        output_names=list(OUTPUTS), optimize=True, verbose=False,
                                        dynamic_shapes={"x_t": {0: batch}, "lq": {0: batch}, "sigma": {0: batch}})
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


def check_graph(onnx_path: Path) -> tuple[int, list[str], list[str]]:
    """onnx.checker on the path (works for external data); (opset written, inputs, outputs).

    Also requires the batch axis to be dynamic (a named dim), else EngineBuildError."""
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
        dim0 = vi.type.tensor_type.shape.dim[0]
        if not dim0.dim_param:
            raise EngineBuildError(f"export: the dynamo exporter made the batch axis of '{vi.name}' static "
                                   f"({dim0.dim_value}); dynamic batch is required (SPEC §4)")
    return opset, inputs, outputs


def write_sidecar(onnx_path: Path, *, model: Denoiser, tile_lr: tuple[int, int], batch_max: int, precision: str,
                  weights_sha256: str | None, preset: str | None) -> dict:
    """Write ``<stem>.json`` next to the graph (validated with the TensorRT builder's own checker)."""
    opset, inputs, outputs = check_graph(onnx_path)
    sidecar = {
        "format": FORMAT,
        "onnx_sha256": file_sha256(onnx_path),
        "weights_sha256": weights_sha256,
        "preset": preset,
        "network_config": model.config.to_dict(),
        "size_multiple": model.config.size_multiple,
        "scale": model.config.scale,
        "tile_lr": list(tile_lr),
        "batch": {"min": 1, "opt": 1, "max": int(batch_max)},
        "opset": opset,
        "precision": precision,
        "package_version": __version__,
        "inputs": inputs,
        "outputs": outputs,
    }
    validate_onnx_sidecar(sidecar, where=f"export sidecar for {onnx_path}")
    path = sidecar_path_for(onnx_path)
    atomic_write_bytes(path, (json.dumps(sidecar, indent=2) + "\n").encode("utf-8"))
    return sidecar


def compare_with_torch(model: Denoiser, onnx_path: Path, *, batches: tuple[int, ...]) -> dict[int, float]:
    """Max |ORT CPU − torch| per batch size on random inputs (same feeds to both)."""
    from ..engines.onnxruntime import OrtEngine

    sidecar = json.loads(sidecar_path_for(onnx_path).read_text(encoding="utf-8"))
    errors = {}
    with OrtEngine(onnx_path, providers="cpu") as engine, torch.inference_mode():
        for batch in batches:
            feeds = example_inputs(tuple(sidecar["tile_lr"]), batch, seed=batch)
            got = engine(**feeds)
            want = model(torch.from_numpy(feeds["x_t"]), torch.from_numpy(feeds["sigma"]),
                         torch.from_numpy(feeds["lq"])).numpy()
            errors[batch] = float(np.abs(got - want).max())
    return errors


def export_onnx(model: Denoiser, out_dir: str | Path, *, name: str, tile_lr: tuple[int, int], batch_max: int = 1,
                opset: int = DEFAULT_OPSET, weights_sha256: str | None = None, preset: str | None = None,
                log: Log = print) -> ExportResult:
    """Export the fp32 graph + sidecar, check it, and compare with torch at batch 1 (and 2 if allowed).

    ``model`` is D in eval mode on the CPU. Raises EngineBuildError when ORT differs from torch by
    more than :data:`FP32_TOLERANCE`."""
    if batch_max < 1:
        raise ConfigError(f"export: --batch {batch_max}, expected >= 1 (the largest batch the graph is meant for)")
    tile_lr = check_tile(tile_lr, model.config.size_multiple)
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        raise ConfigError("export: pass the fp32 model on the CPU (load_model(..., device='cpu')); "
                          "the fp16 graph is derived from the fp32 one")
    model = model.eval()
    onnx_path = Path(out_dir) / graph_file_name(name, tile_lr, "fp32")
    log(f"exporting {onnx_path} (LR tile {tile_lr[0]}x{tile_lr[1]}, batch 1..{batch_max}, opset {opset})")
    export_fp32_graph(model, onnx_path, tile_lr=tile_lr, opset=opset)
    sidecar = write_sidecar(onnx_path, model=model, tile_lr=tile_lr, batch_max=batch_max, precision="fp32",
                            weights_sha256=weights_sha256, preset=preset)
    if sidecar["opset"] != opset:
        log(f"note: requested opset {opset}, the exporter wrote opset {sidecar['opset']} (recorded in the sidecar)")
    errors = compare_with_torch(model, onnx_path, batches=(1, 2) if batch_max >= 2 else (1,))
    for batch, err in errors.items():
        log(f"ONNX Runtime CPU vs torch, batch {batch}: max abs error {err:.3g}")
    worst = max(errors.values())
    if not worst <= FP32_TOLERANCE:
        raise EngineBuildError(f"export: {onnx_path} differs from torch by {worst:.3g} max abs, expected "
                               f"<= {FP32_TOLERANCE:g} for fp32; the graph is wrong — please report it")
    return ExportResult(onnx_path=onnx_path, sidecar_path=sidecar_path_for(onnx_path), sidecar=sidecar,
                        max_abs_error=errors)


def export_fp16(fp32: ExportResult, model: Denoiser, *, log: Log = print) -> ExportResult:
    """Convert the exported fp32 graph to fp16 with fp32 islands; write graph + sidecar; check it runs
    on ORT CPU and report fp16-vs-fp32 PSNR on a real photo. ``max_abs_error`` is vs the fp32 graph."""
    import onnx

    from .fp16 import convert_to_fp16

    side = fp32.sidecar
    tile_lr = tuple(side["tile_lr"])
    onnx_path = fp32.onnx_path.with_name(fp32.onnx_path.name.replace("_fp32.onnx", "_fp16.onnx"))
    graph, report = convert_to_fp16(onnx.load(str(fp32.onnx_path)))
    log(f"fp16 graph: {report.fp16_nodes} fp16 nodes, {report.fp32_nodes} fp32 island nodes {report.islands}, "
        f"{report.casts} casts")
    _save_atomic(lambda path, external: onnx.save(graph, str(path), save_as_external_data=external),
                 onnx_path, graph.ByteSize())
    sidecar = write_sidecar(onnx_path, model=model, tile_lr=tile_lr, batch_max=side["batch"]["max"],
                            precision="fp16", weights_sha256=side["weights_sha256"], preset=side["preset"])
    errors = compare_graphs(fp32.onnx_path, onnx_path, example_inputs(tile_lr, 1))
    log(f"fp16 vs fp32 graph on ONNX Runtime CPU, random inputs: max abs error {errors:.3g}")
    if not np.isfinite(errors):
        raise EngineBuildError(f"export: the fp16 graph {onnx_path} produces non-finite values (fp16 overflow "
                               "outside the fp32 islands); use the fp32 graph")
    psnr = photo_psnr(fp32.onnx_path, onnx_path, tile_lr)
    if psnr is None:
        log("fp16 vs fp32 PSNR on a photo: skipped (matplotlib's sample photo is not installed: "
            "pip install 'gtasr-deploy[eval]')")
    else:
        log(f"fp16 vs fp32 PSNR on a real photo (grace_hopper.jpg at {tile_lr[0]}x{tile_lr[1]} LR): {psnr:.2f} dB")
    return ExportResult(onnx_path=onnx_path, sidecar_path=sidecar_path_for(onnx_path), sidecar=sidecar,
                        max_abs_error={1: errors}, photo_psnr_db=psnr)


def compare_graphs(reference: Path, candidate: Path, feeds: dict[str, np.ndarray]) -> float:
    """Max |candidate − reference| of two exported graphs on ORT CPU for the same feeds."""
    from ..engines.onnxruntime import OrtEngine

    outputs = []
    for path in (reference, candidate):
        with OrtEngine(path, providers="cpu") as engine:
            outputs.append(engine(**feeds))
    return float(np.abs(outputs[1] - outputs[0]).max())


def sample_photo_lq(tile_lr: tuple[int, int]) -> np.ndarray | None:
    """A real photo as an LR tile: float32 (1, 3, h, w) in [-1, 1], or None when unavailable.

    matplotlib's grace_hopper.jpg, centre-cropped to the tile's aspect ratio and resized with
    PIL bicubic (antialiased) — the LR a user would feed, not a synthetic pattern."""
    try:
        from matplotlib import cbook
    except ImportError:
        return None
    from PIL import Image

    h, w = tile_lr
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        im = im.convert("RGB")
        width, height = im.size
        crop_w, crop_h = min(width, height * w // h), min(height, width * h // w)
        left, top = (width - crop_w) // 2, (height - crop_h) // 2
        im = im.crop((left, top, left + crop_w, top + crop_h)).resize((w, h), Image.Resampling.BICUBIC)
        rgb = np.asarray(im, dtype=np.float32) / 255.0
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None]) * 2.0 - 1.0


def photo_psnr(fp32_path: Path, fp16_path: Path, tile_lr: tuple[int, int], seed: int = 0) -> float | None:
    """PSNR (dB, [0,1] images) of the fp16 graph's output against the fp32 graph's on a photo.

    One-step inference as the upscaler does it: x_K = up(lq) + eps (seeded), sigma = 1."""
    from ..engines.onnxruntime import OrtEngine
    from ..schedule import unit_noise, up

    lq = sample_photo_lq(tile_lr)
    if lq is None:
        return None
    x_k = up(torch.from_numpy(lq))
    x_k += unit_noise(tuple(x_k.shape), seed)
    feeds = {"x_t": x_k.numpy(), "lq": lq, "sigma": np.ones(1, np.float32)}
    images = []
    for path in (fp32_path, fp16_path):
        with OrtEngine(path, providers="cpu") as engine:
            images.append(np.clip((engine(**feeds) + 1.0) * 0.5, 0.0, 1.0).astype(np.float64))
    mse = float(np.mean((images[0] - images[1]) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)
