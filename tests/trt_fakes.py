"""Fake ``tensorrt`` and CUDA modules for ``test_tensorrt_backend``.

They stand in for the *libraries*, never for this package's code: a fake TensorRT in three API
generations (``fake_trt``: "10" tensor API only, "8.5" both, "8.2" bindings and
``max_workspace_size``), a fake engine computing y = 2x + 1 with per-generation execution
contexts, device memory as bytearrays (``FakeCuda``), and just enough cuda-python runtime and
pycuda driver to exercise both flavours of ``_cuda``. For per-layer profiling: ``IProfiler``,
``ProfilingVerbosity`` (absent with ``profiling=False``), ``execute_v2`` reporting ``FAKE_LAYERS``
to an attached profiler, and an engine inspector answering in TensorRT's JSON layer format.
"""

import ctypes
import enum
import json
import sys
import types
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge_evolver.backends import _cuda
from edge_evolver.backends.tensorrt_backend import TensorRTEngine

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

    profiling_verbosity = None  # the builder's default is LAYER_NAMES_ONLY

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


def fake_trt(api: str = "10", fp16_flag: bool = True, fast_fp16: Optional[bool] = True, profiling: bool = True) -> Any:
    """A tensorrt module: api "10" (tensor API only), "8.5" (both), "8.2" (bindings, max_workspace_size);
    ``profiling=False``: a binding without ProfilingVerbosity and the engine inspector."""
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
    trt.IProfiler = FakeIProfiler
    if profiling:
        trt.ProfilingVerbosity = fake_enum("ProfilingVerbosity", LAYER_NAMES_ONLY=0, NONE=1, DETAILED=2)
        trt.LayerInformationFormat = fake_enum("LayerInformationFormat", ONELINE=0, JSON=1)

    def nptype(trt_type):
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    trt.nptype = nptype
    trt.Builder = _builder_class(trt, api, fast_fp16)
    trt.OnnxParser = _parser_class(trt)
    trt.Runtime = _runtime_class(trt, api)
    trt.memory = None  # the FakeCuda that FakeEngine computes in
    return trt


def _builder_class(trt: Any, api: str, fast_fp16: Optional[bool]) -> Any:
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

    return Builder


def _parser_class(trt: Any) -> Any:
    """Parses b"onnx:a,b" into inputs a and b of shape (-1, 3); anything else fails."""

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

    return OnnxParser


def _runtime_class(trt: Any, api: str) -> Any:
    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, plan):
            if not bytes(plan).startswith(b"PLAN:"):
                self.logger.log(trt.ILogger.Severity.ERROR, "Serialization assertion magicTagRead == kMAGIC_TAG failed")
                return None
            return FakeEngine(trt, api, trt.memory)

    return Runtime


class FakeIProfiler:
    """Like the binding's IProfiler: subclasses must call ``IProfiler.__init__`` explicitly."""

    def __init__(self):
        self.initialised = True


# (name, LayerType, Metadata, ms per run) of the fake engine's layers, as TensorRT 10 names them.
FAKE_LAYERS = [
    ("Reformatting CopyNode for Input Tensor 0 to /fc/MatMul + /relu/Relu", "Reformat", "", 0.01),
    ("/fc/MatMul + /relu/Relu", "CaskGemmConvolution", "[ONNX Layer: /fc/MatMul]\x1f[ONNX Layer: /relu/Relu]", 0.05),
    ("PWN(/scale/Mul)", "PointWiseV2", "[ONNX Layer: /scale/Mul | /block (Block)]", 0.04),
]


class FakeInspector:
    def __init__(self, engine):
        self.engine = engine

    def get_layer_information(self, index, form):
        name, kind, metadata, _ = FAKE_LAYERS[index]
        if not self.engine.detailed:
            return json.dumps(name)  # LAYER_NAMES_ONLY: the name alone
        return json.dumps({"Name": name, "LayerType": kind, "Metadata": metadata, "Inputs": [], "Outputs": []})


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
        self.num_layers = len(FAKE_LAYERS)
        self.detailed = hasattr(trt, "ProfilingVerbosity")  # built DETAILED where the binding could

    def create_engine_inspector(self):
        if not hasattr(self.trt, "LayerInformationFormat"):
            raise AttributeError("no engine inspector in this binding")
        return FakeInspector(self)

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
        self.profiler = None

    def _result_shape(self):
        return self.engine.output_shape or self.shape

    def _run(self, x_address, y_address):
        memory = self.engine.memory
        x = memory.read(x_address, self.shape)
        memory.device[y_address][:] = (2 * x + 1).astype(np.float32).tobytes()
        if self.profiler is not None:  # TensorRT reports each layer once the run completed
            for name, _, _, ms in FAKE_LAYERS:
                self.profiler.report_layer_time(name, ms)
        return not self.fail

    def execute_v2(self, bindings):
        """Synchronous execution, in every generation (8.2 to 10)."""
        self.calls.append(("execute_v2", tuple(bindings)))
        return self._run(bindings[0], bindings[1])


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


def device(major=8, minor=7) -> _cuda.DeviceInfo:
    return _cuda.DeviceInfo("fake", "Orin", major, minor)


# ---------------------------------------------------------------- fake CUDA libraries


def block_modules(monkeypatch, *names):
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def fake_cudart() -> Any:
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


def install_cuda_python(monkeypatch, rt, layout="bindings"):
    cuda = types.ModuleType("cuda")
    if layout == "bindings":
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime, cuda.bindings = rt, bindings
        monkeypatch.setitem(sys.modules, "cuda.bindings", bindings)
        monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", rt)
    else:  # cuda-python < 12.6: from cuda import cudart
        block_modules(monkeypatch, "cuda.bindings", "cuda.bindings.runtime")
        cuda.cudart = rt
        monkeypatch.setitem(sys.modules, "cuda.cudart", rt)
    monkeypatch.setitem(sys.modules, "cuda", cuda)


def fake_pycuda() -> Any:
    """Just enough pycuda.driver for a Tegra X1; ``driver.log`` records context and memory calls."""
    driver = types.ModuleType("pycuda.driver")
    driver.log = []

    class Allocation:
        def __init__(self, nbytes):
            self.data = bytearray(nbytes)

        def __int__(self):
            return id(self)

        def free(self):
            driver.log.append("free")

    def htod(dest, src, stream):
        dest.data[:] = src.tobytes()

    def dtoh(dest, src, stream):
        dest[...] = np.frombuffer(bytes(src.data), dest.dtype).reshape(dest.shape)

    driver.init = lambda: None
    driver.Device = _pycuda_device_class(driver.log)
    driver.Stream = lambda: types.SimpleNamespace(handle=7, synchronize=lambda: driver.log.append("sync"))
    driver.pagelocked_empty = np.empty
    driver.mem_alloc = Allocation
    driver.memcpy_htod_async, driver.memcpy_dtoh_async = htod, dtoh
    return driver


def _pycuda_device_class(log: List[str]) -> Any:
    class Context:
        def push(self):
            log.append("push")

        def pop(self):
            log.append("pop")

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

    return Device
