"""TensorRT cache, builder control flow and ONNX Runtime provider selection, all on CPU.

TensorRT itself is replaced by a fake module that implements the documented TensorRT 10 Python
API names the builder and the runner use, and records the calls, so these tests check OUR logic (strong
typing, no FP16 flag, profile, workspace, timing cache, error paths, the runner binding the graph
contract's five inputs and two outputs) — not TensorRT.
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
    return data


def spec(**over) -> trt_cache.EngineSpec:
    fields = {"onnx_sha256": SHA_A, "tile_lr": (64, 48), "batch_range": (1, 2, 4), "precision": "fp16",
              "trt_version": "10.13.0.35", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": (9, 0)}
    fields.update(over)
    return trt_cache.EngineSpec(**fields)


# --------------------------------------------------------------------------- cache key & names

def test_cache_key_is_stable_and_ignores_dict_order_and_tuple_vs_list():
    s = spec()
    fields = s.fields()
    reordered = dict(reversed(list(fields.items())))
    as_tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    key = trt_cache.cache_key(s)
    assert len(key) == 64 and int(key, 16) >= 0
    assert trt_cache.cache_key(fields) == key
    assert trt_cache.cache_key(reordered) == key
    assert trt_cache.cache_key(as_tuples) == key
    assert trt_cache.cache_key(spec()) == key


@pytest.mark.parametrize("field,value", [
    ("onnx_sha256", SHA_B), ("tile_lr", (64, 64)), ("tile_lr", (48, 64)), ("batch_range", (1, 2, 8)),
    ("batch_range", (1, 4, 4)), ("precision", "fp32"), ("trt_version", "10.12.0.36"),
    ("gpu_name", "NVIDIA GeForce RTX 4090"), ("compute_capability", (8, 9)),
])
def test_cache_key_changes_with_every_field(field, value):
    assert trt_cache.cache_key(spec(**{field: value})) != trt_cache.cache_key(spec())


def test_cache_key_missing_field_is_a_config_error():
    fields = spec().fields()
    del fields["gpu_name"]
    with pytest.raises(ConfigError, match="missing fields \\['gpu_name'\\]"):
        trt_cache.cache_key(fields)


def test_engine_file_name_carries_every_field_and_is_path_safe():
    s = spec(gpu_name="NVIDIA GeForce RTX 4090 / Laptop")
    name = trt_cache.engine_file_name(s)
    assert name.endswith(".engine")
    for part in ("64x48", "b1-2-4", "fp16", SHA_A[:12], "trt10.13.0.35", "NVIDIA-GeForce-RTX-4090-Laptop",
                 "sm90", trt_cache.cache_key(s)[:16]):
        assert part in name
    assert " " not in name and "/" not in name
    assert trt_cache.engine_file_name(spec(precision="fp32")) != trt_cache.engine_file_name(spec())
    timing = trt_cache.timing_cache_file_name(trt_version="10.13.0.35", gpu_name="NVIDIA H100 80GB HBM3",
                                              compute_capability=(9, 0))
    assert timing == "timing_trt10.13.0.35_NVIDIA-H100-80GB-HBM3_sm90.cache"


# --------------------------------------------------------------------------- sidecars & decisions

def test_engine_sidecar_round_trip_and_load_decision(tmp_path):
    engine = tmp_path / trt_cache.engine_file_name(spec())
    engine.write_bytes(b"serialized")
    trt_cache.write_engine_sidecar(engine, spec(), size_multiple=8, norm_groups=GROUPS, extra={"workspace_gb": 2.0})
    data = trt_cache.read_engine_sidecar(engine)
    assert data["cache_key"] == trt_cache.cache_key(spec())
    assert data["tile_lr"] == [64, 48] and data["batch_range"] == [1, 2, 4] and data["size_multiple"] == 8
    assert data["norm_groups"] == GROUPS and data["format"] == trt_cache.ENGINE_SIDECAR_FORMAT == 2
    assert data["build"] == {"workspace_gb": 2.0}
    assert trt_cache.sidecar_mismatch(data, spec()) is None
    decision = trt_cache.cache_decision(engine, spec())
    assert decision.action == "load"
    assert trt_cache.cache_decision(engine, spec(), rebuild=True).action == "build"


@pytest.mark.parametrize("field,value", [
    ("gpu_name", "NVIDIA A100-SXM4-80GB"), ("trt_version", "10.12.0.36"), ("onnx_sha256", SHA_B),
    ("compute_capability", (8, 0)), ("batch_range", (1, 1, 8)),
])
def test_stale_sidecar_means_rebuild_naming_the_field(tmp_path, field, value):
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"serialized")
    trt_cache.write_engine_sidecar(engine, spec(), size_multiple=8, norm_groups=GROUPS)
    decision = trt_cache.cache_decision(engine, spec(**{field: value}))
    assert decision.action == "build"
    assert f"{field} differs" in decision.reason


def test_edited_cache_key_is_detected(tmp_path):
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"x")
    path = trt_cache.write_engine_sidecar(engine, spec(), size_multiple=8, norm_groups=GROUPS)
    data = json.loads(path.read_text())
    data["cache_key"] = "0" * 64
    path.write_text(json.dumps(data))
    assert "cache_key differs" in trt_cache.cache_decision(engine, spec()).reason


@pytest.mark.parametrize("setup,reason", [
    ("no_engine", "no cached engine"), ("empty_engine", "is empty"), ("no_sidecar", "sidecar"),
    ("bad_json", "not readable JSON"), ("missing_keys", "missing keys"),
    ("format_1", "missing keys ['norm_groups']"),
])
def test_cache_decision_builds_when_files_are_unusable(tmp_path, setup, reason):
    engine = tmp_path / "e.engine"
    if setup != "no_engine":
        engine.write_bytes(b"" if setup == "empty_engine" else b"x")
    if setup == "bad_json":
        trt_cache.engine_sidecar_path(engine).write_text("{not json")
    if setup == "missing_keys":
        trt_cache.engine_sidecar_path(engine).write_text(json.dumps({"onnx_sha256": SHA_A}))
    if setup == "format_1":  # an engine built before GroupNorm statistics became graph I/O
        path = trt_cache.write_engine_sidecar(engine, spec(), size_multiple=8, norm_groups=GROUPS)
        old = {k: v for k, v in json.loads(path.read_text()).items() if k != "norm_groups"}
        path.write_text(json.dumps({**old, "format": 1}))
        with pytest.raises(ConfigError, match=r"missing keys \['norm_groups'\]; rebuild"):
            trt_cache.read_engine_sidecar(engine)
    decision = trt_cache.cache_decision(engine, spec())
    assert decision.action == "build" and reason in decision.reason


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

def test_missing_tensorrt_module_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(BackendUnavailableError) as info:
        tensorrt_build.import_tensorrt()
    message = str(info.value)
    assert "pip install 'gtasr-deploy[tensorrt]'" in message and "NVIDIA GPU" in message
    assert tensorrt_build.explain_unavailable() == message
    with pytest.raises(BackendUnavailableError, match=r"gtasr-deploy\[tensorrt\]"):
        trt_engine.TensorRTEngine("engines/none.engine")


def test_old_tensorrt_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(version="8.6.1"))
    with pytest.raises(BackendUnavailableError, match=r"TensorRT 8\.6\.1 is too old, expected >= 10\.0"):
        tensorrt_build.import_tensorrt()


def test_missing_cuda_is_reported(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(BackendUnavailableError, match=r"no CUDA GPU is visible.*NVIDIA GPU"):
        tensorrt_build.cuda_device_info()
    reason = tensorrt_build.explain_unavailable()
    assert reason is not None and "no CUDA GPU" in reason and "\n" not in reason


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
    """Module-shaped fake of the TensorRT 10 Python API subset the builder calls; records calls."""

    def __init__(self, *, version="10.13.0.35", strongly_typed=True, parse_errors=(), build_result=b"ENGINE",
                 inputs=contract.INPUTS, timing_accepts=True):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        rec = self.calls
        flag_cls = type("NetworkDefinitionCreationFlag", (), {"STRONGLY_TYPED": 0} if strongly_typed else {})
        self.NetworkDefinitionCreationFlag = flag_cls
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", TF32="TF32")

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity):
                rec.append(("Logger", severity))

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

            def set_memory_pool_limit(self, pool, size):
                rec.append(("set_memory_pool_limit", pool, size))

            def set_flag(self, flag):
                rec.append(("set_flag", flag))

            def add_optimization_profile(self, profile):
                rec.append(("add_optimization_profile",))

            def create_timing_cache(self, data):
                rec.append(("create_timing_cache", bytes(data)))
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache, ignore_mismatch):
                rec.append(("set_timing_cache", cache.data, ignore_mismatch))
                ok = timing_accepts or cache.data == b""
                if ok:
                    self._cache = cache
                return ok

            def get_timing_cache(self):
                return self._cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                rec.append(("create_network", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                rec.append(("build_serialized_network",))
                return None if build_result is None else memoryview(build_result)

        class OnnxParser(FakeParser):
            def __init__(self, network, logger):
                super().__init__(parse_errors)

            def parse_from_file(self, path):
                rec.append(("parse_from_file", path))
                return not parse_errors

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser

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


def test_build_sets_strong_typing_profile_workspace_and_never_fp16(tmp_path, monkeypatch):
    fake = FakeTRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx = _write_graph(tmp_path)
    timing = tmp_path / "timing.cache"
    data = tensorrt_build.build_serialized_engine(onnx, contract.read_onnx_sidecar(onnx), workspace_gb=1.5,
                                                  timing_cache_path=timing, log=lambda _: None)
    assert data == b"ENGINE"
    assert fake.named("create_network") == [("create_network", 1 << 0)]
    assert fake.named("set_flag") == []  # no FP16 (nor any other) builder flag
    assert fake.named("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", int(1.5 * 2**30))]
    assert fake.named("set_shape") == [
        ("set_shape", "x_t", (1, 3, 256, 192), (2, 3, 256, 192), (4, 3, 256, 192)),
        ("set_shape", "lq", (1, 3, 64, 48), (2, 3, 64, 48), (4, 3, 64, 48)),
        ("set_shape", "sigma", (1,), (2,), (4,)),
        ("set_shape", "norm_stats", (2, GROUPS), (2, GROUPS), (2, GROUPS)),
        ("set_shape", "norm_mix", (1,), (1,), (1,)),
    ]
    assert len(fake.named("add_optimization_profile")) == 1
    assert fake.named("parse_from_file") == [("parse_from_file", str(onnx))]
    assert fake.named("create_timing_cache") == [("create_timing_cache", b"")]
    assert timing.read_bytes() == b"TIMING:"  # saved after the build


def test_build_reuses_timing_cache_and_recovers_from_a_mismatched_one(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    side = contract.read_onnx_sidecar(onnx)
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"OLD")
    fake = FakeTRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    tensorrt_build.build_serialized_engine(onnx, side, timing_cache_path=timing, log=lambda _: None)
    assert fake.named("set_timing_cache") == [("set_timing_cache", b"OLD", False)]
    assert timing.read_bytes() == b"TIMING:OLD"

    timing.write_bytes(b"FOREIGN")
    fake = FakeTRT(timing_accepts=False)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    logs = []
    tensorrt_build.build_serialized_engine(onnx, side, timing_cache_path=timing, log=logs.append)
    assert [c[1] for c in fake.named("create_timing_cache")] == [b"FOREIGN", b""]
    assert any("does not match" in line for line in logs)
    assert timing.read_bytes() == b"TIMING:"


def test_build_without_strongly_typed_flag_uses_default_network(tmp_path, monkeypatch):
    fake = FakeTRT(version="11.0.0", strongly_typed=False)  # TensorRT 11: always strongly typed
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    onnx = _write_graph(tmp_path)
    tensorrt_build.build_serialized_engine(onnx, contract.read_onnx_sidecar(onnx), log=lambda _: None)
    assert fake.named("create_network") == [("create_network", 0)]


@pytest.mark.parametrize("fake_kwargs,match", [
    ({"build_result": None}, "build_serialized_network returned None"),
    ({"parse_errors": [FakeParserError(7, "unsupported op", "/up/Resize", "Resize")]},
     "node #7 '/up/Resize' \\(Resize\\): unsupported op"),
    ({"inputs": ("x_t", "lq")},
     "inputs are \\['x_t', 'lq'\\], expected \\['x_t', 'lq', 'sigma', 'norm_stats', 'norm_mix'\\]"),
    ({"inputs": ("x_t", "lq", "sigma")}, "inputs are \\['x_t', 'lq', 'sigma'\\], expected .*re-export"),  # old graph
])
def test_build_failures_are_engine_build_errors(tmp_path, monkeypatch, fake_kwargs, match):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTRT(**fake_kwargs))
    onnx = _write_graph(tmp_path)
    timing = tmp_path / "timing.cache"
    with pytest.raises(EngineBuildError, match=match):
        tensorrt_build.build_serialized_engine(onnx, contract.read_onnx_sidecar(onnx),
                                               timing_cache_path=timing, log=lambda _: None)
    assert not timing.exists()


def _fake_machine(monkeypatch, gpu="NVIDIA H100 80GB HBM3", capability=(9, 0), **fake_kwargs) -> FakeTRT:
    fake = FakeTRT(**fake_kwargs)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(tensorrt_build, "cuda_device_info", lambda: (gpu, capability))
    return fake


def test_get_or_build_engine_builds_then_reuses_then_rebuilds_on_change(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    cache_dir = tmp_path / "engines"
    fake = _fake_machine(monkeypatch)
    logs = []
    first = tensorrt_build.get_or_build_engine(onnx, cache_dir=cache_dir, log=logs.append)
    assert first.parent == cache_dir and first.read_bytes() == b"ENGINE"
    sidecar = trt_cache.read_engine_sidecar(first)
    assert sidecar["gpu_name"] == "NVIDIA H100 80GB HBM3" and sidecar["compute_capability"] == [9, 0]
    assert sidecar["trt_version"] == "10.13.0.35" and sidecar["precision"] == "fp16"
    assert sidecar["onnx_sha256"] == trt_cache.file_sha256(onnx)
    assert sidecar["norm_groups"] == GROUPS and sidecar["size_multiple"] == 8  # copied from the graph's sidecar
    assert list(cache_dir.glob("timing_trt10.13.0.35_*_sm90.cache"))
    assert len(fake.named("build_serialized_network")) == 1

    again = tensorrt_build.get_or_build_engine(onnx, cache_dir=cache_dir, log=logs.append)
    assert again == first and len(fake.named("build_serialized_network")) == 1
    assert "reusing" in logs[-1]

    tensorrt_build.get_or_build_engine(onnx, cache_dir=cache_dir, rebuild=True, log=logs.append)
    assert len(fake.named("build_serialized_network")) == 2

    other = _fake_machine(monkeypatch, gpu="NVIDIA GeForce RTX 4090", capability=(8, 9))
    second = tensorrt_build.get_or_build_engine(onnx, cache_dir=cache_dir, log=logs.append)
    assert second != first and len(other.named("build_serialized_network")) == 1
    assert trt_cache.read_engine_sidecar(second)["compute_capability"] == [8, 9]


def test_get_or_build_engine_rebuilds_an_engine_whose_sidecar_is_stale(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    fake = _fake_machine(monkeypatch)
    path = tensorrt_build.get_or_build_engine(onnx, cache_dir=tmp_path, log=lambda _: None)
    side_path = trt_cache.engine_sidecar_path(path)
    data = json.loads(side_path.read_text())
    data["trt_version"] = "10.12.0.36"
    side_path.write_text(json.dumps(data))
    logs = []
    tensorrt_build.get_or_build_engine(onnx, cache_dir=tmp_path, log=logs.append)
    assert len(fake.named("build_serialized_network")) == 2
    assert any("trt_version differs" in line for line in logs)


def test_get_or_build_engine_refuses_a_graph_changed_after_export(tmp_path, monkeypatch):
    onnx = _write_graph(tmp_path)
    onnx.write_bytes(b"edited")
    _fake_machine(monkeypatch)
    with pytest.raises(ConfigError, match="changed after export"):
        tensorrt_build.get_or_build_engine(onnx, cache_dir=tmp_path, log=lambda _: None)
    with pytest.raises(ConfigError, match="not found"):
        tensorrt_build.get_or_build_engine(tmp_path / "missing.onnx", cache_dir=tmp_path)


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
    assert set(trt_engine.BATCHED) == {n for n, s in shapes.items() if s[0] == 3}  # the batch-axis tensors


def test_engine_built_for_another_gpu_is_refused_before_deserializing(tmp_path, monkeypatch):
    fake = _fake_machine(monkeypatch)
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"ENGINE")
    trt_cache.write_engine_sidecar(engine, spec(gpu_name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0)),
                                   size_multiple=8, norm_groups=GROUPS)
    fake.Runtime = None  # deserializing would fail loudly: the check must come first
    with pytest.raises(EngineBuildError, match="cannot run here: gpu_name differs"):
        trt_engine.TensorRTEngine(engine)


# --------------------------------------------------------------------------- runner I/O with a fake engine

class _FakeContext:
    """Execution context: resolves bound addresses to the buffers behind them and computes a known function."""

    def __init__(self, buffers):
        self.buffers = buffers  # data_ptr -> tensor, every buffer the runner allocated
        self.addresses, self.shapes, self.seen = {}, {}, []

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return True

    def execute_async_v3(self, stream):
        t = {name: self.buffers[ptr] for name, ptr in self.addresses.items()}
        n = self.shapes["x_t"][0]
        mix, stats = float(t["norm_mix"][0]), t["norm_stats"].clone()
        self.seen.append({"n": n, "norm_mix": mix, "norm_stats": stats.numpy()})
        shift = t["sigma"][:n, None, None, None] + mix * stats.sum()
        t["sr"][:n] = t["x_t"][:n] + shift
        t["tile_stats"][:n, 0] = t["x_t"][:n].mean(dim=(1, 2, 3))[:, None]
        t["tile_stats"][:n, 1] = t["lq"][:n].mean(dim=(1, 2, 3))[:, None]
        return True


def _fake_runtime_engine(monkeypatch, tmp_path):
    """A TensorRTEngine over a fake TensorRT: host 'device' buffers, fake stream, one known engine."""
    fake = _fake_machine(monkeypatch)
    fake.TensorIOMode, fake.DataType = _FAKE_TRT_ENUMS.TensorIOMode, _FAKE_TRT_ENUMS.DataType
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
    engine.create_execution_context = lambda: context
    fake.Runtime = lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine)
    path = tmp_path / "e.engine"
    path.write_bytes(b"ENGINE")
    trt_cache.write_engine_sidecar(path, spec(), size_multiple=8, norm_groups=GROUPS)
    return trt_engine.TensorRTEngine(path), context


def _host_inputs(n, seed=0):
    rng = np.random.default_rng(seed)
    return {"x_t": rng.standard_normal((n, 3, 256, 192)).astype(np.float32),
            "lq": rng.uniform(-1, 1, (n, 3, 64, 48)).astype(np.float32),
            "sigma": np.linspace(1.0, 0.5, n, dtype=np.float32)}


def test_runner_binds_every_input_and_output_and_feeds_the_norm_mode(tmp_path, monkeypatch):
    engine, context = _fake_runtime_engine(monkeypatch, tmp_path)
    assert engine.info.norm_groups == GROUPS and engine.info.norm_modes == ("tile", "shared")
    assert context.addresses == {name: engine._dev[name].data_ptr() for name in (*contract.INPUTS, *contract.OUTPUTS)}

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
    np.testing.assert_allclose(stats[:, 1], np.repeat(feeds["lq"].mean(axis=(1, 2, 3))[:, None], GROUPS, 1),
                               rtol=1e-5, atol=1e-6)
    assert context.seen[-1]["norm_mix"] == 0.0  # statistics are each tile's own

    one = _host_inputs(1, seed=1)
    np.testing.assert_array_equal(engine(**one), one["x_t"] + 1.0)  # batch 1 after batch 2: shapes re-bound
    assert context.shapes["x_t"][0] == context.shapes["sigma"][0] == 1 and context.shapes["norm_stats"] == (2, GROUPS)
    with pytest.raises(InputError, match=rf"'norm_stats' has shape \(2, 5\), expected \(2, {GROUPS}\)"):
        engine(**one, norm_stats=np.zeros((2, 5), np.float32))
    engine.close()
    with pytest.raises(ConfigError, match="after close"):
        engine(**one)


def test_engine_sidecar_without_norm_groups_is_refused_before_deserializing(tmp_path, monkeypatch):
    fake = _fake_machine(monkeypatch)
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"ENGINE")
    path = trt_cache.write_engine_sidecar(engine, spec(), size_multiple=8, norm_groups=GROUPS)
    data = json.loads(path.read_text())
    del data["norm_groups"]
    path.write_text(json.dumps(data))
    fake.Runtime = None  # deserializing would fail loudly: the check must come first
    with pytest.raises(ConfigError, match=r"missing keys \['norm_groups'\]"):
        trt_engine.TensorRTEngine(engine)
