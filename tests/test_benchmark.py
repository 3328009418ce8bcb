"""The measurement core: statistics, the timing loop (with a fake clock), shapes and synthetic
inputs, the backend registry, the ONNX Runtime backend and measure_model's error codes."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest

from edge_evolver.backends import AUTO_ORDER, available_backends, get_backend, resolve_backend
from edge_evolver.backends.onnxruntime_backend import (
    OnnxRuntimeBackend,
    classify_load_error,
    clean_message,
    ort_dtype,
    usable_cores,
)
from edge_evolver.backends.tensors import MAX_ELEMENTS, TensorSpec, resolve_shape
from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.measure.benchmark import RESULT_KEYS, BenchSettings, run_benchmark, summarize, throughput
from edge_evolver.measure.inputs import synthesize_inputs
from edge_evolver.measure.pipeline import ENGINE_KEYS, POWER_KEYS, measure_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

QUICK = BenchSettings(warmup_s=0.0, min_iterations=5, min_seconds=0.0, max_seconds=5.0)
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


# The codes that blame the model itself (docs/model-safety.md).
MODEL_REJECTION_CODES = (ErrorCode.INVALID_MODEL, ErrorCode.UNSUPPORTED_OP, ErrorCode.BAD_SHAPE,
                         ErrorCode.EXTERNAL_DATA, ErrorCode.TENSOR_SIZE_MISMATCH, ErrorCode.OPSET_NOT_ALLOWED)


# ---------------------------------------------------------------- model builders
def _model_bytes(nodes, inputs, outputs, initializers=(), opsets=(("", 13),)) -> bytes:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 7  # loadable by old runtimes (ORT 1.10 on JetPack) as well
    return model.SerializeToString()


def matmul_add_model(w: np.ndarray, b: np.ndarray, dims=("N", 4)) -> bytes:
    return _model_bytes(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], "M"])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )


def conv_model(w: np.ndarray) -> bytes:
    return _model_bytes(
        [helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "C", 5, 5])],
        [numpy_helper.from_array(w, "W")],
    )


def unary_model(op: str, elem_type: int, domain: str = "", opsets=(("", 13),)) -> bytes:
    return _model_bytes(
        [helper.make_node(op, ["x"], ["y"], domain=domain)],
        [helper.make_tensor_value_info("x", elem_type, [1, 4])],
        [helper.make_tensor_value_info("y", elem_type, [1, 4])],
        opsets=opsets,
    )


def numpy_conv(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Reference 2-D convolution (stride 1, padding 1, NCHW) for checking the runtime."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out_h, out_w = x.shape[2], x.shape[3]
    y = np.zeros((x.shape[0], w.shape[0], out_h, out_w), dtype=np.float64)
    for i in range(out_h):
        for j in range(out_w):
            patch = padded[:, :, i : i + w.shape[2], j : j + w.shape[3]]
            y[:, :, i, j] = np.einsum("nchw,kchw->nk", patch, w)
    return y


@pytest.fixture
def weights():
    rng = np.random.RandomState(1)
    return rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal(3).astype(np.float32)


# ---------------------------------------------------------------- statistics and timing


class FakeClock:
    """Time advances only when the fake workload runs, by the next duration in ``steps``."""

    def __init__(self, steps: List[float]) -> None:
        self.now = 100.0
        self.steps = list(steps)
        self.calls = 0

    def __call__(self) -> float:
        return self.now

    def infer(self) -> None:
        self.now += self.steps[self.calls % len(self.steps)]
        self.calls += 1


def test_summarize_known_samples():
    stats = summarize([float(v) for v in range(1, 101)])
    # Linear interpolation at rank (n - 1) * p / 100 over 1..100.
    assert stats == pytest.approx(
        {"mean": 50.5, "p50": 50.5, "p90": 90.1, "p99": 99.01, "min": 1.0, "max": 100.0}
    )
    assert summarize([3.0, 1.0, 2.0])["p50"] == 2.0
    assert summarize([7.0]) == {k: 7.0 for k in ("mean", "p50", "p90", "p99", "min", "max")}
    assert all(type(v) is float for v in stats.values())
    with pytest.raises(ValueError):
        summarize([])


def test_warmup_and_min_iterations_with_fake_clock():
    clock = FakeClock([1 / 64])  # exact in binary, so the counts below are exact
    settings = BenchSettings(batch=4, warmup_s=1 / 16, min_iterations=10, min_seconds=0.0)
    result = run_benchmark(clock.infer, settings, clock=clock)
    assert result.warmup_iterations == 4
    assert result.iterations == 10 and len(result.latencies_ms) == 10
    assert clock.calls == 14  # warm-up runs are executed but not kept
    assert result.seconds == pytest.approx(10 / 64)
    assert result.latencies_ms == pytest.approx([1000 / 64] * 10)
    assert result.fps == pytest.approx(10 * 4 / (10 / 64))  # inferences = iterations * batch
    assert result.p50 == pytest.approx(1000 / 64)


def test_min_seconds_extends_the_window():
    clock = FakeClock([1 / 8])
    result = run_benchmark(
        clock.infer, BenchSettings(warmup_s=0.0, min_iterations=2, min_seconds=1.0), clock=clock
    )
    assert result.warmup_iterations == 0
    assert result.iterations == 8
    assert result.seconds == pytest.approx(1.0)


def test_max_seconds_stops_the_window():
    clock = FakeClock([1 / 4])
    settings = BenchSettings(warmup_s=0.0, min_iterations=1000, min_seconds=1.0, max_seconds=2.0)
    result = run_benchmark(clock.infer, settings, clock=clock)
    assert result.iterations == 8
    assert result.seconds == pytest.approx(2.0)


def test_variable_latencies_are_kept_raw():
    clock = FakeClock([0.001, 0.003, 0.002, 0.010])
    result = run_benchmark(
        clock.infer, BenchSettings(warmup_s=0.0, min_iterations=4, min_seconds=0.0), clock=clock
    )
    assert result.latencies_ms == pytest.approx([1.0, 3.0, 2.0, 10.0])
    assert (result.min, result.max, result.mean) == pytest.approx((1.0, 10.0, 4.0))
    assert result.fps == pytest.approx(4 / 0.016)


def test_result_dict_keys_and_samples():
    clock = FakeClock([0.002])
    result = run_benchmark(
        clock.infer, BenchSettings(warmup_s=0.0, min_iterations=3, min_seconds=0.0), clock=clock
    )
    assert set(result.to_dict()) == set(RESULT_KEYS)
    with_samples = result.to_dict(include_samples=True)
    assert with_samples["latencies_ms"] == pytest.approx([2.0, 2.0, 2.0])
    json.dumps(with_samples)


def test_throughput_and_settings_validation():
    assert throughput(200, 8, 2.0) == 800.0
    assert throughput(1, 1, 0.0) == 0.0
    for bad in (BenchSettings(batch=0), BenchSettings(min_iterations=0), BenchSettings(max_seconds=0.5)):
        with pytest.raises(EdgeError) as info:
            run_benchmark(lambda: None, bad)
        assert info.value.code == ErrorCode.BAD_INPUT


# ---------------------------------------------------------------- shapes and inputs


def test_resolve_shape_batch_and_overrides():
    assert resolve_shape(TensorSpec("x", ("N", 3, 8, 8), "float32"), 2) == (2, 3, 8, 8)
    assert resolve_shape(TensorSpec("x", (None, 3), "float32"), 5) == (5, 3)
    assert resolve_shape(TensorSpec("x", (-1, 3), "float32"), 5) == (5, 3)
    assert resolve_shape(TensorSpec("x", (1, 3), "float32"), 1) == (1, 3)
    assert resolve_shape(TensorSpec("s", (), "float32"), 3) == ()
    seq = TensorSpec("tokens", ("batch", "seq"), "int64")
    assert resolve_shape(seq, 2, {"seq": 7}) == (2, 7)
    assert resolve_shape(seq, 2, {"tokens": [3, 9]}) == (3, 9)


@pytest.mark.parametrize(
    "spec, batch, fragment",
    [
        (TensorSpec("tokens", ("batch", "seq"), "int64"), 1, "'seq' at axis 1"),
        (TensorSpec("img", (1, 3, None, 8), "float32"), 1, "unknown at axis 2"),
        (TensorSpec("img", (1, 0, 8), "float32"), 1, "dimension <= 0"),
        (TensorSpec("img", ("N", 1024, 1024, 1024), "float32"), 1, "above the limit"),
        (TensorSpec("img", (8, 3), "float32"), 1, "fixed batch dimension of 8"),
        (TensorSpec("img", ("N", 3), "float32"), 0, "batch must be"),
    ],
)
def test_resolve_shape_errors(spec, batch, fragment):
    with pytest.raises(EdgeError) as info:
        resolve_shape(spec, batch)
    assert info.value.code == ErrorCode.BAD_SHAPE
    assert fragment in info.value.message
    assert f"'{spec.name}'" in info.value.message or "batch must" in fragment
    assert MAX_ELEMENTS == 256 * 1024 * 1024


def test_synthesize_inputs_is_deterministic_and_typed():
    specs = [
        TensorSpec("f", ("N", 3), "float32"),
        TensorSpec("h", ("N", 3), "float16"),
        TensorSpec("i", ("N", 5), "int64"),
        TensorSpec("u", ("N", 5), "uint8"),
        TensorSpec("b", ("N", 5), "bool"),
    ]
    first = synthesize_inputs(specs, 2, seed=3)
    again = synthesize_inputs(specs, 2, seed=3)
    other = synthesize_inputs(specs, 2, seed=4)
    for spec in specs:
        assert first[spec.name].dtype == np.dtype(spec.dtype)
        assert first[spec.name].shape[0] == 2
        np.testing.assert_array_equal(first[spec.name], again[spec.name])
    assert not np.array_equal(first["f"], other["f"])
    assert first["i"].min() >= 0 and first["i"].max() < 4
    with pytest.raises(EdgeError) as info:
        synthesize_inputs([TensorSpec("s", (1,), "string")], 1)
    assert info.value.code == ErrorCode.BAD_INPUT


# ---------------------------------------------------------------- registry


def test_unknown_backend_is_a_bad_input():
    with pytest.raises(EdgeError) as info:
        get_backend("nope")
    assert info.value.code == ErrorCode.BAD_INPUT
    assert "unknown backend 'nope'; known:" in info.value.message and "onnxruntime" in info.value.message


def test_auto_resolution_and_unavailable(monkeypatch):
    assert AUTO_ORDER[0] == "tensorrt"  # preferred, skipped while unregistered
    assert available_backends()["onnxruntime"][0] is True
    assert resolve_backend("auto").name == "onnxruntime"
    monkeypatch.setattr(
        OnnxRuntimeBackend, "available", classmethod(lambda cls: (False, "not on this board"))
    )
    for name in ("auto", "onnxruntime"):
        with pytest.raises(EdgeError) as info:
            resolve_backend(name)
        assert info.value.code == ErrorCode.BACKEND_UNAVAILABLE
        assert "not on this board" in info.value.message


def test_registry_does_not_import_runtimes():
    code = (
        "import sys, edge_evolver.backends, edge_evolver.measure.pipeline, edge_evolver.cli.app\n"
        "edge_evolver.backends.get_backend('onnxruntime')\n"
        "bad = [m for m in ('onnxruntime', 'tensorrt', 'pycuda', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- ONNX Runtime backend


def test_onnxruntime_matmul_add_matches_numpy(weights):
    w, b = weights
    threads = min(2, usable_cores())  # a job may not ask for more threads than the board's cores
    engine = get_backend("onnxruntime").load(matmul_add_model(w, b), {"threads": threads})
    assert engine.inputs == [TensorSpec("x", ("N", 4), "float32")]
    assert engine.info["threads"] == threads and engine.info["providers"][0] == "CPUExecutionProvider"
    x = np.random.RandomState(0).standard_normal((3, 4)).astype(np.float32)
    (y,) = engine.infer({"x": x})
    np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)
    engine.close()
    with pytest.raises(EdgeError) as info:
        engine.infer({"x": x})
    assert info.value.code == ErrorCode.INFERENCE_FAILED


def test_onnxruntime_conv_matches_numpy():
    w = np.random.RandomState(2).standard_normal((3, 2, 3, 3)).astype(np.float32)
    x = np.random.RandomState(3).standard_normal((1, 2, 5, 5)).astype(np.float32)
    engine = get_backend("onnxruntime").load(conv_model(w))
    (y,) = engine.infer({"x": x})
    np.testing.assert_allclose(y, numpy_conv(x, w), rtol=1e-4, atol=1e-4)


def test_onnxruntime_options_and_describe(weights):
    backend = get_backend("onnxruntime")
    model = matmul_add_model(*weights)
    for options, code in (
        ({"threads": 0}, ErrorCode.BAD_INPUT),
        ({"providers": ["NoSuchExecutionProvider"]}, ErrorCode.BACKEND_UNAVAILABLE),
    ):
        with pytest.raises(EdgeError) as info:
            backend.load(model, options)
        assert info.value.code == code
    described = backend.describe()
    assert described["name"] == "onnxruntime" and described["available"] is True
    assert "CPUExecutionProvider" in described["available_providers"] and described["default_threads"] == 1


def test_ort_type_and_error_mapping():
    assert ort_dtype("tensor(float)") == "float32"
    assert ort_dtype("tensor(float16)") == "float16"
    assert ort_dtype("tensor(int64)") == "int64"
    assert ort_dtype("tensor(bool)") == "bool"
    assert ort_dtype("seq(tensor(float))") == "seq(tensor(float))"
    prefix = "[ONNXRuntimeError] : {} : "
    cases = {
        prefix.format("9 : NOT_IMPLEMENTED")
        + "Could not find an implementation for Erf(13)": "UNSUPPORTED_OP",
        prefix.format("1 : FAIL")
        + "Fatal error: com.x:Foo(-1) is not a registered function/op": "UNSUPPORTED_OP",
        prefix.format("7 : INVALID_PROTOBUF")
        + "Load model from memory failed:Protobuf parsing failed.": "INVALID_MODEL",
        prefix.format("10 : INVALID_GRAPH") + "This is an invalid model. Type Error: x": "INVALID_MODEL",
        prefix.format("6 : RUNTIME_EXCEPTION") + "out of arena": "BUILD_FAILED",
    }
    for text, code in cases.items():
        assert classify_load_error(RuntimeError(text)).code == code
    noisy = RuntimeError(
        "[ONNXRuntimeError] : 1 : FAIL : /src/onnxruntime/core/graph/model.cc:256 "
        "onnxruntime::Model::Model(onnx::ModelProto&&, const Logger&) Unsupported model IR version: 99"
    )
    assert clean_message(noisy) == "Unsupported model IR version: 99 (FAIL)"
    assert classify_load_error(noisy).code == ErrorCode.UNSUPPORTED_OP


# ---------------------------------------------------------------- measure_model


def test_measure_model_ok(weights):
    w, b = weights
    model = matmul_add_model(w, b)
    result = measure_model(model, settings=QUICK, seed=5)
    assert result.status == "ok", result.message
    assert result.code is None and result.backend == "onnxruntime" and result.threads == 1
    assert result.model_sha256 == hashlib.sha256(model).hexdigest()
    assert result.bench is not None and result.bench.iterations >= 5 and result.bench.fps > 0
    x = synthesize_inputs([TensorSpec("x", ("N", 4), "float32")], 1, seed=5)["x"]
    np.testing.assert_allclose(result.outputs[0], x @ w + b, rtol=1e-5, atol=1e-5)
    flat = result.to_dict()
    assert set(RESULT_KEYS) | {
        "backend",
        "backend_version",
        "threads",
        "model_sha256",
        "status",
        "code",
        "message",
        "load_seconds",
        "agreement",
        "profile",  # the per-layer pass is on by default
        "profile_runs",
    } | set(POWER_KEYS) | set(ENGINE_KEYS) == set(flat)
    assert flat["power_w_mean"] is None and flat["power_reason"]  # no meter given: null with a reason
    assert flat["profile_runs"] >= 20 and abs(sum(e["share"] for e in flat["profile"]) - 1) < 1e-9
    json.loads(json.dumps(flat))


def test_measure_model_with_explicit_inputs(weights):
    w, b = weights
    x = np.ones((2, 4), dtype=np.float32)
    result = measure_model(matmul_add_model(w, b), "onnxruntime", QUICK, inputs={"x": x})
    assert result.status == "ok"
    np.testing.assert_allclose(result.outputs[0], x @ w + b, rtol=1e-5)
    wrong = measure_model(matmul_add_model(w, b), "onnxruntime", QUICK, inputs={"nope": x})
    assert (wrong.status, wrong.code) == ("error", ErrorCode.BAD_INPUT)


@pytest.mark.parametrize(
    "model, codes",
    [
        (b"not onnx", {ErrorCode.INVALID_MODEL}),
        (b"", {ErrorCode.INVALID_MODEL}),
        # An op nobody implements: the model is rejected, as unsupported or invalid.
        (unary_model("FooBar", TensorProto.FLOAT), set(MODEL_REJECTION_CODES) - {ErrorCode.BAD_SHAPE}),
        (
            unary_model("Foo", TensorProto.FLOAT, "com.example", (("", 13), ("com.example", 1))),
            set(MODEL_REJECTION_CODES) - {ErrorCode.BAD_SHAPE},
        ),
        (
            matmul_add_model(np.ones((4, 3), np.float32), np.ones(3, np.float32), ("N", "K")),
            {ErrorCode.BAD_SHAPE},
        ),
    ],
    ids=["not-onnx", "empty", "unknown-op", "unknown-domain", "dynamic-dim"],
)
def test_measure_model_error_codes(model, codes):
    result = measure_model(model, settings=QUICK)
    assert result.status == "error" and result.code in codes, (result.code, result.message)
    assert result.bench is None and result.message
    assert result.to_dict()["fps"] is None


def test_measure_model_kernel_missing_is_unsupported():
    result = measure_model(unary_model("Erf", TensorProto.DOUBLE), settings=QUICK)
    if result.ok:
        pytest.skip("this onnxruntime has a float64 Erf kernel")
    assert result.code == ErrorCode.UNSUPPORTED_OP, result.message


def test_measure_model_reports_unknown_backend_and_internal_errors(weights, monkeypatch):
    model = matmul_add_model(*weights)
    assert measure_model(model, backend="nope").code == ErrorCode.BAD_INPUT

    def boom(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr("edge_evolver.measure.pipeline.run_benchmark", boom)
    result = measure_model(model, settings=QUICK)
    assert (result.status, result.code) == ("error", ErrorCode.INTERNAL)
    assert "kaboom" in result.message


def test_model_zoo_graph_measures_ok():
    path = LIGHT_DIR / "light_squeezenet.onnx"
    if not path.exists():
        pytest.skip("this onnx wheel ships no light model-zoo graphs")
    model = path.read_bytes()
    engine = get_backend("onnxruntime").load(model)
    # Old-style zoo graphs list every weight as a graph input; only the data input is real.
    assert [spec.name for spec in engine.inputs] == ["data_0"]
    result = measure_model(model, settings=BenchSettings(warmup_s=0.0, min_iterations=3, min_seconds=0.0))
    assert result.status == "ok", result.message
    assert result.bench.iterations >= 3 and result.bench.fps > 0
    assert result.outputs[0].shape[:2] == (1, 1000)


def test_job_samples_at_another_batch_are_for_agreement_only(weights):
    from edge_evolver.measure.pipeline import MeasureRequest

    w, b = weights
    x = np.random.RandomState(3).standard_normal((6, 4)).astype(np.float32)
    request = MeasureRequest(backend="onnxruntime", settings=QUICK, inputs={"x": x}, reference=[x @ w + b])
    result = measure_model(matmul_add_model(w, b), request=request)
    assert result.ok, result.message
    assert result.bench.batch == 1 and result.outputs[0].shape == (6, 3)
    assert result.agreement["max_abs_error"] < 1e-4 and result.agreement["outputs_compared"] == 1
    odd = MeasureRequest(backend="onnxruntime", settings=BenchSettings(batch=4, min_iterations=5, min_seconds=0,
                                                                      warmup_s=0), inputs={"x": x})
    assert measure_model(matmul_add_model(w, b), request=odd).code == ErrorCode.BAD_INPUT
