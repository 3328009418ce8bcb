"""The per-layer profile without a runtime: the ONNX protobuf reader (hand-built and corrupt bytes),
mapping runtime layer names to ONNX nodes, the profiling pass loop, ONNX Runtime's trace summary and
LayerTime. Only one test needs the onnx package; nothing needs torch. ONNX Runtime's real profiles are
in test_profile_ort.py.
"""

import contextlib
import json
import math
import random
from typing import List

import numpy as np
import pytest

from edge_evolver.backends.profiling import ProfileSettings, RawLayer, RawProfile, run_pass
from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.measure.layer_map import GraphIndex, assign_nodes, named_nodes, producers
from edge_evolver.measure.profile import entries, error_line
from edge_evolver.onnxgraph import OnnxGraphError, OnnxNode, read_nodes
from edge_evolver.protocol import PROFILE_FIELDS, LayerTime

# ---------------------------------------------------------------- a protobuf writer for hand-built models


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode("utf-8"))


def _node(name, op, inputs, outputs, domain="", extra=b"") -> bytes:
    parts = [_string(1, i) for i in inputs] + [_string(2, o) for o in outputs]
    parts += [_string(3, name), _string(4, op)] + ([_string(7, domain)] if domain else [])
    return b"".join(parts) + extra


def _model(nodes, graph_extra=b"", model_extra=b"") -> bytes:
    graph = _string(2, "g") + b"".join(_field(1, n) for n in nodes) + graph_extra
    return _key(1, 0) + _varint(8) + model_extra + _field(7, graph)


# Every wire type the reader must skip, at every level: varint, fixed64, fixed32, nested messages.
_SKIPPED = _key(90, 0) + _varint(2 ** 63) + _key(91, 1) + b"\x01" * 8 + _key(92, 5) + b"\x02" * 4
_ATTRIBUTE = _field(5, _string(1, "pads") + _key(20, 0) + _varint(7) + _field(8, b"\x00" * 16))
HAND_BUILT = _model(
    [_node("/conv/Conv", "Conv", ["x", "W"], ["/conv/Conv_output_0"], extra=_ATTRIBUTE + _SKIPPED),
     _node("", "Relu", ["/conv/Conv_output_0"], ["r"], extra=_string(6, "doc")),
     _node("/custom", "Frob", ["r"], ["y", "aux"], domain="com.example")],
    graph_extra=_field(5, b"\x08\x01" + b"\xff" * 300) + _SKIPPED,  # an initializer, skipped unread
    model_extra=_string(2, "edge-evolver") + _SKIPPED,
)
HAND_BUILT_NODES = [
    OnnxNode("/conv/Conv", "Conv", ("x", "W"), ("/conv/Conv_output_0",)),
    OnnxNode("", "Relu", ("/conv/Conv_output_0",), ("r",)),
    OnnxNode("/custom", "Frob", ("r",), ("y", "aux"), "com.example"),
]


# ---------------------------------------------------------------- the reader


def test_reader_reads_a_hand_built_model_and_skips_the_rest():
    assert read_nodes(HAND_BUILT) == HAND_BUILT_NODES
    assert read_nodes(memoryview(HAND_BUILT)) == HAND_BUILT_NODES
    assert read_nodes(_model([])) == []
    # A message field given twice is merged: the node lists concatenate, as protobuf does.
    twice = HAND_BUILT + _field(7, _field(1, _node("n", "Abs", ["y"], ["z"])))
    assert read_nodes(twice)[-1] == OnnxNode("n", "Abs", ("y",), ("z",))


@pytest.mark.parametrize("data, fragment", [
    (b"", "no graph"),
    (_key(1, 0) + _varint(8), "no graph"),
    (b"\x00", "field number 0"),
    (b"\x80" * 11, "varint longer"),
    (_key(1, 0) + b"\xff\xff", "truncated varint"),
    (_key(7, 2) + _varint(2 ** 40) + b"abc", "claims 1099511627776 bytes"),
    (_key(7, 3), "wire type 3"),
    (_key(7, 0) + _varint(5), "ModelProto field 7 has wire type 0"),
    (_key(9, 1) + b"\x00" * 7, "truncated fixed-size"),
    (_field(7, _key(1, 0) + _varint(1)), "GraphProto field 1 has wire type 0"),
    (_field(7, _field(1, _key(3, 5) + b"\x00" * 4)), "NodeProto field 3 has wire type 5"),
    (_model([_string(4, "Relu") + _field(3, b"\xc3\x28")]), "not UTF-8"),
], ids=["empty", "no-graph", "field-0", "long-varint", "truncated-varint", "huge-length", "group", "graph-varint",
        "truncated-fixed", "node-varint", "name-fixed32", "bad-utf8"])
def test_reader_refuses_corrupt_models_with_a_clear_error(data, fragment):
    with pytest.raises(OnnxGraphError) as info:
        read_nodes(data)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_reader_never_fails_otherwise_on_truncated_or_mutated_bytes():
    """Every prefix, and thousands of random mutations, give nodes or an OnnxGraphError: nothing else."""
    outcomes = set()
    for end in range(len(HAND_BUILT)):
        try:
            read_nodes(HAND_BUILT[:end])
            outcomes.add("ok")
        except OnnxGraphError:
            outcomes.add("error")
    assert "error" in outcomes
    rng = random.Random(0)
    for _ in range(3000):
        data = bytearray(HAND_BUILT)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        with contextlib.suppress(OnnxGraphError):
            assert isinstance(read_nodes(bytes(data)), list)
    for _ in range(500):
        with contextlib.suppress(OnnxGraphError):
            read_nodes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))


def test_reader_agrees_with_the_onnx_package():
    onnx = pytest.importorskip("onnx")
    helper, tp = onnx.helper, onnx.TensorProto
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["inner"], name="inside")], "b", [],
                               [helper.make_tensor_value_info("inner", tp.FLOAT, [1])])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="/relu"),
             helper.make_node("Cast", ["a"], ["b"], to=tp.FLOAT16),  # unnamed
             helper.make_node("If", ["c"], ["d"], name="/if", then_branch=branch, else_branch=branch),
             helper.make_node("Frob", ["b", "", "d"], ["e"], name="émoji ✓", domain="com.example")]
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", tp.FLOAT, [1])],
                              [helper.make_tensor_value_info("e", tp.FLOAT, [1])],
                              initializer=[onnx.numpy_helper.from_array(np.ones((64, 64), np.float32), "W")])
    data = helper.make_model(graph).SerializeToString()
    expected = [(n.name, n.op_type, tuple(n.input), tuple(n.output), n.domain) for n in graph.node]
    assert [tuple(node) for node in read_nodes(data)] == expected  # subgraph nodes are not listed


# ---------------------------------------------------------------- mapping layer names to nodes


def _graph(*specs) -> List[OnnxNode]:
    """("name", "Op", "in1,in2", "out") tuples."""
    return [OnnxNode(name, op, tuple(i for i in ins.split(",") if i), tuple(outs.split(",")))
            for name, op, ins, outs in specs]


VGG_LIKE = _graph(
    ("/f.0/Conv", "Conv", "x,W0", "/f.0/Conv_output_0"),
    ("/f.2/Relu", "Relu", "/f.0/Conv_output_0", "/f.2/Relu_output_0"),
    ("/f.3/Conv", "Conv", "/f.2/Relu_output_0,W1", "/f.3/Conv_output_0"),
    ("/f.5/Relu", "Relu", "/f.3/Conv_output_0", "/f.5/Relu_output_0"),
    ("/f.6/MaxPool", "MaxPool", "/f.5/Relu_output_0", "/f.6/MaxPool_output_0"),
    ("/Flatten", "Flatten", "/f.6/MaxPool_output_0", "/Flatten_output_0"),
    ("/fc1/Gemm", "Gemm", "/Flatten_output_0,W2", "/fc1/Gemm_output_0"),
    ("/Relu", "Relu", "/fc1/Gemm_output_0", "/Relu_output_0"),
    ("/Relu_1", "Relu", "/Relu_output_0", "/Relu_1_output_0"),
    ("/fc2/Gemm", "Gemm", "/Relu_1_output_0,W3", "/fc2/Gemm_cast_to_logits"),
    ("/fc2/Gemm_cast_to_logits", "Cast", "/fc2/Gemm_cast_to_logits", "logits"),
)


def _map(graph, *layers):
    return assign_nodes([RawLayer(name, op, 1.0) for name, op in layers], graph)


def test_ort_style_names_map_to_the_original_nodes():
    """Names as ONNX Runtime 1.32 reports them for vgg-small in fp16 (docs/protocol.md)."""
    assert _map(VGG_LIKE,
                ("InsertedPrecisionFreeCast_onnx::Conv_59", "Cast"),
                ("/f.0/Conv", "FusedConv"),
                ("ReorderInput_token_18", "ReorderInput"),
                ("InsertedPrecisionFreeCast_/f.5/Relu_output_0_nchwc", "Conv"),
                ("InsertedPrecisionFreeCast_/f.6/MaxPool_output_0_nchwc", "MaxPool"),
                ("InsertedPrecisionFreeCast_/Flatten_output_0", "Cast"),
                ("/Flatten", "Flatten"),
                ("fused /fc1/Gemm", "FusedGemm"),
                ("/Relu_1", "Relu"),
                ("/fc2/Gemm", "Gemm"),
                ("/fc2/Gemm_cast_to_logits", "Cast")) == [
        [], ["/f.0/Conv", "/f.2/Relu"], [], ["/f.3/Conv", "/f.5/Relu"], ["/f.6/MaxPool"], [], ["/Flatten"],
        ["/fc1/Gemm", "/Relu"], ["/Relu_1"], ["/fc2/Gemm"], ["/fc2/Gemm_cast_to_logits"]]


def test_a_conv_named_by_its_cast_output_goes_to_the_conv_kernel_not_the_cast():
    """det-small fp16: the last Conv's output tensor is also the name of the Cast node after it."""
    graph = _graph(("/out/Conv", "Conv", "h,W", "/out/Conv_cast_to_heatmap"),
                   ("/out/Conv_cast_to_heatmap", "Cast", "/out/Conv_cast_to_heatmap", "heatmap"))
    assert _map(graph, ("InsertedPrecisionFreeCast_/out/Conv_cast_to_heatmap_nchwc", "Conv"),
                ("/out/Conv_cast_to_heatmap", "Cast")) == [["/out/Conv"], ["/out/Conv_cast_to_heatmap"]]


def test_residual_add_goes_to_the_later_of_two_convs_and_never_twice():
    graph = _graph(("/b/conv1/Conv", "Conv", "x,W1", "c1"), ("/b/Relu", "Relu", "c1", "r1"),
                   ("/b/conv2/Conv", "Conv", "r1,W2", "c2"), ("/b/short/Conv", "Conv", "x,W3", "s"),
                   ("/b/Add", "Add", "c2,s", "a"), ("/b/Relu_1", "Relu", "a", "out"))
    covered = _map(graph, ("r1_nchwc", "Conv"), ("s_nchwc", "Conv"), ("c2_nchwc", "Conv"))
    assert covered == [["/b/conv1/Conv", "/b/Relu"], ["/b/short/Conv"], ["/b/conv2/Conv", "/b/Add", "/b/Relu_1"]]
    # NCHWc named after the block's last Relu: walks back Relu <- Add <- both Convs; the shortcut's own
    # kernel names it, so it stays there.
    covered = _map(graph, ("r1_nchwc", "Conv"), ("s_nchwc", "Conv"), ("out_nchwc", "Conv"))
    assert covered[1] == ["/b/short/Conv"] and covered[2] == ["/b/conv2/Conv", "/b/Add", "/b/Relu_1"]


def test_batchnorm_and_activation_walk_back_to_their_conv():
    graph = _graph(("/c/Conv", "Conv", "x,W", "c"), ("/c/BN", "BatchNormalization", "c,s,b,m,v", "n"),
                   ("/c/Clip", "Clip", "n", "y"))
    index = GraphIndex(graph)
    assert producers(2, index) == ([0], [1])
    assert _map(graph, ("y_nchwc", "Conv")) == [["/c/Conv", "/c/BN", "/c/Clip"]]


def test_name_boundaries_longest_match_and_numeric_names():
    graph = _graph(("Conv_1", "Conv", "x,W", "15"), ("Conv_10", "Conv", "15,W", "16"), ("/Relu", "Relu", "16", "17"))
    index = GraphIndex(graph)
    assert named_nodes("Conv_10", index) == [(1, 3)]  # not Conv_1 inside Conv_10
    assert named_nodes("ReorderInput_token_15", index) == []  # "15" is a tensor, the token is not
    assert named_nodes("(Unnamed Layer* 15) [Shuffle]", index) == []
    assert [i for i, _ in named_nodes("Conv_1 + Conv_10", index)] == [1, 0]
    assert named_nodes("15_nchwc", index) == [(0, 2)]
    assert named_nodes("xConv_1", index) == []


def test_tensorrt_style_names_map_to_the_original_nodes():
    graph = VGG_LIKE + _graph(("", "Sigmoid", "logits", "prob"))
    covered = _map(graph,
                   ("Reformatting CopyNode for Input Tensor 0 to /f.0/Conv + /f.2/Relu", ""),
                   ("/f.0/Conv + /f.2/Relu", ""),
                   ("/f.3/Conv + PWN(/f.5/Relu)", ""),
                   ("/f.6/MaxPool", ""),
                   ("{ForeignNode[/Flatten.../fc2/Gemm_cast_to_logits]}", ""),
                   ("PWN(node_of_prob)", ""))
    assert covered == [[], ["/f.0/Conv", "/f.2/Relu"], ["/f.3/Conv", "/f.5/Relu"], ["/f.6/MaxPool"],
                       ["/Flatten", "/fc1/Gemm", "/Relu", "/Relu_1", "/fc2/Gemm", "/fc2/Gemm_cast_to_logits"],
                       ["prob"]]  # an unnamed node is listed by its first output


def test_recorded_origins_win_over_names_and_unknown_ones_are_ignored():
    layers = [RawLayer("whatever", "CaskConvolution", 1.0, ("/f.0/Conv", "/f.2/Relu", "not-in-graph")),
              RawLayer("/f.3/Conv", "Reformat", 1.0, ("/f.3/Conv",))]
    assert assign_nodes(layers, VGG_LIKE) == [["/f.0/Conv", "/f.2/Relu"], []]


def test_onnx_runtime_names_unnamed_nodes_by_op_and_position():
    graph = _graph(("", "Sigmoid", "x", "a"), ("", "Neg", "a", "b"), ("Neg_1", "Abs", "b", "y"))
    assert _map(graph, ("Sigmoid_0", "Sigmoid"), ("Neg_1", "Abs")) == [["a"], ["Neg_1"]]


# ---------------------------------------------------------------- the pass, the entries, LayerTime


class FakeClock:
    def __init__(self, step):
        self.now, self.step = 0.0, step

    def __call__(self):
        self.now += self.step
        return self.now


@pytest.mark.parametrize("settings, step, runs", [
    (ProfileSettings(min_runs=20, min_seconds=0.3), 0.001, 300),  # 0.3 s takes longer than 20 runs
    (ProfileSettings(min_runs=20, min_seconds=0.3), 0.1, 20),  # 20 runs take longer than 0.3 s
    (ProfileSettings(min_runs=20, min_seconds=0.3, max_seconds=3.0), 1.0, 3),  # a slow model: 3 s at most
    (ProfileSettings(min_runs=20, min_seconds=0.3, max_seconds=0.5), 10.0, 1),  # always one run
    (ProfileSettings(min_runs=20, min_seconds=30.0, max_runs=50), 0.001, 50),
])
def test_the_pass_stops_as_documented(settings, step, runs):
    calls: List[str] = []
    got = run_pass(lambda: calls.append("run"), settings, FakeClock(step), measuring=lambda: calls.append("reset"))
    assert got == runs
    assert calls == ["run"] * settings.warmup_runs + ["reset"] + ["run"] * runs


def test_entries_average_per_run_and_share_the_total():
    raw = RawProfile([RawLayer("/f.0/Conv", "FusedConv", 30.0), RawLayer("ReorderInput", "ReorderInput", 10.0)], 10)
    out = entries(raw, VGG_LIKE)
    assert out == [LayerTime("/f.0/Conv", "FusedConv", 3.0, 0.75, ["/f.0/Conv", "/f.2/Relu"]),
                   LayerTime("ReorderInput", "ReorderInput", 1.0, 0.25, [])]
    assert entries(RawProfile([RawLayer("a", "", 0.0)], 3), None) == [LayerTime("a", "", 0.0, 0.0, [])]
    with pytest.raises(EdgeError):
        entries(RawProfile([], 3), VGG_LIKE)


def test_layer_time_round_trips_and_refuses_what_is_not_one():
    entry = LayerTime("/f.0/Conv", "FusedConv", 0.02, 0.5, ["/f.0/Conv", "/f.2/Relu"])
    data = json.loads(json.dumps(entry.to_dict()))
    assert set(data) == {"name", "op", "ms", "share", "nodes"} and LayerTime.from_dict(data) == entry
    assert LayerTime.from_dict({"name": "r"}).nodes == [] and math.isnan(LayerTime.from_dict({"name": "r"}).ms)
    for bad in ([], {"name": 3}, {"name": "x", "nodes": "a"}, {"name": "x", "ms": "1"}, {"name": "x", "op": 1},
                {"name": "x", "share": True}):
        with pytest.raises(ValueError):
            LayerTime.from_dict(bad)
    assert PROFILE_FIELDS == ("profile", "profile_runs", "profile_error")


def test_error_lines_are_one_short_line():
    assert error_line(EdgeError(ErrorCode.INTERNAL, "no\nlayers")) == "no layers"
    assert error_line(RuntimeError("no\nlayers")) == "RuntimeError: no layers"
    assert error_line(RuntimeError("x" * 1000)).startswith("RuntimeError: xxx") and len(error_line(
        RuntimeError("x" * 1000))) == 300


# ---------------------------------------------------------------- ONNX Runtime's trace (synthetic events)


def _event(name, ts, dur=100, cat="Node", op="Conv"):
    return {"cat": cat, "name": name, "ts": ts, "dur": dur, "ph": "X", "args": {"op_name": op}}


def test_ort_trace_summary_drops_warm_up_runs_by_time():
    from edge_evolver.backends._ort_profile import summarize

    events = [{"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 5}]
    for run, start in enumerate((10, 100, 200)):  # one warm-up run, then two measured ones
        events.append({"cat": "Session", "name": "model_run", "ts": start, "dur": 50})
        dur = 9000 if run == 0 else 1000  # the first run is slow, and must not count
        events += [_event("/c/Conv_kernel_time", start + 1, dur), _event("/c/Conv_fence_before", start + 1, 7),
                   _event("Relu_3_kernel_time", start + 5, 500, op="Relu")]
    raw = summarize(events, warmup=1, runs=2)
    assert raw.runs == 2
    assert raw.layers == [RawLayer("/c/Conv", "Conv", 2.0), RawLayer("Relu_3", "Relu", 1.0)]


def test_ort_trace_summary_without_model_run_events_drops_first_occurrences():
    from edge_evolver.backends._ort_profile import summarize

    events = [_event("a_kernel_time", t, 1000 if t else 5000) for t in range(3)]
    assert summarize(events, warmup=1, runs=2).layers == [RawLayer("a", "Conv", 2.0)]
    with pytest.raises(EdgeError):
        summarize([{"cat": "Session", "name": "model_run", "ts": 0}], warmup=0, runs=1)
