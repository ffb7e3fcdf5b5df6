"""TensorRT cache, targets, builder control flow, loading checks and ONNX Runtime provider selection, on CPU.

TensorRT itself is replaced by a fake module that implements the documented Python API names the
builder and the runner use (TensorRT 10 and TensorRT for RTX share them), and records the calls, so
these tests check OUR logic (strong typing, no precision flag, profile, workspace, compute-capability
targets on RTX, timing cache on classic TensorRT only, error paths, the runner binding the graph
contract's inputs and outputs at any shape inside the profile) — not TensorRT. Real builds with
TensorRT for RTX are in tests/test_tensorrt_rtx_build.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from gtasr_deploy import contract
from gtasr_deploy.engines import providers, tensorrt_build, trt_cache
from gtasr_deploy.engines import tensorrt as trt_engine
from gtasr_deploy.errors import (
    BackendUnavailableError,
    ConfigError,
    EngineBuildError,
    InputError,
)

SHA_A = "a" * 64
SHA_B = "b" * 64
GROUPS = 6  # S: GroupNorm groups over the whole network (length of the statistics vectors)


def onnx_sidecar(**over) -> dict:
    data = {"format": contract.FORMAT, "onnx_sha256": SHA_A, "tile_lr": [64, 48], "size_multiple": 8,
            "batch": {"min": 1, "opt": 2, "max": 4}, "precision": "fp16", "opset": 17, "scale": 4,
            "norm_groups": GROUPS}
    data.update(over)
    if "lr_range" in contract.ONNX_SIDECAR_KEYS and "lr_range" not in over:  # the dynamic-shape contract
        data["lr_range"] = {key: list(data["tile_lr"]) for key in ("min", "opt", "max")}
    return data


def spec(side=None, **over) -> trt_cache.EngineSpec:
    fields = {"library": "tensorrt-rtx", "library_version": "1.7.1.116", "targets": ("sm86", "sm89")}
    fields.update(over)
    return trt_cache.EngineSpec.from_onnx_sidecar(side or onnx_sidecar(), **fields)


# --------------------------------------------------------------------------- targets

@pytest.mark.parametrize("text,expected", [
    ("sm89", ("sm89",)), ("SM120, sm_86,sm89", ("sm86", "sm89", "sm120")), ("8.9,sm89", ("sm89",)),
    ("auto", ("auto",)), ("current", ("current",)),
])
def test_parse_targets_normalises_and_sorts(text, expected):
    assert trt_cache.parse_targets(text) == expected


@pytest.mark.parametrize("text,match", [
    ("", "empty list"), ("rtx4090", "'rtx4090' is not a compute capability"), ("sm89,auto", "cannot be combined"),
    ("sm75", "sm75 \\(Turing: RTX 20 series\\) is not a TensorRT-for-RTX target.*FP32 GEMM"),
])
def test_bad_target_requests_are_one_line_config_errors(text, match):
    with pytest.raises(ConfigError, match=match) as info:
        tensorrt_build.parse_request(text)
    assert "\n" not in str(info.value)


def test_sm75_is_allowed_to_classic_tensorrt_only():
    assert tensorrt_build.parse_request("sm75", "tensorrt") == ("sm75",)


# --------------------------------------------------------------------------- cache key & names

def test_cache_key_is_stable_and_ignores_dict_order_and_tuple_vs_list():
    s = spec()
    fields = s.fields()
    reordered = dict(reversed(list(fields.items())))
    key = trt_cache.cache_key(s)
    assert len(key) == 64 and int(key, 16) >= 0
    assert trt_cache.cache_key(fields) == key == trt_cache.cache_key(reordered) == trt_cache.cache_key(spec())
    assert fields["profile"]["lq"] == [[1, 3, 64, 48], [2, 3, 64, 48], [4, 3, 64, 48]]


@pytest.mark.parametrize("over", [
    {"side": onnx_sidecar(onnx_sha256=SHA_B)}, {"side": onnx_sidecar(tile_lr=[64, 64])},
    {"side": onnx_sidecar(tile_lr=[48, 64])}, {"side": onnx_sidecar(batch={"min": 1, "opt": 2, "max": 8})},
    {"side": onnx_sidecar(batch={"min": 1, "opt": 4, "max": 4})}, {"side": onnx_sidecar(precision="fp32")},
    {"side": onnx_sidecar(norm_groups=GROUPS + 1)},  # shapes norm_stats in the profile
    {"library": "tensorrt"}, {"library_version": "1.8.0.1"}, {"targets": ("sm89",)},
    {"targets": ("sm86", "sm89", "sm120")}, {"build_gpu": "NVIDIA GeForce RTX 4090"},
])
def test_cache_key_changes_with_every_setting_that_shapes_the_engine(over):
    assert trt_cache.cache_key(spec(**over)) != trt_cache.cache_key(spec())


def test_cache_key_missing_field_is_a_config_error():
    fields = spec().fields()
    del fields["targets"]
    with pytest.raises(ConfigError, match="missing fields \\['targets'\\]"):
        trt_cache.cache_key(fields)


def test_engine_file_name_carries_library_targets_and_key_and_is_path_safe():
    s = spec(build_gpu="NVIDIA GeForce RTX 4090 / Laptop")
    name = trt_cache.engine_file_name(s, "demo_tile64_fp16")
    assert name.startswith("demo_tile64_fp16_trtrtx1.7.1.116_sm86-sm89_NVIDIA-GeForce-RTX-4090-Laptop_")
    assert name.endswith(f"_{trt_cache.cache_key(s)[:16]}.engine") and " " not in name and "/" not in name
    assert trt_cache.engine_file_name(spec(library="tensorrt"), "g").startswith("g_trt1.7")
    assert trt_cache.timing_cache_file_name(library_version="10.13.0.35", build_gpu="NVIDIA H100 80GB HBM3") == \
        "timing_trt10.13.0.35_NVIDIA-H100-80GB-HBM3.cache"


# --------------------------------------------------------------------------- sidecars & decisions

def _stored_engine(tmp_path, s=None, data=b"serialized", name="e.engine", side=None) -> Path:
    engine = tmp_path / name
    engine.write_bytes(data)
    trt_cache.write_engine_sidecar(engine, s or spec(), onnx_sidecar=side or onnx_sidecar(),
                                   engine_sha256=hashlib.sha256(data).hexdigest(), extra={"workspace_gb": 2.0})
    return engine


def test_engine_sidecar_round_trip_and_load_decision(tmp_path):
    engine = _stored_engine(tmp_path)
    data = trt_cache.read_engine_sidecar(engine)
    assert data["cache_key"] == trt_cache.cache_key(spec()) and data["format"] == "gtasr-trt/3"
    assert data["tile_lr"] == [64, 48] and data["batch_range"] == [1, 2, 4] and data["size_multiple"] == 8
    assert data["targets"] == ["sm86", "sm89"] and data["library"] == "tensorrt-rtx"
    assert data["norm_groups"] == GROUPS and data["build"] == {"workspace_gb": 2.0}
    assert trt_cache.sidecar_mismatch(data, spec()) is None
    assert trt_cache.cache_decision(engine, spec()).action == "load"
    assert trt_cache.cache_decision(engine, spec(), rebuild=True).action == "build"


@pytest.mark.parametrize("over,field", [
    ({"library_version": "1.6.0.1"}, "library_version"), ({"side": onnx_sidecar(onnx_sha256=SHA_B)}, "onnx_sha256"),
    ({"targets": ("sm120",)}, "targets"), ({"side": onnx_sidecar(batch={"min": 1, "opt": 1, "max": 8})}, "profile"),
    ({"library": "tensorrt"}, "library"),
])
def test_changed_setting_means_rebuild_naming_the_field(tmp_path, over, field):
    decision = trt_cache.cache_decision(_stored_engine(tmp_path), spec(**over))
    assert decision.action == "build" and f"{field} differs" in decision.reason


@pytest.mark.parametrize("setup,reason", [
    ("no_engine", "no cached engine"), ("empty_engine", "is empty"), ("no_sidecar", "sidecar"),
    ("bad_json", "not readable JSON"), ("old_format", "format 2, expected 'gtasr-trt/3'"),
    ("missing_keys", "missing keys"), ("edited_key", "cache_key differs"), ("corrupt", "corrupt, truncated or replaced"),
])
def test_cache_decision_builds_when_files_are_unusable(tmp_path, setup, reason):
    engine = _stored_engine(tmp_path)
    side_path = trt_cache.engine_sidecar_path(engine)
    data = json.loads(side_path.read_text())
    if setup == "no_engine":
        engine.unlink()
    elif setup == "empty_engine":
        engine.write_bytes(b"")
    elif setup == "no_sidecar":
        side_path.unlink()
    elif setup == "bad_json":
        side_path.write_text("{not json")
    elif setup == "old_format":  # an engine sidecar from before targets (one local GPU per engine)
        side_path.write_text(json.dumps({**data, "format": 2}))
    elif setup == "missing_keys":
        side_path.write_text(json.dumps({k: v for k, v in data.items() if k != "engine_sha256"}))
    elif setup == "edited_key":
        side_path.write_text(json.dumps({**data, "cache_key": "0" * 64}))
    elif setup == "corrupt":
        engine.write_bytes(b"serializeD")
    decision = trt_cache.cache_decision(engine, spec())
    assert decision.action == "build" and reason in decision.reason


@pytest.mark.parametrize("capability,gpu,problem", [
    ((8, 9), "NVIDIA GeForce RTX 4090", None), ((8, 6), "NVIDIA GeForce RTX 3090", None),
    ((12, 0), "NVIDIA GeForce RTX 5090", "holds code for sm86 (Ampere RTX: RTX 30 series, RTX A-series), sm89 "
                                         "(Ada: RTX 40 series, RTX 6000 Ada) only, and this GPU (NVIDIA GeForce RTX "
                                         "5090) is sm120"),
    ((9, 0), "NVIDIA H100 80GB HBM3", "this GPU (NVIDIA H100 80GB HBM3) is sm90"),
])
def test_runs_on_names_the_hardware_the_engine_needs(capability, gpu, problem):
    got = trt_cache.runs_on(spec().fields(), capability, gpu)
    assert got == problem if problem is None else problem in got


def test_classic_engine_runs_only_on_the_gpu_model_it_was_built_on():
    side = spec(library="tensorrt", library_version="10.13.0.35", targets=("sm90",),
                build_gpu="NVIDIA H100 80GB HBM3").fields()
    assert trt_cache.runs_on(side, (9, 0), "NVIDIA H100 80GB HBM3") is None
    assert "built it on NVIDIA H100 80GB HBM3, and this GPU is NVIDIA H200" in trt_cache.runs_on(
        side, (9, 0), "NVIDIA H200")


def test_read_onnx_sidecar_accepts_onnx_or_json_path(tmp_path):
    onnx = tmp_path / "gtasr_tile64_fp16.onnx"
    onnx.write_bytes(b"graph")
    contract.sidecar_path_for(onnx).write_text(json.dumps(onnx_sidecar()))
    for path in (onnx, onnx.with_suffix(".json")):
        data = contract.read_onnx_sidecar(path)
        assert data["tile_lr"] == (64, 48) and data["batch"] == {"min": 1, "opt": 2, "max": 4}
    with pytest.raises(ConfigError, match="not found"):
        contract.read_onnx_sidecar(tmp_path / "other.onnx")


@pytest.mark.parametrize("batch", [
    {"min": 2, "opt": 1, "max": 4}, {"min": 1, "opt": 8, "max": 4}, {"min": 0, "opt": 1, "max": 1},
    {"min": 1, "opt": 2.0, "max": 4}, {"min": 1, "max": 4}, [1, 2], [True, 1, 1],
])
def test_invalid_batch_ranges_are_rejected(batch):
    with pytest.raises(ConfigError, match="batch"):
        contract.validate_onnx_sidecar(onnx_sidecar(batch=batch))


@pytest.mark.parametrize("over,match", [
    ({"tile_lr": [60, 48]}, "not a multiple of size_multiple=8"), ({"tile_lr": [64]}, "tile_lr"),
    ({"precision": "int8"}, "precision"), ({"scale": 2}, "scale"), ({"onnx_sha256": "abc"}, "onnx_sha256"),
    ({"size_multiple": 0}, "size_multiple"), ({"format": "gtasr-onnx/1"}, "format 'gtasr-onnx/1'.*re-export"),
    ({"norm_groups": 0}, "norm_groups"), ({"norm_groups": True}, "norm_groups"), ({"norm_groups": "6"}, "norm_groups"),
])
def test_invalid_onnx_sidecar_fields_are_named(over, match):
    with pytest.raises(ConfigError, match=match):
        contract.validate_onnx_sidecar(onnx_sidecar(**over))


def test_onnx_sidecar_missing_keys_are_listed():
    data = onnx_sidecar()
    del data["opset"], data["batch"]
    with pytest.raises(ConfigError, match=r"missing keys \['batch', 'opset'\]"):
        contract.validate_onnx_sidecar(data)
    data = onnx_sidecar()
    del data["norm_groups"], data["format"]  # a sidecar from before the statistics I/O
    with pytest.raises(ConfigError, match=r"missing keys \['format', 'norm_groups'\]"):
        contract.validate_onnx_sidecar(data)


@pytest.mark.parametrize("tile,batch", [((64, 48), (1, 2, 4)), ((32, 32), (3, 3, 3)), ((8, 128), (1, 8, 16))])
def test_profile_shapes_follow_tile_and_batch(tile, batch):
    side = onnx_sidecar(tile_lr=list(tile), batch=dict(zip(("min", "opt", "max"), batch)))
    shapes = contract.profile_shapes(side)
    assert tuple(shapes) == contract.INPUTS == ("x_t", "lq", "sigma", "norm_stats", "norm_mix")
    for i, n in enumerate(batch):
        x_t, lq, sigma = shapes["x_t"][i], shapes["lq"][i], shapes["sigma"][i]
        assert lq == (n, 3, *tile)
        assert x_t == (n, 3, 4 * lq[2], 4 * lq[3])
        assert sigma == (n,)
        assert shapes["norm_stats"][i] == (2, GROUPS)  # static: pooled statistics, not per sample
        assert shapes["norm_mix"][i] == (1,)
    assert [s[0] for s in shapes["lq"]] == sorted(s[0] for s in shapes["lq"])


# --------------------------------------------------------------------------- providers

ALL_EPS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def names(chain):
    return [name for name, _ in chain]


@pytest.mark.parametrize("requested,available,expected", [
    ("auto", ALL_EPS, ALL_EPS),
    ("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("auto", ["AzureExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]),
    ("tensorrt", ALL_EPS, ALL_EPS),
    ("cuda", ALL_EPS, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("cpu", ALL_EPS, ["CPUExecutionProvider"]),
    ("CUDAExecutionProvider", ALL_EPS, ["CUDAExecutionProvider", "CPUExecutionProvider"]),
    ("TensorRT", ["TensorrtExecutionProvider", "CPUExecutionProvider"],
     ["TensorrtExecutionProvider", "CPUExecutionProvider"]),
])
def test_provider_order(requested, available, expected):
    assert names(providers.select_providers(requested, available)) == expected


@pytest.mark.parametrize("requested", ["tensorrt", "cuda"])
def test_unavailable_provider_request_names_the_extra(requested):
    with pytest.raises(BackendUnavailableError, match=r"not available here.*gtasr-deploy\[cuda\]"):
        providers.select_providers(requested, ["CPUExecutionProvider"])


def test_unknown_provider_lists_valid_ones():
    with pytest.raises(ConfigError) as info:
        providers.select_providers("rocm", ALL_EPS)
    message = str(info.value)
    assert "'rocm'" in message
    for valid in ("auto", "tensorrt", "cuda", "cpu", "TensorrtExecutionProvider"):
        assert repr(valid) in message


def test_tensorrt_options_cache_workspace_and_profiles(tmp_path):
    side = onnx_sidecar(precision="fp32")
    chain = providers.select_providers("auto", ALL_EPS, fp16=True, cache_dir=tmp_path / "engines",
                                       onnx_sidecar=side, workspace_gb=2, device_id=1)
    options = dict(chain)["TensorrtExecutionProvider"]
    assert options["trt_engine_cache_enable"] == "True" and options["trt_timing_cache_enable"] == "True"
    assert Path(options["trt_engine_cache_path"]).parent == tmp_path / "engines"
    assert Path(options["trt_timing_cache_path"]).parent == tmp_path / "engines"
    assert options["trt_max_workspace_size"] == str(2 * 1024**3)
    assert options["device_id"] == "1"
    assert options["trt_fp16_enable"] == "True"
    static = f"norm_stats:2x{GROUPS},norm_mix:1"
    assert options["trt_profile_min_shapes"] == f"x_t:1x3x256x192,lq:1x3x64x48,sigma:1,{static}"
    assert options["trt_profile_opt_shapes"] == f"x_t:2x3x256x192,lq:2x3x64x48,sigma:2,{static}"
    assert options["trt_profile_max_shapes"] == f"x_t:4x3x256x192,lq:4x3x64x48,sigma:4,{static}"
    assert dict(chain)["CUDAExecutionProvider"]["device_id"] == "1"
    assert all(isinstance(v, str) for v in options.values())


@pytest.mark.parametrize("fp16,precision,expected", [
    (True, "fp32", "True"), (True, "fp16", "False"), (False, "fp32", "False"), (False, "fp16", "False"),
])
def test_fp16_flag_only_for_fp32_graphs(fp16, precision, expected):
    options = providers.tensorrt_provider_options(fp16=fp16, onnx_sidecar=onnx_sidecar(precision=precision))
    assert options["trt_fp16_enable"] == expected


def test_no_sidecar_means_no_profile_options():
    options = providers.tensorrt_provider_options()
    assert not any(k.startswith("trt_profile") for k in options)
    with pytest.raises(ConfigError, match="workspace_gb"):
        providers.tensorrt_provider_options(workspace_gb=0)


# --------------------------------------------------------------------------- availability messages

def _no_library(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, tensorrt_build.LIBRARIES[name].module, None)  # import raises ImportError


def test_missing_libraries_name_the_extra(monkeypatch):
    _no_library(monkeypatch, "tensorrt", "tensorrt-rtx")
    with pytest.raises(BackendUnavailableError, match=r"'tensorrt_rtx'.*pip install 'gtasr-deploy\[tensorrt-rtx\]'"):
        tensorrt_build.import_library("tensorrt-rtx")
    with pytest.raises(BackendUnavailableError, match=r"neither TensorRT for RTX nor TensorRT.*tensorrt-rtx"):
        tensorrt_build.pick_library("auto")
    reason = tensorrt_build.explain_cannot_build()
    assert reason is not None and "neither" in reason and "\n" not in reason


def test_old_tensorrt_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(version="8.6.1"))
    with pytest.raises(BackendUnavailableError, match=r"tensorrt 8\.6\.1 is too old, expected >= 10\.0"):
        tensorrt_build.import_library("tensorrt")


def test_rtx_builds_without_a_gpu_classic_does_not(monkeypatch):
    monkeypatch.setattr(tensorrt_build, "local_gpu", lambda: None)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", FakeTRT(version="1.7.1.116", rtx=True))
    _no_library(monkeypatch, "tensorrt")
    assert tensorrt_build.explain_cannot_build() is None
    assert tensorrt_build.resolve_targets("tensorrt-rtx") == tensorrt_build.Targets(names=("sm86", "sm89", "sm120"))
    reason = tensorrt_build.explain_unavailable()  # running needs a GPU
    assert "no CUDA GPU is visible" in reason and "can still be built here with TensorRT for RTX" in reason
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT())
    with pytest.raises(BackendUnavailableError, match="classic TensorRT builds only on the GPU"):
        tensorrt_build.resolve_targets("tensorrt", "auto", None)
    assert "classic TensorRT builds only on the GPU" in tensorrt_build.explain_cannot_build("tensorrt")


def test_auto_targets_follow_the_gpu_and_the_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", FakeTRT(version="1.7.1.116", rtx=True))
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT())
    ada = ("NVIDIA GeForce RTX 4090", (8, 9))
    assert tensorrt_build.resolve_targets("tensorrt-rtx", "auto", ada) == tensorrt_build.Targets(
        names=("sm89",), current=True, build_gpu=ada[0])
    assert tensorrt_build.resolve_targets("tensorrt-rtx", "sm89,sm120", ada).current is False
    with pytest.raises(ConfigError, match=r"this GPU \(Quadro RTX 8000\) is Turing \(sm75\), and sm75 \(Turing"):
        tensorrt_build.resolve_targets("tensorrt-rtx", "auto", ("Quadro RTX 8000", (7, 5)))
    with pytest.raises(ConfigError, match=r"\['sm90'\]: not compiled by this TensorRT for RTX; it supports sm80, sm86"):
        tensorrt_build.resolve_targets("tensorrt-rtx", "sm90")
    hopper = ("NVIDIA H100 80GB HBM3", (9, 0))
    assert tensorrt_build.pick_library("auto", ada) == "tensorrt-rtx"
    assert tensorrt_build.pick_library("auto", hopper) == "tensorrt"  # RTX cannot target sm90; classic can
    assert tensorrt_build.resolve_targets("tensorrt", "auto", hopper) == tensorrt_build.Targets(
        names=("sm90",), build_gpu=hopper[0])
    with pytest.raises(ConfigError, match="classic TensorRT compiles for this GPU only .*sm90"):
        tensorrt_build.resolve_targets("tensorrt", "sm89", hopper)


def test_running_needs_a_library_that_serves_this_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", FakeTRT(version="1.7.1.116", rtx=True))
    _no_library(monkeypatch, "tensorrt")
    monkeypatch.setattr(tensorrt_build, "local_gpu", lambda: ("NVIDIA GeForce RTX 4090", (8, 9)))
    assert tensorrt_build.explain_unavailable() is None
    monkeypatch.setattr(tensorrt_build, "local_gpu", lambda: ("NVIDIA H100 80GB HBM3", (9, 0)))
    assert "this GPU (NVIDIA H100 80GB HBM3) is sm90, which TensorRT for RTX does not compile for (it supports sm80, " \
        "sm86, sm89, sm120, sm121); on this GPU use classic TensorRT" in tensorrt_build.explain_unavailable()
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT())
    assert tensorrt_build.explain_unavailable() is None  # classic TensorRT serves the H100


# --------------------------------------------------------------------------- fake TensorRT

class FakeParserError:
    def __init__(self, node, desc, name=None, op=None):
        self._node, self._desc, self._name, self._op = node, desc, name, op

    def node(self):
        return self._node

    def desc(self):
        return self._desc

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op


class _OldParserError:
    def __init__(self, node, desc):
        self._node, self._desc = node, desc

    def node(self):
        return self._node

    def desc(self):
        return self._desc


class FakeParser:
    def __init__(self, errors):
        self._errors = list(errors)

    @property
    def num_errors(self):
        return len(self._errors)

    def get_error(self, i):
        return self._errors[i]


class FakeTRT(types.ModuleType):
    """Module-shaped fake of the Python API subset the builder calls (TensorRT 10, or for RTX with
    ``rtx=True``); records calls. ``build_errors`` are logged at ERROR before a failed build."""

    def __init__(self, *, version="10.13.0.35", rtx=False, strongly_typed=True, parse_errors=(),
                 build_result=b"ENGINE", inputs=contract.INPUTS, timing_accepts=True, build_errors=(),
                 kernel_report=""):
        super().__init__("tensorrt_rtx" if rtx else "tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        rec = self.calls
        flag_cls = type("NetworkDefinitionCreationFlag", (), {"STRONGLY_TYPED": 0} if strongly_typed else {})
        self.NetworkDefinitionCreationFlag = flag_cls
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32")
        self.ProfilingVerbosity = types.SimpleNamespace(DETAILED="DETAILED")
        if rtx:
            self.ComputeCapability = types.SimpleNamespace(
                CURRENT="CURRENT", __members__={n: n for n in ("NONE", "CURRENT", "SM75", "SM80", "SM86", "SM89",
                                                               "SM120", "SM121")})
        severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        class ILogger:
            Severity = severity

            def __init__(self):
                pass

        class Logger(ILogger):
            WARNING = "WARNING"

            def __init__(self, level="WARNING"):
                rec.append(("Logger", level))

        class Network:
            num_inputs = len(inputs)

            def get_input(self, i):
                return types.SimpleNamespace(name=inputs[i])

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                rec.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))

        class TimingCache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return memoryview(b"TIMING:" + self.data)

        class Config:
            _cache = None

            def __setattr__(self, name, value):
                rec.append(("config", name, value))
                object.__setattr__(self, name, value)

            def set_memory_pool_limit(self, pool, size):
                rec.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                rec.append(("set_flag", flag))

            def set_compute_capability(self, value, index):
                rec.append(("set_compute_capability", value, index))

            def add_optimization_profile(self, profile):
                rec.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                rec.append(("create_timing_cache", bytes(data)))
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.append(("set_timing_cache", cache.data, ignore_mismatch))
                ok = timing_accepts or cache.data == b""
                if ok:
                    object.__setattr__(self, "_cache", cache)
                return ok

            def get_timing_cache(self):
                return self._cache

        class Builder:
            def __init__(self, logger):
                self.logger = logger

            def create_network(self, flags):
                rec.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.append(("build_serialized_network",))
                for message in build_errors:
                    self.logger.log(severity.ERROR, message)
                if kernel_report:
                    self.logger.log(severity.VERBOSE, kernel_report)
                return None if build_result is None else memoryview(build_result)

        class OnnxParser(FakeParser):
            def __init__(self, network, logger):
                super().__init__(parse_errors)

            def parse_from_file(self, path):
                rec.append(("parse_from_file", path))
                return not parse_errors

        self.ILogger, self.Logger, self.Builder, self.OnnxParser = ILogger, Logger, Builder, OnnxParser

    def named(self, call):
        return [c for c in self.calls if c[0] == call]


def test_parser_errors_list_node_index_name_and_operator():
    parser = FakeParser([FakeParserError(12, "Unsupported data type", "/enc/Mul_3", "Mul"),
                         _OldParserError(-1, "Invalid graph"), FakeParserError(4, "bad attr", "", "")])
    message = tensorrt_build.format_parser_errors(parser, "export/g.onnx")
    assert message.startswith("TensorRT could not parse export/g.onnx: 3 error(s): ")
    assert "[0] node #12 '/enc/Mul_3' (Mul): Unsupported data type" in message
    assert "[1] graph: Invalid graph" in message
    assert "[2] node #4: bad attr" in message
    assert "\n" not in message


def test_parser_errors_are_truncated():
    parser = FakeParser([_OldParserError(i, f"e{i}") for i in range(13)])
    message = tensorrt_build.format_parser_errors(parser, "g.onnx")
    assert "13 error(s)" in message and "[9] node #9: e9" in message and "[10]" not in message
    assert "... and 3 more" in message


def _write_graph(tmp_path, **over) -> Path:
    onnx = tmp_path / "export" / "gtasr_tile64_fp16.onnx"
    onnx.parent.mkdir(parents=True, exist_ok=True)
    onnx.write_bytes(b"not really onnx, but hashed like one")
    side = onnx_sidecar(onnx_sha256=hashlib.sha256(onnx.read_bytes()).hexdigest(), **over)
    contract.sidecar_path_for(onnx).write_text(json.dumps(side))
    return onnx


EXPECTED_PROFILE = [
    ("set_shape", "x_t", (1, 3, 256, 192), (2, 3, 256, 192), (4, 3, 256, 192)),
    ("set_shape", "lq", (1, 3, 64, 48), (2, 3, 64, 48), (4, 3, 64, 48)),
    ("set_shape", "sigma", (1,), (2,), (4,)),
    ("set_shape", "norm_stats", (2, GROUPS), (2, GROUPS), (2, GROUPS)),
    ("set_shape", "norm_mix", (1,), (1,), (1,)),
]


def test_classic_build_sets_strong_typing_profile_workspace_timing_cache_and_never_fp16(tmp_path, monkeypatch):
    fake = FakeTRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx = _write_graph(tmp_path)
    timing = tmp_path / "timing.cache"
    built = tensorrt_build.build_serialized_engine(onnx, contract.read_onnx_sidecar(onnx), library="tensorrt",
                                                   workspace_gb=1.5, timing_cache_path=timing, log=lambda _: None)
    assert built.data == b"ENGINE"
    assert fake.named("create_network") == [("create_network", 1 << 0)]
    assert fake.named("set_flag") == []  # no FP16 (nor any other) builder flag
    assert fake.named("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", int(1.5 * 2**30))]
    assert fake.named("set_shape") == EXPECTED_PROFILE  # contract.profile_shapes, nothing else
    assert len(fake.named("add_optimization_profile")) == 1
    assert ("config", "profiling_verbosity", "DETAILED") in fake.calls
    assert fake.named("set_compute_capability") == []  # classic TensorRT: the GPU it runs on
    assert fake.named("create_timing_cache") == [("create_timing_cache", b"")]
    assert timing.read_bytes() == b"TIMING:"  # saved after the build


def test_rtx_build_sets_targets_and_has_no_timing_cache(tmp_path, monkeypatch):
    fake = FakeTRT(version="1.7.1.116", rtx=True)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", fake)
    onnx = _write_graph(tmp_path)
    timing = tmp_path / "timing.cache"
    targets = tensorrt_build.Targets(names=("sm86", "sm89", "sm120"))
    tensorrt_build.build_serialized_engine(onnx, contract.read_onnx_sidecar(onnx), library="tensorrt-rtx",
                                           targets=targets, timing_cache_path=timing, log=lambda _: None)
    assert ("config", "num_compute_capabilities", 3) in fake.calls
    assert fake.named("set_compute_capability") == [("set_compute_capability", "SM86", 0),
                                                     ("set_compute_capability", "SM89", 1),
                                                     ("set_compute_capability", "SM120", 2)]
    assert fake.named("set_shape") == EXPECTED_PROFILE and fake.named("set_flag") == []
    assert fake.named("create_timing_cache") == [] and not timing.exists()
    fake.calls.clear()
    current = tensorrt_build.Targets(names=("sm89",), current=True, build_gpu="NVIDIA GeForce RTX 4090")
    tensorrt_build.build_serialized_engine(onnx, contract.read_onnx_sidecar(onnx), library="tensorrt-rtx",
                                           targets=current, log=lambda _: None)
    assert fake.named("set_compute_capability") == [("set_compute_capability", "CURRENT", 0)]


def test_classic_build_recovers_from_a_mismatched_timing_cache(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    side = contract.read_onnx_sidecar(onnx)
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"OLD")
    fake = FakeTRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    tensorrt_build.build_serialized_engine(onnx, side, library="tensorrt", timing_cache_path=timing,
                                           log=lambda _: None)
    assert fake.named("set_timing_cache") == [("set_timing_cache", b"OLD", False)]
    assert timing.read_bytes() == b"TIMING:OLD"
    timing.write_bytes(b"FOREIGN")
    fake = FakeTRT(timing_accepts=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    logs = []
    tensorrt_build.build_serialized_engine(onnx, side, library="tensorrt", timing_cache_path=timing,
                                           log=logs.append)
    assert [c[1] for c in fake.named("create_timing_cache")] == [b"FOREIGN", b""]
    assert any("does not match" in line for line in logs) and timing.read_bytes() == b"TIMING:"


def test_build_without_strongly_typed_flag_uses_default_network(tmp_path, monkeypatch):
    fake = FakeTRT(version="11.0.0", strongly_typed=False)  # TensorRT 11: always strongly typed
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx = _write_graph(tmp_path)
    tensorrt_build.build_serialized_engine(onnx, contract.read_onnx_sidecar(onnx), library="tensorrt",
                                           log=lambda _: None)
    assert fake.named("create_network") == [("create_network", 0)]


KERNELS = """Layers:
Name: node_conv2d_myl0_2, LayerType: correlation, Inputs: [ { Name: a, Datatype: Half }], Constants: [], Outputs: [ { Name: b, Dimensions: [-1,32], Datatype: Half, Format: x }], TacticName: t, StreamId: 0, Metadata: [ONNX Layer: node_conv2d]
Name: node_linear+node_linear_1, LayerType: gemm, Inputs: [ { Name: s, Datatype: Float }], Constants: [], Outputs: [ { Name: c, Datatype: Float, Format: x }], TacticName: t, StreamId: 0, Metadata: [ONNX Layer: node_linear][ONNX Layer: node_linear_1]
Name: __myl_Mean, LayerType: kgen, Inputs: [ { Name: b, Datatype: Half }], Constants: [], Outputs: [ { Name: d, Datatype: Float }, { Name: e, Datatype: Half }], TacticName: t, StreamId: 0, Metadata: [ONNX Layer: node_mean]"""


def test_kernel_report_is_parsed_and_summarised():
    kernels = tensorrt_build.parse_kernel_report(KERNELS)
    assert kernels == [
        {"name": "node_conv2d_myl0_2", "type": "correlation", "out": ["Half"], "onnx": ["node_conv2d"]},
        {"name": "node_linear+node_linear_1", "type": "gemm", "out": ["Float"], "onnx": ["node_linear", "node_linear_1"]},
        {"name": "__myl_Mean", "type": "kgen", "out": ["Float", "Half"], "onnx": ["node_mean"]},
    ]
    assert tensorrt_build.summarize_kernels(kernels) == {"correlation": {"Half": 1}, "gemm": {"Float": 1},
                                                         "kgen": {"Float+Half": 1}}


@pytest.mark.parametrize("fake_kwargs,match", [
    ({"build_result": None}, "failed: build_serialized_network returned None \\(no error logged\\)"),
    ({"build_result": None, "build_errors": ["Error Code 1: Myelin (Cannot compile operation 'node_linear' for "
                                             "Turing (SM75): FP32 GEMM is not supported. In compileGraph at /x.cpp:1)",
                                             "second"]},
     "failed: Error Code 1: Myelin \\(Cannot compile operation 'node_linear' for Turing \\(SM75\\): FP32 GEMM is not "
     "supported. \\(\\+1 more error\\(s\\) in the TensorRT log\\)$"),
    ({"parse_errors": [FakeParserError(7, "unsupported op", "/up/Resize", "Resize")]},
     "node #7 '/up/Resize' \\(Resize\\): unsupported op"),
    ({"inputs": ("x_t", "lq", "sigma")}, "inputs are \\['x_t', 'lq', 'sigma'\\], expected .*re-export"),  # old graph
])
def test_build_failures_are_one_line_engine_build_errors(tmp_path, monkeypatch, fake_kwargs, match):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(**fake_kwargs))
    onnx = _write_graph(tmp_path)
    timing = tmp_path / "timing.cache"
    with pytest.raises(EngineBuildError, match=match) as info:
        tensorrt_build.build_serialized_engine(onnx, contract.read_onnx_sidecar(onnx), library="tensorrt",
                                               timing_cache_path=timing, log=lambda _: None)
    assert "\n" not in str(info.value) and not timing.exists()


def _fake_machine(monkeypatch, gpu=("NVIDIA H100 80GB HBM3", (9, 0)), rtx=False, **fake_kwargs) -> FakeTRT:
    fake = FakeTRT(version="1.7.1.116" if rtx else "10.13.0.35", rtx=rtx, **fake_kwargs)
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    _no_library(monkeypatch, "tensorrt" if rtx else "tensorrt-rtx")
    monkeypatch.setattr(tensorrt_build, "local_gpu", lambda: gpu)
    return fake


def test_get_or_build_engine_builds_beside_the_graph_reuses_and_rebuilds_on_change(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    fake = _fake_machine(monkeypatch, gpu=None, rtx=True, kernel_report=KERNELS)
    logs = []
    first = tensorrt_build.get_or_build_engine(onnx, targets="sm89", log=logs.append)
    assert first.parent == onnx.parent and first.read_bytes() == b"ENGINE"
    assert first.name.startswith("gtasr_tile64_fp16_trtrtx1.7.1.116_sm89_")
    side = trt_cache.read_engine_sidecar(first)
    assert side["library"] == "tensorrt-rtx" and side["targets"] == ["sm89"] and side["build_gpu"] == ""
    assert side["onnx_sha256"] == trt_cache.file_sha256(onnx) and side["precision"] == "fp16"
    assert side["engine_sha256"] == hashlib.sha256(b"ENGINE").hexdigest()
    assert side["norm_groups"] == GROUPS and side["size_multiple"] == 8  # copied from the graph's sidecar
    assert side["build"]["kernels"] == {"correlation": {"Half": 1}, "gemm": {"Float": 1}, "kgen": {"Float+Half": 1}}
    assert side["build"]["kernel_report"][1]["onnx"] == ["node_linear", "node_linear_1"]
    assert len(fake.named("build_serialized_network")) == 1

    again = tensorrt_build.get_or_build_engine(onnx, targets="sm89", log=logs.append)
    assert again == first and len(fake.named("build_serialized_network")) == 1 and "reusing" in logs[-1]
    tensorrt_build.get_or_build_engine(onnx, targets="sm89", rebuild=True, log=logs.append)
    assert len(fake.named("build_serialized_network")) == 2
    several = tensorrt_build.get_or_build_engine(onnx, targets="sm120,sm89", log=logs.append)
    assert several != first and trt_cache.read_engine_sidecar(several)["targets"] == ["sm89", "sm120"]
    assert len(fake.named("build_serialized_network")) == 3
    default = tensorrt_build.get_or_build_engine(onnx, engine_dir=tmp_path / "engines", log=logs.append)
    assert default.parent == tmp_path / "engines" and "_sm86-sm89-sm120_" in default.name


def test_get_or_build_engine_rebuilds_a_corrupt_engine(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    fake = _fake_machine(monkeypatch, gpu=None, rtx=True)
    path = tensorrt_build.get_or_build_engine(onnx, targets="sm89", log=lambda _: None)
    path.write_bytes(b"ENGINF")
    logs = []
    tensorrt_build.get_or_build_engine(onnx, targets="sm89", log=logs.append)
    assert len(fake.named("build_serialized_network")) == 2 and path.read_bytes() == b"ENGINE"
    assert any("corrupt, truncated or replaced" in line for line in logs)


def test_classic_engines_are_per_gpu_with_a_timing_cache(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    fake = _fake_machine(monkeypatch)
    first = tensorrt_build.get_or_build_engine(onnx, log=lambda _: None)
    side = trt_cache.read_engine_sidecar(first)
    assert side["library"] == "tensorrt" and side["targets"] == ["sm90"] and side["build_gpu"] == "NVIDIA H100 80GB HBM3"
    assert list(onnx.parent.glob("timing_trt10.13.0.35_NVIDIA-H100-80GB-HBM3.cache"))
    other = _fake_machine(monkeypatch, gpu=("NVIDIA GeForce RTX 4090", (8, 9)))
    second = tensorrt_build.get_or_build_engine(onnx, log=lambda _: None)
    assert second != first and len(other.named("build_serialized_network")) == 1
    assert len(fake.named("build_serialized_network")) == 1


def test_get_or_build_engine_refuses_a_graph_changed_after_export(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    onnx.write_bytes(b"edited")
    _fake_machine(monkeypatch)
    with pytest.raises(ConfigError, match="changed after export"):
        tensorrt_build.get_or_build_engine(onnx, log=lambda _: None)
    with pytest.raises(ConfigError, match="not found"):
        tensorrt_build.get_or_build_engine(tmp_path / "missing.onnx")


# --------------------------------------------------------------------------- runtime helpers

def test_deserialize_failure_rebuilds_once():
    builds, loads = [], []

    def build(force):
        builds.append(force)
        return Path(f"e{len(builds)}.engine")

    def flaky(path):
        loads.append(path)
        if len(loads) == 1:
            raise trt_engine.EngineDeserializeError(f"could not deserialize {path}")
        return "engine"

    logs = []
    assert trt_engine.load_with_one_rebuild(build, flaky, logs.append) == "engine"
    assert builds == [False, True] and loads == [Path("e1.engine"), Path("e2.engine")]
    assert "rebuilding once" in logs[0]


def test_deserialize_failure_twice_is_an_engine_build_error():
    def broken(path):
        raise trt_engine.EngineDeserializeError(f"could not deserialize {path}")

    builds = []
    with pytest.raises(EngineBuildError, match="even after a rebuild"):
        trt_engine.load_with_one_rebuild(lambda f: builds.append(f) or Path("e.engine"), broken, lambda _: None)
    assert builds == [False, True]
    builds.clear()
    with pytest.raises(EngineBuildError, match="just built"):
        trt_engine.load_with_one_rebuild(lambda f: builds.append(f) or Path("e.engine"), broken, lambda _: None,
                                         rebuild=True)
    assert builds == [True]


class _FakeEngine:
    def __init__(self, tensors):
        self._tensors = tensors  # name -> (mode, dtype)
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, i):
        return list(self._tensors)[i]

    def get_tensor_mode(self, name):
        return self._tensors[name][0]

    def get_tensor_dtype(self, name):
        return self._tensors[name][1]


_FAKE_TRT_ENUMS = types.SimpleNamespace(TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
                                        DataType=types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF"))


def _io(**over):
    tensors = {**{name: ("INPUT", "FLOAT") for name in contract.INPUTS},
               **{name: ("OUTPUT", "FLOAT") for name in contract.OUTPUTS}}
    tensors.update(over)
    return {k: v for k, v in tensors.items() if v is not None}


ALL_TENSORS = "'lq', 'norm_mix', 'norm_stats', 'sigma', 'sr', 'tile_stats', 'x_t'"


@pytest.mark.parametrize("over,match", [
    ({"sr": ("OUTPUT", "HALF")}, "tensor 'sr' has dtype HALF, expected FLOAT"),
    ({"tile_stats": ("OUTPUT", "HALF")}, "tensor 'tile_stats' has dtype HALF, expected FLOAT"),
    ({"sigma": None}, "engine tensors are \\['lq', 'norm_mix', 'norm_stats', 'sr', 'tile_stats', 'x_t'\\]"),
    ({"norm_stats": None, "norm_mix": None, "tile_stats": None},  # an engine built from a format-1 graph
     f"engine tensors are \\['lq', 'sigma', 'sr', 'x_t'\\], expected \\[{ALL_TENSORS}\\]; rebuild"),
    ({"lq": ("OUTPUT", "FLOAT")}, "tensor 'lq' is OUTPUT, expected INPUT"),
    ({"norm_mix": ("OUTPUT", "FLOAT")}, "tensor 'norm_mix' is OUTPUT, expected INPUT"),
    ({"tile_stats": ("INPUT", "FLOAT")}, "tensor 'tile_stats' is INPUT, expected OUTPUT"),
])
def test_engine_io_check_names_the_tensor(over, match):
    with pytest.raises(EngineBuildError, match=match):
        trt_engine.check_engine_io(_FAKE_TRT_ENUMS, _FakeEngine(_io(**over)), "engine e")
    trt_engine.check_engine_io(_FAKE_TRT_ENUMS, _FakeEngine(_io()), "engine e")


def test_io_shapes_follow_the_x4_contract():
    shapes = contract.io_shapes((64, 48), 3, GROUPS)
    assert shapes == {"x_t": (3, 3, 256, 192), "lq": (3, 3, 64, 48), "sigma": (3,), "norm_stats": (2, GROUPS),
                      "norm_mix": (1,), "sr": (3, 3, 256, 192), "tile_stats": (3, 2, GROUPS)}
    assert set(shapes) == {*contract.INPUTS, *contract.OUTPUTS}


RTX_4090 = ("NVIDIA GeForce RTX 4090", (8, 9))


def _refusing_machine(monkeypatch, gpu=RTX_4090):
    """RTX library installed, a GPU faked; deserializing would fail loudly, so refusals must come first."""
    fake = _fake_machine(monkeypatch, gpu=gpu, rtx=True)
    fake.Runtime = None
    return fake


@pytest.mark.parametrize("gpu,match", [
    (("NVIDIA H100 80GB HBM3", (9, 0)), "cannot run here: it holds code for sm86 .*sm89 .* only, and this GPU "
                                        "\\(NVIDIA H100 80GB HBM3\\) is sm90"),
    (("NVIDIA GeForce RTX 2080", (7, 5)), "this GPU \\(NVIDIA GeForce RTX 2080\\) is sm75"),
])
def test_engine_for_other_hardware_is_refused_before_deserializing(tmp_path, monkeypatch, gpu, match):
    _refusing_machine(monkeypatch, gpu)
    with pytest.raises(EngineBuildError, match=match) as info:
        trt_engine.TensorRTEngine(_stored_engine(tmp_path))
    assert "\n" not in str(info.value)


def test_engine_of_another_library_version_or_corrupt_or_foreign_is_refused(tmp_path, monkeypatch):
    _refusing_machine(monkeypatch)
    old = _stored_engine(tmp_path, spec(library_version="1.6.0.1"), name="old.engine")
    with pytest.raises(EngineBuildError, match="built with tensorrt-rtx 1.6.0.1 and 1.7.1.116 is installed"):
        trt_engine.TensorRTEngine(old)
    engine = _stored_engine(tmp_path)
    engine.write_bytes(b"serialize")  # truncated
    with pytest.raises(trt_engine.EngineDeserializeError, match="corrupt, truncated or replaced"):
        trt_engine.TensorRTEngine(engine)
    bare = tmp_path / "downloaded.engine"  # an engine from elsewhere, no sidecar
    bare.write_bytes(b"ENGINE")
    with pytest.raises(ConfigError, match="sidecar .* not found; an engine without it cannot be checked"):
        trt_engine.TensorRTEngine(bare)
    classic = _stored_engine(tmp_path, spec(library="tensorrt", library_version="10.13.0.35", targets=("sm89",)),
                             name="classic.engine")
    with pytest.raises(BackendUnavailableError, match=r"gtasr-deploy\[tensorrt\]"):  # the library that built it
        trt_engine.TensorRTEngine(classic)


def test_library_validity_check_refuses_a_malformed_engine(tmp_path, monkeypatch):
    fake = _fake_machine(monkeypatch, gpu=RTX_4090, rtx=True)
    fake.EngineValidity = types.SimpleNamespace(VALID=0, SUBOPTIMAL=1, INVALID=2)
    fake.EngineInvalidityDiagnostics = types.SimpleNamespace(__members__={"VERSION_MISMATCH": 1, "MALFORMED_ENGINE": 32})
    fake.Runtime = lambda logger: types.SimpleNamespace(get_engine_validity=lambda data: (2, 32),
                                                        deserialize_cuda_engine=None)
    with pytest.raises(trt_engine.EngineDeserializeError, match=r"INVALID \(MALFORMED_ENGINE\)"):
        trt_engine.TensorRTEngine(_stored_engine(tmp_path))


# --------------------------------------------------------------------------- runner I/O with a fake engine

class _FakeContext:
    """Execution context: resolves bound addresses to the buffers behind them and computes a known function."""

    def __init__(self, buffers, groups=GROUPS):
        self.buffers = buffers  # data_ptr -> tensor, every buffer the runner allocated
        self.groups = groups
        self.addresses, self.shapes, self.seen = {}, {}, []

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        n = self.shapes["x_t"][0]
        return self.shapes["x_t"] if name == "sr" else (n, 2, self.groups)

    def _view(self, name):
        shape = self.shapes.get(name) or self.get_tensor_shape(name)
        flat = self.buffers[self.addresses[name]]
        return flat[:int(np.prod(shape))].view(shape)

    def execute_async_v3(self, stream):
        t = {name: self._view(name) for name in self.addresses}
        n = self.shapes["x_t"][0]
        mix, stats = float(t["norm_mix"][0]), t["norm_stats"].clone()
        self.seen.append({"n": n, "norm_mix": mix, "norm_stats": stats.numpy()})
        t["sr"][:] = t["x_t"] + t["sigma"][:, None, None, None] + mix * stats.sum()
        t["tile_stats"][:, 0] = t["x_t"].mean(dim=(1, 2, 3))[:, None]
        t["tile_stats"][:, 1] = t["lq"].mean(dim=(1, 2, 3))[:, None]
        return True


class _FakeRuntimeConfig:
    def __init__(self, log):
        self.log = log
        self.cuda_graph_strategy = "DISABLED"

    def create_runtime_cache(self):
        log = self.log

        class Cache:
            def deserialize(self, blob):
                log.append(("deserialize", bytes(blob)))
                return bytes(blob) == b"GOOD"

            def serialize(self):
                return memoryview(b"KERNELS")

        return Cache()

    def set_runtime_cache(self, cache):
        self.log.append(("set_runtime_cache",))
        return True


def _fake_runtime_engine(monkeypatch, tmp_path, rtx=False, **kwargs):
    """A TensorRTEngine over a fake TensorRT: host 'device' buffers, fake stream, one known engine."""
    fake = _fake_machine(monkeypatch, gpu=RTX_4090 if rtx else ("NVIDIA H100 80GB HBM3", (9, 0)), rtx=rtx)
    fake.TensorIOMode, fake.DataType = _FAKE_TRT_ENUMS.TensorIOMode, _FAKE_TRT_ENUMS.DataType
    fake.CudaGraphStrategy = types.SimpleNamespace(WHOLE_GRAPH_CAPTURE="WHOLE_GRAPH_CAPTURE")
    buffers = {}
    real_empty = torch.empty

    def empty(shape, *, dtype=None, device=None, pin_memory=False):  # CPU stands in for device and pinned memory
        tensor = real_empty(shape, dtype=dtype)
        buffers[tensor.data_ptr()] = tensor
        return tensor

    monkeypatch.setattr(torch, "empty", empty)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(
        cuda_stream=0, synchronize=lambda: None))
    context = _FakeContext(buffers)
    engine = _FakeEngine(_io())
    calls = []
    engine.create_execution_context = lambda config=None: calls.append(("context", config)) or context
    if rtx:
        engine.create_runtime_config = lambda: _FakeRuntimeConfig(calls)
    fake.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    s = spec() if rtx else spec(library="tensorrt", library_version="10.13.0.35", targets=("sm90",),
                                build_gpu="NVIDIA H100 80GB HBM3")
    path = _stored_engine(tmp_path, s, data=b"ENGINE")
    return trt_engine.TensorRTEngine(path, log=lambda _: None, **kwargs), context, calls


def _host_inputs(n, seed=0, tile=(64, 48)):
    rng = np.random.default_rng(seed)
    h, w = tile
    return {"x_t": rng.standard_normal((n, 3, 4 * h, 4 * w)).astype(np.float32),
            "lq": rng.uniform(-1, 1, (n, 3, h, w)).astype(np.float32),
            "sigma": np.linspace(1.0, 0.5, n, dtype=np.float32)}


def test_runner_sets_every_input_shape_per_call_and_feeds_the_norm_mode(tmp_path, monkeypatch):
    engine, context, _ = _fake_runtime_engine(monkeypatch, tmp_path)
    assert engine.info.norm_groups == GROUPS and engine.info.norm_modes == ("tile", "shared")
    assert engine.info.tile_lr == (64, 48) and engine.info.batch_range == (1, 2, 4)
    assert set(context.addresses) == {*contract.INPUTS, *contract.OUTPUTS}

    feeds = _host_inputs(2)
    sr = engine(**feeds)  # per-tile statistics: norm_mix 0, whatever norm_stats holds is ignored by the graph
    assert context.shapes == {k: v for k, v in contract.io_shapes((64, 48), 2, GROUPS).items() if k in contract.INPUTS}
    assert context.seen[-1]["norm_mix"] == 0.0 and not context.seen[-1]["norm_stats"].any()
    np.testing.assert_array_equal(sr, feeds["x_t"] + feeds["sigma"][:, None, None, None])

    pooled = np.arange(2 * GROUPS, dtype=np.float32).reshape(2, GROUPS) / 10
    sr = engine(**feeds, norm_stats=pooled)
    assert context.seen[-1]["norm_mix"] == 1.0
    np.testing.assert_array_equal(context.seen[-1]["norm_stats"], pooled)
    np.testing.assert_allclose(sr, feeds["x_t"] + feeds["sigma"][:, None, None, None] + pooled.sum(), rtol=1e-6)

    stats = engine.tile_statistics(**feeds)
    assert stats.shape == (2, 2, GROUPS) and stats.dtype == np.float32
    np.testing.assert_allclose(stats[:, 0], np.repeat(feeds["x_t"].mean(axis=(1, 2, 3))[:, None], GROUPS, 1),
                               rtol=1e-5, atol=1e-6)
    assert context.seen[-1]["norm_mix"] == 0.0  # statistics are each tile's own

    one = _host_inputs(1, seed=1)
    np.testing.assert_array_equal(engine(**one), one["x_t"] + 1.0)  # batch 1 after batch 2: shapes re-set
    assert context.shapes["x_t"][0] == context.shapes["sigma"][0] == 1 and context.shapes["norm_stats"] == (2, GROUPS)
    with pytest.raises(InputError, match=rf"'norm_stats' has shape \(2, 5\), expected \(2, {GROUPS}\)"):
        engine(**one, norm_stats=np.zeros((2, 5), np.float32))
    engine.close()
    with pytest.raises(ConfigError, match="after close"):
        engine(**one)


def test_runner_checks_shapes_against_the_profile(tmp_path, monkeypatch):
    engine, _, _ = _fake_runtime_engine(monkeypatch, tmp_path)
    engine.info = type(engine.info)(**{**engine.info.__dict__, "tile_lr": None})  # as for a dynamic-spatial graph
    with pytest.raises(InputError, match=r"input 'x_t' has shape \(1, 3, 128, 128\), outside the engine's profile "
                                         r"\(1, 3, 256, 192\)\.\.\(4, 3, 256, 192\)"):
        engine(**_host_inputs(1, tile=(32, 32)))


def test_rtx_runner_keeps_the_runtime_cache_on_disk_and_uses_its_cuda_graph_strategy(tmp_path, monkeypatch):
    engine, _, calls = _fake_runtime_engine(monkeypatch, tmp_path, rtx=True, cuda_graph=True)
    config = calls[-1][1]
    assert calls[0] == ("set_runtime_cache",) and isinstance(config, _FakeRuntimeConfig)
    assert config.cuda_graph_strategy == "WHOLE_GRAPH_CAPTURE" and engine._use_graph is False
    engine(**_host_inputs(1))
    engine.close()
    cache_file = tmp_path / "e.runtime-cache"
    assert cache_file.read_bytes() == b"KERNELS"
    cache_file.write_bytes(b"GOOD")
    engine, _, calls = _fake_runtime_engine(monkeypatch, tmp_path, rtx=True)
    assert ("deserialize", b"GOOD") in calls and calls[-1][1].cuda_graph_strategy == "DISABLED"
    engine.close()


def test_from_onnx_uses_an_engine_built_elsewhere_whose_targets_include_this_gpu(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    side = contract.read_onnx_sidecar(onnx)
    fake = _fake_machine(monkeypatch, gpu=RTX_4090, rtx=True)
    several = _stored_engine(onnx.parent, spec(side, targets=("sm86", "sm89", "sm120")), name=f"{onnx.stem}_x.engine",
                             side=side)
    _stored_engine(onnx.parent, spec(side, targets=("sm120",)), name=f"{onnx.stem}_a.engine", side=side)
    opened = []
    monkeypatch.setattr(trt_engine.TensorRTEngine, "__init__",
                        lambda self, path, **kw: opened.append(Path(path)))
    trt_engine.TensorRTEngine.from_onnx(onnx, log=lambda _: None)
    assert opened == [several] and fake.named("build_serialized_network") == []
    monkeypatch.setattr(tensorrt_build, "local_gpu", lambda: ("NVIDIA GeForce RTX 2080 Ti", (7, 5)))
    with pytest.raises(ConfigError, match="this GPU \\(NVIDIA GeForce RTX 2080 Ti\\) is Turing \\(sm75\\)"):
        trt_engine.TensorRTEngine.from_onnx(onnx, log=lambda _: None)  # nothing fits, and sm75 cannot be built
