"""A spandrel architecture for GTASR (pip extra ``spandrel``): spandrel, chaiNNer and ComfyUI's
built-in "Load Upscale Model" / "Upscale Image (using Model)" nodes load GTASR weights with it.

    from gtasr_deploy.integrations.spandrel_arch import register
    import spandrel
    register()                                         # once, explicitly: adds "GTASR" to MAIN_REGISTRY
    model = spandrel.ModelLoader().load_from_file("GTASR_final_phase.pth")   # or our .safetensors
    model.seed, model.precision = 0, "fp32"            # the defaults: seed 0, precision "auto"
    sr = model(image)                                  # (B, 3, H, W) in [0, 1] -> (B, 3, 4H, 4W)

Detection: the state dict, cleaned as this package's loader cleans it (``module.``/``_orig_mod.``
prefixes, the ``model.`` prefix of the official layout; spandrel itself unwraps ``params_ema``),
must infer a network config from its shapes (:func:`~gtasr_deploy.model.infer_config`, as
:func:`~gtasr_deploy.model.load_model` does) and then match that network key for key and shape for
shape (checked on a meta-device network: nothing is allocated). Any other state dict is not claimed.

A call runs this package's pipeline on each image of the batch, whole (``Upscaler(tile=0)``): noise
``x_K = up(lq) + eps`` drawn from the descriptor's ``seed`` over the padded image, one step of D at
σ = 1, at the descriptor's ``precision`` (``auto`` resolves as in ``gtasr-upscale``: fp16 on CUDA,
bf16 on CPUs with native bf16, else fp32). spandrel pads the input to the network's size rule
(``SizeRequirements.multiple_of``) by reflection before the call and crops after it; for sides longer
than half the size rule this is the padding ``Upscaler`` uses, so the fp32 output equals
``Upscaler(backend="torch", tile=0, precision="fp32", seed=seed)`` on the same weights (shorter sides: spandrel
replicates the edge past one reflection, the upscaler mirrors back and forth). Callers that cut tiles
(ComfyUI's built-in node: 512 px tiles) get one noise draw and one set of GroupNorm statistics per
tile; ``ModelTiling.DISCOURAGED`` says so.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from spandrel import (
    MAIN_REGISTRY,
    ArchSupport,
    Architecture,
    ImageModelDescriptor,
    ModelTiling,
    SizeRequirements,
    StateDict,
)

from ..errors import CheckpointError, ConfigError
from ..inference.loader import LoadedModel, preset_name
from ..model.checkpoint import check_state_dict, clean_state_dict
from ..model.config import NetworkConfig, infer_config
from ..model.precond import Denoiser
from ..inference.options import UpscaleOptions
from ..upscaler import Upscaler
from .image_batch import upscale_batch

ARCH_ID = "GTASR"
DEFAULT_SEED = 0
DEFAULT_PRECISION = "auto"
_MARKER_KEYS = ("model.map_layer0.weight", "model.map_layer1.weight")


def _tensors(state_dict: Mapping) -> dict[str, torch.Tensor]:
    """The tensors of ``state_dict`` with the keys this package's loader gives them."""
    return clean_state_dict({k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)})


def network_config(state_dict: Mapping[str, torch.Tensor]) -> NetworkConfig | None:
    """The GTASR network config whose state dict ``state_dict`` is, or None when it is not one."""
    state = _tensors(state_dict)
    if not all(key in state for key in _MARKER_KEYS):
        return None
    try:
        config = infer_config(state)
        with torch.device("meta"):
            skeleton = Denoiser(config)
        check_state_dict(skeleton, state, "state dict")
    except (ConfigError, CheckpointError, KeyError, IndexError, ValueError, ZeroDivisionError):
        return None
    return config


class GTASRNetwork(torch.nn.Module):
    """D plus what spandrel's call has no room for: ``seed`` and ``precision``.

    ``forward(image)``: float (B, C, H, W) in [0, 1], C = 3 (or 4: alpha upscaled bicubically), H
    and W multiples of the size rule (spandrel pads) -> (B, C, 4H, 4W) in [0, 1], same dtype and
    device. Each image is upscaled whole (:func:`~gtasr_deploy.integrations.image_batch.upscale_batch`)."""

    def __init__(self, denoiser: Denoiser, *, seed: int = DEFAULT_SEED, precision: str = DEFAULT_PRECISION) -> None:
        super().__init__()
        self.denoiser = denoiser.eval()
        self.seed, self.precision = int(seed), precision
        self._upscaler: tuple[tuple, Upscaler] | None = None

    def new_upscaler(self, device: str, *, seed: int | None = None, precision: str | None = None,
                     tile: int | str = 0, norm: str = "shared") -> Upscaler:
        """An :class:`~gtasr_deploy.upscaler.Upscaler` over this network on ``device``; seed and
        precision default to this module's, ``tile`` to 0 (whole image; "auto" or LR px for tiles)."""
        loaded = LoadedModel(model=self.denoiser, name=ARCH_ID, preset=preset_name(self.denoiser.config),
                             weights_sha256=None, label="weights loaded by spandrel")
        options = UpscaleOptions(backend="torch", device=str(device), seed=self.seed if seed is None else seed,
                                 precision=self.precision if precision is None else precision, tile=tile, norm=norm)
        return Upscaler.from_options(options, model=loaded)

    def upscaler(self, device: torch.device) -> Upscaler:
        """The whole-image Upscaler for the current seed, precision and device (kept until they change)."""
        key = (self.seed, self.precision, str(device))
        if self._upscaler is None or self._upscaler[0] != key:
            self._upscaler = (key, self.new_upscaler(str(device)))
        return self._upscaler[1]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        up = self.upscaler(next(self.denoiser.parameters()).device)
        sr = upscale_batch(up, image.detach().float().permute(0, 2, 3, 1).cpu().numpy())
        return torch.from_numpy(sr).permute(0, 3, 1, 2).to(device=image.device, dtype=image.dtype)


class GTASRDescriptor(ImageModelDescriptor[GTASRNetwork]):
    """spandrel's image descriptor with the sampling settings as attributes: ``seed`` (int,
    default 0) and ``precision`` (``auto`` | ``fp32`` | ``bf16`` | ``fp16``, default ``auto``)."""

    @property
    def seed(self) -> int:
        return self.model.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self.model.seed = int(value)

    @property
    def precision(self) -> str:
        return self.model.precision

    @precision.setter
    def precision(self, value: str) -> None:
        self.model.precision = value


class GTASRArch(Architecture[GTASRNetwork]):
    """Detects and loads GTASR state dicts (the authors' ``.pth`` layout and our safetensors)."""

    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, name="GTASR", detect=lambda state: network_config(state) is not None)

    def load(self, state_dict: StateDict) -> GTASRDescriptor:
        config = network_config(state_dict)
        if config is None:
            raise CheckpointError("spandrel: not a GTASR state dict (no network config fits its keys and shapes)")
        network = GTASRNetwork(Denoiser(config))
        state = {f"denoiser.{key}": value for key, value in _tensors(state_dict).items()}  # spandrel loads it
        preset = preset_name(config)
        tags = [preset] if preset else [f"{config.model_channels}nf", f"{len(config.channel_mult)}levels"]
        return GTASRDescriptor(
            network, state, architecture=self, purpose="SR", tags=tags,
            supports_half=False, supports_bfloat16=False,  # reduced precision: set .precision (fp32 islands)
            scale=config.scale, input_channels=3, output_channels=3,
            size_requirements=SizeRequirements(multiple_of=config.size_multiple),
            tiling=ModelTiling.DISCOURAGED,  # GroupNorm statistics are per call: tiles change the picture
        )


def register(registry=None) -> None:
    """Add the GTASR architecture to spandrel's ``MAIN_REGISTRY`` (or ``registry``); again is a no-op."""
    (MAIN_REGISTRY if registry is None else registry).add(ArchSupport.from_architecture(GTASRArch()),
                                                          ignore_duplicates=True)
