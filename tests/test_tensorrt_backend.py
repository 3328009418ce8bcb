"""TensorRT backend: version-dependent branches against fake TensorRT / CUDA modules (run
everywhere), and real builds marked ``tensorrt`` (skipped without TensorRT and a GPU).

The fakes (in ``trt_fakes``) stand in for the *libraries*, never for this package's code: each
test drives the backend's own functions and classes and checks which TensorRT calls they made.
"""

import sys
import types
from typing import List, Tuple

import numpy as np
import pytest

from edge_evolver.backends import _cuda, _trt_profile, known_backends, resolve_backend
from edge_evolver.backends import tensorrt_backend as tb
from edge_evolver.backends.profiling import ProfileSettings, RawLayer, RawProfile
from edge_evolver.backends.tensorrt_backend import TensorRTBackend, TensorRTEngine
from edge_evolver.backends.tensors import TensorSpec
from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.measure.profile import entries
from edge_evolver.onnxgraph import OnnxNode

from .trt_fakes import (
    FAKE_LAYERS,
    FakeConfig,
    FakeConfig82,
    FakeCuda,
    FakeEngine,
    FakeNetwork,
    FakeTensor,
    block_modules,
    device,
    fake_cudart,
    fake_pycuda,
    fake_trt,
    install_cuda_python,
    make_engine,
)

TRT_OK, TRT_REASON = TensorRTBackend.available()
MIB = 1024 * 1024


def needs_tensorrt(test):
    skip = pytest.mark.skipif(not TRT_OK, reason=f"needs TensorRT and a CUDA GPU: {TRT_REASON}")
    return pytest.mark.tensorrt(skip(test))


def _code(call, *args, **kwargs) -> str:
    with pytest.raises(EdgeError) as info:
        call(*args, **kwargs)
    return info.value.code


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


# ---------------------------------------------------------------- per-layer profiling (fakes; not run on real TensorRT)

PASS = ProfileSettings(warmup_runs=2, min_runs=5, min_seconds=0.0)
# The ONNX graph FAKE_LAYERS came from.
FAKE_GRAPH = [OnnxNode("/fc/MatMul", "MatMul", ("x", "W"), ("/fc/MatMul_output_0",)),
              OnnxNode("/relu/Relu", "Relu", ("/fc/MatMul_output_0",), ("/relu/Relu_output_0",)),
              OnnxNode("/scale/Mul", "Mul", ("/relu/Relu_output_0", "s"), ("y",))]


@pytest.mark.parametrize("api, profiling", [("10", True), ("8.5", True), ("8.2", False)])
def test_build_asks_for_detailed_layer_information_where_the_binding_has_it(api, profiling):
    trt = fake_trt(api, profiling=profiling)
    tb.build_plan(trt, b"onnx:x", tb.parse_options({}), device())
    verbosity = trt.built[-1].config.profiling_verbosity
    assert verbosity == (trt.ProfilingVerbosity.DETAILED if profiling else None)  # else silently skipped


@pytest.mark.parametrize("api", ["10", "8.5", "8.2"])
def test_profile_averages_synchronous_runs_after_the_warm_up(api):
    engine, memory, cuda_engine = make_engine(api)
    context = engine._context
    raw = engine.profile({"x": np.ones((2, 3), np.float32)}, PASS)
    assert raw.runs == 5 and context.profiler is None  # detached after the pass
    assert isinstance(engine._profiler, cuda_engine.trt.IProfiler) and engine._profiler.initialised
    executed = [call for call in context.calls if call[0] == "execute_v2"]
    assert len(executed) == 2 + 5 and {call[1] for call in executed} == {(engine._in[0].device,
                                                                          engine._out[0].device)}
    assert [layer.name for layer in raw.layers] == [name for name, _, _, _ in FAKE_LAYERS]
    for layer, (_, kind, _, ms) in zip(raw.layers, FAKE_LAYERS):
        assert layer.op == kind and layer.total_ms / raw.runs == pytest.approx(ms)  # warm-up not counted
    assert [layer.origin for layer in raw.layers] == [None, ("/fc/MatMul", "/relu/Relu"), ("/scale/Mul",)]
    assert [e.nodes for e in entries(raw, FAKE_GRAPH)] == [[], ["/fc/MatMul", "/relu/Relu"], ["/scale/Mul"]]
    np.testing.assert_array_equal(engine.infer({"x": np.ones((2, 3), np.float32)})[0], np.full((2, 3), 3.0))
    engine.close()
    assert engine._profiler is None and memory.closed == 1


def test_profile_of_an_engine_with_names_only_matches_names_to_the_graph():
    engine, _, cuda_engine = make_engine("10")
    cuda_engine.detailed = False  # built before DETAILED, or cached from an older build
    raw = engine.profile({"x": np.ones((2, 3), np.float32)}, PASS)
    assert [(layer.op, layer.origin) for layer in raw.layers] == [("", None)] * 3
    assert [e.nodes for e in entries(raw, FAKE_GRAPH)] == [[], ["/fc/MatMul", "/relu/Relu"], ["/scale/Mul"]]
    trt = fake_trt("10", profiling=False)  # no inspector at all
    assert _trt_profile.layer_details(trt, FakeEngine(trt, "10", None)) == {}


def test_profile_without_execute_v2_enqueues_and_synchronises(monkeypatch):
    engine, _, _ = make_engine("10")
    monkeypatch.setattr(type(engine._context), "execute_v2", None)
    raw = engine.profile({"x": np.ones((2, 3), np.float32)}, PASS)
    assert raw.runs == 5 and [c[0] for c in engine._context.calls].count("v3") == 1 + 2 + 5


def test_profile_failures_are_edge_errors_and_detach_the_profiler():
    engine, _, _ = make_engine("10")
    engine._context.execute_v2 = lambda bindings: False  # the ordinary run works, the profiled one fails
    assert _code(engine.profile, {"x": np.ones((2, 3), np.float32)}, PASS) == ErrorCode.INFERENCE_FAILED
    assert engine._context.profiler is None
    silent = types.SimpleNamespace(execute_v2=lambda bindings: True, profiler=None)
    profiler = _trt_profile.make_profiler(fake_trt())
    with pytest.raises(EdgeError) as info:  # a run that reports no layers
        _trt_profile.profile_context(fake_trt(), object(), silent, lambda: None, profiler, PASS)
    assert info.value.code == ErrorCode.INTERNAL and silent.profiler is None
    engine.close()
    assert _code(engine.profile, {"x": np.ones((2, 3), np.float32)}, PASS) == ErrorCode.INFERENCE_FAILED


def test_layer_information_and_metadata_parsing():
    parse = _trt_profile.parse_layer_info
    assert parse('"conv1 + relu1"') == ("conv1 + relu1", ("", None))
    assert parse('{"Name": "a", "LayerType": "Reformat", "Metadata": ""}') == ("a", ("Reformat", None))
    assert parse('{"Name": "b", "LayerType": "CaskConvolution"}') == ("b", ("CaskConvolution", None))
    for bad in ("not json", "[1]", '{"LayerType": "x"}', '{"Name": 3}'):
        assert parse(bad) is None
    text = ("[ONNX Layer: /a/Conv]\x1f[ONNX Layer: /b/Relu | /blk (Block) | /m (Model)]\x1f junk "
            "\x1f[ONNX Layer: /a/Conv]")
    assert _trt_profile.metadata_nodes(text) == ("/a/Conv", "/b/Relu")
    reformat = RawProfile([RawLayer("x", "Reformat", 1.0, ("/fc/MatMul",))], 1)
    assert entries(reformat, FAKE_GRAPH)[0].nodes == []  # a conversion computes no node, whatever it names


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


def test_no_cuda_library_is_unavailable(monkeypatch):
    block_modules(monkeypatch, "pycuda", "pycuda.driver", "cuda", "cuda.bindings", "cuda.bindings.runtime")
    with pytest.raises(EdgeError) as info:
        _cuda.import_flavour()
    assert info.value.code == ErrorCode.BACKEND_UNAVAILABLE and "pip install pycuda" in info.value.message


@pytest.mark.parametrize("layout", ["bindings", "cudart"])
def test_cuda_python_flavour_when_pycuda_is_missing(monkeypatch, layout):
    block_modules(monkeypatch, "pycuda", "pycuda.driver")
    rt = fake_cudart()
    install_cuda_python(monkeypatch, rt, layout)
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
    rt = fake_cudart()
    with pytest.raises(RuntimeError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        _cuda.cudart_call(rt, (rt.cudaError_t.cudaErrorMemoryAllocation, 0), "cudaMalloc")


def test_pycuda_flavour_is_preferred_and_pushes_the_primary_context(monkeypatch):
    driver = fake_pycuda()
    package = types.ModuleType("pycuda")
    package.driver = driver
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    install_cuda_python(monkeypatch, fake_cudart())  # present too, but pycuda wins
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
