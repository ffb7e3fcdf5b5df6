"""The inference layer: one pipeline for every backend, memory-aware tiles, OOM retry, precision
choice, the backend check, and one atomic-write helper (the import arrows: test_structure.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gtasr_deploy.engines.base import Engine, EngineInfo
from gtasr_deploy.errors import ConfigError, OutOfMemoryError
from gtasr_deploy.inference import memory
from gtasr_deploy.inference.pipeline import Pipeline, TilePolicy
from gtasr_deploy.engines.precision import choose_precision, cpu_features, native_bf16

PACKAGE = Path(__file__).parents[1] / "gtasr_deploy"


class LocalEngine(Engine):
    """nearest x4 of lq; fails with an injected allocation error above ``max_lr_px`` per call."""

    def __init__(self, *, max_lr_px=None, error=MemoryError, tile_lr=None, multiple=8):
        self.info = EngineInfo(backend="fake", device="cpu", precision="fp32", size_multiple=multiple,
                               tile_lr=tile_lr, batch_range=(1, 1, 64), norm_groups=1, norm_modes=("tile",))
        self.max_lr_px, self.error, self.calls = max_lr_px, error, []

    def _run(self, x_t, lq, sigma, norm_stats, want_stats):
        px = lq.shape[0] * lq.shape[2] * lq.shape[3]
        if self.max_lr_px is not None and px > self.max_lr_px:
            raise self.error("DefaultCPUAllocator: can't allocate memory: you tried to allocate 123 bytes")
        self.calls.append(lq.shape)
        return lq.repeat(4, axis=2).repeat(4, axis=3), None


def _lq(h, w, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (3, h, w)).astype(np.float32)


# --------------------------------------------------------------------------- OOM retry

@pytest.mark.parametrize("error", [MemoryError, RuntimeError])
def test_out_of_memory_retries_with_smaller_tiles_and_gives_the_same_local_result(error):
    engine = LocalEngine(max_lr_px=32 * 32, error=error)
    notes = []
    pipeline = Pipeline(engine, TilePolicy(tile=64, overlap=8, norm="tile"), log=notes.append)
    lq = _lq(90, 70)
    out = pipeline(lq)
    expected = np.clip((lq.repeat(4, 1).repeat(4, 2) + 1) / 2, 0, 1)
    assert np.abs(out - expected).max() <= 1e-6
    assert all(s[2] * s[3] <= 32 * 32 for s in engine.calls)
    assert any("out of memory at tile 64" in n and "retrying with tile 32" in n for n in notes)
    assert pipeline.policy.tile == 64  # the next image starts from the configured tile again


def test_out_of_memory_halves_the_batch_first():
    engine = LocalEngine(max_lr_px=2 * 16 * 16)
    pipeline = Pipeline(engine, TilePolicy(tile=16, overlap=4, batch=8, norm="tile"))
    pipeline(_lq(60, 60))
    assert max(s[0] for s in engine.calls) == 2 and all(s[2:] == (16, 16) for s in engine.calls)


def test_out_of_memory_at_the_smallest_tile_is_one_clear_error():
    engine = LocalEngine(max_lr_px=1)
    with pytest.raises(OutOfMemoryError, match="out of memory even at tile 8"):
        Pipeline(engine, TilePolicy(tile=32, overlap=4, norm="tile"))(_lq(40, 40))


def test_static_engines_cannot_shrink_their_tile():
    engine = LocalEngine(max_lr_px=1, tile_lr=(16, 16))
    with pytest.raises(OutOfMemoryError, match="tile 16, batch 1"):
        Pipeline(engine, TilePolicy(tile=16, overlap=4, norm="tile"))(_lq(40, 40))


def test_other_errors_are_not_retried():
    engine = LocalEngine(max_lr_px=1, error=ValueError)
    with pytest.raises(ValueError):
        Pipeline(engine, TilePolicy(tile=32, overlap=4, norm="tile"))(_lq(40, 40))
    assert engine.calls == []


@pytest.mark.parametrize("text,oom", [("CUDA out of memory. Tried to allocate 2.00 GiB", True),
                                       ("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer", True),
                                       ("std::bad_alloc", True), ("shape mismatch", False)])
def test_is_out_of_memory_recognises_every_backend(text, oom):
    assert memory.is_out_of_memory(RuntimeError(text)) is oom
    assert memory.is_out_of_memory(MemoryError()) is True


# --------------------------------------------------------------------------- memory model

def test_memory_model_grows_with_pixels_and_turns_free_memory_into_a_budget():
    demo, paper = memory.call_memory("demo"), memory.call_memory("paper")
    assert paper.bytes(256 * 256) > 3 * paper.bytes(128 * 128)
    assert memory.call_memory("demo", "bf16").bytes(128 * 128) < demo.bytes(128 * 128)
    budget = demo.budget_px(int(demo.bytes(128 * 128) * memory.SAFETY))
    assert abs(budget - 128 * 128) <= 1  # exactly the pixels whose estimate fits, with the safety margin
    assert demo.budget_px(None) is None and demo.budget_px(0) == 0
    assert memory.call_memory(None).per_lr_px == paper.per_lr_px  # custom networks: assume the big one


def test_available_bytes_respects_an_address_space_limit():
    import resource
    import subprocess
    import sys

    code = ("import resource; from gtasr_deploy.inference.memory import available_bytes;"
            "soft, hard = resource.getrlimit(resource.RLIMIT_AS);"
            "import os; size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize();"
            "resource.setrlimit(resource.RLIMIT_AS, (size + (200 << 20), hard));"
            "print(available_bytes('cpu'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 0 < int(out.stdout) <= 200 << 20
    del resource


# --------------------------------------------------------------------------- precision choice

INTEL_AMX = "flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AMD_ZEN4 = "processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n"
OLD_X86 = "flags : fpu sse sse2 avx avx2 fma\n"
ARM = "Features : fp asimd bf16 i8mm sve\n"


@pytest.mark.parametrize("cpuinfo,machine,want,unit", [
    (INTEL_AMX, "x86_64", "bf16", "AMX-BF16"), (AMD_ZEN4, "x86_64", "bf16", "AVX512-BF16"),
    (OLD_X86, "x86_64", "fp32", None), (ARM, "aarch64", "bf16", "Arm BF16"), ("", "x86_64", "fp32", None)])
def test_precision_auto_per_cpu(cpuinfo, machine, want, unit):
    features = cpu_features(cpuinfo)
    assert native_bf16(features, machine) == unit
    choice = choose_precision("auto", device="cpu", backend="torch", features=features, machine=machine)
    assert choice.precision == want
    assert (unit in choice.reason) if unit else ("no native bf16" in choice.reason)


def test_precision_choice_on_cuda_and_for_graphs():
    assert choose_precision("auto", device="cuda:0", backend="torch", features=()).precision == "fp16"
    assert choose_precision("fp32", device="cpu", backend="torch", features=cpu_features(INTEL_AMX)).precision == "fp32"
    graph = choose_precision("auto", device="cpu", backend="onnxruntime", features=(), graph_precision="fp16")
    assert graph.precision == "fp16" and "graph" in graph.reason
    with pytest.raises(ConfigError, match="the exported graph is fp32"):
        choose_precision("bf16", device="cpu", backend="onnxruntime", features=(), graph_precision="fp32")
    with pytest.raises(ConfigError, match="precision 'int4'"):
        choose_precision("int4", device="cpu", backend="torch", features=())


# --------------------------------------------------------------------------- the house

def test_one_atomic_write_helper():
    """Hand-written temp + fsync + rename lives in atomic.py only (everyone else calls it)."""
    offenders = [p.name for p in PACKAGE.rglob("*.py")
                 if p.name != "atomic.py" and ("fsync(" in p.read_text(encoding="utf-8")
                                               or "def atomic_write" in p.read_text(encoding="utf-8"))]
    assert offenders == [], offenders


# --------------------------------------------------------------------------- bf16 quality

def test_bf16_is_within_45_db_of_fp32_on_a_real_photo():
    """The CPU fast path's quality: embedded weights, a real photo, through the whole pipeline."""
    from PIL import Image

    from gtasr_deploy.upscaler import Upscaler

    if native_bf16(cpu_features()) is None:
        pytest.skip("this CPU has no native bf16 (AMX-BF16 / AVX512-BF16 / Arm BF16): auto runs fp32 here")
    with Image.open(Path(__file__).parents[1] / "samples" / "chelsea_lr.png") as im:
        rgb = np.asarray(im.convert("RGB"))[:96, :160]
    a = Upscaler(precision="fp32").upscale(rgb).astype(np.float64)
    b = Upscaler(precision="bf16").upscale(rgb).astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))
    assert psnr >= 45.0, psnr


# --------------------------------------------------------------------------- a real memory limit

LIMITED_RUN = """
import resource, sys
# every library the run maps is loaded before the limit (a library mapped under RLIMIT_AS can crash
# in its loader); the limit is headroom above what is loaded
import cv2, numpy, PIL.Image, torch  # noqa: F401
import gtasr_deploy.batch.runner, gtasr_deploy.media.images, gtasr_deploy.upscaler  # noqa: F401
import gtasr_deploy.cli.upscale as cli
budget = int(sys.argv.pop(1)) << 20
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + budget, resource.RLIM_INFINITY))
sys.argv[0] = "gtasr-upscale"
cli.main()
"""


@pytest.mark.slow
def test_an_image_is_upscaled_under_a_memory_limit_the_default_tile_exceeds(tmp_path):
    """250 MB of address space above the loaded program: the whole 140x140 image (160x160 padded) is
    estimated at ~350 MB with the safety margin, so --tile auto cuts it into tiles that fit, takes
    the statistics from a downscaled pass, and the image is still written."""
    import os
    import subprocess
    import sys

    from PIL import Image

    with Image.open(Path(__file__).parents[1] / "samples" / "coffee_lr.png") as im:
        im.convert("RGB").crop((0, 0, 140, 140)).save(tmp_path / "in.png")
    script = tmp_path / "limited.py"
    script.write_text(LIMITED_RUN)
    env = dict(os.environ, MALLOC_ARENA_MAX="2", OMP_NUM_THREADS="2")
    run = subprocess.run([sys.executable, str(script), "250", str(tmp_path / "in.png"), str(tmp_path / "out.png"),
                          "--precision", "fp32", "--backend", "torch"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert run.returncode == 0, run.stderr
    assert "does not fit one call in memory" in run.stderr and "downscaled pass" in run.stderr
    with Image.open(tmp_path / "out.png") as out:
        assert out.size == (560, 560)


# --------------------------------------------------------------------------- duration estimate

def test_estimate_counts_every_pass_of_the_run(tmp_path):
    from PIL import Image

    from gtasr_deploy.inference.estimate import describe, image_sizes, seconds_per_lr_px, total_work

    for name, size in (("a.png", (40, 30)), ("b.png", (100, 70))):
        Image.new("RGB", size).save(tmp_path / name)
    (tmp_path / "bad.png").write_bytes(b"nope")
    sizes = image_sizes(sorted(tmp_path.iterdir()))
    assert sizes == [(30, 40), (70, 100)]  # (h, w); the unreadable file is skipped
    shared = Pipeline(LocalEngine(), TilePolicy(tile=32, overlap=8, norm="tile"))
    calls = sum(shared.cost(h, w).calls for h, w in sizes)
    pixels = sum(shared.cost(h, w).executed_px for h, w in sizes)
    assert total_work(shared, sizes) == (calls, pixels) and calls > 2 and pixels >= 40 * 30 + 100 * 70
    assert seconds_per_lr_px(shared) >= 0
    assert (describe(30), describe(600), describe(7200)) == ("30 s", "10 min", "2.0 h")


@pytest.mark.parametrize("device", ["mps", "xpu", "meta", "cuda:x", "", "CUDA", "cpu:zero"])
def test_devices_this_package_cannot_run_on_are_one_line_usage_errors(device, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from gtasr_deploy.cli.upscale import main

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(main, [str(tmp_path / "a.png"), str(tmp_path / "out.png"), "--device", device])
    assert result.exit_code == 2, result.output
    assert "--device" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.png").exists()
