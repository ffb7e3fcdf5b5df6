"""Benchmark scenarios, each timed in its own process.

One scenario = (network, weights, backend, precision, LR tile, batch). The parent
(:func:`run_scenarios`) writes the scenario to a JSON file and spawns::

    python -m gtasr_deploy.bench.runner prepare|run SCENARIO.json RESULT.json

with ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = the requested threads and ``OMP_WAIT_POLICY=PASSIVE``
(busy-waiting OpenMP workers of an idle process would steal cores from the timed one; torch eager
collapses when another process spins). ``prepare`` exports the ONNX graph a backend needs (cached,
outside the timing); ``run`` times the model alone and then an end-to-end folder run through the
same engine, and writes one JSON row (schema in :mod:`gtasr_deploy.bench.report`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendUnavailableError, GtasrError
from . import timing
from .cost import count_model_macs, count_model_params
from .report import environment, result_row, skipped_row
from ..model.checkpoint import file_sha256
from ..model import resolve_config
from ..export.onnx import graph_file_name
from ..inference.loader import load_denoiser
from ..model.config import PRESETS
from ..contract import read_onnx_sidecar
from ..errors import ConfigError
from ..contract import sidecar_path_for
from ..export.onnx import ExportResult, export_fp16, export_onnx
from ..engines.factory import open_engine
from ..export.verify import sample_photo_lq
from .check import compare_outputs
from ..inference.loader import EMBEDDED_WEIGHTS
from ..upscaler import Upscaler
from ..inference.options import UpscaleOptions
from ..media.images import read_image, write_image
from ..inference.memory import call_memory, memory_budget
from ..inference.pipeline import Pipeline, TilePolicy
from ..model.schedule import one_step_start
from ..tiling import plan_tiles, reflect_indices
from ..engines.tensorrt_build import explain_unavailable
from ..engines.onnxruntime import import_onnxruntime
from ..engines.openvino import import_openvino
from ..engines.backends import FACTS, GRAPH_BACKENDS, NAMES
from ..model.conventions import SCALE, SIGMA_ONE, to_model_range, to_unit_range
from ..batch.runner import IMAGE_SUFFIXES
from ..errors import InputError
from ..inference.pipeline import default_overlap

BACKENDS = NAMES
# which precisions a backend computes (its facts: ONNX Runtime / TensorRT run the graph's own, fp32 or
# fp16; OpenVINO compiles the fp32 graph in fp32 or bf16)
BACKEND_PRECISIONS = {name: facts.precisions for name, facts in FACTS.items()}
QUALITY_TILE = 64  # LR tile of the per-precision quality check (embedded demo weights, a real photo)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """Everything one timing process needs; JSON-serialisable."""

    preset: str  # a preset name, or "custom" for --network-config
    network: Any  # preset name or config dict, as accepted by build_model
    weights: str | None  # None: random weights (seeded init); latency does not depend on values
    backend: str
    precision: str
    tile: int  # LR px, square
    batch: int
    warmup: int
    repeat: int
    threads: int
    device: str  # "cpu" | "cuda" | "cuda:N"
    cache_dir: str  # exported graphs live here, keyed by config, weights, tile, batch, precision
    graph_batch_max: int = 1  # the largest batch of this tile in the whole bench (one graph for all)
    images: tuple[str, ...] = ()  # LR inputs of the end-to-end run; empty: model-only
    seed: int = 0
    norm: str = "shared"  # the end-to-end run's normalisation policy (the CLI default)
    matmul_size: int | None = None  # n of the reference matmul; None: timing.MATMUL_SIZE for the device

    @classmethod
    def from_json(cls, text: str) -> "Scenario":
        data = json.loads(text)
        data["images"] = tuple(data.get("images", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# ---------------------------------------------------------------------------- model and graph


def weights_key(scenario: Scenario) -> str:
    """Identity of the weights for the graph cache: a file hash, or the seed of a random init."""
    if scenario.weights is None:
        return f"random{scenario.seed}"

    return file_sha256(scenario.weights)[:16]


def graph_name(scenario: Scenario) -> str:
    """The cached graph's name: config hash, weights and batch range (one graph with dynamic height
    and width serves every tile and whole image)."""

    config = resolve_config(scenario.network)
    config_hash = hashlib.sha256(config.to_json().encode()).hexdigest()[:10]
    return f"{scenario.preset}-{config_hash}-{weights_key(scenario)}-b{scenario.graph_batch_max}"


def graph_path(scenario: Scenario) -> Path:
    """Where the exported graph of this scenario lives."""

    graph_precision = FACTS[scenario.backend].graph_precision(scenario.precision)  # OpenVINO: the fp32 graph
    return Path(scenario.cache_dir) / graph_file_name(graph_name(scenario), None, graph_precision)


def load_network(scenario: Scenario):
    """D in eval mode on the CPU: the given weights, or a seeded random initialisation."""

    network = scenario.network
    # a string is a preset name or (--network-config) a JSON path; only a name is a preset
    preset = network if isinstance(network, str) and network in PRESETS and scenario.weights is None else None
    config = None if preset is not None else network
    return load_denoiser(scenario.weights, network_config=config, preset=preset, random_ok=True,
                         seed=scenario.seed).model


def _cached_sidecar(path: Path) -> dict | None:
    """The sidecar of a cached graph, or None when the graph is missing or its sidecar is not one the
    engines accept (e.g. a graph exported before the GroupNorm statistics I/O): export it again."""

    if not path.is_file():
        return None
    try:
        return read_onnx_sidecar(path)
    except ConfigError:
        return None


def ensure_graph(scenario: Scenario, log=None) -> Path:
    """Export the fp32 (and, for fp16, the converted) graph unless the cache already holds it."""

    log = log or (lambda line: print(line, file=sys.stderr))
    target = graph_path(scenario)
    if _cached_sidecar(target) is not None:
        return target
    fp32 = graph_path(Scenario(**{**asdict(scenario), "precision": "fp32"}))
    model = load_network(scenario)
    sha = None if scenario.weights is None else weights_key(scenario)
    cached = _cached_sidecar(fp32)
    if cached is not None:
        result = ExportResult(onnx_path=fp32, sidecar_path=sidecar_path_for(fp32), sidecar=cached, max_abs_error={})
    else:
        result = export_onnx(model, fp32.parent, name=graph_name(scenario), tile_lr=None,
                             batch_max=scenario.graph_batch_max, weights_sha256=sha,
                             preset=scenario.preset if scenario.preset != "custom" else None, log=log)
    if FACTS[scenario.backend].graph_precision(scenario.precision) == "fp16":
        result = export_fp16(result, model, log=log)
    return result.onnx_path


def open_scenario_engine(scenario: Scenario):
    """(engine, model config) for the scenario; graph backends read the cached export."""

    if scenario.backend in GRAPH_BACKENDS:
        path = graph_path(scenario)
        engine = open_engine(scenario.backend, onnx_path=path, device=scenario.device,
                             precision=scenario.precision, threads=scenario.threads)
    else:
        engine = open_engine("torch", model=load_network(scenario), device=scenario.device,
                             precision=scenario.precision, threads=scenario.threads)
    return engine, resolve_config(scenario.network)


# ---------------------------------------------------------------------------- timing (child side)


def random_feeds(scenario: Scenario, scale: int = SCALE) -> dict[str, np.ndarray]:
    """Seeded engine inputs of the scenario's shape: x_t ~ N(0, 1), lq ~ U[-1, 1], sigma = 1."""
    rng = np.random.default_rng(scenario.seed)
    n, t = scenario.batch, scenario.tile
    return {"x_t": rng.standard_normal((n, 3, t * scale, t * scale), dtype=np.float32),
            "lq": rng.uniform(-1.0, 1.0, (n, 3, t, t)).astype(np.float32),
            "sigma": np.full(n, SIGMA_ONE, dtype=np.float32)}


def time_model(scenario: Scenario) -> dict[str, Any]:
    """Model-only figures of one scenario, plus the end-to-end breakdown when it has images."""
    load_start = timing.load_average()
    engine, config = open_scenario_engine(scenario)
    try:
        feeds = random_feeds(scenario, config.scale)
        used_before = timing.reset_device_peak(scenario.device)
        stats = timing.time_calls(lambda: engine(**feeds), warmup=scenario.warmup, repeat=scenario.repeat,
                                  device=scenario.device)
        memory = timing.device_memory(scenario.device, used_before)
        rss = timing.peak_rss_bytes()  # a high-water mark: read now so the folder run does not count
        cuda = scenario.device.startswith("cuda")
        # each row against the matmul peak of its own precision (bf16 rows against the bf16 peak);
        # CPUs here have no fp16 matmul units, so CPU fp16 rows compare with the fp32 peak
        peak_precision = scenario.precision if cuda or scenario.precision != "fp16" else "fp32"
        peaks = timing.matmul_peaks(device=scenario.device, precision=peak_precision, size=scenario.matmul_size)
        macs = count_model_macs(scenario.network, tile_lr=(scenario.tile, scenario.tile), batch=scenario.batch)
        params = count_model_params(scenario.network)
        e2e = run_folder(engine, scenario, model_median_s=stats.median_s) if scenario.images else None
        quality = precision_quality(scenario) if scenario.precision != "fp32" else None
        return result_row(scenario, engine_device=engine.info.device, stats=stats, macs=macs, params=params,
                          matmul_peaks=peaks, matmul_precision=peak_precision, peak_rss_bytes=rss,
                          device_memory=memory, e2e=e2e, load_start=load_start, load_end=timing.load_average(),
                          quality=quality)
    finally:
        engine.close()


def precision_quality(scenario: Scenario) -> dict[str, Any] | None:
    """PSNR of this backend + precision against torch fp32 on a real photo, with the embedded demo
    weights (random weights would make the output nearly constant and hide any error), through the
    default pipeline; None when the photo is unavailable. Graph backends export the demo weights once."""

    lq = sample_photo_lq((2 * QUALITY_TILE - 24, 2 * QUALITY_TILE + 40))
    if lq is None:
        return None
    rgb = np.ascontiguousarray(to_unit_range(lq[0].transpose(1, 2, 0)))
    kwargs: dict[str, Any] = {"backend": scenario.backend, "precision": scenario.precision, "device": scenario.device}
    if scenario.backend in GRAPH_BACKENDS:
        demo = Scenario(**{**asdict(scenario), "preset": "demo", "network": "demo", "weights": str(EMBEDDED_WEIGHTS),
                           "tile": QUALITY_TILE, "graph_batch_max": 1})
        kwargs["onnx"] = ensure_graph(demo)
    reference = Upscaler.from_options(UpscaleOptions(tile=QUALITY_TILE, backend="torch", precision="fp32",
                                                     device=scenario.device))
    candidate = Upscaler.from_options(UpscaleOptions(**kwargs, tile=QUALITY_TILE))
    try:
        check = compare_outputs(SAMPLE_PHOTO, reference.upscale_float(rgb), candidate.upscale_float(rgb))
    finally:
        reference.close()
        candidate.close()
    return {"reference": "torch fp32", "photo": SAMPLE_PHOTO, "weights": "embedded demo", "tile": QUALITY_TILE,
            "psnr_db": check.psnr_db, "max_diff_255": check.max_diff}


class TimedEngine:
    """Wraps an engine for the folder run: same ``info`` and calls, and records every call's time,
    shape and kind (so executed pixels and network passes are measured, not re-derived)."""

    def __init__(self, engine) -> None:
        self.engine, self.info = engine, engine.info
        self.seconds: list[float] = []
        self.lr_px: list[int] = []
        self.batches: list[int] = []
        self.statistics_calls = 0  # pass-1 calls of shared normalisation

    def _timed(self, call, lq):
        start = time.perf_counter()
        out = call()
        self.seconds.append(time.perf_counter() - start)
        self.lr_px.append(int(lq.shape[0] * lq.shape[2] * lq.shape[3]))
        self.batches.append(int(lq.shape[0]))
        return out

    def __call__(self, *, x_t, lq, sigma, norm_stats=None):
        return self._timed(lambda: self.engine(x_t=x_t, lq=lq, sigma=sigma, norm_stats=norm_stats), lq)

    def tile_statistics(self, *, x_t, lq, sigma):
        self.statistics_calls += 1
        return self._timed(lambda: self.engine.tile_statistics(x_t=x_t, lq=lq, sigma=sigma), lq)

    def close(self) -> None:
        self.engine.close()


def run_folder(engine, scenario: Scenario, *, model_median_s: float) -> dict[str, Any]:
    """Decode → pipeline → encode for every image, timed per stage (seconds, summed).

    The pipeline is exactly the CLI's default (:class:`~gtasr_deploy.inference.Pipeline` with tile
    auto: the whole image in one call when the memory model says it fits, else the largest tiles
    that fit with a downscaled statistics pass; a static graph's own tile), so this row predicts a
    timed ``gtasr-upscale`` run. ``tiling_blend_s`` is the pipeline time outside the engine calls
    (padding, up(), noise, tile crops, pooling, blending). ``model_only_s`` is what the executed
    calls cost in the model-only timing (calls × median), the yardstick for the pipeline's overhead;
    ``whole_image_call_s`` is one engine call on each whole (padded) image, the yardstick for the
    default path (``pipeline_over_whole_call``), measured where the engine takes any shape."""

    timed = TimedEngine(engine)
    info = engine.info
    policy = TilePolicy(tile=None, batch=scenario.batch, norm=scenario.norm)
    preset = scenario.preset if scenario.preset != "custom" else None
    budget = memory_budget(scenario.device, call_memory(preset, info.precision, info.backend))
    pipeline = Pipeline(timed, policy, seed=scenario.seed, budget=budget)
    stages = {"decode_s": 0.0, "pipeline_s": 0.0, "encode_s": 0.0}
    output_lr_px = tiles = 0
    whole_s: float | None = 0.0 if info.tile_lr is None else None
    with tempfile.TemporaryDirectory(prefix="gtasr-bench-") as out_dir:
        for index, path in enumerate(scenario.images):
            t0 = time.perf_counter()
            image = read_image(path)
            t1 = time.perf_counter()
            lq = to_model_range(np.ascontiguousarray(image.rgb.transpose(2, 0, 1)))
            sr = pipeline(lq)
            t2 = time.perf_counter()
            write_image(Path(out_dir) / f"{index}.png", np.ascontiguousarray(sr.transpose(1, 2, 0)))
            t3 = time.perf_counter()
            stages["decode_s"] += t1 - t0
            stages["pipeline_s"] += t2 - t1
            stages["encode_s"] += t3 - t2
            output_lr_px += image.rgb.shape[0] * image.rgb.shape[1]
            tiles += pipeline.cost(*image.rgb.shape[:2]).plan.n_tiles
            if whole_s is not None:  # one model call on the whole padded image, same inputs as the pipeline's
                h, w = image.rgb.shape[:2]
                plan = plan_tiles(h, w, tile=0, overlap=0, multiple=info.size_multiple, scale=info.scale)
                lq_t = torch.from_numpy(np.ascontiguousarray(lq, dtype=np.float32))
                lq_pad = lq_t.index_select(1, torch.from_numpy(reflect_indices(h, plan.canvas_h)))
                lq_pad = lq_pad.index_select(2, torch.from_numpy(reflect_indices(w, plan.canvas_w)))[None]
                x_k = one_step_start(lq_pad, seed=scenario.seed, scale=info.scale)
                start = time.perf_counter()
                engine(x_t=x_k.numpy(), lq=lq_pad.numpy(), sigma=np.full(1, SIGMA_ONE, np.float32))
                whole_s += time.perf_counter() - start
    model_s = sum(timed.seconds)
    total_s = stages["decode_s"] + stages["pipeline_s"] + stages["encode_s"]
    model_only_s = len(timed.seconds) * model_median_s
    return {"images": len(scenario.images), "tile": "auto", "norm": policy.norm,
            "tiles": tiles, "network_passes": sum(timed.batches),
            "passes_per_tile": sum(timed.batches) / tiles if tiles else None,
            "calls": len(timed.seconds), "statistics_calls": timed.statistics_calls,
            "partial_batches": sum(b != scenario.batch for b in timed.batches),
            "decode_s": stages["decode_s"], "tiling_blend_s": stages["pipeline_s"] - model_s, "model_s": model_s,
            "encode_s": stages["encode_s"], "total_s": total_s, "model_only_s": model_only_s,
            "overhead_vs_model_only": total_s / model_only_s - 1.0 if model_only_s > 0 else None,
            "whole_image_call_s": whole_s,
            "pipeline_over_whole_call": stages["pipeline_s"] / whole_s if whole_s else None,
            "executed_lr_px": sum(timed.lr_px), "output_lr_px": output_lr_px,
            "executed_over_output_px": sum(timed.lr_px) / output_lr_px if output_lr_px else None}


def child_main(argv: list[str]) -> int:
    """``prepare|run SCENARIO.json RESULT.json``: the result is a row, or {"graph": path} for prepare."""
    if len(argv) != 3 or argv[0] not in ("prepare", "run"):
        print("usage: python -m gtasr_deploy.bench.runner prepare|run SCENARIO.json RESULT.json", file=sys.stderr)
        return 2
    mode, scenario_path, result_path = argv
    scenario = Scenario.from_json(Path(scenario_path).read_text(encoding="utf-8"))
    torch.set_num_threads(scenario.threads)
    try:
        result = {"graph": str(ensure_graph(scenario))} if mode == "prepare" else time_model(scenario)
    except BackendUnavailableError as err:
        result = skipped_row(scenario, str(err), status="skipped")
    except GtasrError as err:
        result = skipped_row(scenario, f"{type(err).__name__}: {err}", status="failed")
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")
    return 0


# ---------------------------------------------------------------------------- orchestration (parent)


def unavailable_reason(backend: str, device: str) -> str | None:
    """Why ``backend`` cannot run on ``device`` here (cheap checks, no model), or None."""
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        return f"device {device!r} requested but torch.cuda.is_available() is False on this machine"
    if backend == "onnxruntime":
        try:
            providers = import_onnxruntime().get_available_providers()
        except BackendUnavailableError as err:
            return str(err)
        if cuda and "CUDAExecutionProvider" not in providers:
            return (f"onnxruntime has no CUDA provider here (available: {providers}); "
                    "install onnxruntime-gpu: pip install 'gtasr-deploy[cuda]'")
    if backend == "openvino":
        if cuda:
            return "the openvino backend runs on the CPU here (its GPU plugin is not used by this package)"
        try:
            import_openvino()
        except BackendUnavailableError as err:
            return str(err)
    if backend == "tensorrt":
        if not cuda:
            return "TensorRT needs an NVIDIA GPU; this run is on the CPU (no CUDA device available)"

        return explain_unavailable()
    return None


def _spawn(mode: str, scenario: Scenario, *, timeout_s: float) -> dict[str, Any]:
    threads = str(scenario.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               OMP_WAIT_POLICY="PASSIVE")
    with tempfile.TemporaryDirectory(prefix="gtasr-bench-") as tmp:
        spec, out = Path(tmp) / "scenario.json", Path(tmp) / "result.json"
        spec.write_text(scenario.to_json(), encoding="utf-8")
        try:
            proc = subprocess.run([sys.executable, "-m", "gtasr_deploy.bench.runner", mode, str(spec), str(out)],
                                  env=env, timeout=timeout_s, stdout=2)  # fd 2: stdout is the report's
        except subprocess.TimeoutExpired:
            return skipped_row(scenario, f"{mode} timed out after {timeout_s:.0f} s", status="failed")
        if proc.returncode != 0 or not out.is_file():
            return skipped_row(scenario, f"{mode} process exited with code {proc.returncode} "
                                         "(its traceback is printed above)", status="failed")
        return json.loads(out.read_text(encoding="utf-8"))


def run_scenario(scenario: Scenario, *, timeout_s: float = 3600.0) -> dict[str, Any]:
    """One row: skipped (with the reason) when the backend cannot run here, else prepare + run."""
    reason = unavailable_reason(scenario.backend, scenario.device)
    if reason is None and scenario.precision not in BACKEND_PRECISIONS[scenario.backend]:
        reason = (f"{scenario.backend} does not compute {scenario.precision} "
                  f"(it runs {', '.join(BACKEND_PRECISIONS[scenario.backend])})")
    if reason is not None:
        return skipped_row(scenario, reason, status="skipped")
    if scenario.backend in GRAPH_BACKENDS:
        prepared = _spawn("prepare", scenario, timeout_s=timeout_s)
        if "graph" not in prepared:
            return prepared
    return _spawn("run", scenario, timeout_s=timeout_s)


SAMPLE_PHOTO = "grace_hopper.jpg"  # matplotlib's sample photo (public domain, US Navy)


def sample_lr_images(tile: int, folder: str | Path) -> tuple[str, ...]:
    """Two LR inputs from a real photo for the folder run: matplotlib's grace_hopper.jpg, full
    frame and a portrait crop, resized (PIL bicubic, antialiased) to a long side of 1.5·tile so
    that every tile size is tiled (about 2×2 tiles) and padded. Written as PNG to ``folder``."""
    try:
        from matplotlib import cbook
    except ImportError:
        raise BackendUnavailableError("gtasr-bench end-to-end run: matplotlib (for its sample photo) is not "
                                      "installed; pip install 'gtasr-deploy[bench]', pass --images DIR, "
                                      "or use --no-e2e") from None
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    long_side = tile * 3 // 2
    paths = []
    with Image.open(cbook.get_sample_data(SAMPLE_PHOTO, asfileobj=False)) as photo:
        photo = photo.convert("RGB")
        width, height = photo.size
        crops = {"full": photo, "portrait": photo.crop((width // 4, 0, width // 4 + height * 3 // 4, height))}
        for name, image in crops.items():
            ratio = long_side / max(image.size)
            size = (max(1, round(image.size[0] * ratio)), max(1, round(image.size[1] * ratio)))
            path = folder / f"{Path(SAMPLE_PHOTO).stem}_{name}_lr{tile}.png"
            image.resize(size, Image.Resampling.BICUBIC).save(path)
            paths.append(str(path))
    return tuple(paths)


def folder_images(folder: str | Path) -> tuple[str, ...]:
    """The image files directly inside ``folder`` (sorted), used as they are as LR inputs."""

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise InputError(f"--images {folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in that folder")
    return tuple(str(p.resolve()) for p in files)


@dataclass(frozen=True, kw_only=True)
class BenchPlan:
    """The scenarios of one ``gtasr-bench`` call: the cross product, in a fixed order."""

    networks: tuple[tuple[str, Any], ...]  # (preset label, network) pairs
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    tiles: tuple[int, ...]
    batches: tuple[int, ...]
    warmup: int
    repeat: int
    threads: int
    device: str
    cache_dir: str
    weights: str | None = None
    images: dict[int, tuple[str, ...]] = field(default_factory=dict)  # tile -> LR inputs of the folder run
    matmul_size: int | None = None

    def scenarios(self) -> list[Scenario]:
        return [Scenario(preset=label, network=network, weights=self.weights, backend=backend,
                         precision=precision, tile=tile, batch=batch, warmup=self.warmup, repeat=self.repeat,
                         threads=self.threads, device=self.device, cache_dir=self.cache_dir,
                         graph_batch_max=max(self.batches), images=self.images.get(tile, ()),
                         matmul_size=self.matmul_size)
                for label, network in self.networks for tile in self.tiles for backend in self.backends
                for precision in self.precisions for batch in self.batches]


# Rough speeds for the up-front estimate (2-core CPU figures of benchmarks/cpu.md; a GPU far faster)
STARTUP_S = 8.0  # one scenario process: interpreter, torch, the network, the matmul reference peak
CPU_GFLOPS_PER_THREAD = {"large": 120.0, "small": 45.0}  # torch fp32; the demo network uses the cores less well
CUDA_GFLOPS = 20000.0
EXPORT_S = {"large": 95.0, "small": 25.0}  # one ONNX export (cached in --cache-dir afterwards)
SMALL_NETWORK_GMACS = 50.0  # per 128x128 LR tile; below it the "small" speeds apply


def _e2e_calls(scenario: Scenario) -> int:
    """Network calls of the end-to-end run: tiles per image, two passes (shared GroupNorm statistics)."""
    from PIL import Image


    overlap = default_overlap(scenario.tile)
    step = scenario.tile - overlap
    calls = 0
    for path in scenario.images:
        with Image.open(path) as image:
            w, h = image.size
        tiles = max(1, -(-(w - overlap) // step)) * max(1, -(-(h - overlap) // step))
        calls += tiles if tiles == 1 else 2 * tiles
    return -(-calls // scenario.batch)


def estimate_seconds(plan: BenchPlan) -> float:
    """A rough duration of the whole plan (said up front): process start-ups, exports not yet cached,
    and the warm-up, timed and end-to-end calls at a rough speed for the device. Skipped scenarios
    cost nothing."""
    from .cost import count_model_macs

    total, exported, macs_of = 0.0, set(), {}
    for scenario in plan.scenarios():
        if (unavailable_reason(scenario.backend, scenario.device) is not None
                or scenario.precision not in BACKEND_PRECISIONS[scenario.backend]):
            continue
        key = (scenario.preset, scenario.tile)
        if key not in macs_of:
            macs_of[key] = count_model_macs(resolve_config(scenario.network), tile_lr=(scenario.tile,) * 2)
        size = "small" if macs_of[key] / 1e9 * (128 / scenario.tile) ** 2 < SMALL_NETWORK_GMACS else "large"
        gflops = (CUDA_GFLOPS if scenario.device.startswith("cuda")
                  else CPU_GFLOPS_PER_THREAD[size] * scenario.threads)
        call_s = 2.0 * macs_of[key] * scenario.batch / (gflops * 1e9)
        total += STARTUP_S + call_s * (scenario.warmup + scenario.repeat + _e2e_calls(scenario))
        if scenario.backend in GRAPH_BACKENDS:
            total += STARTUP_S
            path = graph_path(scenario)
            if path not in exported and _cached_sidecar(path) is None:
                total += EXPORT_S[size]
            exported.add(path)
    return total


def run_scenarios(plan: BenchPlan, *, log=None, timeout_s: float = 3600.0, on_row=None) -> dict[str, Any]:
    """Run every scenario of ``plan`` (one process each) and return the report dict.

    ``on_row(row, partial, done, total)`` is called after each scenario with the rows so far (a
    report dict of the same shape), so a caller can print the row and save what was measured."""
    log = log or (lambda line: print(line, file=sys.stderr))
    env = environment(device=plan.device, threads=plan.threads)
    start = timing.cpu_snapshot()
    rows = []
    scenarios = plan.scenarios()
    for scenario in scenarios:
        log(f"[gtasr-bench] {len(rows) + 1}/{len(scenarios)}: {scenario.preset} {scenario.backend} "
            f"{scenario.precision} tile {scenario.tile} batch {scenario.batch}")
        before = timing.cpu_snapshot()
        row = run_scenario(scenario, timeout_s=timeout_s)
        row["other_processes_cores"] = timing.other_processes_cores(before, timing.cpu_snapshot())
        rows.append(row)
        if on_row is None:
            log(f"[gtasr-bench]   -> {row['status']}" + (f": {row['reason']}" if row.get("reason") else
                                                         f", median {row['latency']['median_s']:.4g} s"))
        else:
            on_row(row, {"environment": dict(env, load_average_end=timing.load_average()), "rows": list(rows)},
                   len(rows), len(scenarios))
    env["load_average_end"] = timing.load_average()
    env["other_processes_cores"] = timing.other_processes_cores(start, timing.cpu_snapshot())
    return {"environment": env, "rows": rows}


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
