"""GTASR training objectives (SPEC §5): distances, stage I, stage II, target copies and EMA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gtasr_deploy.errors import CheckpointError, ConfigError, InputError
from gtasr_deploy.model import NetworkConfig, build_model
from gtasr_deploy.model.schedule import q_sample, up
from gtasr_deploy.training.losses import (
    Batch,
    StageIConfig,
    StageIIConfig,
    charbonnier,
    copy_for_target,
    d_two,
    distance,
    ema_update,
    sobel,
    stage1_losses,
    stage2_losses,
    stage2_terms,
    trajectory_term,
)

TINY = NetworkConfig(
    img_resolution=16, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(8,),
    swin_embed_dim=32, swin_num_heads=2, swin_window_size=4,
)
# Weights the SPEC states, written here independently of the module's table.
SPEC_WEIGHTS = {  # recipe: (dtm, stab, rect, stab folded into the DTM target)
    "gtasr": (0.8, 0.16, 1.0, 0.0),
    "paper-printed": (1.6, 0.032, 1.0, 0.0),
    "release": (0.8, 0.0, 1.0, 0.2),
    "ctmsr": (0.8, 0.0, 0.0, 0.0),
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY)


def make_batch(seed: int = 0, n: int = 2) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand((n, 3, 32, 32), generator=g) * 2 - 1
    lq = F.avg_pool2d(x0, 4) + 0.05 * torch.randn((n, 3, 8, 8), generator=g)
    return Batch(x0=x0, lq=lq)


class StandIn(nn.Module):
    """Deterministic perceptual stand-in: squared difference of fixed random tanh-conv features."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("w", torch.randn((8, 3, 3, 3), generator=g) * 0.3)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.calls.append((a, b))
        fa, fb = torch.tanh(F.conv2d(a, self.w, padding=1)), torch.tanh(F.conv2d(b, self.w, padding=1))
        return ((fa - fb) ** 2).mean(dim=(1, 2, 3))


class Spy(nn.Module):
    """Wraps a network and records every call: inputs, sigma, train mode, grad mode."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls: list[dict] = []

    def forward(self, x_t, sigma, lq):
        self.calls.append({"x": x_t.detach().clone(), "sigma": sigma.detach().clone(),
                           "training": self.inner.training, "grad": torch.is_grad_enabled()})
        return self.inner(x_t, sigma, lq)


class FixedOutput(nn.Module):
    """A "network" whose output is a fixed image plus a trainable zero offset (ignores its input)."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("out", out.clone())
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, sigma, lq):
        return self.out + self.offset


class Squash(nn.Module):
    """A parameter-free nonlinear stand-in for θ' (f(x) = 0.7x + 0.2·tanh(3x))."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x_t, sigma, lq):
        return self.scale * (0.7 * x_t + 0.2 * torch.tanh(3 * x_t))


def seed_with_index(k: int, want, *, start: int = 0) -> int:
    """A generator seed whose first draw i ~ U{1..k} satisfies ``want(i)``."""
    for seed in range(start, start + 1000):
        if want(int(torch.randint(1, k + 1, (1,), generator=torch.Generator().manual_seed(seed)))):
            return seed
    raise AssertionError("no seed found")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- distances ---------------------------------------------------------------------------------


def test_tiny_config_builds_and_runs():
    net = tiny_net()
    b = make_batch()
    out = net(b.x0, torch.full((2,), 0.3), b.lq)
    assert out.shape == b.x0.shape and torch.isfinite(out).all()


def test_charbonnier_per_sample():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[1] = 0.5
    b[1, 0, 0, 0] = -2.0
    got = charbonnier(a, b)
    assert got.shape == (2,)
    assert got[0].item() == pytest.approx(1e-6, rel=1e-6)  # sqrt(1e-12) floor
    assert got[1].item() == pytest.approx((47 * 0.5 + 2.0) / 48, rel=1e-6)


def test_sobel_values_padding_and_depthwise():
    ramp = torch.arange(6, dtype=torch.float32).view(1, 1, 1, 6).expand(1, 3, 5, 6).clone()
    s = sobel(ramp)
    assert s.shape == ramp.shape
    # interior: gx = Σ rows (1,2,1)·(x−1 − (x+1)) = −8, gy = 0
    assert torch.allclose(s[:, :, 1:-1, 1:-1], torch.full_like(s[:, :, 1:-1, 1:-1], 8.0))
    # top-left corner, zero padding: only the taps at column 1 (gx) and row 1 (gy) see pixels
    # (cross-correlation: gx = −(2·x[0,1] + x[1,1]), gy = −(2·x[1,0] + x[1,1]))
    x = ramp[0, 0]
    gx = -(2 * x[0, 1] + 1 * x[1, 1])
    gy = -(2 * x[1, 0] + 1 * x[1, 1])
    assert s[0, 0, 0, 0].item() == pytest.approx(math.sqrt(gx**2 + gy**2 + 1e-12), rel=1e-6)
    # depthwise: changing channel 0 leaves channels 1, 2 unchanged
    other = ramp.clone()
    other[:, 0] = torch.randn(5, 6)
    assert torch.equal(sobel(other)[:, 1:], s[:, 1:])
    # flat image: sqrt(1e-12) in the interior
    assert torch.allclose(sobel(torch.ones(1, 3, 5, 5))[:, :, 2, 2], torch.full((1, 3), 1e-6))


def test_distance_weights_and_skipped_lpips():
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    p = StandIn()

    def refuse(a, b):
        raise AssertionError("perceptual must not be called with weight 0")

    got = distance(a, b, perceptual=refuse, w_perceptual=0.0, w_charbonnier=1.0)
    assert torch.equal(got, charbonnier(a, b))
    assert torch.allclose(d_two(a, b, p), p(a, b))
    mixed = distance(a, b, perceptual=p, w_perceptual=0.5, w_charbonnier=0.5)
    assert torch.allclose(mixed, 0.5 * p(a, b) + 0.5 * charbonnier(a, b))


# --- stage I -----------------------------------------------------------------------------------


def test_stage1_same_eps_modes_and_no_grad_target():
    spy = Spy(tiny_net())
    spy.eval()
    b = make_batch()
    seed = seed_with_index(4, lambda i: i >= 2)
    p = StandIn()
    out = stage1_losses(spy, b, step=0, total_steps=100, cfg=StageIConfig(), perceptual=p, generator=gen(seed))
    i = int(out["i"])
    assert int(out["k"]) == 4 and i >= 2
    assert len(spy.calls) == 2
    target_call, online_call = sorted(spy.calls, key=lambda c: float(c["sigma"][0]))
    s_i, s_prev = (i / 4) ** 2.5, ((i - 1) / 4) ** 2.5
    assert torch.allclose(online_call["sigma"], torch.full((2,), s_i)) and online_call["training"] and online_call["grad"]
    assert torch.allclose(target_call["sigma"], torch.full((2,), s_prev))
    assert not target_call["training"] and not target_call["grad"]
    # same eps: x_i − x_{i−1} = (s_i − s_{i−1})·(up − x0 + eps), eps recovered from x_i alone
    up_lq = up(b.lq)
    eps = (online_call["x"] - b.x0 - s_i * (up_lq - b.x0)) / s_i
    diff = online_call["x"] - target_call["x"]
    assert torch.allclose(diff, (s_i - s_prev) * (up_lq - b.x0 + eps), atol=1e-5)
    assert eps.std().item() == pytest.approx(1.0, abs=0.1)
    # the CT target carries no graph; the prediction does
    ct_a, ct_b = p.calls[0]
    assert ct_a.requires_grad and not ct_b.requires_grad
    assert not spy.training and not spy.inner.model.training  # mode restored
    out["loss"].backward()
    assert all(q.grad is not None for q in spy.parameters() if q.requires_grad)


def test_stage1_mode_restored_per_submodule():
    net = tiny_net()
    net.train()
    net.model.map_layer0.eval()  # a deliberately mixed state must survive
    before = [(name, m.training) for name, m in net.named_modules()]
    seed = seed_with_index(4, lambda i: i >= 2)
    stage1_losses(net, make_batch(), step=0, total_steps=100, cfg=StageIConfig(), perceptual=StandIn(), generator=gen(seed))
    assert [(name, m.training) for name, m in net.named_modules()] == before


def test_stage1_target_at_index_one_is_x0_exactly():
    spy = Spy(tiny_net())
    b = make_batch()
    p = StandIn()
    seed = seed_with_index(4, lambda i: i == 1)
    out = stage1_losses(spy, b, step=0, total_steps=100, cfg=StageIConfig(), perceptual=p, generator=gen(seed))
    assert int(out["i"]) == 1
    assert len(spy.calls) == 1  # no network call for the target
    assert spy.calls[0]["training"] and torch.allclose(spy.calls[0]["sigma"], torch.full((2,), 0.25**2.5))
    assert p.calls[0][1] is b.x0 or torch.equal(p.calls[0][1], b.x0)


@pytest.mark.parametrize(("step", "levels_cfg", "ctmsr", "n_ta"), [
    (0, None, False, 3), (50, None, False, 2), (0, 1, False, 1), (0, None, True, 0),
])
def test_stage1_ta_same_eps_levels_and_weight(step, levels_cfg, ctmsr, n_ta):
    b = make_batch()
    oracle = FixedOutput(b.x0)  # x̂0 == x0: every TA pair must be identical
    p = StandIn()
    cfg = StageIConfig(ta_levels=levels_cfg)
    seed = seed_with_index(4, lambda i: i >= 2)
    out = stage1_losses(oracle, b, step=step, total_steps=100, cfg=cfg, perceptual=p, generator=gen(seed), ctmsr=ctmsr)
    ta_calls = p.calls[1:]
    assert len(ta_calls) == n_ta
    k = int(out["k"])
    # documented draw order: i, eps, then eps_j for j = 1..n; each pair is Q(·, y0, j, eps_j) on both sides
    g = gen(seed)
    torch.randint(1, k + 1, (1,), generator=g)
    torch.randn(b.x0.shape, generator=g)
    for j, (a_j, b_j) in enumerate(ta_calls, start=1):
        assert torch.equal(a_j, b_j)
        eps_j = torch.randn(b.x0.shape, generator=g)
        assert torch.allclose(b_j, q_sample(b.x0, up(b.lq), (j / k) ** 2.5, eps_j), atol=1e-6)
    # TA is Charbonnier's sqrt(1e-12) floor only: 0.5·1e-6 per level, i.e. zero up to that floor
    assert out["ta"].item() == pytest.approx(n_ta * 0.5e-6, rel=1e-4, abs=1e-12)
    assert out["loss"].item() == pytest.approx(out["ct"].item() + (0 if ctmsr else 0.5) * out["ta"].item(), rel=1e-6)
    assert k == (4 if step < 50 else 3)


@pytest.mark.parametrize(("step", "total", "pinned", "k_expected"), [
    (40, 100, None, 4), (60, 100, None, 3), (40, 200, None, 4), (60, 200, None, 4),
    (40, 200, 100, 4), (60, 200, 100, 3), (150, 200, 100, 3),
])
def test_stage1_k_schedule_can_be_pinned(step, total, pinned, k_expected):
    """k_schedule_steps keeps the K switch where it was when a stage is lengthened by a resume."""
    b = make_batch()
    out = stage1_losses(FixedOutput(b.x0), b, step=step, total_steps=total, cfg=StageIConfig(k_schedule_steps=pinned),
                        perceptual=StandIn(), generator=gen(0))
    assert int(out["k"]) == k_expected


def test_stage1_distance_weights_apply_to_ct_and_ta():
    """w_lpips / w_charbonnier reweight d_I in both L_CT and L_TA; 0 LPIPS never calls it."""
    b = make_batch()
    net = FixedOutput(b.x0 + 0.2)
    seed = seed_with_index(4, lambda i: i == 1)  # target x0: L_CT = d_I(x̂0, x0)
    outs = {}
    for w in [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0), (0.2, 3.0)]:
        p = StandIn()
        outs[w] = stage1_losses(net, b, step=0, total_steps=10, cfg=StageIConfig(w_lpips=w[0], w_charbonnier=w[1],
                                ta_levels=1), perceptual=p, generator=gen(seed))
        assert len(p.calls) == (0 if w[0] == 0 else 2)
    lp, ch = outs[(1.0, 0.0)], outs[(0.0, 1.0)]
    assert ch["ct"].item() > 0.1 and lp["ct"].item() > 1e-4
    for key in ("ct", "ta", "loss"):
        assert outs[(0.5, 0.5)][key].item() == pytest.approx(0.5 * lp[key].item() + 0.5 * ch[key].item(), rel=1e-5)
        assert outs[(0.2, 3.0)][key].item() == pytest.approx(0.2 * lp[key].item() + 3.0 * ch[key].item(), rel=1e-5)
    assert StageIConfig().w_lpips == 0.5 and StageIConfig().w_charbonnier == 0.5  # the paper's d_I
    with pytest.raises(ConfigError, match="w_lpips=-1"):
        StageIConfig(w_lpips=-1)
    # lpips_start: Charbonnier alone before it, the full d_I from it on
    for step, want in [(0, ch), (6, ch), (7, outs[(0.5, 0.5)])]:
        p = StandIn()
        out = stage1_losses(net, b, step=step, total_steps=100, cfg=StageIConfig(lpips_start=7, ta_levels=1),
                            perceptual=p, generator=gen(seed))
        assert len(p.calls) == (2 if step >= 7 else 0)
        scale = 0.5 if step < 7 else 1.0
        assert out["loss"].item() == pytest.approx(scale * want["loss"].item(), rel=1e-5)
    with pytest.raises(ConfigError, match="lpips_start"):
        StageIConfig(lpips_start=5, w_charbonnier=0.0)


def test_stage1_k_schedule_steps_validated():
    with pytest.raises(ConfigError, match="k_schedule_steps"):
        StageIConfig(k_schedule_steps=0)


def test_stage1_ta_weight_read_off_total():
    b = make_batch()
    net = FixedOutput(b.x0 + 0.3 * torch.randn_like(b.x0))
    seed = seed_with_index(4, lambda i: i == 1)
    outs = {w: stage1_losses(net, b, step=0, total_steps=10, cfg=StageIConfig(ta_weight=w), perceptual=StandIn(),
                             generator=gen(seed)) for w in (0.5, 0.0)}
    ta = outs[0.5]["ta"].item()
    assert ta > 1e-3
    assert (outs[0.5]["loss"] - outs[0.0]["loss"]).item() == pytest.approx(0.5 * ta, rel=1e-5)
    assert outs[0.0]["loss"].item() == pytest.approx(outs[0.0]["ct"].item(), rel=1e-6)


def test_intervals_switch_at_half():
    b = make_batch()
    net = FixedOutput(b.x0)
    ks = [int(stage1_losses(net, b, step=s, total_steps=10, cfg=StageIConfig(), perceptual=StandIn(),
                            generator=gen(s))["k"]) for s in (0, 4, 5, 9)]
    assert ks == [4, 4, 3, 3]
    indices = {int(stage1_losses(net, b, step=9, total_steps=10, cfg=StageIConfig(), perceptual=StandIn(),
                                 generator=gen(s))["i"]) for s in range(40)}
    assert indices == {1, 2, 3}


def test_stage1_deterministic_for_a_seed():
    b = make_batch()

    def run(seed):
        net = tiny_net(3)
        torch.manual_seed(7)  # dropout
        out = stage1_losses(net, b, step=0, total_steps=10, cfg=StageIConfig(), perceptual=StandIn(), generator=gen(seed))
        out["loss"].backward()
        return out["loss"].item(), [q.grad.clone() for q in net.parameters()]

    l1, g1 = run(5)
    l2, g2 = run(5)
    l3, _ = run(6)
    assert l1 == l2 and all(torch.equal(x, y) for x, y in zip(g1, g2))
    assert l1 != l3


# --- stage II ----------------------------------------------------------------------------------


def test_trajectory_gradient_is_stop_gradient():
    torch.manual_seed(0)
    x0 = torch.rand(2, 3, 16, 16) * 2 - 1
    x0_hat = (x0 + 0.2 * torch.randn_like(x0)).requires_grad_()
    delta = 0.1 * torch.randn_like(x0)
    p = StandIn()
    term = trajectory_term(x0_hat, x0, delta, p)
    (grad,) = torch.autograd.grad(term.sum(), x0_hat)
    # independent: ω·∂d_II(a, b)/∂a at a = x̂0, with b = x̂0 − Δ a constant
    omega = 1.0 / (x0_hat.detach() - x0).abs().mean(dim=(1, 2, 3))
    a = x0_hat.detach().clone().requires_grad_()
    b = (x0_hat.detach() - delta).clone()
    (expected,) = torch.autograd.grad((omega * p(a, b)).sum(), a)
    assert grad.abs().max() > 0
    assert torch.allclose(grad, expected, rtol=1e-5, atol=1e-9)
    # without the stop-gradient (target moving with x̂0) the gradient would differ
    a2 = x0_hat.detach().clone().requires_grad_()
    (moving,) = torch.autograd.grad((omega * p(a2, a2 - delta)).sum(), a2)
    assert not torch.allclose(moving, expected, rtol=1e-3)


def _expected_stage2(recipe: str, b: Batch, x0_hat: torch.Tensor, seed: int) -> dict[str, float]:
    """Stage II terms recomputed from the SPEC with the documented draw order: i, eps, eps'."""
    g = gen(seed)
    i = int(torch.randint(1, 4, (1,), generator=g))
    torch.randn(b.x0.shape, generator=g)  # eps of x_i / x_{i−1}
    eps_t = torch.randn(b.x0.shape, generator=g)
    p, theta_prime = StandIn(), Squash()
    up_lq = up(b.lq)
    x_t = b.x0 + (up_lq - b.x0) / 3 + eps_t / 3  # t' = index 1 of K = 3, p = 1: σ = a = 1/3
    x_t_hat = x0_hat + (up_lq - x0_hat) / 3 + eps_t / 3
    f_hat, f_real = theta_prime(x_t_hat, None, None), theta_prime(x_t, None, None)
    d_dtm, d_stab = f_hat - f_real, sobel(f_hat) - sobel(f_real)
    omega = 1.0 / (x0_hat - b.x0).abs().mean(dim=(1, 2, 3))
    target = b.x0 if i == 1 else x0_hat
    ct = (0.5 * p(x0_hat, target) + 0.5 * torch.sqrt((x0_hat - target) ** 2 + 1e-12).mean(dim=(1, 2, 3))).mean()
    w_dtm, w_stab, w_rect, mix = SPEC_WEIGHTS[recipe]
    dtm = (omega * p(x0_hat, x0_hat - (d_dtm + mix * d_stab))).mean()
    stab = (omega * p(x0_hat, x0_hat - d_stab)).mean() if w_stab else torch.tensor(0.0)
    if recipe == "release":  # the authors' code: S(f_θ'(x̂_t')), logged without gradient
        rect = p(sobel(f_hat), sobel(b.x0)).mean()
    elif w_rect:  # online net on x_t': the fixed-output net returns x̂0
        rect = p(sobel(x0_hat), sobel(b.x0)).mean()
    else:
        rect = torch.tensor(0.0)
    loss = ct + w_dtm * dtm + w_stab * stab + w_rect * rect
    return {"i": i, "ct": ct.item(), "dtm": dtm.item(), "stab": stab.item(), "rect": rect.item(),
            "loss": loss.item(), "omega_mean": omega.mean().item()}


@pytest.mark.parametrize("recipe", sorted(SPEC_WEIGHTS))
@pytest.mark.parametrize("want_i", [1, 2])
def test_stage2_recipe_terms_and_weights(recipe, want_i):
    b = make_batch(1)
    offset = 0.2 * torch.randn(b.x0.shape, generator=gen(9))
    offset[1] *= 3.0  # ω differs per sample: it must multiply before the batch mean
    x0_hat = b.x0 + offset
    seed = seed_with_index(3, lambda i: i == want_i)
    out = stage2_losses(FixedOutput(x0_hat), Squash(), b, cfg=StageIIConfig(recipe=recipe), perceptual=StandIn(),
                        generator=gen(seed))
    expected = _expected_stage2(recipe, b, x0_hat, seed)
    assert int(out["i"]) == expected["i"] == want_i
    for key in ("ct", "dtm", "stab", "rect", "omega_mean", "loss"):
        assert out[key].item() == pytest.approx(expected[key], rel=1e-5, abs=1e-9), key
    assert out["dtm"].item() > 0 and (out["stab"].item() > 0) == (recipe in ("gtasr", "paper-printed"))


def test_stage2_gradients_flow_only_where_the_paper_says():
    b = make_batch()
    net = tiny_net(1)
    target = copy_for_target(tiny_net(2))
    target.requires_grad_(True)  # even if θ' had trainable flags, no gradient may reach it
    for recipe in SPEC_WEIGHTS:
        net.zero_grad(set_to_none=True)
        out = stage2_losses(net, target, b, cfg=StageIIConfig(recipe=recipe), perceptual=StandIn(), generator=gen(4))
        out["loss"].backward()
        assert all(q.grad is None for q in target.parameters()), recipe
        assert all(q.grad is not None for q in net.parameters()), recipe
        assert not any(out[k].requires_grad for k in ("ct", "dtm", "stab", "rect", "omega_mean"))

    params = [q for q in net.parameters()]
    terms = stage2_terms(net, target, b, cfg=StageIIConfig(recipe="gtasr"), perceptual=StandIn(), generator=gen(4))
    grads = torch.autograd.grad(terms["rect"], params, allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert not terms["omega"].requires_grad
    terms = stage2_terms(net, target, b, cfg=StageIIConfig(recipe="release"), perceptual=StandIn(), generator=gen(4))
    assert not terms["rect"].requires_grad and terms["rect"].item() > 0
    assert terms["dtm"].requires_grad


def test_stage2_modes_inputs_and_restore():
    b = make_batch()
    net, target = Spy(tiny_net(1)), Spy(copy_for_target(tiny_net(2)))
    net.eval()
    target.train()  # the loss must still run θ' in eval mode, then give the mode back
    seed = seed_with_index(3, lambda i: i >= 2)
    out = stage2_losses(net, target, b, cfg=StageIIConfig(), perceptual=StandIn(), generator=gen(seed))
    assert not net.training and target.training and target.inner.training
    assert len(target.calls) == 2
    for call in target.calls:
        assert not call["training"] and not call["grad"]
        assert torch.allclose(call["sigma"], torch.full((2,), 1 / 3))
    # both θ' inputs share eps': their difference is (1 − 1/3)·(x̂0 − x0)
    x_hat_t, x_t = target.calls[0]["x"], target.calls[1]["x"]
    online = [c for c in net.calls if c["grad"]]
    assert [c["training"] for c in net.calls if c["grad"]] == [True, True]  # x̂0, then Rect on x_t'
    assert torch.equal(online[1]["x"], x_t)
    assert torch.allclose(online[1]["sigma"], torch.full((2,), 1 / 3))
    s_i = int(out["i"]) / 3
    assert torch.allclose(online[0]["sigma"], torch.full((2,), s_i))
    target_ct = [c for c in net.calls if not c["grad"]]
    assert len(target_ct) == 1 and not target_ct[0]["training"]  # θ⁻ of L_CT: current weights, eval
    assert (x_hat_t - x_t).abs().max() > 0


# --- targets, EMA ------------------------------------------------------------------------------


def test_copy_for_target_and_ema_update():
    net = tiny_net(0)
    net.train()
    target = copy_for_target(net)
    assert not target.training and not any(q.requires_grad for q in target.parameters())
    with torch.no_grad():
        next(net.parameters()).add_(1.0)
    assert not torch.equal(next(net.parameters()), next(target.parameters()))  # an independent copy

    ema, other = tiny_net(0), tiny_net(1)
    before = {k: v.clone() for k, v in ema.named_parameters()}
    for _, buf in other.named_buffers():
        buf.add_(0.5) if buf.is_floating_point() else None
    ema_update(ema, other, decay=0.9)
    for name, q in other.named_parameters():
        assert torch.allclose(dict(ema.named_parameters())[name], 0.9 * before[name] + 0.1 * q, atol=1e-7)
    for (name, buf), (_, src) in zip(ema.named_buffers(), other.named_buffers()):
        assert torch.equal(buf, src), name


def test_config_and_batch_errors():
    with pytest.raises(ConfigError, match="recipe 'paper' is unknown"):
        StageIIConfig(recipe="paper")
    with pytest.raises(ConfigError, match="unknown keys"):
        StageIConfig.from_dict({"p": 2.5, "k": 4})
    assert StageIIConfig.from_dict({"recipe": "release"}).recipe == "release"
    bad = Batch(x0=torch.zeros(2, 3, 32, 32), lq=torch.zeros(2, 3, 16, 16))
    with pytest.raises(InputError, match="lq"):
        stage1_losses(tiny_net(), bad, step=0, total_steps=1, cfg=StageIConfig(), perceptual=StandIn(), generator=gen(0))


# --- a few optimiser steps ---------------------------------------------------------------------


def _train(loss_fn, net, steps: int, lr: float) -> tuple[float, float]:
    opt = torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.9), weight_decay=0.0)

    def evaluate() -> float:
        torch.manual_seed(0)
        with torch.no_grad():
            return float(loss_fn(gen(11))["loss"])

    first = evaluate()
    for _ in range(steps):
        torch.manual_seed(0)  # same dropout and draws every step: a fixed objective
        opt.zero_grad(set_to_none=True)
        loss_fn(gen(11))["loss"].backward()
        opt.step()
    return first, evaluate()


def test_stage1_steps_reduce_loss():
    b, net, p = make_batch(), tiny_net(5), StandIn()
    first, last = _train(lambda g: stage1_losses(net, b, step=0, total_steps=10, cfg=StageIConfig(), perceptual=p,
                                                 generator=g), net, steps=15, lr=3e-3)
    assert last < 0.95 * first


def test_stage2_steps_reduce_loss():
    b, net, p = make_batch(), tiny_net(5), StandIn()
    target = copy_for_target(net)
    first, last = _train(lambda g: stage2_losses(net, target, b, cfg=StageIIConfig(), perceptual=p, generator=g),
                         net, steps=15, lr=3e-3)
    assert last < 0.9 * first


# --- with the real LPIPS-VGG -------------------------------------------------------------------


def test_stage2_with_real_lpips_vgg():
    from gtasr_deploy.metrics.assets import asset_path

    try:
        asset_path("lpips_vgg16")
    except CheckpointError as err:
        pytest.skip(f"LPIPS-VGG weights not fetched ({err})")
    from gtasr_deploy.metrics.lpips import LPIPS

    lpips = LPIPS("vgg")
    b = make_batch()
    net = tiny_net(1)
    target = copy_for_target(net)
    terms = stage2_terms(net, target, b, cfg=StageIIConfig(), perceptual=lpips, generator=gen(2))
    for key in ("ct", "dtm", "stab", "rect"):
        assert torch.isfinite(terms[key]) and terms[key].item() > 0, key
    grads = torch.autograd.grad(terms["rect"], list(net.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert not any(q.requires_grad for q in lpips.parameters())
    a = b.x0 + 0.1 * torch.randn_like(b.x0)
    assert torch.allclose(d_two(a, b.x0, lpips), lpips(a, b.x0))
    out = stage1_losses(net, b, step=0, total_steps=10, cfg=StageIConfig(), perceptual=lpips, generator=gen(2))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(q.grad is not None for q in net.parameters())


def test_stage1_top_index_prob_draws_sigma_one_as_often_as_asked():
    b = make_batch()
    net = FixedOutput(b.x0)
    draw = lambda prob, s: int(stage1_losses(net, b, step=9, total_steps=10, cfg=StageIConfig(top_index_prob=prob),
                                             perceptual=StandIn(), generator=gen(s))["i"])
    assert {draw(1.0, s) for s in range(20)} == {3}  # K = 3 at step 9: always the top level
    assert {draw(0.0, s) for s in range(40)} == {1, 2}  # never the top level, both others
    assert 10 <= sum(draw(0.5, s) == 3 for s in range(60)) <= 50
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="top_index_prob"):
            StageIConfig(top_index_prob=bad)


def test_stage1_without_ct_is_the_direct_term_alone_and_skips_the_target_forward():
    b = make_batch()
    seed = seed_with_index(4, lambda i: i >= 2)  # an index whose CT target needs a network forward
    spy = Spy(tiny_net())
    out = stage1_losses(spy, b, step=0, total_steps=100, cfg=StageIConfig(ct_weight=0.0, ta_weight=2.0),
                        perceptual=StandIn(), generator=gen(seed))
    assert len(spy.calls) == 1 and spy.calls[0]["training"] and spy.calls[0]["grad"]
    assert out["ct"].item() == 0.0 and out["ta"].item() > 0
    assert out["loss"].item() == pytest.approx(2.0 * out["ta"].item(), rel=1e-6)
    with_ct = stage1_losses(Spy(tiny_net()), b, step=0, total_steps=100, cfg=StageIConfig(ta_weight=2.0),
                            perceptual=StandIn(), generator=gen(seed))
    assert with_ct["ct"].item() > 0  # same draws with the paper's weight: the CT term is there
    for bad in (dict(ta_weight=0.0), dict(ta_levels=0), dict(k_start=4, k_end=1)):  # nothing left to train on
        with pytest.raises(ConfigError, match="ct_weight"):
            StageIConfig(ct_weight=0.0, **bad)
