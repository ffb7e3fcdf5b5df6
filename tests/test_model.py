"""The network and denoiser: parity with the authors' code, official layout, checkpoint I/O."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gtasr_deploy.errors import CheckpointError, ConfigError
from gtasr_deploy.model import (PRESETS, Denoiser, NetworkConfig, build_model, count_parameters, from_authors,
                                infer_config, load_model, save_model)
from gtasr_deploy.model.checkpoint import read_checkpoint

from pathlib import Path

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "upstream_tiny"

TINY = NetworkConfig(img_resolution=16, model_channels=16, channel_mult=(1, 2), num_blocks=1,
                     attn_resolutions=(8,), swin_embed_dim=32, swin_num_heads=2, swin_window_size=4)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_parity_with_upstream_fixture(fixture_model, fixture_cases, case):
    c = {k.split(".", 1)[1]: v for k, v in fixture_cases.items() if k.startswith(f"case{case}.")}
    with torch.no_grad():
        out = fixture_model(c["x_t"], c["sigma"], c["lq"])
    assert out.shape == c["expected"].shape
    assert (out - c["expected"]).abs().max().item() <= 1e-5


def test_params_differs_from_params_ema():
    ema = load_model(FIXTURE / "checkpoint.pth", network_config=FIXTURE / "network_g.json")
    raw = load_model(FIXTURE / "checkpoint.pth", network_config=FIXTURE / "network_g.json", param_key="params")
    a, b = ema.state_dict(), raw.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_paper_preset_matches_official_layout():
    model = Denoiser(PRESETS["paper"])
    assert count_parameters(model) == 171_518_529
    rows = [line.split("\t") for line in (DATA / "paper_state_dict.tsv").read_text().splitlines()[1:]]
    ours = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    assert len(rows) == 942
    assert list(ours) == [k for k, _, _ in rows] or set(ours) == {k for k, _, _ in rows}
    assert {k: s for k, s, _ in rows} == ours
    assert PRESETS["paper"].size_multiple == 64
    assert infer_config(model.state_dict()) == PRESETS["paper"]


def test_demo_preset_is_small_and_inferable():
    model = Denoiser(PRESETS["demo"])
    assert 1_000_000 < count_parameters(model) < 5_000_000
    assert infer_config(model.state_dict()) == PRESETS["demo"]


def test_fixture_config_from_authors_names_and_inferred():
    cfg = from_authors(FIXTURE / "network_g.json")
    assert cfg.size_multiple == 8
    state, _ = read_checkpoint(FIXTURE / "checkpoint.pth")
    assert infer_config(state) == cfg


@pytest.mark.parametrize("sigma", [0.0, torch.zeros(2)])
def test_boundary_condition_is_exact(sigma):
    torch.manual_seed(0)
    model = build_model(TINY)
    with torch.no_grad():  # perturb every parameter so F is far from zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x, lq = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 8, 8)
    assert torch.equal(model(x, sigma, lq), x)


@pytest.mark.parametrize("h,w", [(8, 8), (16, 8), (8, 24), (24, 32)])
def test_output_shape_at_sizes_around_the_size_rule(h, w):
    model = build_model(TINY)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 4 * h, 4 * w), 1.0, torch.randn(1, 3, h, w))
    assert out.shape == (1, 3, 4 * h, 4 * w) and torch.isfinite(out).all()


def test_sigma_per_sample_matches_separate_calls(fixture_model):
    torch.manual_seed(1)
    x, lq = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 8, 8)
    sigma = torch.tensor([0.25, 0.9])
    with torch.no_grad():
        both = fixture_model(x, sigma, lq)
        first = fixture_model(x[:1], 0.25, lq[:1])
    assert (both[:1] - first).abs().max() < 1e-5


def test_safetensors_round_trip(tmp_path):
    model = build_model(TINY)
    path = save_model(model, tmp_path / "w.safetensors", metadata={"note": "test"})
    loaded = load_model(path)
    assert loaded.config == TINY
    for k, v in model.state_dict().items():
        assert torch.equal(v.float(), loaded.state_dict()[k].float())


def _official_like(tmp_path, mutate=None, prefix="module."):
    state = {prefix + k: v.clone() for k, v in build_model(TINY).state_dict().items()}
    if mutate:
        mutate(state)
    path = tmp_path / "ckpt.pth"
    torch.save({"params_ema": state, "params": state}, path)
    return path


def test_prefixes_and_weight_lap_are_accepted(tmp_path):
    def add_lap(state):
        state["module.weight_lap"] = torch.zeros(3, 1, 3, 3)

    path = _official_like(tmp_path, add_lap, prefix="module._orig_mod.")
    model = load_model(path)
    assert model.config == TINY


def test_missing_key_is_named(tmp_path):
    path = _official_like(tmp_path, lambda s: s.pop("module.model.map_layer1.bias"))
    with pytest.raises(CheckpointError, match=r"missing key 'model\.map_layer1\.bias'"):
        load_model(path, network_config=TINY)


def test_unexpected_key_is_named(tmp_path):
    path = _official_like(tmp_path, lambda s: s.__setitem__("module.model.extra.weight", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected key 'model\.extra\.weight'"):
        load_model(path, network_config=TINY)


def test_shape_mismatch_is_named(tmp_path):
    path = _official_like(tmp_path)
    wider = dataclasses.replace(TINY, model_channels=32)
    with pytest.raises(CheckpointError, match=r"key 'model\.map_layer0\.weight' has shape \(64, 16\), expected \(128, 32\)"):
        load_model(path, network_config=wider)


def test_missing_param_key_lists_available(tmp_path):
    path = _official_like(tmp_path)
    with pytest.raises(CheckpointError, match=r"no 'params_foo' entry; available: \['params', 'params_ema'\]"):
        load_model(path, param_key="params_foo")


@pytest.mark.parametrize("content", [b"", b"garbage" * 10, b"PK\x03\x04broken zip"])
def test_corrupt_files_give_one_line_errors(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_checkpoint(tmp_path):
    path = _official_like(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)


class _Evil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('echo pwned > /tmp/gtasr_pwned')",))


def test_malicious_pickle_is_refused_without_executing(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": {"x": _Evil()}}, path, pickle_protocol=2)
    with pytest.raises(CheckpointError, match="refused to load") as err:
        load_model(path)
    assert not __import__("os").path.exists("/tmp/gtasr_pwned")
    # the unpickler's reason is kept; torch's advice to retry with weights_only=False is not passed on
    assert "GLOBAL eval" in str(err.value) and "weights_only" not in str(err.value) and "\n" not in str(err.value)


def test_non_pickle_and_non_finite_weights_get_their_own_one_line_errors(tmp_path):
    from safetensors.torch import save_file

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint") as err:
        load_model(text)
    assert "execute" not in str(err.value) and "weights_only" not in str(err.value)
    state = build_model("demo").state_dict()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor '{key}' contains NaN or inf"):
        load_model(tmp_path / "nan.safetensors", network_config="demo")


def test_bad_network_config_files_are_one_line_config_errors(tmp_path):
    cases = {"text.json": "not json", "list.json": "[1, 2]", "values.json": '{"channel_mult": [1, "x"]}',
             "authors.json": '{"swin_params": "abc"}'}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as err:
            load_model(Path(__file__).parent / "data" / "upstream_tiny" / "checkpoint.pth",
                       network_config=tmp_path / name)
        assert "\n" not in str(err.value) and "network config" in str(err.value), name


def test_unknown_config_keys_are_listed():
    with pytest.raises(ConfigError, match="unknown keys \\['bogus'\\]"):
        NetworkConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="x4 only"):
        NetworkConfig(scale=2)
