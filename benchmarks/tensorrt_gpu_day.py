"""For the day an NVIDIA GPU is lent: TensorRT engines against torch on real photos, and the paper row.

    python benchmarks/tensorrt_gpu_day.py --photos samples       # parity + latency, writes the report
    python benchmarks/tensorrt_gpu_day.py --dry-run              # the plan, on any machine

Needs: an RTX GPU with ``pip install 'gtasr-deploy[tensorrt-rtx]'`` (TensorRT for RTX), or any
NVIDIA GPU with classic TensorRT installed from NVIDIA; a CUDA build of torch; the onnx extra.
Writes ``benchmarks/tensorrt_<gpu>.md`` (and the bench JSON beside it). Steps:

1. export the fp32 and fp16 graphs of ``--weights`` (LR tile ``--tile``) with ``gtasr-export``, which
   builds an engine for this GPU beside each graph (``--trt-targets auto``); with TensorRT for RTX
   also an engine compiled ahead of time for this GPU's architecture by name, as a machine without a
   GPU would build it, and checks the runner finds and uses it;
2. parity on the photos: each engine against torch fp32 on the same GPU, same tiles, same seed:
   PSNR (8-bit), max difference, NaN/Inf, and black tiles (an output tile that is black where the
   reference tile is not). Pass: fp16 >= 40 dB, fp32 >= 50 dB, no NaN/Inf, no black tile;
3. the paper-comparison latency row: ``gtasr-bench`` with the paper network, LR 128², batch 1,
   torch and tensorrt, fp32 and fp16 (the bench adds the ratio to the paper's 0.08 s on an RTX 4090).

Exit code 1 when a parity check fails. Nothing here has run on a GPU yet: the first run is the check.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIN_PSNR = {"fp16": 40.0, "fp32": 50.0}
BLACK = 1.0 / 255.0  # an output tile whose max is below this is black
LIT = 0.05  # ...and counts as a black tile only where the reference tile's max is above this


def plan(args, work: Path) -> list[list[str]]:
    """The commands this script runs (export, bench), as argument lists."""
    export = ["gtasr-export", "--fp16", "--tile", str(args.tile), "--batch", "1", "--out", str(work / "export")]
    if args.weights:
        export += ["--weights", args.weights]
    bench = ["gtasr-bench", "--preset", "paper", "--backends", "torch,tensorrt", "--precision", "fp32,fp16",
             "--tile", "128", "--batch", "1", "--device", "cuda", "--warmup", "3", "--repeat", "10", "--no-e2e",
             "--cache-dir", str(work / "bench"), "--out", str(args.report.with_suffix(".json")),
             "--markdown", str(work / "bench.md")]
    return [export, bench]


def black_tiles(sr: np.ndarray, ref: np.ndarray, tile_px: int) -> int:
    """Output tiles (tile_px², HR) that are black in ``sr`` where ``ref`` has content."""
    count = 0
    for y in range(0, sr.shape[0], tile_px):
        for x in range(0, sr.shape[1], tile_px):
            a, b = sr[y:y + tile_px, x:x + tile_px], ref[y:y + tile_px, x:x + tile_px]
            finite = np.abs(a[np.isfinite(a)])
            count += int(finite.size > 0 and finite.max() < BLACK and np.max(b) > LIT)
    return count


def parity(graphs: dict[str, Path], photos: list[Path], tile: int) -> list[dict]:
    """Each engine against torch fp32 on the GPU; one row per (precision, photo)."""
    from gtasr_deploy.bench.check import compare_outputs
    from gtasr_deploy.media.images import read_image
    from gtasr_deploy.upscaler import Upscaler

    rows = []
    for precision, graph in graphs.items():
        cand = Upscaler(backend="tensorrt", onnx=graph, device="cuda", seed=0)
        ref = Upscaler(backend="torch", precision="fp32", tile=cand.options.tile, tile_overlap=cand.options.overlap,
                       device="cuda", seed=0)
        try:
            for path in photos:
                rgb = read_image(path).rgb
                want, got = ref.upscale_float(rgb), cand.upscale_float(rgb)
                check = compare_outputs(str(path), want, got)
                dark = black_tiles(got, want, 4 * tile)
                ok = (check.psnr_db >= MIN_PSNR[precision] and check.non_finite == 0 and dark == 0)
                rows.append({"precision": precision, "photo": path.name, "lr": f"{rgb.shape[1]}x{rgb.shape[0]}",
                             "psnr_db": check.psnr_db, "max_diff": check.max_diff, "non_finite": check.non_finite,
                             "black_tiles": dark, "ok": ok})
        finally:
            cand.close()
            ref.close()
    return rows


def ahead_of_time_check(graph: Path) -> str:
    """TensorRT for RTX: compile for this GPU's architecture by name (no CURRENT), then let the runner find it."""
    from gtasr_deploy.engines import tensorrt_build, trt_cache
    from gtasr_deploy.engines.tensorrt import TensorRTEngine

    gpu = tensorrt_build.cuda_device_info()
    if tensorrt_build.pick_library("auto", gpu) != "tensorrt-rtx":
        return "skipped: classic TensorRT builds for the GPU it runs on only"
    target = trt_cache.target_name(gpu[1])
    aot_dir = graph.parent / "aot"
    aot_dir.mkdir(exist_ok=True)
    for suffix in (".onnx", ".json"):
        (aot_dir / graph.with_suffix(suffix).name).write_bytes(graph.with_suffix(suffix).read_bytes())
    moved = aot_dir / graph.name
    path = tensorrt_build.get_or_build_engine(moved, targets=target, log=print)
    logs: list[str] = []
    with TensorRTEngine.from_onnx(moved, log=logs.append) as engine:
        used = logs[0] if logs else ""
        assert engine.info.precision == "fp16"
    return f"{target} engine {path.name}: " + ("found and used" if str(path) in used else f"NOT used ({used})")


def report(args, commands, machine: dict, rows: list[dict], aot: str, bench_md: str) -> str:
    lines = [f"# TensorRT engines on one {machine['gpu']}", "",
             f"Measured {machine['date']} with `benchmarks/tensorrt_gpu_day.py`: {machine['gpu']} "
             f"({machine['capability']}), {machine['library']} {machine['library_version']}, torch "
             f"{machine['torch']}, Python {machine['python']}.", "", "```sh",
             *(" ".join(c) for c in commands), "```", "",
             f"## Parity on real photos (engine vs torch fp32 on the same GPU, LR tile {args.tile})", "",
             "| engine | photo | LR px | PSNR dB | max diff /255 | NaN/Inf | black tiles | pass |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['precision']} | {r['photo']} | {r['lr']} | {r['psnr_db']:.2f} | {r['max_diff']} | "
                     f"{r['non_finite']} | {r['black_tiles']} | {'yes' if r['ok'] else 'NO'} |")
    lines += ["", f"Pass: fp16 >= {MIN_PSNR['fp16']:g} dB, fp32 >= {MIN_PSNR['fp32']:g} dB, no NaN/Inf, no black "
              "tile.", "", f"Ahead-of-time engine: {aot}", "", "## Latency (gtasr-bench)", "", bench_md.strip(), ""]
    return "\n".join(lines)


def machine_facts() -> dict:
    import datetime

    import torch

    from gtasr_deploy.engines import tensorrt_build

    name, capability = tensorrt_build.cuda_device_info()
    library = tensorrt_build.pick_library("auto", (name, capability))
    return {"gpu": name, "capability": f"sm{capability[0]}{capability[1]}", "library": library,
            "library_version": tensorrt_build.import_library(library).__version__, "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.date.today().isoformat()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=ROOT / "samples", help="folder of real photos (LR)")
    parser.add_argument("--weights", default=None, help="gtasr-export --weights (default: embedded demo weights)")
    parser.add_argument("--tile", type=int, default=128, help="LR tile of the exported graphs")
    parser.add_argument("--report", type=Path, default=None, help="default: benchmarks/tensorrt_<gpu>.md")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and check the inputs; no GPU needed")
    args = parser.parse_args(argv)
    from gtasr_deploy.batch.runner import collect_inputs
    from gtasr_deploy.engines import tensorrt_build
    from gtasr_deploy.errors import GtasrError

    try:
        photos = [src for src, _ in collect_inputs(args.photos)]
    except GtasrError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    gpu = tensorrt_build.local_gpu()
    slug = re.sub(r"[^a-z0-9]+", "_", (gpu[0] if gpu else "gpu").lower()).strip("_")
    args.report = args.report or ROOT / "benchmarks" / f"tensorrt_{slug}.md"
    with tempfile.TemporaryDirectory(prefix="gtasr-trt-day-") as tmp:
        work = Path(tmp)
        commands = plan(args, work)
        if args.dry_run:
            print(f"photos: {len(photos)} under {args.photos}; report: {args.report}")
            print("GPU: " + (f"{gpu[0]} (sm{gpu[1][0]}{gpu[1][1]})" if gpu else "none here (the real run needs one)"))
            print("engine can run here: " + (tensorrt_build.explain_unavailable() or "yes"))
            print("engine can be built here: " + (tensorrt_build.explain_cannot_build() or "yes"))
            for command in commands:
                print("would run: " + " ".join(command))
            print("then: parity of each engine vs torch fp32 on the photos (fp16 >= 40 dB, fp32 >= 50 dB, no NaN, "
                  "no black tiles); an ahead-of-time engine for this GPU's architecture, found and used")
            return 0
        reason = tensorrt_build.explain_unavailable()
        if reason is not None:
            print(f"error: {reason}", file=sys.stderr)
            return 2
        machine = machine_facts()
        subprocess.run(commands[0], check=True)
        graphs = {precision: next((work / "export").glob(f"*_tile{args.tile}_{precision}.onnx"))
                  for precision in ("fp32", "fp16")}
        aot = ahead_of_time_check(graphs["fp16"])
        rows = parity(graphs, photos, args.tile)
        subprocess.run(commands[1], check=True)
        text = report(args, commands, machine, rows, aot, (work / "bench.md").read_text(encoding="utf-8"))
    args.report.write_text(text, encoding="utf-8")
    args.report.with_suffix(".parity.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print(text)
    passed = all(r["ok"] for r in rows) and ("found and used" in aot or aot.startswith("skipped"))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
