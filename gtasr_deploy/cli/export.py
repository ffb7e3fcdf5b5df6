"""`gtasr-export`: write the ONNX graph of D for one static LR tile (fp32, optionally fp16).

    gtasr-export --weights GTASR_final_phase.pth --tile 256 --batch 4 --fp16

writes ``export/GTASR_final_phase_tile256_fp32.onnx`` (+ ``.json`` sidecar) and, with ``--fp16``,
``export/GTASR_final_phase_tile256_fp16.onnx`` (+ sidecar), then builds a TensorRT engine for the
fp16 graph when TensorRT and a GPU are present. The default tile is the upscaler's default for the
preset: 256 LR px for ``paper``, 128 for ``demo`` (other configs: 256 rounded to the size rule).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import __version__
from ..errors import GtasrError
from .weights import weights_callback

EXIT_USAGE = 2
FP16_USE = ("the fp16 graph is for NVIDIA GPUs: --backend tensorrt, or --backend onnxruntime with the cuda extra "
            "(onnxruntime-gpu). On a CPU use the fp32 graph: ONNX Runtime runs it in fp32, and OpenVINO makes "
            "bf16 from it itself (--backend openvino --precision bf16).")
RANDOM_WEIGHTS_WARNING = ("WARNING: no --weights given: the graph holds RANDOM weights of the '{name}' network "
                          "and produces noise, not super-resolution. Use it for testing and benchmarking only.")


def _load(weights: Path | None, param_key: str, network_config: Path | None, preset: str | None):
    """The model to export: --weights, else the embedded demo weights, else (only --preset /
    --network-config) random weights of that network, as :func:`~gtasr_deploy.inference.load_denoiser` does."""
    from ..inference.loader import load_denoiser

    return load_denoiser(weights, network_config=network_config, preset=preset, param_key=param_key,
                         random_ok=True)


def _build_tensorrt(onnx_path: Path, cache_dir: Path) -> None:
    """Build (or reuse) the TensorRT engine when TensorRT and a GPU are here; else one line why not."""
    try:
        from ..engines import tensorrt_build
    except ImportError as err:
        click.echo(f"no TensorRT engine built: the TensorRT builder module is missing ({err})")
        return
    reason = tensorrt_build.explain_unavailable()
    if reason is not None:
        click.echo(f"no TensorRT engine built: {reason}")
        return
    tensorrt_build.get_or_build_engine(onnx_path, cache_dir=cache_dir, log=click.echo)


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
              help="Static LR tile in px (a multiple of the size rule). Default: 256 (paper), 128 (demo).")
@click.option("--batch", type=int, default=1, show_default=True, help="Largest batch the graph is meant for.")
@click.option("--opset", type=int, default=None,
              help="Request an ONNX opset. Default: the exporter's choice; the opset written is printed and "
                   "recorded in the sidecar.")
@click.option("--fp16", is_flag=True, help="Also write the fp16 graph (fp32 islands) and build a TensorRT engine. "
                                           "For NVIDIA GPUs (TensorRT, ONNX Runtime CUDA); CPUs use the fp32 graph.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("export"),
              show_default=True, help="Output folder.")
@click.option("--engine-cache", type=click.Path(file_okay=False, path_type=Path), default=Path("engines"),
              show_default=True, help="Folder of cached TensorRT engines (with --fp16).")
@click.option("--check", "check_paths", multiple=True, type=click.Path(path_type=Path), metavar="IMAGE",
              help="After exporting, upscale these images (files or folders; repeatable) with torch fp32 and "
                   "with each exported graph on ONNX Runtime and compare (max/mean difference, PSNR, NaN/Inf); "
                   "exit 1 when the fp32 graph differs by more than 1/255 or the fp16 graph is below 40 dB.")
def main(weights, param_key, network_config, preset, tile, batch, opset, fp16, out_dir, engine_cache,
         check_paths) -> None:
    """Export GTASR's denoiser D to ONNX for one static LR tile and a dynamic batch axis.

    Nothing already in --out is replaced until the new graph passed every check."""
    try:
        images = _check_images(check_paths)
        failed = _export(weights, param_key, network_config, preset, tile, batch, opset, fp16, out_dir,
                         engine_cache, images)
    except GtasrError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(1 if failed else 0)


def _check_images(paths) -> list[Path]:
    from ..batch import collect_inputs

    images: list[Path] = []
    for path in paths:
        images += [src for src, _ in collect_inputs(path)]
    return images


def _export(weights, param_key, network_config, preset, tile, batch, opset, fp16, out_dir, engine_cache,
            images) -> bool:
    """Export (and check); True when a check failed. A folder this run created is removed again on error."""
    from ..batch import missing_dirs, remove_empty_dirs

    made = missing_dirs([out_dir])
    try:
        return _export_into(weights, param_key, network_config, preset, tile, batch, opset, fp16, out_dir,
                            engine_cache, images)
    except BaseException:
        remove_empty_dirs(made)
        raise


def _export_into(weights, param_key, network_config, preset, tile, batch, opset, fp16, out_dir, engine_cache,
                 images) -> bool:
    from ..batch import check_output_dir
    from ..export.onnx import DEFAULT_OPSET, check_tile, export_fp16, export_onnx
    from ..extras import require_all
    from ..upscaler import default_tile

    # torch's ONNX exporter needs onnx + onnxscript; the export is checked on ONNX Runtime
    require_all(("onnx", "onnxscript", "onnxruntime"), "gtasr-export")
    check_output_dir(out_dir)  # before the (long) trace: an unwritable --out fails in one line
    loaded = _load(weights, param_key, network_config, preset)
    model = loaded.model
    if tile is None:  # the upscaler's default for this network (weights of a preset's shape count)
        tile = default_tile(model.config.size_multiple, loaded.preset)
    check_tile((tile, tile), model.config.size_multiple)
    if loaded.random:
        click.echo(RANDOM_WEIGHTS_WARNING.format(name=loaded.name), err=True)
    result = export_onnx(model, out_dir, name=loaded.name, tile_lr=(tile, tile), batch_max=batch,
                         opset=opset or DEFAULT_OPSET, weights_sha256=loaded.weights_sha256, preset=loaded.preset,
                         log=click.echo)
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
        _build_tensorrt(half.onnx_path, engine_cache)
    if not images:
        return False
    from .check import run_check

    failed = False
    for graph in graphs:
        click.echo(f"check: torch fp32 vs {graph.name} on ONNX Runtime, {len(images)} image(s)")
        failed |= run_check(images, reference=dict(model=loaded, backend="torch", precision="fp32"),
                            candidate=dict(backend="onnxruntime", onnx=graph), tile=tile)
    return failed


if __name__ == "__main__":
    main()
