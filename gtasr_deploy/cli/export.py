"""`gtasr-export`: write the ONNX graph of D (fp32, optionally fp16).

    gtasr-export --weights GTASR_final_phase.pth --batch 4 --fp16

writes ``export/GTASR_final_phase_fp32.onnx`` (+ ``.json`` sidecar), a graph with dynamic batch,
height and width (the whole image in one call, on every runtime), and, with ``--fp16``,
``export/GTASR_final_phase_fp16.onnx`` (+ sidecar), then builds a TensorRT engine beside each graph
when a TensorRT library is installed: TensorRT for RTX builds on any machine, GPU or not, for
``--trt-targets`` (default: this GPU, or with none sm86,sm89,sm120); classic TensorRT builds for
the GPU present. ``--tile N`` writes a graph for one static LR tile instead
(``..._tileN_fp32.onnx``), for runtimes that want fixed shapes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..version import __version__
from ..errors import GtasrError
from ..export.onnx import DEFAULT_LR_MAX, DEFAULT_OPSET
from .weights import weights_callback
from ..inference.loader import load_denoiser
from ..engines import tensorrt_build
from ..engines.tensorrt_build import parse_request
from ..batch.runner import collect_inputs
from ..batch.runner import missing_dirs, remove_empty_dirs
from ..batch.runner import check_output_dir
from ..export.onnx import check_tile, export_fp16, export_onnx
from ..extras import require_all
from .check import run_check
from ..integrations.triton_repo import write_triton_repo

EXIT_USAGE = 2
FP16_USE = ("the fp16 graph is for NVIDIA GPUs: --backend tensorrt, or --backend onnxruntime with the cuda extra "
            "(onnxruntime-gpu). On a CPU use the fp32 graph: ONNX Runtime runs it in fp32, and OpenVINO makes "
            "bf16 from it itself (--backend openvino --precision bf16).")
RANDOM_WEIGHTS_WARNING = ("WARNING: no --weights given: the graph holds RANDOM weights of the '{name}' network "
                          "and produces noise, not super-resolution. Use it for testing and benchmarking only.")


def _load(weights: Path | None, param_key: str, network_config: Path | None, preset: str | None):
    """The model to export: --weights, else the embedded demo weights, else (only --preset /
    --network-config) random weights of that network, as :func:`~gtasr_deploy.inference.load_denoiser` does."""

    return load_denoiser(weights, network_config=network_config, preset=preset, param_key=param_key,
                         random_ok=True)


def _build_tensorrt(graphs: list[Path], engine_dir: Path | None, library: str, targets: str) -> dict[Path, Path]:
    """Build (or reuse) a TensorRT engine beside each graph when a library can build here; else one line why not.
    Returns {graph: engine}."""

    reason = tensorrt_build.explain_cannot_build(library, targets)
    if reason is not None:
        click.echo(f"no TensorRT engine built: {reason}")
        return {}
    return {graph: tensorrt_build.get_or_build_engine(graph, engine_dir=engine_dir, library=library, targets=targets,
                                                      log=click.echo) for graph in graphs}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gtasr-export")
@click.option("--weights", callback=weights_callback,
              help="A name fetched with gtasr-weights, an official .pth or our .safetensors. "
                   "Default: the embedded demo weights; with only "
                   "--preset/--network-config, random weights (for benchmarks).")
@click.option("--param-key", default="params_ema", show_default=True, help="Entry of an official .pth to load.")
@click.option("--network-config", type=click.Path(dir_okay=False, path_type=Path),
              help="Network JSON (ours or the authors' network_g names).")
@click.option("--preset", help="Network preset (paper, demo): the config for --weights, or random weights.")
@click.option("--tile", type=int, default=None,
              help="Static LR tile in px (a multiple of the size rule). Default: dynamic height and width "
                   "(any size; TensorRT profiles cover --max-lr).")
@click.option("--max-lr", type=click.IntRange(min=1), default=DEFAULT_LR_MAX, show_default=True,
              help="Dynamic graphs: the largest LR side the graph's TensorRT optimisation profile covers "
                   "(larger images are tiled to it); ONNX Runtime and OpenVINO take any size.")
@click.option("--batch", type=int, default=1, show_default=True, help="Largest batch the graph is meant for.")
@click.option("--opset", type=int, default=None,
              help="Request an ONNX opset. Default: the exporter's choice (18); the opset written is printed and "
                   "recorded in the sidecar.")
@click.option("--fp16", is_flag=True, help="Also write the fp16 graph (fp32 islands). For NVIDIA GPUs (TensorRT, "
                                           "ONNX Runtime CUDA); CPUs use the fp32 graph.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("export"),
              show_default=True, help="Output folder.")
@click.option("--trt/--no-trt", "trt", default=True, show_default=True,
              help="Build a TensorRT engine beside each graph when TensorRT for RTX (any machine) or TensorRT "
                   "(with its GPU) is installed; an identical engine already there is reused.")
@click.option("--trt-targets", default="auto", show_default=True, metavar="SM,...",
              help="GPU architectures the engine holds code for, e.g. sm89 (RTX 40) or sm86,sm89,sm120 "
                   "(RTX 30/40/50). auto: this GPU; with no GPU sm86,sm89,sm120. Classic TensorRT: this GPU only.")
@click.option("--trt-library", type=click.Choice(["auto", "tensorrt-rtx", "tensorrt"]), default="auto",
              show_default=True, help="auto: TensorRT for RTX when installed and able to target this GPU, "
                                      "else classic TensorRT.")
@click.option("--engine-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for TensorRT engines.  [default: beside the graphs]")
@click.option("--check", "check_paths", multiple=True, type=click.Path(path_type=Path), metavar="IMAGE",
              help="After exporting, upscale these images (files or folders; repeatable) with torch fp32 and "
                   "with each exported graph on ONNX Runtime and compare (max/mean difference, PSNR, NaN/Inf); "
                   "exit 1 when the fp32 graph differs by more than 1/255 or the fp16 graph is below 40 dB.")
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path),
              help="Also write a Triton Inference Server model repository here: each graph (onnxruntime backend), "
                   "its per-tile variant with dynamic batching, and the TensorRT engine where one was built "
                   "(see docs/integrations.md).")
def main(weights, param_key, network_config, preset, tile, max_lr, batch, opset, fp16, out_dir, trt, trt_targets,
         trt_library, engine_dir, check_paths, triton_repo) -> None:
    """Export GTASR's denoiser D to ONNX: dynamic batch, height and width (or one static LR tile).

    Nothing already in --out is replaced until the new graph passed every check."""
    try:
        images = _check_images(check_paths)
        engines = None
        if trt:
            parse_request(trt_targets, trt_library)  # a bad --trt-targets fails before the (long) export
            engines = (engine_dir, trt_library, trt_targets)
        failed = _export(weights, param_key, network_config, preset, tile, max_lr, batch, opset, fp16, out_dir,
                         engines, images, triton_repo)
    except GtasrError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(1 if failed else 0)


def _check_images(paths) -> list[Path]:
    images: list[Path] = []
    for path in paths:
        images += [src for src, _ in collect_inputs(path)]
    return images


def _export(weights, param_key, network_config, preset, tile, max_lr, batch, opset, fp16, out_dir, engines,
            images, triton_repo=None) -> bool:
    """Export, build engines when ``engines`` is (engine_dir, library, targets), write the Triton
    repository when asked, and check; True when a check failed. A folder this run created is removed
    again on error."""

    made = missing_dirs([out_dir])
    try:
        return _export_into(weights, param_key, network_config, preset, tile, max_lr, batch, opset, fp16, out_dir,
                            engines, images, triton_repo)
    except BaseException:
        remove_empty_dirs(made)
        raise


def _export_into(weights, param_key, network_config, preset, tile, max_lr, batch, opset, fp16, out_dir, engines,
                 images, triton_repo) -> bool:

    # torch's ONNX exporter needs onnx + onnxscript; the export is checked on ONNX Runtime
    require_all(("onnx", "onnxscript", "onnxruntime"), "gtasr-export")
    check_output_dir(out_dir)  # before the (long) trace: an unwritable --out fails in one line
    if triton_repo is not None:
        check_output_dir(triton_repo)
    loaded = _load(weights, param_key, network_config, preset)
    model = loaded.model
    tile_lr = None if tile is None else check_tile((tile, tile), model.config.size_multiple)
    if loaded.random:
        click.echo(RANDOM_WEIGHTS_WARNING.format(name=loaded.name), err=True)
    result = export_onnx(model, out_dir, name=loaded.name, tile_lr=tile_lr, batch_max=batch,
                         opset=opset or DEFAULT_OPSET, lr_max=max_lr, weights_sha256=loaded.weights_sha256,
                         preset=loaded.preset, log=click.echo)
    written = result.sidecar["opset"]
    click.echo(f"wrote {result.onnx_path} and {result.sidecar_path.name} (opset {written})")
    if opset is not None and written != opset:  # only when the user asked for one
        click.echo(f"note: --opset {opset} was requested; torch's exporter wrote opset {written} (it converts "
                   "down only where its version converter can); ONNX Runtime, OpenVINO and TensorRT 10 read both")
    graphs = [result.onnx_path]
    if fp16:
        half = export_fp16(result, model, log=click.echo)
        click.echo(f"wrote {half.onnx_path} and {half.sidecar_path.name}")
        click.echo(FP16_USE)
        graphs.append(half.onnx_path)
    built = _build_tensorrt(graphs, *engines) if engines is not None else {}
    if triton_repo is not None:
        for graph in graphs:
            for folder in write_triton_repo(graph, triton_repo, engine_path=built.get(graph)):
                click.echo(f"wrote Triton model {folder}")
    if not images:
        return False

    failed = False
    for graph in graphs:
        click.echo(f"check: torch fp32 vs {graph.name} on ONNX Runtime, {len(images)} image(s)")
        failed |= run_check(images, reference=dict(model=loaded, backend="torch", precision="fp32"),
                            candidate=dict(backend="onnxruntime", onnx=graph), tile=tile)
    return failed


if __name__ == "__main__":
    main()
