"""TensorRT backend: version-dependent branches against fake TensorRT / CUDA modules (run
everywhere), and real builds marked ``tensorrt`` (skipped without TensorRT and a GPU).

The fakes stand in for the *libraries*, never for this package's code: each test drives the
backend's own functions and classes and checks which TensorRT calls they made.
"""

import ctypes
import enum
import sys
import types
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

from edge_evolver.backends import _cuda, known_backends, resolve_backend
from edge_evolver.backends import tensorrt_backend as tb
from edge_evolver.backends.tensorrt_backend import TensorRTBackend, TensorRTEngine
from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.inputs import TensorSpec

TRT_OK, TRT_REASON = TensorRTBackend.available()
MIB = 1024 * 1024


def needs_tensorrt(test):
    skip = pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")
    return pytest.mark.tensorrt(skip(test))


def _code(call, *args, **kwargs) -> str:
    with pytest.raises(EdgeError) as info:
        call(*args, **kwargs)
    return info.value.code


# ---------------------------------------------------------------- fake TensorRT


def fake_enum(owner: str, **members: int) -> Any:
    """Like a pybind11 enum: str() is 'Owner.NAME', int() works, members compare by identity."""
    cls = enum.Enum(owner, members)
    cls.__int__ = lambda self: self.value
    return cls


class FakeTensor:
    def __init__(self, trt, name, shape, dim_names=None):
        self.name, self.shape, self.dtype = name, shape, trt.DataType.FLOAT
        self._dim_names = dim_names or {}

    def get_dimension_name(self, axis):
        return self._dim_names.get(axis, "")


class FakeNetwork:
    def __init__(self):
        self.inputs: List[FakeTensor] = []

    @property
    def num_inputs(self):
        return len(self.inputs)

    def get_input(self, index):
        return self.inputs[index]


class FakeParserError:
    def __init__(self, code, desc):
        self._code, self._desc = code, desc

    def code(self):
        return self._code

    def desc(self):
        return self._desc


class FakeProfile:
    def __init__(self):
        self.shapes: Dict[str, Tuple] = {}

    def set_shape(self, name, low, opt, high):
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class FakeConfig82:
    """A TensorRT 8.2/8.3 builder config: no set_memory_pool_limit (max_workspace_size is set)."""

    def __init__(self):
        self.flags: List[Any] = []
        self.pools: List[Tuple[Any, int]] = []
        self.profiles: List[FakeProfile] = []

    def set_flag(self, flag):
        self.flags.append(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeConfig(FakeConfig82):
    """TensorRT 8.4+ and 10."""

    def set_memory_pool_limit(self, pool, size):
        self.pools.append((pool, size))


def fake_trt(api: str = "10", fp16_flag: bool = True, fast_fp16: Optional[bool] = True) -> Any:
    """A tensorrt module: api "10" (tensor API only), "8.5" (both), "8.2" (bindings, max_workspace_size)."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = {"10": "10.3.0", "8.5": "8.5.2", "8.2": "8.2.1"}[api]
    trt.built = []  # Builders made, for assertions

    class ILogger:
        Severity = fake_enum("Severity", INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16") if fp16_flag else types.SimpleNamespace()
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.TensorIOMode = fake_enum("TensorIOMode", NONE=0, INPUT=1, OUTPUT=2)
    trt.DataType = fake_enum("DataType", FLOAT=0, HALF=1, INT8=2, INT32=3, BOOL=4, BF16=7)

    def nptype(trt_type):
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    trt.nptype = nptype

    class Builder:
        def __init__(self, logger):
            self.logger, self.network, self.config = logger, None, None
            if fast_fp16 is not None:
                self.platform_has_fast_fp16 = fast_fp16
            if api != "10":
                self.max_batch_size = 1  # implicit batch still exists
            trt.built.append(self)

        def create_network(self, flags):
            self.flags, self.network = flags, FakeNetwork()
            return self.network

        def create_builder_config(self):
            self.config = FakeConfig82() if api == "8.2" else FakeConfig()
            return self.config

        def create_optimization_profile(self):
            return FakeProfile()

        def build_serialized_network(self, network, config):
            if any(t.name == "fail" for t in network.inputs):
                self.logger.log(trt.ILogger.Severity.ERROR, "could not find any implementation for node x")
                return None
            return b"PLAN:" + ",".join(t.name for t in network.inputs).encode()

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, index):
            return self.errors[index]

        def parse(self, data):
            if data.startswith(b"onnx:"):
                for name in data[5:].decode().split(","):
                    self.network.inputs.append(FakeTensor(trt, name, (-1, 3)))
                return True
            if data.startswith(b"custom-op"):
                self.errors.append(FakeParserError("ErrorCode.UNSUPPORTED_NODE", "No importer registered for op: Foo"))
            else:
                self.errors.append(FakeParserError("ErrorCode.MODEL_DESERIALIZE_FAILED", "Failed to parse ONNX model"))
            return False

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, plan):
            if not bytes(plan).startswith(b"PLAN:"):
                self.logger.log(trt.ILogger.Severity.ERROR, "Serialization assertion magicTagRead == kMAGIC_TAG failed")
                return None
            return FakeEngine(trt, api, trt.memory)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    trt.memory = None  # the FakeCuda that FakeEngine computes in
    return trt


# ---------------------------------------------------------------- fake engine and CUDA memory


class FakeCuda(_cuda.CudaMemory):
    """Device memory as bytearrays keyed by fake addresses."""

    api = "fake"

    def __init__(self):
        self.device: Dict[int, bytearray] = {}
        self.closed = 0

    def host_empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def alloc(self, nbytes):
        address = 0x1000 * (len(self.device) + 1)
        self.device[address] = bytearray(max(nbytes, 1))
        return address

    def htod(self, device, host):
        self.device[device][: host.nbytes] = host.tobytes()

    def dtoh(self, host, device):
        host[...] = np.frombuffer(bytes(self.device[device][: host.nbytes]), host.dtype).reshape(host.shape)

    @property
    def stream_handle(self):
        return 42

    def sync(self):
        pass

    def close(self):
        self.closed += 1

    def read(self, address, shape):
        return np.frombuffer(bytes(self.device[address]), np.float32)[: int(np.prod(shape))].reshape(shape)


class FakeEngine:
    """y = 2x + 1 with x of shape (-1, 3); the profile's opt batch is 2. Tensor API for "10"/"8.5",
    bindings for "8.2" and "8.5"."""

    def __init__(self, trt, api, memory, output_shape=None):
        self.trt, self.api, self.memory, self.output_shape = trt, api, memory, output_shape
        self.names = ["x", "y"]
        if api in ("10", "8.5"):
            self.num_io_tensors = 2
        if api in ("8.2", "8.5"):
            self.num_bindings = 2

    def create_execution_context(self):
        return CONTEXTS[self.api](self)

    # tensor API
    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if name == "x" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return (-1, 3)

    def get_tensor_dtype(self, name):
        return self.trt.DataType.FLOAT

    def get_tensor_profile_shape(self, name, profile_index):
        return [(1, 3), (2, 3), (8, 3)]

    # bindings API
    def get_binding_name(self, index):
        return self.names[index]

    def binding_is_input(self, index):
        return index == 0

    def get_binding_dtype(self, index):
        return self.trt.DataType.FLOAT

    def get_binding_shape(self, index):
        return (-1, 3)

    def get_profile_shape(self, profile_index, binding):
        return [(1, 3), (2, 3), (8, 3)]


class ContextBase:
    def __init__(self, engine: FakeEngine):
        self.engine, self.shape, self.addresses, self.calls = engine, None, {}, []
        self.fail = False

    def _result_shape(self):
        return self.engine.output_shape or self.shape

    def _run(self, x_address, y_address):
        memory = self.engine.memory
        x = memory.read(x_address, self.shape)
        memory.device[y_address][:] = (2 * x + 1).astype(np.float32).tobytes()
        return not self.fail


class TensorApi:
    """IExecutionContext methods of TensorRT 8.5+."""

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        return self.shape if name == "x" else self._result_shape()

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        self.calls.append(("v3", stream_handle))
        return self._run(self.addresses["x"], self.addresses["y"])


class BindingApi:
    """IExecutionContext methods of TensorRT 8.x (removed in 10)."""

    def set_binding_shape(self, index, shape):
        self.shape = tuple(shape)
        return True

    def get_binding_shape(self, index):
        return self.shape if index == 0 else self._result_shape()

    def execute_async_v2(self, bindings, stream_handle):
        self.calls.append(("v2", stream_handle))
        return self._run(bindings[0], bindings[1])


CONTEXTS = {
    "10": type("Context10", (TensorApi, ContextBase), {}),
    "8.5": type("Context85", (TensorApi, BindingApi, ContextBase), {}),
    "8.2": type("Context82", (BindingApi, ContextBase), {}),
}


def make_engine(api: str, output_shape=None) -> Tuple[TensorRTEngine, FakeCuda, Any]:
    trt, memory = fake_trt(api), FakeCuda()
    cuda_engine = FakeEngine(trt, api, memory, output_shape)
    return TensorRTEngine(trt, object(), cuda_engine, memory, {"precision": "fp16"}), memory, cuda_engine


# ---------------------------------------------------------------- registry, availability (everywhere)


def test_registry_lists_tensorrt():
    assert "tensorrt" in known_backends()


@pytest.mark.skipif(TRT_OK, reason="TensorRT is usable here")
def test_unavailable_without_raising_and_auto_falls_through():
    ok, reason = TensorRTBackend.available()
    assert ok is False and reason
    with pytest.raises(EdgeError) as info:
        resolve_backend("tensorrt")
    assert info.value.code == ErrorCode.BACKEND_UNAVAILABLE and reason in info.value.message
    pytest.importorskip("onnxruntime")
    assert resolve_backend("auto").name == "onnxruntime"


def test_missing_tensorrt_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails like on a board without it
    ok, reason = TensorRTBackend.available()
    assert not ok and "tensorrt is not installed" in reason and "JetPack" in reason
    assert _code(TensorRTBackend().version) == ErrorCode.BACKEND_UNAVAILABLE


def test_available_with_fake_tensorrt_reports_cuda_problems(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt())
    monkeypatch.setattr(_cuda, "_DEVICE", [])
    for name in ("pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    ok, reason = TensorRTBackend.available()
    assert not ok and "neither pycuda nor cuda-python" in reason and "pip install pycuda" in reason
    monkeypatch.setattr(_cuda, "_DEVICE", [_cuda.DeviceInfo("pycuda", "NVIDIA Tegra X1", 5, 3)])
    assert TensorRTBackend.available() == (True, "tensorrt 10.3.0 (pycuda, NVIDIA Tegra X1)")
    described = TensorRTBackend().describe()
    assert described["fast_fp16"] is True and described["device"] == "NVIDIA Tegra X1 (compute 5.3)"


# ---------------------------------------------------------------- version branches (fakes)


@pytest.mark.parametrize("api, expected", [("8.2", 1), ("8.5", 1), ("10", 0)])
def test_explicit_batch_flag_only_where_implicit_batch_exists(api, expected):
    trt = fake_trt(api)
    builder = trt.Builder(object())
    assert tb.network_flags(trt, builder) == expected
    del trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # a release that dropped the enum member
    assert tb.network_flags(trt, builder) == 0


def test_workspace_uses_memory_pool_limit_when_present():
    trt = fake_trt("10")
    config = FakeConfig()
    assert tb.set_workspace(trt, config, 256) == "set_memory_pool_limit"
    assert config.pools == [("WORKSPACE", 256 * MIB)] and not hasattr(config, "max_workspace_size")
    old = FakeConfig82()
    assert not hasattr(old, "set_memory_pool_limit")
    assert tb.set_workspace(trt, old, 64) == "max_workspace_size" and old.max_workspace_size == 64 * MIB


@pytest.mark.parametrize(
    "api, io_api", [("10", "tensor_address_v3"), ("8.5", "tensor_address_v3"), ("8.2", "bindings_v2")]
)
def test_io_api_prefers_execute_async_v3(api, io_api):
    engine, memory, cuda_engine = make_engine(api)
    assert engine.info["io_api"] == io_api and engine.info["precision"] == "fp16"
    assert engine.inputs == [TensorSpec("x", (2, 3), "float32")]  # the profile's opt shape
    assert engine.outputs == [TensorSpec("y", (2, 3), "float32")]
    x = np.arange(6, dtype=np.float64).reshape(2, 3)  # cast to the engine's float32
    (y,) = engine.infer({"x": x})
    np.testing.assert_array_equal(y, 2 * x + 1)
    assert y.dtype == np.float32 and y is not engine.infer({"x": x})[0]
    context = engine._context
    assert [call[0] for call in context.calls] == [io_api[-2:]] * 2 and context.calls[0][1] == 42


def test_io_api_unknown_is_unavailable():
    trt = fake_trt("10")
    with pytest.raises(EdgeError) as info:
        tb.select_io_api(types.SimpleNamespace(), types.SimpleNamespace())
    assert info.value.code == ErrorCode.BACKEND_UNAVAILABLE
    both = FakeEngine(trt, "8.5", None)
    assert type(tb.select_io_api(both, both.create_execution_context())) is tb.TensorAddressIo
    old = FakeEngine(trt, "8.2", None)
    assert type(tb.select_io_api(old, old.create_execution_context())) is tb.BindingsIo


def test_infer_checks_feeds_and_close_is_idempotent():
    engine, memory, _ = make_engine("10")
    assert _code(engine.infer, {"x": np.zeros((3, 3), np.float32)}) == ErrorCode.BAD_SHAPE
    assert _code(engine.infer, {}) == ErrorCode.BAD_INPUT
    assert _code(engine.infer, {"x": np.zeros((2, 3), np.complex64)}) == ErrorCode.BAD_INPUT
    engine._context.fail = True
    assert _code(engine.infer, {"x": np.zeros((2, 3), np.float32)}) == ErrorCode.INFERENCE_FAILED
    engine.close()
    engine.close()
    assert memory.closed == 1
    assert _code(engine.infer, {"x": np.zeros((2, 3), np.float32)}) == ErrorCode.INFERENCE_FAILED


def test_data_dependent_output_shape_is_refused_and_memory_released():
    trt, memory = fake_trt("10"), FakeCuda()
    with pytest.raises(EdgeError) as info:
        TensorRTEngine(trt, object(), FakeEngine(trt, "10", memory, output_shape=(-1,)), memory, {})
    assert info.value.code == ErrorCode.UNSUPPORTED_OP and "data-dependent" in info.value.message
    assert memory.closed == 1


def test_dtype_mapping_does_not_depend_on_trt_nptype():
    trt = fake_trt()  # its nptype raises, like TensorRT 8.x's on numpy >= 1.24 (np.bool)
    assert tb.np_dtype(trt, trt.DataType.HALF) == np.float16
    assert tb.np_dtype(trt, trt.DataType.BOOL) == np.bool_
    assert tb.np_dtype(trt, trt.DataType.BF16) is None


@pytest.mark.parametrize(
    "requested, fast, has_flag, expected",
    [(None, True, True, True), (None, False, True, False), (True, False, True, True),
     (False, True, True, False), (None, True, False, False)],
)  # fmt: skip
def test_fp16_choice(requested, fast, has_flag, expected):
    assert tb.choose_fp16(fake_trt(fp16_flag=has_flag), requested, fast) is expected


def test_fp16_required_without_the_flag_fails():
    assert _code(tb.choose_fp16, fake_trt(fp16_flag=False), True, True) == ErrorCode.BUILD_FAILED


def test_fast_fp16_falls_back_to_compute_capability():
    builder = types.SimpleNamespace()  # TensorRT without platform_has_fast_fp16
    for (major, minor), fast in {(5, 3): True, (6, 1): False, (6, 2): True, (8, 7): True, (5, 2): False}.items():
        assert tb.platform_fast_fp16(builder, _cuda.DeviceInfo("x", "gpu", major, minor)) is fast
    says_slow = types.SimpleNamespace(platform_has_fast_fp16=False)  # the builder's word wins
    assert tb.platform_fast_fp16(says_slow, _cuda.DeviceInfo("x", "gpu", 8, 7)) is False


def test_logger_keeps_recent_errors_and_warnings_only():
    trt = fake_trt()
    logger = tb.get_logger(trt)
    assert tb.get_logger(trt) is logger and isinstance(logger, trt.ILogger)
    severity = trt.ILogger.Severity
    mark = logger.count
    for i in range(tb.LOG_KEEP + 5):
        logger.log(severity.WARNING if i % 2 else severity.ERROR, f"problem   {i}\n")
    logger.log(severity.INFO, "building")
    logger.log(severity.VERBOSE, "tactic 7")
    lines = logger.since(mark)
    assert len(lines) == tb.LOG_KEEP and lines[-1] == f"ERROR: problem {tb.LOG_KEEP + 4}"
    assert not any("building" in line or "tactic" in line for line in lines)
    assert logger.since(logger.count) == []


def test_options_are_validated():
    opts = tb.parse_options({"batch": 4, "shape_overrides": {"seq": 7, "x": (4, 3)}, "threads": 2})
    assert opts == tb.BuildOptions(4, {"seq": 7, "x": [4, 3]}, None, tb.DEFAULT_WORKSPACE_MB)
    assert tb.parse_options(None) == tb.BuildOptions(1, {}, None, 256)
    assert _code(tb.parse_options, {"batch": 0}) == ErrorCode.BAD_SHAPE
    assert _code(tb.parse_options, {"batch": True}) == ErrorCode.BAD_SHAPE
    assert _code(tb.parse_options, {"fp16": "yes"}) == ErrorCode.BAD_INPUT
    assert _code(tb.parse_options, {"workspace_mb": 0}) == ErrorCode.BAD_INPUT
    assert _code(tb.parse_options, {"shape_overrides": {"x": "12"}}) == ErrorCode.BAD_SHAPE


# ---------------------------------------------------------------- build and parse (fakes)


def device(major=8, minor=7) -> _cuda.DeviceInfo:
    return _cuda.DeviceInfo("fake", "Orin", major, minor)


@pytest.mark.parametrize("api", ["8.2", "10"])
def test_build_plan_profile_precision_and_workspace(api):
    trt = fake_trt(api)
    plan, fp16 = tb.build_plan(trt, b"onnx:x", tb.parse_options({"batch": 4, "workspace_mb": 128}), device())
    assert plan == b"PLAN:x" and fp16 is True
    builder = trt.built[-1]
    assert builder.flags == (1 if api == "8.2" else 0)
    config = builder.config
    assert config.flags == ["FP16"] and [p.shapes for p in config.profiles] == [{"x": ((4, 3),) * 3}]
    if api == "8.2":
        assert config.max_workspace_size == 128 * MIB
    else:
        assert config.pools == [("WORKSPACE", 128 * MIB)]
    _, fp16 = tb.build_plan(trt, b"onnx:x", tb.parse_options({"fp16": False}), device())
    assert fp16 is False and trt.built[-1].config.flags == []


def test_build_failure_reports_the_log():
    with pytest.raises(EdgeError) as info:
        tb.build_plan(fake_trt(), b"onnx:fail", tb.parse_options({}), device())
    assert info.value.code == ErrorCode.BUILD_FAILED
    assert "could not find any implementation" in info.value.message


@pytest.mark.parametrize(
    "data, code", [(b"custom-op", ErrorCode.UNSUPPORTED_OP), (b"\x00garbage", ErrorCode.INVALID_MODEL)]
)
def test_parse_errors_are_classified(data, code):
    with pytest.raises(EdgeError) as info:
        tb.build_plan(fake_trt(), data, tb.parse_options({}), device())
    assert info.value.code == code and "TensorRT could not parse the model" in info.value.message


def test_dynamic_dims_resolve_by_onnx_name_or_fail_clearly():
    trt = fake_trt()
    named = FakeTensor(trt, "tokens", (-1, -1), {1: "seq"})
    builder, config = trt.Builder(object()), FakeConfig()
    specs = [TensorSpec("tokens", (None, "seq"), "float32")]
    network = FakeNetwork()
    network.inputs.append(named)
    assert tb.network_input_specs(trt, network) == specs
    tb.add_profile(builder, config, specs, tb.parse_options({"batch": 2, "shape_overrides": {"seq": 16}}))
    assert config.profiles[0].shapes == {"tokens": ((2, 16),) * 3}
    with pytest.raises(EdgeError) as info:
        tb.add_profile(builder, FakeConfig(), specs, tb.parse_options({"batch": 2}))
    assert info.value.code == ErrorCode.BAD_SHAPE and "'seq'" in info.value.message


# ---------------------------------------------------------------- the backend end to end (fakes)


@pytest.fixture
def fake_backend(monkeypatch):
    trt = fake_trt("10")
    memories: List[FakeCuda] = []

    def open_cuda():
        memories.append(FakeCuda())
        trt.memory = memories[-1]
        return memories[-1]

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(_cuda, "_DEVICE", [device(5, 3)])
    monkeypatch.setattr(_cuda, "open_cuda", open_cuda)
    return TensorRTBackend(), memories


def test_backend_build_load_plan_and_cache_key(fake_backend):
    backend, memories = fake_backend
    assert backend.version() == "10.3.0"
    engine, plan = backend.build(b"onnx:x", {"batch": 2})
    assert plan == b"PLAN:x" and engine.info["engine_bytes"] == len(plan)
    assert engine.info["cuda_api"] == "fake" and engine.info["device"] == "Orin (compute 5.3)"
    x = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(engine.infer({"x": x})[0], 3 * x)
    loaded = backend.load_plan(plan, {"batch": 2})
    np.testing.assert_array_equal(loaded.infer({"x": x})[0], 3 * x)
    assert loaded.info["precision"] == engine.info["precision"] == "fp16"
    engine.close()
    loaded.close()
    assert [m.closed for m in memories] == [1, 1]
    key = backend.cache_key({"batch": 2, "fp16": False, "shape_overrides": {"b": 1, "a": [1, 2]}})
    assert key == {
        "backend": "tensorrt", "version": "10.3.0", "device": "Orin (compute 5.3)", "precision": "fp32",
        "workspace_mb": 256, "batch": 2, "shape_overrides": {"a": [1, 2], "b": 1},
    }  # fmt: skip
    assert backend.cache_key({"batch": 2})["precision"] == "fp16"


def test_backend_errors_release_cuda(fake_backend):
    backend, memories = fake_backend
    assert _code(backend.build, b"", {}) == ErrorCode.INVALID_MODEL
    assert _code(backend.build, b"custom-op", {}) == ErrorCode.UNSUPPORTED_OP
    with pytest.raises(EdgeError) as info:
        backend.load_plan(b"not a plan", {})
    assert info.value.code == ErrorCode.BUILD_FAILED and "stale or damaged plan" in info.value.message
    assert "magicTag" in info.value.message
    assert _code(backend.load_plan, b"", {}) == ErrorCode.BUILD_FAILED
    assert [m.closed for m in memories] == [1, 1]  # every opened CudaMemory was closed


# ---------------------------------------------------------------- CUDA flavours (fakes)


def _block(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _fake_cudart() -> Any:
    """Just enough cuda-python runtime: host and "device" memory are both real ctypes buffers."""
    rt = types.ModuleType("cuda.bindings.runtime")
    ok = rt.cudaError_t = fake_enum("cudaError_t", cudaSuccess=0, cudaErrorMemoryAllocation=2)
    rt.cudaMemcpyKind = fake_enum("cudaMemcpyKind", cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.buffers, rt.freed = {}, []

    def malloc(nbytes):
        buffer = ctypes.create_string_buffer(nbytes)
        rt.buffers[ctypes.addressof(buffer)] = buffer
        return ok.cudaSuccess, ctypes.addressof(buffer)

    rt.cudaMalloc = rt.cudaMallocHost = malloc
    rt.cudaFree = rt.cudaFreeHost = lambda pointer: (rt.freed.append(pointer), (ok.cudaSuccess,))[1]
    rt.cudaMemcpyAsync = lambda dst, src, n, kind, stream: (ctypes.memmove(dst, src, n), (ok.cudaSuccess,))[1]
    rt.cudaSetDevice = lambda index: (ok.cudaSuccess,)
    rt.cudaStreamCreate = lambda: (ok.cudaSuccess, 99)
    rt.cudaStreamSynchronize = rt.cudaStreamDestroy = lambda stream: (ok.cudaSuccess,)
    rt.cudaGetDeviceCount = lambda: (ok.cudaSuccess, 1)
    props = types.SimpleNamespace(name=b"Orin\x00\x00", major=8, minor=7)
    rt.cudaGetDeviceProperties = lambda index: (ok.cudaSuccess, props)
    return rt


def _install_cuda_python(monkeypatch, rt, layout="bindings"):
    cuda = types.ModuleType("cuda")
    if layout == "bindings":
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime, cuda.bindings = rt, bindings
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    else:  # cuda-python < 12.6: from cuda import cudart
        _block(monkeypatch, "cuda.bindings", "cuda.bindings.runtime")
        cuda.cudart = rt
        monkeypatch.setitem(sys.modules, "cuda.cudart", rt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)


def test_no_cuda_library_is_unavailable(monkeypatch):
    _block(monkeypatch, "pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime")
    with pytest.raises(EdgeError) as info:
        _cuda.import_flavour()
    assert info.value.code == ErrorCode.BACKEND_UNAVAILABLE and "pip install pycuda" in info.value.message


@pytest.mark.parametrize("layout", ["bindings", "cudart"])
def test_cuda_python_flavour_when_pycuda_is_missing(monkeypatch, layout):
    _block(monkeypatch, "pycuda", "pycuda.driver")
    rt = _fake_cudart()
    _install_cuda_python(monkeypatch, rt, layout)
    monkeypatch.setattr(_cuda, "_DEVICE", [])
    assert _cuda.import_flavour() == ("cuda-python", rt)
    assert _cuda.device_info() == _cuda.DeviceInfo("cuda-python", "Orin", 8, 7)
    memory = _cuda.open_cuda()
    host = memory.host_empty((2, 3), np.dtype(np.float32))
    host[...] = np.arange(6).reshape(2, 3)
    device_address = memory.alloc(host.nbytes)
    memory.htod(device_address, host)
    back = memory.host_empty((2, 3), np.dtype(np.float32))
    memory.dtoh(back, device_address)
    memory.sync()
    np.testing.assert_array_equal(back, host)
    assert memory.stream_handle == 99
    memory.close()
    memory.close()
    assert len(rt.freed) == 3


def test_cuda_python_errors_name_the_call():
    rt = _fake_cudart()
    with pytest.raises(RuntimeError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        _cuda.cudart_call(rt, (rt.cudaError_t.cudaErrorMemoryAllocation, 0), "cudaMalloc")


def _fake_pycuda() -> Any:
    driver = types.ModuleType("pycuda.driver")
    driver.log = []

    class Allocation:
        def __init__(self, nbytes):
            self.data = bytearray(nbytes)

        def __int__(self):
            return id(self)

        def free(self):
            driver.log.append("free")

    class Context:
        def push(self):
            driver.log.append("push")

        def pop(self):
            driver.log.append("pop")

    class Device:
        def __init__(self, index):
            self.index = index

        @staticmethod
        def count():
            return 1

        def name(self):
            return "NVIDIA Tegra X1"

        def compute_capability(self):
            return (5, 3)

        def retain_primary_context(self):
            return Context()

    def htod(dest, src, stream):
        dest.data[:] = src.tobytes()

    def dtoh(dest, src, stream):
        dest[...] = np.frombuffer(bytes(src.data), dest.dtype).reshape(dest.shape)

    driver.init = lambda: None
    driver.Device = Device
    driver.Stream = lambda: types.SimpleNamespace(handle=7, synchronize=lambda: driver.log.append("sync"))
    driver.pagelocked_empty = np.empty
    driver.mem_alloc = Allocation
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = htod, dtoh
    return driver


def test_pycuda_flavour_is_preferred_and_pushes_the_primary_context(monkeypatch):
    driver = _fake_pycuda()
    package = types.ModuleType("pycuda")
    package.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    _install_cuda_python(monkeypatch, _fake_cudart())  # present too, but pycuda wins
    monkeypatch.setattr(_cuda, "_DEVICE", [])
    assert _cuda.device_info() == _cuda.DeviceInfo("pycuda", "NVIDIA Tegra X1", 5, 3)
    memory = _cuda.open_cuda()
    assert isinstance(memory, _cuda.PycudaMemory) and driver.log == ["push"]
    host = memory.host_empty((4,), np.dtype(np.int32))
    host[...] = [1, 2, 3, 4]
    address = memory.alloc(host.nbytes)
    memory.htod(address, host)
    back = memory.host_empty((4,), np.dtype(np.int32))
    memory.dtoh(back, address)
    np.testing.assert_array_equal(back, host)
    assert memory.stream_handle == 7
    memory.close()
    memory.close()
    assert driver.log == ["push", "sync", "free", "pop"]


# ---------------------------------------------------------------- real TensorRT (GPU only)


def _model(nodes, inputs, outputs, initializers=(), opsets=(("", 13),)) -> bytes:
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 7  # loadable by TensorRT 8.2's parser as well
    return model.SerializeToString()


def _weights() -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    return rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)


def matmul_add_relu() -> bytes:
    onnx = pytest.importorskip("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    w, b = _weights()
    return _model(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["s"]),
         helper.make_node("Relu", ["s"], ["y"])],
        [helper.make_tensor_value_info("x", tp.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", tp.FLOAT, ["N", 3])],
        [onnx.numpy_helper.from_array(w, "W"), onnx.numpy_helper.from_array(b, "B")],
    )  # fmt: skip


def _reference(x: np.ndarray) -> np.ndarray:
    w, b = _weights()
    return np.maximum(x @ w + b, 0)


@needs_tensorrt
@pytest.mark.parametrize("fp16, atol", [(False, 1e-4), (True, 5e-2)])
def test_real_build_matches_numpy_at_the_requested_batch(fp16, atol):
    engine, plan = TensorRTBackend().build(matmul_add_relu(), {"batch": 3, "fp16": fp16})
    try:
        assert engine.inputs == [TensorSpec("x", (3, 4), "float32")] and plan
        assert engine.info["precision"] == ("fp16" if fp16 else "fp32")
        x = np.random.RandomState(1).standard_normal((3, 4)).astype(np.float32)
        np.testing.assert_allclose(engine.infer({"x": x})[0], _reference(x), atol=atol, rtol=atol)
    finally:
        engine.close()
        engine.close()


@needs_tensorrt
def test_real_plan_round_trip_and_damaged_plans():
    backend, options = TensorRTBackend(), {"batch": 2, "fp16": False}
    engine, plan = backend.build(matmul_add_relu(), options)
    x = np.random.RandomState(2).standard_normal((2, 4)).astype(np.float32)
    try:
        loaded = backend.load_plan(plan, options)
        np.testing.assert_allclose(loaded.infer({"x": x})[0], engine.infer({"x": x})[0], atol=1e-6)
        loaded.close()
    finally:
        engine.close()
    assert isinstance(plan, bytes)
    for damaged in (b"\x00" * 64 + plan[64:], plan[: len(plan) // 2]):
        assert _code(backend.load_plan, damaged, options) == ErrorCode.BUILD_FAILED


@needs_tensorrt
def test_real_bad_models_are_rejected():
    onnx = pytest.importorskip("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    backend = TensorRTBackend()
    assert _code(backend.build, b"definitely not onnx", {}) == ErrorCode.INVALID_MODEL
    custom = _model(
        [helper.make_node("FrobnicateNotAnOp", ["x"], ["y"], domain="com.example")],
        [helper.make_tensor_value_info("x", tp.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", tp.FLOAT, [1, 4])],
        opsets=(("", 13), ("com.example", 1)),
    )
    assert _code(backend.build, custom, {}) in (ErrorCode.UNSUPPORTED_OP, ErrorCode.INVALID_MODEL)
