"""gtasr-train against bad input (issue 19) and its precision default (issue 21): every recipe value
of the wrong type, unreadable recipe files, device strings, leftover RANK/WORLD_SIZE, loader-worker
errors — one line naming the problem, exit 1, no traceback; fp32 unless a recipe asks otherwise.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from gtasr_deploy.cli import train as train_cli
from gtasr_deploy.cli.train import main
from gtasr_deploy.errors import ConfigError, InputError
from gtasr_deploy.training import loop
from gtasr_deploy.training.config import RunConfig, config_from_dict, load_config
from gtasr_deploy.training.distributed import Dist, distributed_env
from gtasr_deploy.training.logs import RunLogger
from gtasr_deploy.training.precision import autocast_for, compare, precision_note, trajectory_input_gradient
from test_train_loop import TinyPerceptual, _raw, _write_images

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(p.name for p in (REPO / "training").glob("*.toml"))
WRONG = ["x", -1, 0, 1.5, True, [1], {"a": 1}, 10**30, float("nan"), float("inf"), [], "", [[1, 2]], "a\0b"]


def _one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit))
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gtasr-train: error: "), result.output
    return lines[0]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _write_recipe(path: Path, raw: dict) -> Path:
    """A TOML file of ``raw`` (nested dicts become tables)."""
    lines: list[str] = []

    def table(prefix: str, d: dict) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {_toml(v)}" for k, v in scalars.items())
        for k, v in d.items():
            if isinstance(v, dict):
                table(f"{prefix}.{k}" if prefix else k, v)

    table("", raw)
    path.write_text("\n".join(lines) + "\n")
    return path


def _leaves(d: dict, path: tuple = ()):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _leaves(value, path + (key,))
        yield path + (key,)


# --- every value of the wrong type is a one-line ConfigError -------------------------------------
@pytest.mark.parametrize("name", RECIPES + ["inline network"])
def test_every_recipe_key_with_a_wrong_value_is_a_config_error_or_accepted(tmp_path, name):
    """Property: for every key of every shipped recipe (and the degradation table, and an inline
    [model.network]), a value of another type or out of range either builds a config or raises a
    one-line ConfigError — never another exception (which the CLI would show as a traceback)."""
    from gtasr_deploy.training.degradation import DegradationConfig

    if name == "inline network":
        base = copy.deepcopy(_raw(tmp_path))
    else:
        base = tomllib.loads((REPO / "training" / name).read_text())
    base.setdefault("degradation", DegradationConfig().to_dict())
    config_from_dict(base)
    for path in _leaves(base):
        for value in WRONG:
            raw = copy.deepcopy(base)
            node = raw
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            try:
                config_from_dict(raw)
            except ConfigError as err:
                assert "\n" not in str(err), (path, value, str(err))
            except Exception as err:  # noqa: BLE001 - the property under test
                pytest.fail(f"{'.'.join(path)} = {value!r}: {type(err).__name__}: {err}")


def test_every_degradation_value_is_refused_or_makes_a_finite_lr():
    """Property: a degradation table that loads makes finite 8-bit LR in [0, 1] (a zero sinc cutoff
    used to give NaN; an all-zero kernel, a Poisson error)."""
    from gtasr_deploy.training.degradation import DegradationConfig, degrade

    base = DegradationConfig().to_dict()
    hr = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for path in (p for p in _leaves(base) if not isinstance(_get(base, p), dict)):
        for value in (-1, 0, 1, 3, 1e30, [0, 0], [-5, 5], [1, 1], [0.0, 1.0, 0.0], [99, 100]):
            raw = copy.deepcopy(base)
            _get(raw, path[:-1])[path[-1]] = value
            try:
                cfg = DegradationConfig.from_dict(raw)
            except ConfigError:
                continue
            for seed in range(2):
                try:
                    lq = degrade(hr, generator=torch.Generator().manual_seed(seed), config=cfg)
                except InputError as err:  # kernels larger than this crop allows: a one-line error
                    assert "too small for the blur kernels" in str(err)
                    continue
                assert torch.isfinite(lq).all() and 0 <= lq.min() and lq.max() <= 1, (path, value, seed)


def _get(d: dict, path: tuple):
    for key in path:
        d = d[key]
    return d


@pytest.mark.parametrize(("key", "value", "match"), [
    ("stage1.steps", 2.5, r"stage1.steps is 2.5; expected an integer"),
    ("run.device", 0, r"run.device is 0; expected a string"),
    ("data.batch_size", "4", r"data.batch_size is '4'; expected an integer"),
    ("run.out_dir", "a\0b", r"NUL character"),
    ("data.crop", 1 << 20, r"at most 4096"),
    ("run.name", "../x", r"run.name is '../x'; expected a plain name"),
    ("model.network.channel_mult", [1, 0], r"model.network.channel_mult is \[1, 0\]; expected positive integers"),
    ("model.network.dropout", 1.5, r"dropout is 1.5; expected a probability"),
    ("model.network.model_channels", 10**6, r"model_channels is 1000000; expected positive integers up to 65536"),
    ("model.network.swin_embed_dim", 48, r"swin_embed_dim is 48; expected a multiple of 32"),
    ("model.network.model_channels", 130, r"130 channels cannot be split into GroupNorm's min\(32, C/4\) = 32 groups"),
    ("degradation.second.jpeg_quality_range", 5, r"degradation.second.jpeg_quality_range is 5; expected a list"),
    ("degradation.final_sinc_cutoff_range", [0, 0], r"final_sinc_cutoff_range is \(0.0, 0.0\); expected cutoffs > 0"),
    ("stage1.loss.ta_levels", 1.0, r"stage1.loss.ta_levels is 1.0; expected an integer \(64-bit\)"),
    ("stage1.steps", 2**63, r"expected an integer \(64-bit\)"),
    ("stage1.optim.lr", 1e300, r"stage1.optim.lr is 1e\+300; expected a finite number"),
    ("stage1.optim.eps", -1.0, r"eps >= 0"),
    ("stage1.optim.betas", [0.9, 1.0], r"two betas in \[0, 1\)"),
])
def test_wrong_values_name_the_key_and_what_was_expected(tmp_path, key, value, match):
    raw = copy.deepcopy(_raw(tmp_path))  # _raw shares the network table between calls
    node = raw
    *parents, leaf = key.split(".")
    for k in parents:
        node = node.setdefault(k, {})
    node[leaf] = value
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def test_a_string_root_is_one_folder_not_its_letters(tmp_path):
    raw = _raw(tmp_path)
    raw["data"]["roots"] = str(tmp_path / "hr")
    raw["data"]["val_roots"] = str(tmp_path / "hr")
    cfg = config_from_dict(raw)
    assert cfg.data.roots == cfg.data.val_roots == (str(tmp_path / "hr"),)
    raw["data"]["roots"] = 5
    with pytest.raises(ConfigError, match="data.roots is 5; expected a list of strings"):
        config_from_dict(raw)


# --- the CLI: unreadable recipes, devices, environment --------------------------------------------
def test_binary_or_unreadable_recipe_is_one_line(tmp_path):
    binary = tmp_path / "weights.toml"
    binary.write_bytes(bytes(range(256)) * 8)
    assert "not a TOML recipe (not UTF-8 text" in _one_line_error(CliRunner().invoke(main, [str(binary)]))
    nul = tmp_path / "nul.toml"
    nul.write_bytes(b"[run]\x00\n")
    assert "not valid TOML" in _one_line_error(CliRunner().invoke(main, [str(nul)]))
    missing = tmp_path / "missing.toml"
    assert "recipe file not found" in _one_line_error(CliRunner().invoke(main, [str(missing)]))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0", "CUDA", "", "mps"])
def test_bad_device_strings_are_one_line(tmp_path, device):
    raw = _raw(tmp_path)
    raw["run"]["device"] = device
    recipe = _write_recipe(tmp_path / "r.toml", raw)
    line = _one_line_error(CliRunner().invoke(main, [str(recipe), "--dry-run"]))
    assert f"run.device is {device!r}; expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\"" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_one_line(tmp_path):
    raw = _raw(tmp_path)
    raw["run"]["device"] = "cuda:1"
    line = _one_line_error(CliRunner().invoke(main, [str(_write_recipe(tmp_path / "r.toml", raw))]))
    assert "CUDA is not available here" in line


@pytest.mark.parametrize(("env", "match"), [
    ({"RANK": "1", "WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but MASTER_ADDR, MASTER_PORT not"),
    ({"WORLD_SIZE": "4", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "WORLD_SIZE=4 is set but RANK not"),
    ({"RANK": "3"}, "RANK=3 is set but WORLD_SIZE is not"),
    ({"RANK": "2", "WORLD_SIZE": "1"}, "RANK=2 is set but WORLD_SIZE is 1"),
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "RANK=2 is not below WORLD_SIZE=2"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' in the environment is not a non-negative integer"),
])
def test_leftover_distributed_variables_are_refused(tmp_path, env, match):
    with pytest.raises(ConfigError, match=match):
        distributed_env(env)
    full = {"RANK": "", "WORLD_SIZE": "", "MASTER_ADDR": "", "MASTER_PORT": "", **env}
    result = CliRunner().invoke(main, [str(_write_recipe(tmp_path / "r.toml", _raw(tmp_path)))], env=full)
    assert match.split(" is")[0] in _one_line_error(result)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any work


def test_a_torchrun_environment_is_a_sharded_run_and_the_header_says_so(tmp_path, capsys):
    env = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert distributed_env(env) == (1, 3)
    assert distributed_env({}) is None and distributed_env({"WORLD_SIZE": "1", "RANK": "0"}) is None
    cfg = config_from_dict(_raw(tmp_path))
    logger = RunLogger(tmp_path, progress=False)
    loop._log_header(logger, cfg, Dist(rank=0, world=3), 5)
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "precision: fp32 (as released)"
    assert out[2].startswith("distributed: sharded 0/3 by RANK/WORLD_SIZE from the environment") and "global batch 6" in out[2]
    loop._log_header(logger, cfg, Dist(), 5)
    assert not any("distributed" in line for line in capsys.readouterr().out.splitlines())


def test_undecodable_training_images_are_one_line_even_from_loader_workers(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    _write_images(tmp_path / "hr")
    raw = _raw(tmp_path)
    raw["data"].update(roots=[str(junk)], val_roots=[str(tmp_path / "hr")], num_workers=1)
    result = CliRunner().invoke(main, [str(_write_recipe(tmp_path / "r.toml", raw))])
    assert "data.roots: none of the 1 training images can be decoded" in _one_line_error(result)


def _failing_make_lq(*args):
    raise ConfigError("degradation: something about this batch is wrong")


def test_an_error_raised_in_a_loader_worker_keeps_its_one_line_message(tmp_path, monkeypatch):
    raw = _raw(tmp_path)
    raw["data"].update(lr_in_loader=True, num_workers=1)
    monkeypatch.setattr(loop, "make_lq", _failing_make_lq)  # runs in the (forked) worker
    with pytest.raises(ConfigError) as info:
        loop.train(config_from_dict(raw), perceptual=TinyPerceptual())
    assert str(info.value) == "degradation: something about this batch is wrong"


def test_export_path_and_out_dir_are_checked_before_work(tmp_path):
    raw = _raw(tmp_path)
    raw["run"]["export"] = str(tmp_path)  # a folder
    with pytest.raises(ConfigError, match="run.export .* is a folder"):
        loop.train(config_from_dict(raw), perceptual=TinyPerceptual())
    raw["run"]["export"] = str(tmp_path / "hr" / "img0.png" / "w.safetensors")  # under a file
    with pytest.raises(ConfigError, match="run.export .*cannot write there .*is a file, not a folder"):
        loop.train(config_from_dict(raw), perceptual=TinyPerceptual())
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("problem", ["undecodable images", "missing validation folder", "missing stage-I start",
                                     "perceptual weights missing"])
def test_usage_errors_leave_no_output_folder_behind(tmp_path, monkeypatch, problem):
    raw = _raw(tmp_path)
    if problem == "undecodable images":
        (tmp_path / "junk").mkdir()
        (tmp_path / "junk" / "a.png").write_bytes(b"junk")
        raw["data"].update(roots=[str(tmp_path / "junk")], val_roots=[str(tmp_path / "hr")])
    elif problem == "missing validation folder":
        raw["data"]["val_roots"] = [str(tmp_path / "nope")]
    elif problem == "missing stage-I start":
        del raw["stage1"]
        raw["stage2"]["init"] = str(tmp_path / "stage1_final.pt")
    else:
        from gtasr_deploy.errors import CheckpointError

        def no_weights(net):
            raise CheckpointError("lpips_vgg16: not fetched; run gtasr-eval fetch-assets")

        monkeypatch.setattr(loop, "LPIPS", no_weights)  # the name the trainer calls
    result = CliRunner().invoke(main, [str(_write_recipe(tmp_path / "r.toml", raw))])
    _one_line_error(result)
    assert not (tmp_path / "run").exists(), sorted(p.name for p in (tmp_path / "run").iterdir())


def test_stage2_init_that_is_a_folder_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="stage2.init .* is a folder; expected a stage-I checkpoint file"):
        loop.load_stage1_weights(tmp_path)


@pytest.mark.parametrize(("error", "code", "text"), [
    (MemoryError(), 1, "gtasr-train: error: out of memory; lower data.batch_size"),
    (KeyboardInterrupt(), 130, "gtasr-train: interrupted; the checkpoints"),
])
def test_out_of_memory_and_ctrl_c_are_one_line(tmp_path, monkeypatch, error, code, text):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(train_cli, "train", fail)  # the name the command calls
    result = CliRunner().invoke(main, [str(_write_recipe(tmp_path / "r.toml", _raw(tmp_path)))])
    assert result.exit_code == code and result.output.strip() == result.output.strip().splitlines()[0]
    assert result.output.startswith(text) and "Traceback" not in result.output


# --- precision --------------------------------------------------------------------------------------
def test_fp32_is_the_default_and_of_every_paper_recipe():
    assert RunConfig().amp == "none"
    for name in RECIPES:
        assert load_config(REPO / "training" / name).run.amp == "none", name
    with pytest.raises(ConfigError, match='run.amp "auto" .* was removed'):
        RunConfig(amp="auto")
    with pytest.raises(ConfigError, match='"fp16" needs CUDA'):
        RunConfig(amp="fp16", device="cpu")
    with pytest.raises(ConfigError, match='"fp16" needs CUDA'):
        autocast_for("fp16", torch.device("cpu"))
    assert precision_note("none", torch.device("cpu")) == "precision: fp32 (as released)"
    assert precision_note("bf16", torch.device("cpu")).startswith("precision: bf16 autocast (reduced precision")


def test_fp32_steps_run_without_autocast_and_bf16_is_honoured_on_the_cpu(tmp_path):
    seen = {}
    for amp in ("none", "bf16"):
        raw = _raw(tmp_path)
        raw["run"]["amp"] = amp
        cfg = config_from_dict(raw)
        tr = loop.Trainer(cfg, cfg.stage(1), Dist(), TinyPerceptual())
        original = tr.losses

        def spy(batch, gen, amp=amp, original=original):
            seen[amp] = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
            return original(batch, gen)

        tr.losses = spy
        tr.train_step(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert seen["none"][0] is False
    assert seen["bf16"] == (True, torch.bfloat16)


def test_precision_measurement_compares_against_fp32():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    x0_hat = (x0 + 0.1 * torch.randn(1, 3, 32, 32, generator=g)).clamp(-1, 1)
    delta = 0.01 * (x0_hat - x0)
    perceptual = TinyPerceptual()
    import contextlib

    ref = trajectory_input_gradient(perceptual, x0_hat, x0, delta, contextlib.nullcontext)
    again = trajectory_input_gradient(perceptual, x0_hat, x0, delta, contextlib.nullcontext)
    assert compare(ref, again) == (0.0, pytest.approx(1.0))
    rel, cos = compare(ref, trajectory_input_gradient(perceptual, x0_hat, x0, delta,
                                                      lambda: torch.autocast("cpu", dtype=torch.bfloat16)))
    assert rel > 1e-3 and cos < 1.0  # bf16 moves it; how much is what the script reports
    # the gradient is the trajectory term's: ω·∂d/∂a at the fixed target a − Δ
    a = x0_hat.clone().requires_grad_(True)
    omega = 1.0 / (x0_hat - x0).abs().mean()
    (expected,) = torch.autograd.grad((omega * perceptual(a, (x0_hat - delta))).sum(), a)
    assert torch.allclose(ref, expected, rtol=1e-5, atol=1e-12)


@pytest.mark.slow  # ~15 s on 2 busy cores
def test_precision_script_reports_every_photo_and_size(tmp_path, monkeypatch, capsys):
    from gtasr_deploy.training import precision

    _write_images(tmp_path / "hr")
    monkeypatch.setattr(precision, "LPIPS", lambda net: TinyPerceptual())  # no weights fetch needed
    assert precision.main(["--images", str(tmp_path / "hr"), "--crop", "32", "--count", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line for line in out if line.count(" | ") == 4 and "bf16 autocast" in line]
    assert len(rows) == 2 * len(precision.DELTA_SIZES)
    assert out[-1].startswith("bf16 autocast: relative difference ")
    # --step: each stage-II term's parameter gradient of the embedded network, two seeds
    assert precision.main(["--step", "--images", str(tmp_path / "hr"), "--crop", "128", "--count", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len([line for line in out if line.startswith("seed ") and "bf16" in line]) == 8
    assert [line.split(":")[0] for line in out[-4:]] == [f"bf16 autocast, {t}" for t in ("ct", "dtm", "stab", "rect")]
    assert precision.main(["--images", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("precision: error: --images: ")

