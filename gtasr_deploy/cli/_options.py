"""The click options that gtasr-upscale and gtasr-serve share, declared once, and the one place
where their flags become an :class:`~gtasr_deploy.inference.options.UpscaleOptions`.

``@model_options`` adds the flags that shape an upscale run (weights, backend, device, precision,
tiles, seed, threads...); ``options_from_flags`` pops them from a command's parameters and builds
the options. The output flags (--format, --quality, --suffix, --overwrite, --max-pixels) are
declared here too, for gtasr-upscale and gtasr-serve batch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from ..engines.factory import BACKENDS
from ..engines.precision import CHOICES as PRECISION_CHOICES
from ..batch.preflight import check_device
from ..errors import ConfigError
from ..inference.options import UpscaleOptions, parse_tile
from .weights import weights_callback

# click parameter name -> UpscaleOptions field (shared_norm, the older spelling of norm, is mapped apart)
MODEL_FLAGS = {"weights": "weights", "param_key": "param_key", "network_config": "network_config",
               "backend": "backend", "onnx_path": "onnx", "device": "device", "precision": "precision",
               "seed": "seed", "tile": "tile", "tile_overlap": "tile_overlap", "batch": "batch", "norm": "norm",
               "stats": "stats", "shared_norm": None, "threads": "threads", "compile_model": "compile",
               "channels_last": "channels_last"}
DEFAULT_DEVICE = "auto"  # the commands' default; the Python API's is cpu

_MODEL_OPTIONS: tuple[Callable, ...] = (
    click.option("--weights", callback=weights_callback,
                 help="Weights: a name fetched with gtasr-weights (gtasr-final, ...), an official .pth "
                      "(GTASR_final_phase.pth, CTMSR.pth, ...) or our .safetensors. "
                      "Default: the embedded demo weights."),
    click.option("--param-key", default="params_ema", show_default=True,
                 help="Entry of an official .pth to load (params_ema or params)."),
    click.option("--network-config", help="Preset name (paper, demo) or a network JSON (ours or the authors' "
                                          "network_g names). Default: read from the file or inferred from shapes."),
    click.option("--backend", type=click.Choice(list(BACKENDS)),
                 default="auto", show_default=True,
                 help="auto: the fastest runtime installed. CPU: OpenVINO when the 'openvino' extra "
                      "is installed (the first run exports the model's graph into the graph cache, "
                      "$GTASR_CACHE or ~/.cache/gtasr_deploy; later runs reuse it), else ONNX "
                      "Runtime for --onnx, else torch. CUDA: TensorRT for --onnx when installed, "
                      "else torch. The choice and its reason are printed first."),
    click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path),
                 help="Exported graph from gtasr-export (its sidecar JSON gives tile shape and size rule)."),
    click.option("--device", default=DEFAULT_DEVICE, show_default=True,
                 help="cpu, cuda, cuda:N; auto = cuda (cuda:$LOCAL_RANK under torchrun) when present, else cpu."),
    click.option("--precision", type=click.Choice(list(PRECISION_CHOICES)), default="auto",
                 show_default=True,
                 help="auto: bf16 on CPUs with native bf16 (AMX-BF16, AVX512-BF16), else fp32; fp16 on CUDA; an "
                      "exported graph's own precision with --onnx. The choice and its reason are printed first."),
    click.option("--seed", type=click.IntRange(-2**63, 2**64 - 1), default=0, show_default=True,
                 help="Seed of the unit noise added to up(LR)."),
    click.option("--tile", default="auto", show_default=True,
                 help="auto: the whole image in one network call when the memory model says it fits (free RAM, "
                      "cgroup and address-space limits; free GPU memory on CUDA), else the largest tiles that fit, "
                      "with GroupNorm statistics from a downscaled pass. A number: LR tile size in px (a multiple "
                      "of the size rule); 0 = always the whole image. An image that runs out of memory is retried "
                      "with smaller tiles."),
    click.option("--tile-overlap", type=int, default=None, help="Overlap between tiles in LR px. Default: tile/8."),
    click.option("--batch", type=int, default=1, show_default=True, help="Tiles per engine call."),
    click.option("--norm", type=click.Choice(["shared", "tile"]), default="shared", show_default=True,
                 help="For images cut into tiles. shared: every tile normalised with GroupNorm statistics of the "
                      "whole image, so tiled output follows the whole image without per-tile colour offsets; every "
                      "backend does it. tile: each tile its own statistics."),
    click.option("--stats", type=click.Choice(["downscaled", "tiles"]), default="downscaled", show_default=True,
                 help="With --norm shared, where a tiled image's statistics come from: downscaled = the image "
                      "downscaled 2x or more, in one extra call (cut into the same tiles when --tile N is given or "
                      "the graph is static): about a quarter of a pass; tiles = every tile once more (a second "
                      "full pass)."),
    click.option("--shared-norm/--no-shared-norm", default=None, hidden=True,
                 help="Older spelling of --norm shared / --norm tile."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="CPU threads for torch / ONNX Runtime / OpenVINO. Default: the usable CPUs "
                      "that other processes do not keep busy (measured at start, at least 1)."),
    click.option("--compile", "compile_model", is_flag=True,
                 help="torch backend: torch.compile the network for the tile shape (CUDA graphs on CUDA). The first "
                      "run compiles (minutes on a small CPU); inductor caches the result for later runs."),
    click.option("--channels-last", is_flag=True,
                 help="torch backend: NHWC memory layout (fastest conv kernels on GPUs)."),
)


def model_options(command: Callable) -> Callable:
    """Add the upscale-run flags to a click command, in this order (help lists them so)."""
    for option in reversed(_MODEL_OPTIONS):
        command = option(command)
    return command


def options_from_flags(params: dict, *, device_here: bool = True) -> UpscaleOptions:
    """Pop the upscale-run flags from ``params`` (a command's keyword arguments) and build the options.

    With ``device_here`` the device must exist on this machine (``check_device``; ``auto`` always
    does); gtasr-serve passes False, as its model may run on other nodes of a Ray cluster. --weights
    with --onnx is refused unless the backend is torch (the exported graph holds its weights)."""
    flags = {name: params.pop(name) for name in MODEL_FLAGS if name in params}
    shared_norm = flags.pop("shared_norm", None)
    values = {MODEL_FLAGS[name]: value for name, value in flags.items()}
    if shared_norm is not None:
        values["norm"] = "shared" if shared_norm else "tile"
    if isinstance(values.get("tile"), str):
        values["tile"] = _tile_flag(values["tile"])
    if device_here:
        check_device(values.get("device", DEFAULT_DEVICE))
    if values.get("onnx") is not None and values.get("weights") is not None and values.get("backend") != "torch":
        raise ConfigError("--weights is not used with --onnx (the exported graph holds its weights); "
                          "give one of them")
    return UpscaleOptions.from_mapping({"device": DEFAULT_DEVICE, **values})


def _tile_flag(text: str) -> int | str:
    try:
        return parse_tile(text)
    except ConfigError:
        raise ConfigError(f"--tile {text!r}: expected auto, 0 (the whole image) or a whole number of LR px "
                          "(a multiple of the size rule)") from None


# ------------------------------------------------------------------ output flags (gtasr-upscale, gtasr-serve batch)

format_option = click.option("--format", "fmt", type=click.Choice(["png", "jpg", "webp", "same"]), default="png",
                             show_default=True, help="Output format; same = the input's format.")
quality_option = click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True,
                              help="JPEG/WebP quality.")
suffix_option = click.option("--suffix", default="", help="Appended to output file stems, e.g. _x4.")
overwrite_option = click.option(
    "--overwrite", is_flag=True,
    help="Redo every output and replace files this tool did not write (default: skip outputs finished "
         "for the same input and settings, so re-runs resume; refuse to replace other files).")


def max_pixels_option(default: int = 50_000_000) -> Callable:
    return click.option(
        "--max-pixels", type=click.IntRange(min=0), default=default, show_default=True,
        help="Refuse inputs with more pixels than this (decompression-bomb guard), and outputs of "
             "--outscale/--width/--height/--long-side larger than this (by area, checked before any "
             "work); 0 = no limit.")
