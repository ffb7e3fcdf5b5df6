"""Training precision: fp32 by default, as the release trains (SPEC §5); autocast only when a
recipe asks for it (``run.amp``); and a measurement of what reduced precision does to the signal
that matters most, the input gradient of the stage-II trajectory term ω·LPIPS(x̂0, sg(x̂0 − Δ)):

    python -m gtasr_deploy.training.precision --images data/photos/heldout [--device cuda]

For centre crops of the photos it takes x̂0 = bicubic x4 down-and-up of x0 (a plausible one-step
output), Δ = a·(x̂0 − x0) for a few sizes a, and compares the gradient w.r.t. x̂0 under bf16
autocast (and, on CUDA, with TF32 convolutions and matmuls) against strict fp32: relative L2
difference and cosine, one line per (photo, a).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError, GtasrError


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
    from ..metrics.lpips import LPIPS
    from .data import scan_images, validation_crops

    files = scan_images([images], "--images")
    x0 = validation_crops(files, crop=crop, count=count).to(device) * 2 - 1
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gtasr_deploy.training.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default="data/photos/heldout", help="folder of HR photos (centre crops)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--count", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {args.device}: CUDA is not available here")
        rows = measure(args.images, device=torch.device(args.device), crop=args.crop, count=args.count)
    except (GtasrError, RuntimeError) as err:
        print(f"precision: error: {err}", file=sys.stderr)
        return 1
    print("photo | a (Δ = a·(x̂0 − x0)) | mode | relative L2 difference vs fp32 | cosine")
    for path, size, mode, rel, cos in rows:
        print(f"{path} | {size} | {mode} | {rel:.3f} | {cos:.4f}")
    for mode in dict.fromkeys(r[2] for r in rows):
        rel = [r[3] for r in rows if r[2] == mode]
        cos = [r[4] for r in rows if r[2] == mode]
        print(f"{mode}: relative difference {min(rel):.1%}-{max(rel):.1%}, cosine {min(cos):.3f}-{max(cos):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
