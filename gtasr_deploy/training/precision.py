"""Training precision: fp32 by default, as the release trains (SPEC §5); autocast only when a
recipe asks for it (``run.amp``); and a measurement of what reduced precision does to the signal
that matters most, the input gradient of the stage-II trajectory term ω·LPIPS(x̂0, sg(x̂0 − Δ)):

    python -m gtasr_deploy.training.precision --images data/photos/heldout [--device cuda]

For centre crops of the photos it takes x̂0 = bicubic x4 down-and-up of x0 (a plausible one-step
output), Δ = a·(x̂0 − x0) for a few sizes a, and compares the gradient w.r.t. x̂0 under bf16
autocast (and, on CUDA, with TF32 convolutions and matmuls) against strict fp32: relative L2
difference and cosine, one line per (photo, a). ``--step`` measures a whole stage-II step instead:
the parameter gradient of each term of the embedded demo network, fp32 vs bf16 autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError, GtasrError
from ..metrics.lpips import LPIPS
from .data import scan_images, validation_crops
from ..model import load_model
from ..model.conventions import to_model_range
from ..weights import EMBEDDED_WEIGHTS
from .degradation import bicubic_lr, degrade
from .losses import Batch, StageIIConfig, copy_for_target, stage1_losses, stage2_terms
from .config import load_config


def autocast_for(amp: str, device: torch.device) -> tuple[Callable[[], contextlib.AbstractContextManager], bool]:
    """(autocast context factory, needs a GradScaler): none for "none" (fp32, the default, as
    released); bf16 autocast on the CPU or CUDA; fp16 autocast with a GradScaler, CUDA only."""
    if amp == "none":
        return contextlib.nullcontext, False
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError(f'run.amp "fp16" needs CUDA, but the run is on {device}; use "bf16" or "none"')
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return (lambda: torch.autocast(device.type, dtype=dtype)), amp == "fp16"


def precision_note(amp: str, device: torch.device) -> str:
    """The run header's precision line: what the step computes in, and the TF32 state on CUDA."""
    if amp != "none":
        return (f"precision: {amp} autocast (reduced precision, chosen by run.amp; the release trains in fp32 — "
                "bf16 moved the DTM/Stab input gradient by 26-111% on CPU, SPEC §5)")
    if device.type != "cuda":
        return "precision: fp32 (as released)"
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    return (f"precision: fp32 (as released); TF32 convolutions {'on' if conv else 'off'}, "
            f"TF32 matmuls {'on' if mm else 'off'} (PyTorch's defaults: on, off)")


DELTA_SIZES = (0.3, 0.1, 0.03, 0.01)


def trajectory_input_gradient(lpips: Callable, x0_hat: torch.Tensor, x0: torch.Tensor, delta: torch.Tensor,
                              context: Callable[[], contextlib.AbstractContextManager]) -> torch.Tensor:
    """∂/∂x̂0 of Σ ω·LPIPS(x̂0, sg(x̂0 − Δ)) with LPIPS run inside ``context()``; fp32 result."""
    a = x0_hat.detach().clone().requires_grad_(True)
    omega = 1.0 / (a.detach() - x0).abs().mean(dim=(1, 2, 3))
    with context():
        term = (omega * lpips(a, (a - delta).detach()).float()).sum()
    (grad,) = torch.autograd.grad(term, a)
    return grad.float()


@contextlib.contextmanager
def _tf32(enabled: bool):
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def compare(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(‖other − reference‖ / ‖reference‖, cosine) over the whole gradient."""
    a, b = reference.flatten().double(), other.flatten().double()
    return float((b - a).norm() / a.norm()), float(F.cosine_similarity(a, b, dim=0))


def measure(images: str, *, device: torch.device, crop: int, count: int) -> list[tuple[str, float, str, float, float]]:
    """(photo, a, mode, relative difference, cosine) rows; the modes are compared with strict fp32."""

    files = scan_images([images], "--images")
    x0 = to_model_range(validation_crops(files, crop=crop, count=count).to(device))
    x0_hat = F.interpolate(F.interpolate(x0, scale_factor=0.25, mode="bicubic", antialias=True),
                           scale_factor=4, mode="bicubic").clamp(-1, 1)
    lpips = LPIPS("vgg").to(device)
    modes = {"bf16 autocast": lambda: torch.autocast(device.type, dtype=torch.bfloat16)}
    if device.type == "cuda":
        modes["tf32"] = lambda: _tf32(True)
    rows = []
    for i, path in enumerate(files[:len(x0)]):
        for size in DELTA_SIZES:
            args = (x0_hat[i:i + 1], x0[i:i + 1], size * (x0_hat[i:i + 1] - x0[i:i + 1]))
            with _tf32(False):
                ref = trajectory_input_gradient(lpips, *args, contextlib.nullcontext)
            for mode, context in modes.items():
                with _tf32(False):
                    rows.append((path, size, mode, *compare(ref, trajectory_input_gradient(lpips, *args, context))))
    return rows


def _parameter_gradients(net: torch.nn.Module, terms: dict[str, torch.Tensor], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    params = list(net.parameters())
    out = {}
    for name in names:
        grads = torch.autograd.grad(terms[name].float(), params, retain_graph=True, allow_unused=True)
        out[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])
    return out


def measure_step(images: str, *, device: torch.device, crop: int, count: int) -> list[tuple[str, str, str, float, float]]:
    """(seed, term, mode, relative difference, cosine) rows: the parameter gradient of each stage-II
    term (recipe gtasr) of the embedded demo network on ``count`` degraded crops, the whole step
    (networks and losses) under autocast vs strict fp32, for two loss/dropout seeds."""

    net = load_model(EMBEDDED_WEIGHTS).to(device).train()
    target, lpips = copy_for_target(net), LPIPS("vgg").to(device)
    hr = validation_crops(scan_images([images], "--images"), crop=crop, count=count)
    batch = Batch(x0=to_model_range(hr.to(device)),
                  lq=to_model_range(degrade(hr, generator=torch.Generator().manual_seed(1)).to(device)))
    names = ("ct", "dtm", "stab", "rect")

    def gradients(seed: int, context: Callable[[], contextlib.AbstractContextManager]) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)  # the same dropout masks in both precisions
        with _tf32(False), context():
            terms = stage2_terms(net, target, batch, cfg=StageIIConfig(), perceptual=lpips,
                                 generator=torch.Generator().manual_seed(seed))
        return _parameter_gradients(net, terms, names)

    rows = []
    for seed in (0, 1):
        ref = gradients(seed, contextlib.nullcontext)
        low = gradients(seed, lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        rows += [(f"seed {seed}", name, "bf16 autocast", *compare(ref[name], low[name])) for name in names]
    return rows


def measure_stage1(images: str, *, device: torch.device, crop: int, count: int,
                   recipe: str = "training/photos.toml") -> list[tuple[str, str, str, float, float]]:
    """(seed, "loss (ms fp32 / ms bf16)", mode, relative difference, cosine) rows: the parameter
    gradient of the stage-I loss of ``recipe`` (its loss settings at step 0) for the embedded demo
    network on ``count`` crops (half degraded, half clean bicubic LR, as the recipe mixes them),
    the whole step under bf16 autocast vs strict fp32, for two loss/dropout seeds; with the time of
    one forward + backward in each precision."""
    cfg = load_config(recipe)
    loss_cfg = cfg.stage(1).loss
    net = load_model(EMBEDDED_WEIGHTS).to(device).train()
    hr = validation_crops(scan_images([images], "--images"), crop=crop, count=count)
    lq = degrade(hr, generator=torch.Generator().manual_seed(1))
    lq[::2] = bicubic_lr(hr[::2])
    batch = Batch(x0=to_model_range(hr.to(device)), lq=to_model_range(lq.to(device)))

    def gradient(seed: int, context: Callable[[], contextlib.AbstractContextManager]) -> tuple[torch.Tensor, float]:
        torch.manual_seed(seed)  # the same dropout masks in both precisions
        start = time.perf_counter()
        with context():
            terms = stage1_losses(net, batch, step=0, total_steps=cfg.stage(1).steps, cfg=loss_cfg,
                                  perceptual=None, generator=torch.Generator().manual_seed(seed))
        grad = _parameter_gradients(net, terms, ("loss",))["loss"]
        return grad, 1000 * (time.perf_counter() - start)

    rows = []
    for seed in (0, 1):
        ref, ms_ref = gradient(seed, contextlib.nullcontext)
        low, ms_low = gradient(seed, lambda: torch.autocast(device.type, dtype=torch.bfloat16))
        rows.append((f"seed {seed}", f"loss ({ms_ref:.0f} ms fp32 / {ms_low:.0f} ms bf16)", "bf16 autocast",
                     *compare(ref, low)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gtasr_deploy.training.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="data/photos/heldout", help="folder of HR photos (centre crops)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--step", action="store_true",
                        help="instead: parameter gradients of each stage-II term of the embedded demo network "
                             "(use --images data/photos/train --crop 128 --count 4)")
    parser.add_argument("--stage1", metavar="RECIPE", default=None,
                        help="instead: the parameter gradient of RECIPE's stage-I loss (e.g. training/photos.toml) "
                             "for the embedded demo network, fp32 vs bf16, and its time "
                             "(use --images data/photos/train --crop 128 --count 4)")
    args = parser.parse_args(argv)
    try:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available here")
        run = measure_step if args.step else measure
        if args.stage1:
            run = functools.partial(measure_stage1, recipe=args.stage1)
        rows = run(args.images, device=torch.device(args.device), crop=args.crop, count=args.count)
    except (GtasrError, RuntimeError) as err:
        print(f"precision: error: {err}", file=sys.stderr)
        return 1
    print("seed | stage-I loss" if args.stage1 else "seed | stage-II term" if args.step else "photo | a (Δ = a·(x̂0 − x0))", end="")
    print(" | mode | relative L2 difference vs fp32 | cosine")
    for item, setting, mode, rel, cos in rows:
        print(f"{item} | {setting} | {mode} | {rel:.3f} | {cos:.4f}")
    group = (lambda r: f"{r[2]}, {r[1]}") if args.step else (lambda r: r[2])  # per term / per mode
    for name in dict.fromkeys(map(group, rows)):
        rel = [r[3] for r in rows if group(r) == name]
        cos = [r[4] for r in rows if group(r) == name]
        print(f"{name}: relative difference {min(rel):.1%}-{max(rel):.1%}, cosine {min(cos):.3f}-{max(cos):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
