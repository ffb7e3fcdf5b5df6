"""The default path, measured: speed of `gtasr-upscale` per path, and the cost and quality of the
statistics pass of images too large for one call. Writes benchmarks/default_path.{md,json}.

    python benchmarks/default_path.py fill                         # the default's first run (graph cache)
    python benchmarks/default_path.py speed   [--reps 2]          # paper network, a 320x256 photo
    python benchmarks/default_path.py small   [--reps 3]          # embedded weights, the README's samples/
    python benchmarks/default_path.py photos HELDOUT_DIR           # the LR photos of the quality rows
    python benchmarks/default_path.py quality PHOTO...             # embedded weights, real photos
    python benchmarks/default_path.py report                       # the markdown from the JSON

speed: every row is a separate `gtasr-upscale --json` process (one engine per process,
OMP_WAIT_POLICY=PASSIVE, 2 threads) on the same 320x256 photo (matplotlib's grace_hopper.jpg,
resized with PIL bicubic), with seeded random weights of the paper network saved once as a
.safetensors (speed does not depend on the values); the per-image seconds come from the run's
--json report. `fill` is the default's first run, which fills the graph cache (.cache/default_path;
its wall time is reported); the speed rows run after it. small: the first thing a new user runs,
`gtasr-upscale samples/ OUT` with the embedded weights, default against `--backend torch --tile 0
--precision fp32`, the two alternating, each run's wall time and per-image seconds (after one
default run that fills the graph cache in .cache/default_path/small-cache). quality: for each photo (LR as given), the whole image in one torch fp32
call is the reference; the same image cut into tiles as if memory held only a quarter of it,
with each statistics policy, is compared with it (PSNR over the 8-bit output) and its executed
LR px counted; plus the default (auto backend and precision) against the reference on the photo.
photos: the held-out photos of `python -m gtasr_deploy.training.photos data/photos` (HELDOUT_DIR =
data/photos/heldout) resized (PIL bicubic) to a long side of 512 px, and grace_hopper.jpg at
512x384, into .cache/default_path/photos; the committed rows used grace_hopper_512x384, chelsea,
coffee, lomiri_friends, mate_Storm and plasma_Path.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "default_path.json"
ROWS = [  # (label, extra CLI arguments)
    ("authors' equivalent: torch, fp32, whole image in one call", ["--backend", "torch", "--tile", "0",
                                                                   "--precision", "fp32"]),
    ("default (auto), second run: the graph cache filled", []),
    ("default backend with --precision bf16", ["--precision", "bf16"]),
    ("torch, bf16, auto tiles", ["--backend", "torch", "--precision", "bf16"]),
    ("previous default: torch, bf16, tile 256, statistics from every tile", ["--backend", "torch", "--precision",
                                                                             "bf16", "--tile", "256", "--stats",
                                                                             "tiles"]),
]


def _load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}


def _save(data: dict) -> None:
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def _photo(size: tuple[int, int], path: Path) -> Path:
    from matplotlib import cbook
    from PIL import Image

    w, h = size
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        im = im.convert("RGB")
        cw, ch = min(im.width, im.height * w // h), min(im.height, im.width * h // w)
        left, top = (im.width - cw) // 2, (im.height - ch) // 2
        im.crop((left, top, left + cw, top + ch)).resize((w, h), Image.Resampling.BICUBIC).save(path)
    return path


def _paper_weights(path: Path) -> Path:
    from safetensors.torch import save_file

    from gtasr_deploy.inference.loader import load_denoiser

    if not path.is_file():
        model = load_denoiser(None, preset="paper", random_ok=True, seed=0).model
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _upscale(photo: Path, weights: Path, extra: list[str], work: Path, env: dict) -> tuple[float, str]:
    """Seconds of the one image in a `gtasr-upscale --json` run, and the run header's first line."""
    out, report = work / "out", work / "report.json"
    cmd = ["gtasr-upscale", str(photo), str(out), "--weights", str(weights), "--network-config", "paper",
           "--overwrite", "--threads", "2", "--json", str(report), *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stderr}")
    files = json.loads(report.read_text())["files"]
    return float(files[0]["seconds"]), run.stderr.splitlines()[0] if run.stderr else ""


WORK = HERE.parent / ".cache" / "default_path"


def _setup() -> tuple[Path, Path, dict]:
    WORK.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="2", GTASR_CACHE=str(WORK / "cache"))
    photo = WORK / "photo.png"
    if not photo.is_file():
        _photo((320, 256), photo)
    return photo, _paper_weights(WORK / "paper_random.safetensors"), env


def fill() -> None:
    photo, weights, env = _setup()
    start = time.perf_counter()
    _upscale(photo, weights, [], WORK, env)  # exports the graph into the graph cache
    data = _load()
    data["fill"] = {"seconds": time.perf_counter() - start, "machine": _machine(),
                    "command": "python benchmarks/default_path.py fill"}
    _save(data)


def speed(reps: int) -> None:
    photo, weights, env = _setup()
    rows = []
    for label, extra in ROWS:
        seconds = []
        for _ in range(reps):
            s, header = _upscale(photo, weights, extra, WORK, env)
            seconds.append(s)
        rows.append({"label": label, "args": " ".join(extra) or "(none)", "seconds": seconds,
                     "median_s": float(np.median(seconds)), "header": header})
        print(f"{label}: {seconds}", flush=True)
    data = _load()
    data["speed"] = {"photo": "grace_hopper.jpg resized to 320x256 (LR) -> 1280x1024", "network": "paper (random)",
                     "rows": rows, "machine": _machine(),
                     "command": f"python benchmarks/default_path.py speed --reps {reps}"}
    _save(data)


SMALL_ROWS = [("authors' equivalent: torch, fp32, whole image in one call", ["--backend", "torch", "--tile", "0",
                                                                         "--precision", "fp32"]),
              ("default (auto), the graph cache filled", [])]


def small(reps: int) -> None:
    samples = HERE.parent / "samples"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="2", GTASR_CACHE=str(WORK / "small-cache"))
    work = Path(tempfile.mkdtemp(prefix="gtasr-small-"))

    def run(extra: list[str]) -> tuple[float, list[float]]:
        report = work / "report.json"
        cmd = ["gtasr-upscale", str(samples), str(work / "out"), "--overwrite", "--threads", "2", "--json",
               str(report), *extra]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr}")
        return wall, [float(f["seconds"]) for f in json.loads(report.read_text())["files"]]

    fill_wall, _ = run([])  # fills the graph cache when it is empty
    rows = {label: {"label": label, "args": " ".join(extra) or "(none)", "wall_s": [], "image_s": []}
            for label, extra in SMALL_ROWS}
    for _ in range(reps):
        for label, extra in SMALL_ROWS:
            wall, images = run(extra)
            rows[label]["wall_s"].append(wall)
            rows[label]["image_s"].append(images)
            print(label, wall, images, flush=True)
    data = _load()
    data["small"] = {"images": sorted(p.name for p in samples.iterdir() if p.suffix == ".png"),
                     "weights": "embedded demo weights", "first_run_wall_s": fill_wall,
                     "rows": list(rows.values()), "machine": _machine(),
                     "command": f"python benchmarks/default_path.py small --reps {reps}"}
    _save(data)


def quality(photos: list[str]) -> None:
    from gtasr_deploy.engines.torch_engine import TorchEngine
    from gtasr_deploy.media.images import read_image
    from gtasr_deploy.inference.loader import load_denoiser
    from gtasr_deploy.inference.pipeline import Pipeline, TilePolicy
    from gtasr_deploy.upscaler import Upscaler

    data = _load()
    model = load_denoiser(None).model
    engine = TorchEngine(model, precision="fp32")
    m = engine.info.size_multiple
    # the factor is the smallest >= the policy's whose downscaled image fits the budget
    policies = [("tiles (every tile once more)", TilePolicy(tile=None, stats="tiles")),
                ("downscaled, factor >= 2 (the default)", TilePolicy(tile=None, stats="downscaled", stats_factor=2)),
                ("downscaled, factor >= 3", TilePolicy(tile=None, stats="downscaled", stats_factor=3)),
                ("downscaled, factor >= 4", TilePolicy(tile=None, stats="downscaled", stats_factor=4)),
                ("none (per-tile statistics)", TilePolicy(tile=None, norm="tile"))]
    rows, defaults = [], []
    default = Upscaler()  # what a user gets: auto backend and precision, auto tiles
    for path in photos:
        rgb = read_image(path).rgb
        h, w = rgb.shape[:2]
        lq = np.ascontiguousarray(rgb.transpose(2, 0, 1)) * 2.0 - 1.0
        start = time.perf_counter()
        reference = Pipeline(engine, TilePolicy(tile=0))(lq)
        whole_s = time.perf_counter() - start
        budget = (-(-h // m) * m) * (-(-w // m) * m) // 4  # memory for a quarter of the image
        for name, policy in policies:
            pipeline = Pipeline(engine, policy, budget=lambda: budget)
            start = time.perf_counter()
            out = pipeline(lq)
            seconds = time.perf_counter() - start
            cost = pipeline.cost(h, w)
            rows.append({"photo": Path(path).name, "size": f"{w}x{h}", "stats": name, "psnr_db": _psnr(out, reference),
                         "tiles": cost.plan.n_tiles, "factor": cost.stats_factor,
                         "executed_over_output_px": cost.pixel_ratio,
                         "seconds": seconds, "whole_s": whole_s})
            print(rows[-1], flush=True)
        out = default.upscale_float(np.ascontiguousarray(rgb, dtype=np.float32)).transpose(2, 0, 1)
        defaults.append({"photo": Path(path).name, "size": f"{w}x{h}", "psnr_db": _psnr(out, reference),
                         "backend": default.engine.info.backend, "precision": default.engine.info.precision})
        print(defaults[-1], flush=True)
    data["quality"] = {"rows": rows, "default_vs_whole_fp32": defaults, "machine": _machine(),
                       "weights": "embedded demo weights",
                       "command": "python benchmarks/default_path.py quality " + " ".join(photos)}
    _save(data)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    a8, b8 = (np.rint(np.clip(x, 0, 1) * 255) for x in (a, b))
    mse = float(np.mean((a8 - b8) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _machine() -> dict:
    from gtasr_deploy.engines.precision import cpu_features, native_bf16

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "native_bf16": native_bf16(cpu_features()),
            "load_average": os.getloadavg()}


def photos(heldout: str) -> None:
    from PIL import Image

    out = WORK / "photos"
    out.mkdir(parents=True, exist_ok=True)
    _photo((512, 384), out / "grace_hopper_512x384.png")
    for path in sorted(Path(heldout).iterdir()):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
            with Image.open(path) as im:
                im = im.convert("RGB")
                ratio = 512 / max(im.size)
                im.resize((round(im.width * ratio), round(im.height * ratio)), Image.Resampling.BICUBIC).save(
                    out / f"{path.stem}.png")


def report() -> None:
    data = _load()
    lines = ["# Default path", "", "Made by `benchmarks/default_path.py` (see its docstring); numbers from "
             "`benchmarks/default_path.json`.", ""]
    if "speed" in data:
        sp = data["speed"]
        base = sp["rows"][0]["median_s"]
        lines += [f"## Speed: `gtasr-upscale` on {sp['photo']}, {sp['network']}", "",
                  f"Machine: {sp['machine']['cpu']}, {sp['machine']['cores']} cores, native bf16: "
                  f"{sp['machine']['native_bf16']}; load average at the end {sp['machine']['load_average'][0]:.2f}. "
                  f"Command: `{sp['command']}`.", "",
                  "| path | arguments | seconds per image (median) | vs the authors' equivalent |",
                  "|---|---|---:|---:|"]
        for row in sp["rows"]:
            lines.append(f"| {row['label']} | `{row['args']}` | {row['median_s']:.1f} | "
                         f"{base / row['median_s']:.2f}x |")
        if "fill" in data:
            lines += ["", f"First run of the default (exports the graph into the graph cache, once per weights and "
                      f"package version): {data['fill']['seconds']:.0f} s in all (load average "
                      f"{data['fill']['machine']['load_average'][0]:.1f} at its end).", ""]
    if "small" in data:
        sm = data["small"]
        base = float(np.median(sm["rows"][0]["wall_s"]))
        lines += [f"## Speed: `gtasr-upscale samples/ OUT` ({', '.join(sm['images'])}), {sm['weights']}", "",
                  f"Machine: {sm['machine']['cpu']}, {sm['machine']['cores']} cores, native bf16: "
                  f"{sm['machine']['native_bf16']}; load average at the end {sm['machine']['load_average'][0]:.2f}. "
                  f"Command: `{sm['command']}`; the rows alternate, one process per run, imports and "
                  "weights loading included in the wall time.", "",
                  "| path | arguments | wall s per run (median) | per image s (median of each) | vs the authors' "
                  "equivalent |", "|---|---|---:|---|---:|"]
        for row in sm["rows"]:
            per_image = " + ".join(f"{np.median(col):.2f}" for col in zip(*row["image_s"]))
            wall = float(np.median(row["wall_s"]))
            lines.append(f"| {row['label']} | `{row['args']}` | {wall:.2f} | {per_image} | {base / wall:.2f}x |")
        lines += ["", f"The run before them (filling the graph cache when it was empty): {sm['first_run_wall_s']:.1f} s.",
                  ""]
    if "quality" in data:
        q = data["quality"]
        lines += ["## Images too large for one call: where the shared statistics come from", "",
                  f"{q['weights']}, torch fp32; the budget is a quarter of each image's (padded) pixels, so every "
                  "image is cut into tiles; PSNR against the whole image in one call (8-bit output). Command: "
                  f"`{q['command']}`.", "",
                  "| photo | LR size | statistics | tiles | executed / output LR px | PSNR vs whole image (dB) |",
                  "|---|---|---|---:|---:|---:|"]
        for r in q["rows"]:
            lines.append(f"| {r['photo']} | {r['size']} | {r['stats']} | {r['tiles']} | "
                         f"{r['executed_over_output_px']:.2f} | {r['psnr_db']:.2f} |")
        lines += ["", "Mean over the photos:", "", "| statistics | executed / output LR px | PSNR vs whole image (dB) |",
                  "|---|---:|---:|"]
        for name in dict.fromkeys(r["stats"] for r in q["rows"]):
            rows = [r for r in q["rows"] if r["stats"] == name]
            lines.append(f"| {name} | {np.mean([r['executed_over_output_px'] for r in rows]):.2f} | "
                         f"{np.mean([r['psnr_db'] for r in rows]):.2f} |")
        lines += ["", "The default (auto backend and precision, whole image) against the whole-image torch fp32 "
                  "output:", "", "| photo | LR size | backend | precision | PSNR (dB) |", "|---|---|---|---|---:|"]
        for r in q["default_vs_whole_fp32"]:
            lines.append(f"| {r['photo']} | {r['size']} | {r['backend']} | {r['precision']} | {r['psnr_db']:.2f} |")
    (HERE / "default_path.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("fill", "speed", "small", "photos", "quality", "report"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "photos":
        photos(sys.argv[2])
    elif sys.argv[1] == "fill":
        fill()
    elif sys.argv[1] == "speed":
        speed(int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 2)
    elif sys.argv[1] == "small":
        small(int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 3)
    elif sys.argv[1] == "quality":
        quality(sys.argv[2:])
    report()
