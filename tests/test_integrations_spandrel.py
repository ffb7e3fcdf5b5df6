"""The GTASR spandrel architecture: detection, config from shapes, parity with Upscaler, size padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gtasr_deploy import Upscaler
from gtasr_deploy.inference.loader import EMBEDDED_WEIGHTS
from gtasr_deploy.model import load_model, save_model
from spandrel_shim import import_spandrel

spandrel = import_spandrel()
from gtasr_deploy.integrations import spandrel_arch  # noqa: E402  (after the shim)



@pytest.fixture(scope="module")
def weights(fixture_dir):
    return {"official": fixture_dir / "checkpoint.pth", "ours": EMBEDDED_WEIGHTS}


def _batch(b, h, w, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((b, 3, h, w), dtype=np.float32))


def _reference(path, images, **kw):
    up = Upscaler(path, backend="torch", tile=0, precision="fp32", **kw)
    return np.stack([up.upscale_float(np.ascontiguousarray(i.numpy().transpose(1, 2, 0))) for i in images]
                    ).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("kind", ["official", "ours"])
def test_detected_with_the_loaders_config(weights, kind):
    model = spandrel.ModelLoader().load_from_file(weights[kind])
    reference = load_model(weights[kind])  # params_ema for the .pth; config from metadata for ours
    assert isinstance(model, spandrel_arch.GTASRDescriptor) and model.architecture.id == "GTASR"
    assert model.scale == 4 and model.input_channels == model.output_channels == 3 and model.purpose == "SR"
    assert model.model.denoiser.config == reference.config
    assert model.size_requirements.multiple_of == reference.config.size_multiple
    assert model.tiling is spandrel.ModelTiling.DISCOURAGED
    ours = model.model.denoiser.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(ours[key], value), key


def test_official_params_ema_picked_and_prefixes_stripped(tmp_path, fixture_dir):
    raw = torch.load(fixture_dir / "checkpoint.pth", weights_only=True)
    wrapped = {"params": {f"module.{k}": v for k, v in raw["params"].items()},
               "params_ema": {f"module.{k}": v for k, v in raw["params_ema"].items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    state = spandrel.ModelLoader().load_from_file(tmp_path / "ddp.pth").model.denoiser.state_dict()
    key = "model.map_layer0.weight"
    assert torch.equal(state[key], raw["params_ema"][key]) and not torch.equal(state[key], raw["params"][key])


def test_defaults_and_settings_on_the_descriptor(weights):
    model = spandrel.ModelLoader().load_from_file(weights["official"])
    assert (model.seed, model.precision) == (spandrel_arch.DEFAULT_SEED, spandrel_arch.DEFAULT_PRECISION) == (0, "auto")
    model.seed, model.precision = 5, "fp32"
    assert (model.model.seed, model.model.precision) == (5, "fp32")


def test_other_state_dicts_not_claimed(fixture_dir):
    from spandrel.architectures.ESRGAN import ESRGAN

    esrgan = ESRGAN(num_filters=8, num_blocks=1).state_dict()
    assert not spandrel_arch.GTASRArch().detect(esrgan)
    assert spandrel.ModelLoader().load_from_state_dict(esrgan).architecture.id == "ESRGAN"
    gtasr = torch.load(fixture_dir / "checkpoint.pth", weights_only=True)["params_ema"]
    assert spandrel_arch.GTASRArch().detect(gtasr)
    missing = dict(gtasr)
    missing.pop("model.conv_last.weight")
    reshaped = {**gtasr, "model.conv_last.bias": torch.zeros(7)}
    extra = {**gtasr, "model.extra.weight": torch.zeros(1)}
    for state in (missing, reshaped, extra, {"model.map_layer0.weight": torch.zeros(4, 4)}, {}):
        assert spandrel_arch.network_config(state) is None
    with pytest.raises(spandrel.UnsupportedModelError):
        spandrel.ModelLoader().load_from_state_dict(missing)


@pytest.mark.parametrize("kind", ["official", "ours"])
@pytest.mark.parametrize("size", [(21, 37), (17, 35), (32, 64)])
def test_fp32_equals_whole_image_upscaler(weights, kind, size):
    """spandrel pads odd sizes to the size rule by reflection and crops after the call: for sides
    longer than half the size rule that is the upscaler's own padding, so the picture is equal."""
    model = spandrel.ModelLoader().load_from_file(weights[kind])
    model.precision = "fp32"
    h, w = size
    images = _batch(2, h, w)
    out = model(images)
    assert out.shape == (2, 3, 4 * h, 4 * w) and out.dtype == torch.float32
    assert model.size_requirements.check(w, h) == (size == (32, 64))  # odd sizes are padded
    np.testing.assert_array_equal(out.numpy(), _reference(weights[kind], images, seed=0))


def test_short_sides_get_spandrels_padding(weights):
    """A side shorter than half the size rule (demo: 32) is padded by spandrel (reflect, then
    replicate), not mirrored back and forth as the upscaler does: the call is the upscaler on
    spandrel's padded image, cropped."""
    from spandrel.__helpers.size_req import pad_tensor

    model = spandrel.ModelLoader().load_from_file(weights["ours"])
    model.precision = "fp32"
    images = _batch(2, 17, 9)
    out = model(images)
    assert out.shape == (2, 3, 68, 36)
    _, padded = pad_tensor(images, model.size_requirements)
    reference = _reference(weights["ours"], padded)[..., :68, :36]
    np.testing.assert_array_equal(out.numpy(), reference)


def test_seed_rides_on_the_model(weights):
    model = spandrel.ModelLoader().load_from_file(weights["official"])
    model.precision = "fp32"
    images = _batch(1, 12, 20, seed=1)
    first = model(images).numpy()
    model.seed = 7
    seeded = model(images).numpy()
    assert np.abs(first - seeded).max() > 1e-3
    np.testing.assert_array_equal(seeded, _reference(weights["official"], images, seed=7))


def test_saved_safetensors_round_trip(tmp_path, fixture_model):
    path = save_model(fixture_model, tmp_path / "tiny.safetensors")
    model = spandrel.ModelLoader().load_from_file(path)
    assert model.model.denoiser.config == fixture_model.config
