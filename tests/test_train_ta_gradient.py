"""L_TA must train θ through x̂0 (SPEC §5 stage I): its gradient w.r.t. the network parameters is
checked against central finite differences of the loss value on a tiny float64 network.

x̂0 detached inside the TA term (``q_sample(x0_hat.detach(), ...)``) passes every other loss and
loop test; here it fails each test below: the paper weights lose the TA part of the gradient, and
the demo recipe, where L_TA is the only term, has no gradient at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gtasr_deploy.model import NetworkConfig
from gtasr_deploy.training.config import config_from_dict, load_config
from gtasr_deploy.training.loop import Dist, Trainer
from gtasr_deploy.training.losses import Batch, StageIConfig, stage1_losses

REPO = Path(__file__).resolve().parents[1]
TINY = NetworkConfig(img_resolution=16, model_channels=8, channel_mult=(1,), num_blocks=1, attn_resolutions=(16,),
                     swin_embed_dim=32, swin_num_heads=1, swin_window_size=4)
STEP_H = 1e-6  # central differences in float64: truncation ~h², round-off ~1e-16/h


class Features(nn.Module):
    """A smooth perceptual stand-in: squared difference of fixed random tanh-conv features, (N,)."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.randn((6, 3, 3, 3), generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 0.3
        self.register_buffer("w", w)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = torch.tanh(F.conv2d(a, self.w, padding=1)), torch.tanh(F.conv2d(b, self.w, padding=1))
        return ((fa - fb) ** 2).mean(dim=(1, 2, 3))


class TinyDenoiser(nn.Module):
    """A float64 stand-in for D_θ(x_t, σ, lq) (the package's network computes σ terms in fp32, too
    coarse for finite differences): two convs on [x_t, nearest-up(lq)], scaled by σ, plus dropout
    so the train-mode path is exercised."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.a, self.b = nn.Conv2d(6, 8, 3, padding=1).double(), nn.Conv2d(8, 3, 3, padding=1).double()

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x_t.dtype)[:, None, None, None]
        h = torch.tanh(self.a(torch.cat([x_t, F.interpolate(lq, scale_factor=4)], dim=1)))
        return (1 - s) * x_t + s * self.b(F.dropout(h, 0.1, self.training))


def _setup(seed: int = 0) -> tuple[nn.Module, Batch]:
    net = TinyDenoiser(seed).train()
    g = torch.Generator().manual_seed(seed + 1)
    x0 = torch.rand((2, 3, 32, 32), generator=g, dtype=torch.float64) * 2 - 1
    lq = F.avg_pool2d(x0, 4) + 0.05 * torch.randn((2, 3, 8, 8), generator=g, dtype=torch.float64)
    return net, Batch(x0=x0, lq=lq)


def _index_one_seed(k: int) -> int:
    """A generator seed whose grid index draw is i = 1: the CT target is x0 itself (no θ⁻ forward),
    so the whole loss is a differentiable function of θ and finite differences see all of it."""
    return next(s for s in range(1000) if int(torch.randint(1, k + 1, (1,), generator=torch.Generator().manual_seed(s))) == 1)


def _losses(net: nn.Module, batch: Batch, cfg: StageIConfig, *, step: int, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(123)  # the same dropout masks in every evaluation
    return stage1_losses(net, batch, step=step, total_steps=100, cfg=cfg, perceptual=Features(),
                         generator=torch.Generator().manual_seed(seed))


def _directions(net: nn.Module, count: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(9)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in net.parameters()] for _ in range(count)]


def _finite_difference(value, net: nn.Module, direction: list[torch.Tensor]) -> float:
    """(f(θ + h·v) − f(θ − h·v)) / 2h for the scalar ``value()`` of the current parameters."""
    params = list(net.parameters())
    results = []
    with torch.no_grad():
        for sign in (1.0, -1.0):
            for p, v in zip(params, direction):
                p.add_(sign * STEP_H * v)
            results.append(float(value()))
            for p, v in zip(params, direction):
                p.sub_(sign * STEP_H * v)
    return (results[0] - results[1]) / (2 * STEP_H)


def _directional(grads: list[torch.Tensor], direction: list[torch.Tensor]) -> float:
    return float(sum((g * v).sum() for g, v in zip(grads, direction)))


def _grads(loss: torch.Tensor, net: nn.Module) -> list[torch.Tensor]:
    assert loss.requires_grad, "the stage-I loss carries no gradient into θ"
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, list(net.parameters()), allow_unused=True), net.parameters())]


@pytest.mark.parametrize("step", [0, 60])  # K = 4 (three TA levels), then K = 3 (two)
def test_ta_gradient_into_theta_matches_finite_differences_under_the_paper_weights(step):
    net, batch = _setup()
    k = 4 if step < 50 else 3
    seed = _index_one_seed(k)
    paper, ct_only = StageIConfig(), StageIConfig(ta_weight=0.0)  # same draws, TA weight 0.5 or 0
    with_ta = _grads(_losses(net, batch, paper, step=step, seed=seed)["loss"], net)
    without = _grads(_losses(net, batch, ct_only, step=step, seed=seed)["loss"], net)
    ta_grad = [(a - b) / paper.ta_weight for a, b in zip(with_ta, without)]  # ∇θ L_TA by autograd
    norm = float(sum((g * g).sum() for g in ta_grad)) ** 0.5
    assert norm > 1e-3 * float(sum((g * g).sum() for g in with_ta)) ** 0.5, "L_TA adds no gradient into θ"
    for direction in _directions(net, 3):
        fd = _finite_difference(lambda: _losses(net, batch, paper, step=step, seed=seed)["ta"], net, direction)
        assert _directional(ta_grad, direction) == pytest.approx(fd, rel=1e-4, abs=1e-9)
    # and the total: autograd of L_CT + 0.5·L_TA against finite differences of the loss value
    direction = _directions(net, 1)[0]
    fd = _finite_difference(lambda: _losses(net, batch, paper, step=step, seed=seed)["loss"], net, direction)
    assert _directional(with_ta, direction) == pytest.approx(fd, rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("step", [0, 15000])  # Charbonnier-only d_I, then with the perceptual term
def test_demo_recipe_loss_is_l_ta_alone_and_trains_theta(step):
    cfg = load_config(REPO / "training" / "demo.toml").stage(1).loss
    assert cfg.ct_weight == 0 and cfg.ta_weight > 0  # L = ta_weight·L_TA: the only path into θ
    net, batch = _setup(1)
    out = _losses(net, batch, cfg, step=step, seed=0)
    grads = _grads(out["loss"], net)
    assert out["loss"].item() == pytest.approx(cfg.ta_weight * out["ta"].item(), rel=1e-12)
    assert float(sum(g.abs().sum() for g in grads)) > 0
    for direction in _directions(net, 2):
        fd = _finite_difference(lambda: _losses(net, batch, cfg, step=step, seed=0)["loss"], net, direction)
        assert _directional(grads, direction) == pytest.approx(fd, rel=1e-4, abs=1e-9)


def test_demo_recipe_training_step_moves_theta(tmp_path):
    """One optimizer step of the trainer under the demo recipe's stage-I loss changes θ."""
    loss = load_config(REPO / "training" / "demo.toml").to_dict()["stage1"]["loss"]
    raw = {"run": {"out_dir": str(tmp_path / "run"), "device": "cpu", "progress": False},
           "model": {"network": TINY.to_dict()},
           "data": {"roots": [str(tmp_path)], "crop": 64, "batch_size": 2, "num_workers": 0, "val_crop": 64},
           "stage1": {"steps": 10, "optim": {"lr": 1e-3}, "loss": loss}}
    cfg = config_from_dict(raw)
    tr = Trainer(cfg, cfg.stage(1), Dist(), Features().float())
    before = {k: v.clone() for k, v in tr.net.state_dict().items()}
    terms = tr.train_step(torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(2)))
    assert terms["ct"] == 0 and terms["ta"] > 0
    moved = [k for k, v in tr.net.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert len(moved) > len(before) // 2
