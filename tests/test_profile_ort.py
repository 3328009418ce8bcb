"""ONNX Runtime's real per-kernel profiles, mapped to the nodes of the model as sent.

Models built with onnx.helper (a residual block, fp32 and fp16) need onnx and onnxruntime, which the
oldest-library set has; the project's own exported models (vgg-small, resnet-small, det-small, mlp, fp16
and fp32) need torch and host_trainer and skip without them.
"""

import os
import tempfile
from typing import List

import numpy as np
import pytest

from edge_evolver.backends.profiling import ProfileSettings
from edge_evolver.errors import ErrorCode
from edge_evolver.measure.benchmark import BenchSettings
from edge_evolver.onnxgraph import read_nodes
from edge_evolver.protocol import PROFILE_FIELDS, LayerTime

pytest.importorskip("onnxruntime")
QUICK = BenchSettings(min_iterations=5, min_seconds=0.0, warmup_s=0.0)
FAST_PASS = ProfileSettings(warmup_runs=1, min_runs=5, min_seconds=0.0)


def _residual_model(fp16: bool = False) -> bytes:
    """Named like torch's exporter: Conv+BN+Relu, Conv+BN, residual Add+Relu with a projection
    shortcut, pooling, Gemm+Relu, Gemm; fp16 weights and compute with Casts at the ends when asked."""
    onnx = pytest.importorskip("onnx")
    helper, numpy_helper, tp = onnx.helper, onnx.numpy_helper, onnx.TensorProto
    dtype, elem = (np.float16, tp.FLOAT16) if fp16 else (np.float32, tp.FLOAT)
    rng = np.random.RandomState(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.2).astype(dtype), name)

    inits = [weight("W1", 8, 3, 3, 3), weight("W2", 8, 8, 3, 3), weight("Ws", 8, 3, 1, 1), weight("G", 16, 8),
             weight("Gb", 16), weight("H", 10, 16)]
    for bn in ("bn1", "bn2"):
        inits += [weight(bn + "_s", 8), weight(bn + "_b", 8), weight(bn + "_m", 8)]
        inits.append(numpy_helper.from_array(np.ones(8, dtype), bn + "_v"))
    make = helper.make_node
    nodes = [make("Cast", ["input"], ["x"], name="input_cast", to=elem),
             make("Conv", ["x", "W1"], ["/b/conv1/Conv_output_0"], name="/b/conv1/Conv", pads=[1, 1, 1, 1]),
             make("BatchNormalization", ["/b/conv1/Conv_output_0", "bn1_s", "bn1_b", "bn1_m", "bn1_v"],
                  ["/b/bn1/BN_output_0"], name="/b/bn1/BatchNormalization"),
             make("Relu", ["/b/bn1/BN_output_0"], ["/b/Relu_output_0"], name="/b/Relu"),
             make("Conv", ["/b/Relu_output_0", "W2"], ["/b/conv2/Conv_output_0"], name="/b/conv2/Conv",
                  pads=[1, 1, 1, 1]),
             make("BatchNormalization", ["/b/conv2/Conv_output_0", "bn2_s", "bn2_b", "bn2_m", "bn2_v"],
                  ["/b/bn2/BN_output_0"], name="/b/bn2/BatchNormalization"),
             make("Conv", ["x", "Ws"], ["/b/short/Conv_output_0"], name="/b/short/Conv"),
             make("Add", ["/b/bn2/BN_output_0", "/b/short/Conv_output_0"], ["/b/Add_output_0"], name="/b/Add"),
             make("Relu", ["/b/Add_output_0"], ["/b/Relu_1_output_0"], name="/b/Relu_1"),
             make("GlobalAveragePool", ["/b/Relu_1_output_0"], ["/pool_output_0"], name="/pool/GlobalAveragePool"),
             make("Flatten", ["/pool_output_0"], ["/Flatten_output_0"], name="/Flatten"),
             make("Gemm", ["/Flatten_output_0", "G", "Gb"], ["/fc1/Gemm_output_0"], name="/fc1/Gemm", transB=1),
             make("Relu", ["/fc1/Gemm_output_0"], ["/Relu_output_0"], name="/Relu"),
             make("Gemm", ["/Relu_output_0", "H"], ["/fc2/Gemm_output_0"], name="/fc2/Gemm", transB=1),
             make("Cast", ["/fc2/Gemm_output_0"], ["logits"], name="/fc2/Gemm_cast", to=tp.FLOAT)]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("input", tp.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", tp.FLOAT, ["N", 10])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    return model.SerializeToString()


def _ort_profile(model: bytes) -> List[LayerTime]:
    from edge_evolver.backends.onnxruntime_backend import OnnxRuntimeBackend
    from edge_evolver.measure.inputs import synthesize_inputs
    from edge_evolver.measure.profile import finish_profile

    engine = OnnxRuntimeBackend().load(model, {"batch": 1})
    try:
        raw = engine.profile(synthesize_inputs(engine.inputs, 1, seed=0), FAST_PASS)
    finally:
        engine.close()
    assert raw.runs >= FAST_PASS.min_runs
    return finish_profile(raw, model)


def assert_each_conv_and_gemm_in_exactly_one_entry(model: bytes, profile: List[LayerTime]) -> None:
    listed = [name for entry in profile for name in entry.nodes]
    assert len(listed) == len(set(listed)), "a node in two entries"
    wanted = [node.name for node in read_nodes(model) if node.op_type in ("Conv", "Gemm")]
    assert wanted and [name for name in wanted if name not in listed] == [], [(e.name, e.nodes) for e in profile]
    assert abs(sum(entry.share for entry in profile) - 1.0) < 1e-9 and all(e.ms >= 0 for e in profile)


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_a_residual_model_maps_every_conv_and_gemm_once(fp16):
    model = _residual_model(fp16)
    assert_each_conv_and_gemm_in_exactly_one_entry(model, _ort_profile(model))


def test_measure_model_profiles_after_the_window_and_cleans_up(tmp_path, monkeypatch):
    from edge_evolver.measure.engine_cache import EngineCache
    from edge_evolver.measure.pipeline import MeasureRequest, measure_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.mkdir(tmp_path / "tmp")
    model, cache = _residual_model(), EngineCache(str(tmp_path / "cache"))
    for hit in (False, True):  # built, then from the cached optimised plan: the same mapping
        result = measure_model(model, request=MeasureRequest(settings=QUICK, cache=cache, profile=FAST_PASS))
        assert result.ok and result.cache_hit is hit, result.message
        flat = result.to_dict()
        assert flat["profile_runs"] >= 5 and "profile_error" not in flat
        assert_each_conv_and_gemm_in_exactly_one_entry(model, [LayerTime.from_dict(e) for e in flat["profile"]])
    assert os.listdir(tmp_path / "tmp") == []  # the profile file and its directory are gone


def test_profile_off_bad_option_and_failure_never_fail_the_measurement(monkeypatch):
    from edge_evolver.backends.onnxruntime_backend import OnnxRuntimeEngine
    from edge_evolver.measure.pipeline import measure_model

    model = _residual_model()
    off = measure_model(model, settings=QUICK, options={"profile": False}).to_dict()
    assert off["status"] == "ok" and not set(PROFILE_FIELDS) & set(off)
    bad = measure_model(model, settings=QUICK, options={"profile": "yes"})
    assert (bad.status, bad.code) == ("error", ErrorCode.BAD_INPUT) and "profile" in bad.message

    def broken(self, feeds, settings):
        raise RuntimeError("profiler\nexploded")

    monkeypatch.setattr(OnnxRuntimeEngine, "profile", broken)
    failed = measure_model(model, settings=QUICK).to_dict()
    assert failed["status"] == "ok" and failed["fps"] > 0
    assert failed["profile_error"] == "RuntimeError: profiler exploded" and "profile" not in failed


# ---------------------------------------------------------------- the project's own exported models (torch)


EXPORTED = [("vgg-small", (1, 32, 32), "logits"), ("resnet-small", (1, 32, 32), "logits"),
            ("det-small", (3, 128, 128), "heatmap"), ("mlp", (1, 32, 32), "logits")]


@pytest.fixture(scope="module")
def exported():
    pytest.importorskip("torch", reason="exports the project's models with torch (not in the oldest-library set)")
    from host_trainer.method.export import to_onnx_bytes
    from host_trainer.models.registry import build_model

    cache = {}

    def get(name, shape, output, precision):
        if (name, precision) not in cache:
            cache[name, precision] = to_onnx_bytes(build_model(name, 10, shape), shape, precision, output)
        return cache[name, precision]

    return get


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
@pytest.mark.parametrize("name, shape, output", EXPORTED, ids=[e[0] for e in EXPORTED])
def test_every_conv_and_gemm_of_the_built_in_models_is_in_exactly_one_entry(exported, name, shape, output,
                                                                            precision):
    model = exported(name, shape, output, precision)
    assert_each_conv_and_gemm_in_exactly_one_entry(model, _ort_profile(model))


@pytest.mark.parametrize("name, shape, output", EXPORTED, ids=[e[0] for e in EXPORTED])
def test_the_reader_agrees_with_onnx_on_the_built_in_models(exported, name, shape, output):
    import onnx

    model = exported(name, shape, output, "fp16")
    expected = [(n.name, n.op_type, tuple(n.input), tuple(n.output), n.domain)
                for n in onnx.load_from_string(model).graph.node]
    assert [tuple(node) for node in read_nodes(model)] == expected
