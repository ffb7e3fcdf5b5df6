"""GTASR training objectives as pure functions (SPEC §5 "Distances", "Stage I", "Stage II").

Everything random is drawn from the CPU ``torch.Generator`` passed in (then moved to the batch's
device), in a fixed order, so a seed gives the same grid indices and noise on CPU and CUDA:

    stage I : i ~ U{1..K}, eps (for x_i and x_{i-1}), then eps_j for j = 1..n_TA
    stage II: i ~ U{1..K}, eps (for x_i and x_{i-1}), then eps' (for x_t' and x̂_t')

Dropout draws from torch's global RNG (the network owns it); seed that too for bit-exact repeats.

The perceptual distance is an argument: any callable ``(a, b) -> (N,)`` for (N,3,H,W) inputs,
normally ``gtasr_deploy.metrics.lpips.LPIPS("vgg")``. It receives its inputs as they are (noisy
states and Sobel maps included, no clamp). The forward process Q is ``schedule.q_sample``.

Networks are called ``net(x_t, sigma, lq)`` with sigma of shape (N,). Modes: the online θ runs in
train mode (dropout 0.13 active); every target (θ⁻ of the consistency loss, θ' of stage II) runs
in eval mode without gradients. θ⁻ is "a no-grad copy of the CURRENT weights in eval mode": since
the weights are the same tensors at that instant, we toggle the online net to eval under
``torch.no_grad()`` instead of copying 172M parameters every step, and restore every submodule's
previous mode afterwards.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, InputError
from ..model.schedule import SCALE, grid_sigma, num_intervals, q_sample, up

Perceptual = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CHARBONNIER_EPS = 1e-12
SOBEL_EPS = 1e-12
# d = w_perceptual·LPIPS + w_charbonnier·Charbonnier (SPEC §5 "Distances")
D_I = (0.5, 0.5)
D_II = (1.0, 0.0)


# --- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Batch:
    """One training batch: ``x0`` (N,3,H,W) HR and ``lq`` (N,3,H/4,W/4) LR, float, in [-1,1]."""

    x0: torch.Tensor
    lq: torch.Tensor


def _from_dict(cls: type, d: Mapping[str, Any], where: str) -> Any:
    valid = sorted(f.name for f in fields(cls))
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {valid}")
    return cls(**d)


@dataclass(frozen=True, kw_only=True)
class StageIConfig:
    """Stage I: p = 2.5, K = 4 -> 3 at half of training, L = L_CT + 0.5·L_TA.

    ``ta_levels``: None uses every interior level j = 1..K-1 (the paper); an int n uses only the
    first n of them (a cheaper demo choice). ``k_schedule_steps``: None spreads the K schedule over
    the stage's steps (the paper); an int n spreads it over n steps and keeps K = k_end after them,
    so a stage lengthened later (resumed with more steps) keeps the schedule it started with.
    ``w_lpips``/``w_charbonnier``: the weights of d_I (SPEC §5: 0.5 and 0.5); a small-compute run
    may shift them towards fidelity, and a 0 LPIPS weight skips LPIPS entirely. ``lpips_start``: the
    stage-I step from which LPIPS is on; before it d_I is its Charbonnier term alone (a cheap
    fidelity warm-up: LPIPS-VGG is most of a CPU step). 0 = from the start (the paper).
    ``ct_weight``: the weight of L_CT (1 in the paper); 0 drops the consistency term (and its target
    forward), leaving ta_weight·L_TA, a direct x0 term. ``top_index_prob``: None draws i ~ U{1..K}
    (the paper); p draws i = K (σ = 1, the state one-step inference starts from) with probability p,
    else i ~ U{1..K-1}.
    CTMSR's stage I is ``p=1`` with ``ctmsr=True``."""

    p: float = 2.5
    k_start: int = 4
    k_end: int = 3
    ta_weight: float = 0.5
    ta_levels: int | None = None
    k_schedule_steps: int | None = None
    w_lpips: float = D_I[0]
    w_charbonnier: float = D_I[1]
    lpips_start: int = 0
    ct_weight: float = 1.0
    top_index_prob: float | None = None

    def __post_init__(self) -> None:
        if self.ct_weight < 0 or not self.ct_weight + self.ta_weight > 0:
            raise ConfigError(f"stage I config: ct_weight={self.ct_weight}, ta_weight={self.ta_weight}; expected "
                              "both >= 0 and not both 0 (the paper: 1 and 0.5)")
        if self.ct_weight == 0 and (self.ta_levels == 0 or self.k_end < 2):
            raise ConfigError(f"stage I config: ct_weight=0 leaves only L_TA, which needs ta_levels >= 1 (got "
                              f"{self.ta_levels}) and K >= 2 throughout (k_end={self.k_end})")
        if self.top_index_prob is not None and not 0.0 <= self.top_index_prob <= 1.0:
            raise ConfigError(f"stage I config: top_index_prob={self.top_index_prob}; expected a probability or unset")
        if not self.p > 0:
            raise ConfigError(f"stage I config: p={self.p}; expected p > 0 (2.5 for GTASR, 1 for CTMSR)")
        if not 1 <= self.k_end <= self.k_start:
            raise ConfigError(
                f"stage I config: k_start={self.k_start}, k_end={self.k_end}; expected 1 <= k_end <= k_start (4, 3)"
            )
        if self.ta_weight < 0 or (self.ta_levels is not None and self.ta_levels < 0):
            raise ConfigError(
                f"stage I config: ta_weight={self.ta_weight}, ta_levels={self.ta_levels}; expected both >= 0"
            )
        if self.k_schedule_steps is not None and self.k_schedule_steps < 1:
            raise ConfigError(f"stage I config: k_schedule_steps={self.k_schedule_steps}; expected >= 1 or unset")
        if self.w_lpips < 0 or self.w_charbonnier < 0 or not self.w_lpips + self.w_charbonnier > 0:
            raise ConfigError(
                f"stage I config: w_lpips={self.w_lpips}, w_charbonnier={self.w_charbonnier}; expected both >= 0, "
                "not both 0 (the paper's d_I is 0.5, 0.5)"
            )
        if self.lpips_start < 0 or (self.lpips_start and not self.w_charbonnier > 0):
            raise ConfigError(f"stage I config: lpips_start={self.lpips_start}; expected >= 0, and a Charbonnier weight "
                              "> 0 to train on before it")

    def distance_at(self, step: int) -> Callable[[torch.Tensor, torch.Tensor, "Perceptual"], torch.Tensor]:
        """d_I(a, b, perceptual) per sample (N,) at this step: without LPIPS before ``lpips_start``."""
        w_lpips = self.w_lpips if step >= self.lpips_start else 0.0

        def d(a: torch.Tensor, b: torch.Tensor, perceptual: "Perceptual") -> torch.Tensor:
            return distance(a, b, perceptual=perceptual, w_perceptual=w_lpips, w_charbonnier=self.w_charbonnier)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageIConfig":
        return _from_dict(cls, d, "stage I config")


@dataclass(frozen=True, kw_only=True)
class RecipeWeights:
    """Stage II loss weights. ``stab_in_dtm`` > 0 folds Δ_Stab into the DTM target with that
    factor (release); ``rect_net`` is "online" (gradient into θ), "target" (logged, no gradient,
    added to the loss value as released) or "none"."""

    dtm: float
    stab: float
    rect: float
    stab_in_dtm: float = 0.0
    rect_net: str = "online"


# SPEC §5 "Loss weights": the release trains with 0.5·1.6 = 0.8 (CTMSR's L_DTM factor 0.5).
RECIPES: Mapping[str, RecipeWeights] = {
    "gtasr": RecipeWeights(dtm=0.8, stab=0.16, rect=1.0),
    "paper-printed": RecipeWeights(dtm=1.6, stab=0.032, rect=1.0),
    "release": RecipeWeights(dtm=0.8, stab=0.0, rect=1.0, stab_in_dtm=0.2, rect_net="target"),
    "ctmsr": RecipeWeights(dtm=0.8, stab=0.0, rect=0.0, rect_net="none"),
}


@dataclass(frozen=True, kw_only=True)
class StageIIConfig:
    """Stage II: p = 1, K = 3, t' = grid index 1 (σ = 1/3), recipe ``gtasr`` by default."""

    recipe: str = "gtasr"
    p: float = 1.0
    k: int = 3
    t_prime_index: int = 1

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ConfigError(f"stage II config: recipe {self.recipe!r} is unknown; expected one of {sorted(RECIPES)}")
        if not self.p > 0 or self.k < 1:
            raise ConfigError(f"stage II config: p={self.p}, k={self.k}; expected p > 0 and k >= 1 (1, 3)")
        if not 1 <= self.t_prime_index <= self.k:
            raise ConfigError(
                f"stage II config: t_prime_index={self.t_prime_index}; expected 1..k={self.k} (1 gives σ = 1/3)"
            )

    @property
    def weights(self) -> RecipeWeights:
        return RECIPES[self.recipe]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StageIIConfig":
        return _from_dict(cls, d, "stage II config")


# --- distances -------------------------------------------------------------------------------


def charbonnier(a: torch.Tensor, b: torch.Tensor, eps: float = CHARBONNIER_EPS) -> torch.Tensor:
    """Per-sample Charbonnier distance (N,): mean over C,H,W of sqrt((a-b)² + eps)."""
    return torch.sqrt((a - b) ** 2 + eps).mean(dim=tuple(range(1, a.ndim)))


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Sobel magnitude S(x), same shape as x (N,C,H,W): depthwise, zero padding 1,
    sqrt(gx² + gy² + 1e-12) per channel, gx with [[1,0,-1],[2,0,-2],[1,0,-1]], gy its transpose."""
    kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    weight = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C,1,3,3): gx, gy per channel
    g = F.conv2d(x, weight, padding=1, groups=c)
    gx, gy = g[:, 0::2], g[:, 1::2]
    return torch.sqrt(gx * gx + gy * gy + SOBEL_EPS)


def distance(
    a: torch.Tensor, b: torch.Tensor, *, perceptual: Perceptual, w_perceptual: float, w_charbonnier: float
) -> torch.Tensor:
    """d(a,b) = w_perceptual·perceptual(a,b) + w_charbonnier·Charbonnier(a,b), per sample (N,).

    A zero weight skips that call entirely (d_II never runs Charbonnier; a 0 LPIPS weight saves a
    VGG pass)."""
    total = a.new_zeros(a.shape[0])
    if w_perceptual:
        total = total + w_perceptual * perceptual(a, b).reshape(a.shape[0])
    if w_charbonnier:
        total = total + w_charbonnier * charbonnier(a, b)
    return total


def d_one(a: torch.Tensor, b: torch.Tensor, perceptual: Perceptual) -> torch.Tensor:
    """d_I = 0.5·LPIPS + 0.5·Charbonnier, (N,)."""
    return distance(a, b, perceptual=perceptual, w_perceptual=D_I[0], w_charbonnier=D_I[1])


def d_two(a: torch.Tensor, b: torch.Tensor, perceptual: Perceptual) -> torch.Tensor:
    """d_II = 1.0·LPIPS, (N,)."""
    return distance(a, b, perceptual=perceptual, w_perceptual=D_II[0], w_charbonnier=D_II[1])


# --- networks: modes, target copies, EMA -----------------------------------------------------


def _unwrap(net: nn.Module) -> nn.Module:
    """The bare module under DistributedDataParallel (``.module``) / torch.compile (``._orig_mod``)."""
    for attr in ("module", "_orig_mod"):
        inner = getattr(net, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrap(inner)
    return net


@contextmanager
def _mode(net: nn.Module, training: bool) -> Iterator[nn.Module]:
    """Run ``net`` in train/eval mode, then restore every submodule's own previous mode."""
    saved = [(m, m.training) for m in net.modules()]
    net.train(training)
    try:
        yield net
    finally:
        for m, was_training in saved:
            m.training = was_training


def copy_for_target(net: nn.Module) -> nn.Module:
    """θ' for stage II: a deep copy in eval mode with ``requires_grad=False`` everywhere."""
    target = copy.deepcopy(_unwrap(net))
    target.eval()
    target.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, decay: float = 0.999) -> None:
    """ema ← decay·ema + (1−decay)·net over parameters; buffers are copied (SPEC §5 optimiser)."""
    src = _unwrap(net)
    ema_params, net_params = dict(ema.named_parameters()), dict(src.named_parameters())
    if ema_params.keys() != net_params.keys():
        missing = sorted(ema_params.keys() ^ net_params.keys())
        raise ConfigError(f"ema_update: parameter names differ (first: {missing[0]}); expected the same network")
    for name, p in net_params.items():
        ema_params[name].lerp_(p.detach(), 1.0 - decay)
    ema_buffers = dict(ema.named_buffers())
    for name, b in src.named_buffers():
        if name not in ema_buffers:
            raise ConfigError(f"ema_update: buffer {name} missing from the EMA copy; expected the same network")
        ema_buffers[name].copy_(b)


# --- shared pieces ---------------------------------------------------------------------------


def _check_batch(batch: Batch) -> None:
    x0, lq = batch.x0, batch.lq
    n, _, h, w = x0.shape if x0.ndim == 4 else (0, 0, 0, 0)
    if x0.ndim != 4 or x0.shape[1] != 3 or tuple(lq.shape) != (n, 3, h // SCALE, w // SCALE) or h % SCALE or w % SCALE:
        raise InputError(
            f"training batch: got x0 {tuple(x0.shape)} and lq {tuple(lq.shape)}; "
            f"expected x0 (N,3,H,W) with H, W multiples of {SCALE} and lq (N,3,H/{SCALE},W/{SCALE})"
        )


def _draw_index(generator: torch.Generator, k: int, top_prob: float | None = None) -> int:
    """One grid index for the whole batch: i ~ U{1..K}, or i = K with probability ``top_prob`` and
    i ~ U{1..K-1} otherwise."""
    if top_prob is None:
        return int(torch.randint(1, k + 1, (1,), generator=generator))
    if k == 1 or float(torch.rand((), generator=generator, dtype=torch.float64)) < top_prob:
        return k
    return int(torch.randint(1, k, (1,), generator=generator))


def _draw_noise(generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """eps ~ N(0,I) of ``like``'s shape, drawn in fp32 on the CPU, then moved to its device."""
    eps = torch.randn(tuple(like.shape), generator=generator, dtype=torch.float32)
    return eps.to(device=like.device, dtype=like.dtype)


def _sigmas(i: int, k: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """s_i as an (N,) tensor on ``like``'s device."""
    return grid_sigma(i, k, p).to(like.device).expand(like.shape[0])


def _consistency(
    net: nn.Module, batch: Batch, up_lq: torch.Tensor, i: int, k: int, p: float, eps: torch.Tensor,
    perceptual: Perceptual, dist: Callable[[torch.Tensor, torch.Tensor, Perceptual], torch.Tensor],
    with_target: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x̂0, L_CT per sample). x̂0 = D_θ(x_i, s_i) in train mode; target D_θ⁻(x_{i-1}, s_{i-1}) in
    eval mode without grad, or x0 itself when i-1 = 0. Both states share ``eps``; ``dist`` is the
    stage's d_I. ``with_target=False``: x̂0 only, L_CT zeros (no target forward)."""
    x0, lq = batch.x0, batch.lq
    s_cur, s_prev = _sigmas(i, k, p, x0), _sigmas(i - 1, k, p, x0)
    target = None
    if with_target and i - 1 == 0:
        target = x0
    elif with_target:
        with torch.no_grad(), _mode(net, False):
            target = net(q_sample(x0, up_lq, s_prev, eps), s_prev, lq)
    with _mode(net, True):
        x0_hat = net(q_sample(x0, up_lq, s_cur, eps), s_cur, lq)
    return x0_hat, x0_hat.new_zeros(x0.shape[0]) if target is None else dist(x0_hat, target, perceptual)


# --- stage I ---------------------------------------------------------------------------------


def stage1_losses(
    net: nn.Module,
    batch: Batch,
    *,
    step: int,
    total_steps: int,
    cfg: StageIConfig,
    perceptual: Perceptual,
    generator: torch.Generator,
    ctmsr: bool = False,
) -> dict[str, torch.Tensor]:
    """Stage I loss L = ct_weight·L_CT + ta_weight·L_TA (``ctmsr``: L_CT only, no TA noise drawn).

    L_TA = Σ_{j=1..K-1} mean_batch d_I(Q(x̂0,y0,j,eps_j), Q(x0,y0,j,eps_j)), one fresh eps_j per j
    shared by both sides. K = num_intervals(step, k_schedule_steps or total_steps, k_start, k_end).
    Returns "loss" (scalar, differentiable), "ct", "ta" (detached scalars), "k", "i" (int64 scalars).
    """
    _check_batch(batch)
    k = num_intervals(step, cfg.k_schedule_steps or total_steps, cfg.k_start, cfg.k_end)
    i = _draw_index(generator, k, cfg.top_index_prob)
    eps = _draw_noise(generator, batch.x0)
    up_lq = up(batch.lq)
    dist = cfg.distance_at(step)
    x0_hat, ct = _consistency(net, batch, up_lq, i, k, cfg.p, eps, perceptual, dist, with_target=cfg.ct_weight > 0)
    loss_ct = ct.mean()
    loss_ta = loss_ct.new_zeros(())
    if not ctmsr:
        levels = k - 1 if cfg.ta_levels is None else min(cfg.ta_levels, k - 1)
        for j in range(1, levels + 1):
            eps_j = _draw_noise(generator, batch.x0)
            s_j = _sigmas(j, k, cfg.p, batch.x0)
            ta_j = dist(q_sample(x0_hat, up_lq, s_j, eps_j), q_sample(batch.x0, up_lq, s_j, eps_j), perceptual)
            loss_ta = loss_ta + ta_j.mean()
    loss = cfg.ct_weight * loss_ct if ctmsr else cfg.ct_weight * loss_ct + cfg.ta_weight * loss_ta
    return {
        "loss": loss,
        "ct": loss_ct.detach(),
        "ta": loss_ta.detach(),
        "k": torch.tensor(k),
        "i": torch.tensor(i),
    }


# --- stage II --------------------------------------------------------------------------------


def omega(x0_hat: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """ω = 1 / mean_{C,H,W}|sg(x̂0) − x0| per sample (N,), no gradient (paper Eq. 40). As released,
    no epsilon: x̂0 equal to x0 bit for bit gives inf."""
    return 1.0 / (x0_hat.detach() - x0).abs().mean(dim=(1, 2, 3))


def trajectory_term(
    x0_hat: torch.Tensor, x0: torch.Tensor, delta: torch.Tensor, perceptual: Perceptual
) -> torch.Tensor:
    """ω·d_II(x̂0, sg(x̂0 − Δ)) per sample (N,): its gradient w.r.t. x̂0 is ω·∂d_II/∂a at the fixed
    target, i.e. it moves x̂0 by −Δ (the DTM/Stab update)."""
    target = (x0_hat - delta).detach()
    return omega(x0_hat, x0) * d_two(x0_hat, target, perceptual)


def stage2_terms(
    net: nn.Module,
    target_net: nn.Module,
    batch: Batch,
    *,
    cfg: StageIIConfig,
    perceptual: Perceptual,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The unweighted stage II terms as batch means, NOT detached: "ct", "dtm", "stab", "rect"
    (zero when the recipe has no such term), plus "omega" (N,) and "i". See :func:`stage2_losses`."""
    _check_batch(batch)
    x0, lq, rw = batch.x0, batch.lq, cfg.weights
    i = _draw_index(generator, cfg.k)
    eps = _draw_noise(generator, x0)
    up_lq = up(lq)
    x0_hat, ct = _consistency(net, batch, up_lq, i, cfg.k, cfg.p, eps, perceptual, d_one)

    # t' and one fresh eps shared by the real and the generated state.
    s_t = _sigmas(cfg.t_prime_index, cfg.k, cfg.p, x0)
    eps_t = _draw_noise(generator, x0)
    x_t = q_sample(x0, up_lq, s_t, eps_t)
    x_t_hat = q_sample(x0_hat.detach(), up_lq, s_t, eps_t)
    with torch.no_grad(), _mode(target_net, False):
        f_hat, f_real = target_net(x_t_hat, s_t, lq), target_net(x_t, s_t, lq)
        s_f_hat = sobel(f_hat)
        delta_dtm = f_hat - f_real
        delta_stab = s_f_hat - sobel(f_real)

    w = omega(x0_hat, x0)
    zero = ct.new_zeros(())
    dtm = trajectory_term(x0_hat, x0, delta_dtm + rw.stab_in_dtm * delta_stab, perceptual).mean()
    stab = trajectory_term(x0_hat, x0, delta_stab, perceptual).mean() if rw.stab else zero
    if rw.rect_net == "online":  # Appendix B.4 / Alg. 1 line 31: a learnable proxy, gradient into θ
        with _mode(net, True):
            rect = d_two(sobel(net(x_t, s_t, lq)), sobel(x0), perceptual).mean()
    elif rw.rect_net == "target":
        # As the authors' code computes it: Sobel of θ' on the GENERATED state x̂_t', no gradient.
        with torch.no_grad():
            rect = d_two(s_f_hat, sobel(x0), perceptual).mean()
    else:
        rect = zero
    return {"ct": ct.mean(), "dtm": dtm, "stab": stab, "rect": rect, "omega": w, "i": torch.tensor(i)}


def stage2_losses(
    net: nn.Module,
    target_net: nn.Module,
    batch: Batch,
    *,
    cfg: StageIIConfig,
    perceptual: Perceptual,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """Stage II loss for ``cfg.recipe`` (SPEC §5), with ω = 1/mean|sg(x̂0) − x0| per sample:

    - gtasr:         L_CT + 0.8·ω·d_II(x̂0, sg(x̂0−Δ_DTM)) + 0.16·ω·d_II(x̂0, sg(x̂0−Δ_Stab)) + 1.0·L_Rect,
                     L_Rect = d_II(S(f_θ(x_t')), S(x0)) through the online net (train mode)
    - paper-printed: the same with 1.6 / 0.032 / 1.0
    - release:       L_CT + 0.8·ω·d_II(x̂0, sg(x̂0 − (Δ_DTM + 0.2·Δ_Stab))) + Rect without gradient,
                     as the authors' code computes it: d_II(S(f_θ'(x̂_t')), S(x0)) (generated state)
    - ctmsr:         L_CT + 0.8·ω·d_II(x̂0, sg(x̂0−Δ_DTM))

    Δ_DTM = f_θ'(x̂_t') − f_θ'(x_t'), Δ_Stab = S(f_θ'(x̂_t')) − S(f_θ'(x_t')), θ' = ``target_net``
    in eval mode without gradient; x_t' = Q(x0,y0,t',eps'), x̂_t' = Q(sg(x̂0),y0,t',eps').
    Returns "loss" (differentiable) and detached "ct", "dtm" (release: the mixed term), "stab",
    "rect" (unweighted; 0 where the recipe lacks them), "omega_mean", "i".
    """
    terms = stage2_terms(net, target_net, batch, cfg=cfg, perceptual=perceptual, generator=generator)
    rw = cfg.weights
    loss = terms["ct"] + rw.dtm * terms["dtm"] + rw.stab * terms["stab"] + rw.rect * terms["rect"]
    out = {name: terms[name].detach() for name in ("ct", "dtm", "stab", "rect")}
    return {"loss": loss, **out, "omega_mean": terms["omega"].mean().detach(), "i": terms["i"]}
