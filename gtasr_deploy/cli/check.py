"""`gtasr-check IMAGES...`: upscale with two backends or precisions and compare the pictures.

    gtasr-check photos/ --backend onnxruntime --onnx export/gtasr_demo_tile128_fp32.onnx
    gtasr-check photos/ --backend torch --precision bf16          # bf16 against torch fp32
    gtasr-check photos/ --backend tensorrt --onnx export/x_fp16.onnx --min-psnr 40

The reference is torch fp32 with the same weights, seed, tile and overlap unless --reference-* says
otherwise. Exit code: 0 within tolerance, 1 a difference above tolerance, a NaN/Inf or an image
that could not be checked, 2 usage error.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..version import __version__
from ..errors import GtasrError
from .weights import weights_callback
from ..bench.check import check_images
from ..upscaler import Upscaler
from ..batch.runner import check_device, collect_inputs
from ..engines.backends import FACTS, GRAPH_BACKENDS, NAMES

EXIT_USAGE = 2
BACKEND_CHOICES = list(NAMES)
GRAPH_NAMES = "/".join(GRAPH_BACKENDS)  # "onnxruntime/openvino/tensorrt"
PRECISION_BACKENDS = "/".join(name for name, facts in FACTS.items() if not facts.precision_from_graph)


def run_check(images, *, reference: dict, candidate: dict, tile: int | None = None, seed: int = 0,
              device: str = "cpu", max_diff: int | None = None, min_psnr: float | None = None,
              echo=click.echo) -> bool:
    """Build both upscalers (keyword dicts for :class:`~gtasr_deploy.upscaler.Upscaler`), compare on
    ``images``, print one line per image and a verdict; True when the check failed. Tolerances
    default to 1/255 when the candidate runs fp32 and 40 dB PSNR when it runs a reduced precision."""

    # the candidate first: a graph fixes the tile, and the reference then cuts the same tiles
    tiled = {"tile": tile} if tile is not None and candidate.get("onnx") is None else {}
    cand = Upscaler(**{**tiled, **candidate}, seed=seed, device=device)
    ref = Upscaler(**{**reference, "tile": cand.options.tile, "tile_overlap": cand.options.overlap},
                   seed=seed, device=device)
    reduced = cand.engine.info.precision != "fp32" or ref.engine.info.precision != "fp32"
    if max_diff is None and min_psnr is None:
        max_diff, min_psnr = (None, 40.0) if reduced else (1, None)
    describe = [f"{u.engine.info.backend} {u.engine.info.precision}" for u in (ref, cand)]
    echo(f"reference {describe[0]} vs candidate {describe[1]}: tile {cand.options.tile}, overlap "
         f"{cand.options.overlap}, norm {cand.options.norm}, seed {seed}; tolerance "
         + (f"max diff {max_diff}/255" if max_diff is not None else "") + (" and " if max_diff is not None and
                                                                           min_psnr is not None else "")
         + (f"PSNR >= {min_psnr:g} dB" if min_psnr is not None else ""))
    try:
        rows = check_images(ref.upscale_float, cand.upscale_float, images)
    finally:
        ref.close()
        cand.close()
    failed = [row for row in rows if row.failed(max_diff=max_diff, min_psnr=min_psnr)]
    for row in rows:
        echo(("FAIL " if row in failed else "ok   ") + row.line())
    echo(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    return bool(failed)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="gtasr-check")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--weights", callback=weights_callback, help="Weights of the torch side(s). Default: embedded demo.")
@click.option("--backend", type=click.Choice(BACKEND_CHOICES), default="onnxruntime", show_default=True,
              help="Candidate backend.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Exported graph for an {GRAPH_NAMES} candidate.")
@click.option("--precision", default="fp32", show_default=True,
              help=f"Candidate precision for the {PRECISION_BACKENDS} backend (fp32, bf16, fp16, auto).")
@click.option("--reference", "ref_backend", type=click.Choice(BACKEND_CHOICES), default="torch",
              show_default=True, help="Reference backend.")
@click.option("--reference-onnx", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Graph for an {GRAPH_NAMES} reference.")
@click.option("--reference-precision", default="fp32", show_default=True,
              help=f"Reference precision ({PRECISION_BACKENDS}).")
@click.option("--tile", type=int, default=None, help="LR tile (torch sides; graphs use their own).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--max-diff", type=click.IntRange(0, 255), default=None,
              help="Largest allowed 8-bit difference. Default: 1 for fp32 candidates.")
@click.option("--min-psnr", type=float, default=None, help="Smallest allowed PSNR in dB. Default: 40 for "
                                                           "reduced-precision candidates.")
def main(inputs, weights, backend, onnx_path, precision, ref_backend, reference_onnx, reference_precision, tile,
         seed, device, max_diff, min_psnr) -> None:
    """Upscale INPUTS (images or folders) with a reference and a candidate backend; compare the pictures."""

    try:
        check_device(device)
        images = [src for path in inputs for src, _ in collect_inputs(path)]
        if FACTS[backend].graph and onnx_path is None:
            raise GtasrError(f"--backend {backend} needs --onnx GRAPH (export one with gtasr-export)")
        if FACTS[ref_backend].graph and reference_onnx is None:
            raise GtasrError(f"--reference {ref_backend} needs --reference-onnx GRAPH")
        reference = dict(weights=weights, backend=ref_backend, onnx=reference_onnx, precision=reference_precision)
        candidate = dict(weights=weights, backend=backend, onnx=onnx_path, precision=precision)
        failed = run_check(images, reference=reference, candidate=candidate, tile=tile, seed=seed, device=device,
                           max_diff=max_diff, min_psnr=min_psnr)
    except GtasrError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
