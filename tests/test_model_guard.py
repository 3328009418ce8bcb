"""measure/model_guard.py: external data, tensor sizes and opset policies, checked without onnx.

The onnx package only builds the test models here (and gives the field numbers to compare with);
the guard itself must work on a board without it. Runs on the JetPack 4.6 library set too.
"""

import ast
import json
import random
from pathlib import Path

import numpy as np
import pytest

from edge_evolver.backends.base import Backend
from edge_evolver.backends.model_policy import MAX_ONNX_OPSET
from edge_evolver.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge_evolver.backends.tensorrt_backend import TensorRTBackend
from edge_evolver.errors import EdgeError, ErrorCode
from edge_evolver.measure import model_guard as guard
from edge_evolver.measure.benchmark import BenchSettings
from edge_evolver.measure.model_guard import check_model_safety, inspect_model
from edge_evolver.measure.pipeline import MeasureRequest, measure_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ORT, TRT = OnnxRuntimeBackend.model_policy, TensorRTBackend.model_policy
QUICK = BenchSettings(warmup_s=0.0, min_iterations=3, min_seconds=0.0, max_seconds=2.0)
ROOT = Path(__file__).resolve().parents[1]


def _code(model, policy=ORT):
    try:
        check_model_safety(model, policy)
    except EdgeError as exc:
        return exc.code, exc.message
    return None, ""


def _model(nodes, initializers=(), opsets=(("", 13),), inputs=None, outputs=None, sparse=(), functions=()):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])] if inputs is None else inputs
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])] if outputs is None else outputs
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), sparse_initializer=list(sparse))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.functions.extend(functions)
    return model


def _bytes(model):
    return model.SerializeToString()


def _external(name="w", location="weights.bin", dims=(4,), flag=True, entry=True):
    tensor = TensorProto()
    tensor.name, tensor.data_type = name, TensorProto.FLOAT
    tensor.dims.extend(dims)
    if flag:
        tensor.data_location = TensorProto.EXTERNAL
    if entry:
        item = tensor.external_data.add()
        item.key, item.value = "location", location
    return tensor


def _weights(name="w", n=4):
    return numpy_helper.from_array(np.arange(n, dtype=np.float32), name)


def _add_w(initializers=None):
    return _model([helper.make_node("Add", ["x", "w"], ["y"])], initializers or [_weights()])


# ---- field numbers are onnx.proto's ----
FIELDS = {
    "ModelProto": {"graph": "MODEL_GRAPH", "opset_import": "MODEL_OPSET_IMPORT", "training_info": "MODEL_TRAINING_INFO",
                   "functions": "MODEL_FUNCTIONS"},
    "OperatorSetIdProto": {"domain": "OPSET_DOMAIN", "version": "OPSET_VERSION"},
    "GraphProto": {"node": "GRAPH_NODE", "name": "GRAPH_NAME", "initializer": "GRAPH_INITIALIZER",
                   "sparse_initializer": "GRAPH_SPARSE_INITIALIZER"},
    "NodeProto": {"name": "NODE_NAME", "op_type": "NODE_OP_TYPE", "attribute": "NODE_ATTRIBUTE",
                  "domain": "NODE_DOMAIN"},
    "AttributeProto": {"name": "ATTR_NAME", "t": "ATTR_T", "g": "ATTR_G", "tensors": "ATTR_TENSORS",
                       "graphs": "ATTR_GRAPHS", "sparse_tensor": "ATTR_SPARSE_TENSOR",
                       "sparse_tensors": "ATTR_SPARSE_TENSORS"},
    "FunctionProto": {"name": "FUNCTION_NAME", "node": "FUNCTION_NODE", "opset_import": "FUNCTION_OPSET_IMPORT",
                      "domain": "FUNCTION_DOMAIN", "attribute_proto": "FUNCTION_ATTRIBUTE_PROTO"},
    "TrainingInfoProto": {"initialization": "TRAINING_INITIALIZATION", "algorithm": "TRAINING_ALGORITHM"},
    "SparseTensorProto": {"values": "SPARSE_VALUES", "indices": "SPARSE_INDICES", "dims": "SPARSE_DIMS"},
    "StringStringEntryProto": {"key": "ENTRY_KEY", "value": "ENTRY_VALUE"},
    "TensorProto": {name: "TENSOR_" + name.upper() for name in (
        "dims", "data_type", "segment", "float_data", "int32_data", "string_data", "int64_data", "name",
        "raw_data", "double_data", "uint64_data", "external_data", "data_location")},
}


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_field_numbers_are_onnx_protos(message):
    fields = getattr(onnx, message).DESCRIPTOR.fields_by_name
    for field, constant in FIELDS[message].items():
        if field not in fields:  # an older onnx (attribute_proto came in 1.13): nothing to compare
            continue
        assert getattr(guard, constant) == fields[field].number, (message, field)


def test_data_types_and_locations_are_onnx_protos():
    known = {v.name: v.number for v in TensorProto.DataType.DESCRIPTOR.values}
    for number, kind in guard.DATA_TYPES.items():
        if kind.name in known:
            assert known[kind.name] == number, kind.name
    assert set(known) - {"UNDEFINED"} <= {kind.name for kind in guard.DATA_TYPES.values()}
    assert TensorProto.EXTERNAL == guard.LOCATION_EXTERNAL and TensorProto.DEFAULT == guard.LOCATION_DEFAULT


def test_the_guard_imports_no_onnx():
    for path in ("edge_evolver/measure/model_guard.py", "edge_evolver/onnxgraph.py"):
        tree = ast.parse((ROOT / path).read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [name for name in names if name.split(".")[0] == "onnx"], path


# ---- external data, wherever a tensor can be ----
def _if_model(then_nodes, then_inits=()):
    """y = If(cond) with a then-branch built from ``then_nodes``; else-branch returns x."""
    out = [helper.make_tensor_value_info("t", TensorProto.FLOAT, [4])]
    then_graph = helper.make_graph(then_nodes, "then", [], out, list(then_inits))
    else_graph = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "else", [], out)
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_graph, else_branch=else_graph)
    cond = [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4])]
    return _model([node], inputs=cond)


def _loop_model(body_nodes):
    body_in = [helper.make_tensor_value_info("i", TensorProto.INT64, []),
               helper.make_tensor_value_info("ci", TensorProto.BOOL, []),
               helper.make_tensor_value_info("v", TensorProto.FLOAT, [4])]
    body_out = [helper.make_tensor_value_info("co", TensorProto.BOOL, []),
                helper.make_tensor_value_info("vo", TensorProto.FLOAT, [4])]
    nodes = [helper.make_node("Identity", ["ci"], ["co"])] + list(body_nodes)
    body = helper.make_graph(nodes, "body", body_in, body_out)
    trip = numpy_helper.from_array(np.array(2, np.int64), "n")
    return _model([helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)], [trip])


def _function_model(body_tensor):
    body = [helper.make_node("Constant", [], ["k"], value=body_tensor), helper.make_node("Add", ["a", "k"], ["b"])]
    function = helper.make_function("local.fns", "AddK", ["a"], ["b"], body, [helper.make_opsetid("", 13)])
    node = helper.make_node("AddK", ["x"], ["y"], domain="local.fns")
    return _model([node], opsets=(("", 13), ("local.fns", 1)), functions=[function])


def _training_model(tensor):
    model = _add_w()
    info = model.training_info.add()
    info.algorithm.CopyFrom(helper.make_graph([helper.make_node("Constant", [], ["z"], value=tensor)], "train", [],
                                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])]))
    return model


def _sparse(values, name="s"):
    indices = numpy_helper.from_array(np.array([0, 2], np.int64), name + "_idx")
    return helper.make_sparse_tensor(values, indices, [4])


def _external_models(location):
    ext = _external(location=location)
    ext2 = _external(location=location, dims=(2,))
    const = helper.make_node("Constant", [], ["k"], value=ext)
    return {
        "initializer": _add_w([ext]),
        "sparse initializer": _model([helper.make_node("Add", ["x", "s"], ["y"])], sparse=[_sparse(ext2)]),
        "attribute t": _model([const, helper.make_node("Add", ["x", "k"], ["y"])]),
        "attribute tensors": _model([helper.make_node("Relu", ["x"], ["y"], weights=[_weights("ok"), ext])]),
        "attribute sparse_tensor": _model([helper.make_node("Constant", [], ["y"], sparse_value=_sparse(ext2))]),
        "If subgraph initializer": _if_model([helper.make_node("Identity", ["w"], ["t"])], [ext]),
        "If subgraph Constant": _if_model([helper.make_node("Constant", [], ["t"], value=ext)]),
        "Loop body Constant": _loop_model([helper.make_node("Constant", [], ["vo"], value=ext)]),
        "function body Constant": _function_model(ext),
        "training_info graph": _training_model(ext),
    }


@pytest.mark.parametrize("where", sorted(_external_models("x")))
def test_external_data_is_refused_wherever_it_is(where):
    model = _external_models("etc/hostname")[where]
    code, message = _code(_bytes(model))
    assert code == ErrorCode.EXTERNAL_DATA, (code, message)
    assert "'etc/hostname'" in message and "tensor 'w'" in message


@pytest.mark.parametrize("flag, entry", [(True, False), (False, True)], ids=["location-flag-only", "entries-only"])
def test_either_sign_of_external_data_is_enough(flag, entry):
    code, message = _code(_bytes(_add_w([_external(flag=flag, entry=entry)])))
    assert code == ErrorCode.EXTERNAL_DATA, message


def test_external_data_wins_over_an_earlier_size_problem_and_the_path_is_printable():
    bad = _weights("bad")
    bad.dims[0] = 5
    model = _model([helper.make_node("Add", ["x", "w"], ["y"])], [bad, _external(location="a\n\x1b[31m" + "z" * 500)])
    code, message = _code(_bytes(model))
    assert code == ErrorCode.EXTERNAL_DATA
    assert "\n" not in message and "\x1b" not in message and len(message) < 400


def test_the_attack_end_to_end_leaks_nothing(tmp_path, monkeypatch):
    """An initializer read from a file beside the working directory, fed to an output."""
    secret = b"TOPSECRET-4f1c2b"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_bytes(secret)
    stolen = TensorProto()
    stolen.name, stolen.data_type, stolen.data_location = "w", TensorProto.UINT8, TensorProto.EXTERNAL
    stolen.dims.extend([len(secret)])
    entry = stolen.external_data.add()
    entry.key, entry.value = "location", "etc/hostname"
    nodes = [helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT), helper.make_node("Add", ["x", "wf"], ["y"])]
    vec = [len(secret)]
    model = _bytes(_model(nodes, [stolen], inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, vec)],
                          outputs=[helper.make_tensor_value_info("y", TensorProto.FLOAT, vec)]))
    monkeypatch.chdir(tmp_path)
    if OnnxRuntimeBackend.available()[0]:  # the attack is real: the runtime alone reads the file
        try:
            engine = OnnxRuntimeBackend().load(model)
            leaked = engine.infer({"x": np.zeros(vec, np.float32)})[0]
            assert bytes(leaked.astype(np.uint8)) == secret
            print("onnxruntime alone leaks the file")
        except EdgeError:
            pass  # this runtime refuses external data from bytes by itself
    zeros = [np.zeros(vec, np.float32)]
    request = MeasureRequest(backend="onnxruntime", settings=QUICK, reference=zeros)
    result = measure_model(model, request=request)
    assert (result.status, result.code) == ("error", ErrorCode.EXTERNAL_DATA), result.message
    assert result.outputs is None and result.agreement is None
    text = json.dumps(result.to_dict(include_samples=True), default=str)
    as_floats = json.dumps([float(b) for b in secret])[1:-1]
    assert secret.decode() not in text and as_floats not in text and "etc/hostname" in text


# ---- tensor sizes ----
def _tensor(data_type, dims, **fields):
    tensor = TensorProto()
    tensor.name, tensor.data_type = "w", data_type
    tensor.dims.extend(dims)
    for name, values in fields.items():
        if name == "raw_data":
            tensor.raw_data = values
        else:
            getattr(tensor, name).extend(values)
    return tensor


def _size_code(tensor):
    return _code(_bytes(_add_w([tensor])))


GOOD_TENSORS = {
    "float raw": _tensor(TensorProto.FLOAT, [2, 3], raw_data=bytes(24)),
    "float typed": _tensor(TensorProto.FLOAT, [2, 3], float_data=[1.0] * 6),
    "float16 one per int32": _tensor(TensorProto.FLOAT16, [5], int32_data=[15360] * 5),
    "bfloat16 raw": _tensor(TensorProto.BFLOAT16, [5], raw_data=bytes(10)),
    "int8 typed": _tensor(TensorProto.INT8, [3], int32_data=[-1, 0, 1]),
    "bool raw": _tensor(TensorProto.BOOL, [3], raw_data=b"\x01\x00\x01"),
    "int64 typed": _tensor(TensorProto.INT64, [3], int64_data=[-(2 ** 62), 0, 7]),
    "uint32 typed": _tensor(TensorProto.UINT32, [2], uint64_data=[1, 2]),
    "uint64 typed": _tensor(TensorProto.UINT64, [2], uint64_data=[2 ** 64 - 1, 2]),
    "double typed": _tensor(TensorProto.DOUBLE, [2], double_data=[1.5, 2.5]),
    "complex64 two floats each": _tensor(TensorProto.COMPLEX64, [3], float_data=[0.0] * 6),
    "complex128 raw": _tensor(TensorProto.COMPLEX128, [3], raw_data=bytes(48)),
    "string": _tensor(TensorProto.STRING, [2], string_data=[b"a", b""]),
    "empty": _tensor(TensorProto.FLOAT, [0, 5]),
    "scalar": _tensor(TensorProto.FLOAT, [], float_data=[3.0]),
    "huge dims with a zero": _tensor(TensorProto.FLOAT, [2 ** 62, 2 ** 62, 0]),
}
if hasattr(TensorProto, "INT4"):  # onnx >= 1.16
    GOOD_TENSORS["int4 two per byte"] = _tensor(TensorProto.INT4, [5], raw_data=bytes(3))
    GOOD_TENSORS["uint4 two per int32"] = _tensor(TensorProto.UINT4, [5], int32_data=[0, 0, 0])


@pytest.mark.parametrize("name", sorted(GOOD_TENSORS))
def test_tensors_whose_bytes_match_pass(name):
    assert _size_code(GOOD_TENSORS[name]) == (None, "")


def test_onnx_helpers_make_tensors_the_guard_accepts():
    arrays = [np.ones((2, 3), dtype=dt) for dt in (np.float32, np.float16, np.int8, np.uint8, np.int16,
                                                               np.uint16, np.int32, np.int64, np.uint32, np.uint64,
                                                               np.float64, np.bool_, np.complex64, np.complex128)]
    tensors = [numpy_helper.from_array(a, "w") for a in arrays]
    tensors += [helper.make_tensor("w", TensorProto.FLOAT16, [3], np.ones(3, np.float16)),
                helper.make_tensor("w", TensorProto.COMPLEX64, [2], [1 + 2j, 3j]),
                helper.make_tensor("w", TensorProto.BOOL, [2], [True, False]),
                helper.make_tensor("w", TensorProto.STRING, [2], [b"x", b"y"])]
    for tensor in tensors:
        assert _size_code(tensor) == (None, ""), tensor.data_type


BAD_TENSORS = {
    "raw short": (_tensor(TensorProto.FLOAT, [2, 3], raw_data=bytes(20)), ErrorCode.TENSOR_SIZE_MISMATCH),
    "raw long": (_tensor(TensorProto.FLOAT, [2, 3], raw_data=bytes(28)), ErrorCode.TENSOR_SIZE_MISMATCH),
    "typed short": (_tensor(TensorProto.FLOAT, [2, 3], float_data=[1.0] * 5), ErrorCode.TENSOR_SIZE_MISMATCH),
    "typed long": (_tensor(TensorProto.INT64, [2], int64_data=[1, 2, 3]), ErrorCode.TENSOR_SIZE_MISMATCH),
    "complex64 one float each": (_tensor(TensorProto.COMPLEX64, [3], float_data=[0.0] * 3),
                                 ErrorCode.TENSOR_SIZE_MISMATCH),
    "wrong typed field": (_tensor(TensorProto.FLOAT, [2], int64_data=[1, 2]), ErrorCode.TENSOR_SIZE_MISMATCH),
    "raw and typed": (_tensor(TensorProto.FLOAT, [1], float_data=[1.0], raw_data=bytes(4)),
                      ErrorCode.TENSOR_SIZE_MISMATCH),
    "string as raw": (_tensor(TensorProto.STRING, [1], raw_data=b"abc"), ErrorCode.TENSOR_SIZE_MISMATCH),
    "no data": (_tensor(TensorProto.FLOAT, [1000000, 1000]), ErrorCode.TENSOR_SIZE_MISMATCH),
    "negative dim": (_tensor(TensorProto.FLOAT, [-1, 4], raw_data=bytes(16)), ErrorCode.TENSOR_SIZE_MISMATCH),
    "dims overflow int64": (_tensor(TensorProto.FLOAT, [2 ** 32, 2 ** 32], raw_data=bytes(4)),
                            ErrorCode.TENSOR_SIZE_MISMATCH),
    "unknown data_type": (_tensor(200, [1], raw_data=bytes(4)), ErrorCode.INVALID_MODEL),
    "undefined data_type": (_tensor(TensorProto.UNDEFINED, [1], raw_data=bytes(4)), ErrorCode.INVALID_MODEL),
}


@pytest.mark.parametrize("name", sorted(BAD_TENSORS))
def test_tensors_whose_bytes_disagree_are_refused(name):
    tensor, expected = BAD_TENSORS[name]
    code, message = _size_code(tensor)
    assert code == expected, (code, message)
    assert "tensor 'w'" in message


def test_a_size_problem_in_a_subgraph_or_sparse_tensor_is_found():
    short = _tensor(TensorProto.FLOAT, [4], raw_data=bytes(8))
    assert _code(_bytes(_if_model([helper.make_node("Identity", ["w"], ["t"])], [short])))[0] == \
        ErrorCode.TENSOR_SIZE_MISMATCH
    sparse = _model([helper.make_node("Add", ["x", "s"], ["y"])], sparse=[_sparse(_tensor(TensorProto.FLOAT, [2]))])
    assert _code(_bytes(sparse))[0] == ErrorCode.TENSOR_SIZE_MISMATCH


def test_a_segmented_tensor_or_unknown_location_is_refused():
    segmented = _weights()
    segmented.segment.begin, segmented.segment.end = 0, 2
    assert _size_code(segmented)[0] == ErrorCode.TENSOR_SIZE_MISMATCH
    odd = TensorProto.FromString(_weights().SerializeToString() + b"\x70\x07")  # data_location = 7
    assert _size_code(odd)[0] == ErrorCode.INVALID_MODEL


# ---- opset policies ----
def _unary(op, domain="", opsets=(("", 13),)):
    return _bytes(_model([helper.make_node(op, ["x"], ["y"], domain=domain)], opsets=opsets))


def test_each_backend_allows_its_domains_and_versions():
    ms = _unary("Gelu", "com.microsoft", (("", 13), ("com.microsoft", 1)))
    ml = _unary("Normalizer", "ai.onnx.ml", (("", 13), ("ai.onnx.ml", 3)))
    assert _code(ms, ORT)[0] is None and _code(ml, ORT)[0] is None
    assert _code(ms, TRT)[0] == ErrorCode.OPSET_NOT_ALLOWED and _code(ml, TRT)[0] == ErrorCode.OPSET_NOT_ALLOWED
    custom = _unary("Foo", "com.example", (("", 13), ("com.example", 1)))
    for policy in (ORT, TRT, Backend.model_policy):
        code, message = _code(custom, policy)
        assert code == ErrorCode.OPSET_NOT_ALLOWED and "com.example" in message
    aliased = _unary("Relu", "ai.onnx", (("ai.onnx", 13),))
    assert _code(aliased, TRT)[0] is None


@pytest.mark.parametrize("version, ort_ok, trt_ok", [(1, True, False), (6, True, False), (7, True, True),
                                                     (17, True, True), (22, True, True), (23, True, False),
                                                     (MAX_ONNX_OPSET + 1, False, False), (2 ** 62, False, False)])
def test_opset_versions_per_backend(version, ort_ok, trt_ok):
    model = _unary("Relu", opsets=(("", version),))
    assert (_code(model, ORT)[0] is None) == ort_ok
    assert (_code(model, TRT)[0] is None) == trt_ok
    if not trt_ok:
        assert _code(model, TRT)[0] == ErrorCode.OPSET_NOT_ALLOWED


def test_a_node_domain_needs_an_opset_import():
    code, message = _code(_unary("Gelu", "com.microsoft"), ORT)
    assert code == ErrorCode.OPSET_NOT_ALLOWED and "opset_import" in message
    assert _code(_unary("Relu", opsets=(("com.microsoft", 1),)), ORT)[0] == ErrorCode.OPSET_NOT_ALLOWED


def test_the_models_own_functions_are_allowed_but_not_their_bodies_domains():
    model = _function_model(numpy_helper.from_array(np.ones(4, np.float32), "k"))
    for policy in (ORT, TRT):
        assert _code(_bytes(model), policy)[0] is None
    inner = model.functions[0].node[1]
    inner.domain = "com.example"
    model.functions[0].opset_import.extend([helper.make_opsetid("com.example", 1)])
    assert _code(_bytes(model), ORT)[0] == ErrorCode.OPSET_NOT_ALLOWED


def test_a_subgraph_node_domain_is_checked():
    model = _if_model([helper.make_node("Gelu", ["x"], ["t"], domain="com.microsoft")])
    code, message = _code(_bytes(model), ORT)
    assert code == ErrorCode.OPSET_NOT_ALLOWED and "Gelu" in message


def test_measure_model_refuses_a_domain_before_building():
    custom = _unary("Foo", "com.example", (("", 13), ("com.example", 1)))
    result = measure_model(custom, "onnxruntime", QUICK)
    assert result.code == ErrorCode.OPSET_NOT_ALLOWED and result.load_seconds is None


# ---- hostile bytes ----
def _uvarint(value):
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _ld(number, payload):
    return _uvarint(number << 3 | 2) + _uvarint(len(payload)) + payload


def _nested(levels):
    """A model whose If nodes nest ``levels`` graphs deep, written straight as protobuf."""
    graph = _ld(guard.GRAPH_NAME, b"leaf")
    for _ in range(levels - 1):
        attribute = _ld(guard.ATTR_NAME, b"then_branch") + _ld(guard.ATTR_G, graph)
        graph = _ld(guard.GRAPH_NODE, _ld(guard.NODE_OP_TYPE, b"If") + _ld(guard.NODE_ATTRIBUTE, attribute))
    opset = _ld(guard.OPSET_DOMAIN, b"") + _uvarint(guard.OPSET_VERSION << 3) + _uvarint(13)
    return _ld(guard.MODEL_OPSET_IMPORT, opset) + _ld(guard.MODEL_GRAPH, graph)


def test_a_nesting_bomb_is_refused_without_recursion():
    assert inspect_model(_nested(guard.MAX_GRAPH_DEPTH)).graphs == guard.MAX_GRAPH_DEPTH
    for levels in (guard.MAX_GRAPH_DEPTH + 1, 5000):
        code, message = _code(_nested(levels))
        assert code == ErrorCode.INVALID_MODEL and "nest deeper" in message


@pytest.mark.parametrize("data", [b"not onnx", b"\x00", b"\x3a\x05ab", b"\x3a\xff\xff\xff\xff\x0f",
                                  b"\x08" + b"\xff" * 11, b"\x0b\x0c", b"\x08\x07", _ld(7, b"\x0a\xff")])
def test_bytes_that_are_not_a_model_are_invalid(data):
    assert _code(data)[0] == ErrorCode.INVALID_MODEL
    assert _code(b"")[0] == ErrorCode.INVALID_MODEL


def test_a_model_of_tiny_fields_stops_at_the_field_budget(monkeypatch):
    monkeypatch.setattr(guard, "MAX_FIELDS", 1000)
    tiny = b"\x38\x01" * 2000  # TensorProto.int64_data, one unpacked entry each
    tensor = _tensor(TensorProto.INT64, [2000]).SerializeToString() + tiny
    graph = _ld(guard.GRAPH_NAME, b"g") + _ld(guard.GRAPH_INITIALIZER, tensor)
    code, message = _code(_ld(guard.MODEL_GRAPH, graph))
    assert code == ErrorCode.INVALID_MODEL and "fields" in message
    monkeypatch.setattr(guard, "MAX_FIELDS", 3000)
    assert _code(_ld(guard.MODEL_GRAPH, graph))[0] is None  # unpacked entries count like packed ones


def _rich_model():
    """A valid model touching every walked field: initializers, sparse, attributes, If, function, training."""
    model = _function_model(numpy_helper.from_array(np.ones(4, np.float32), "k"))
    model.graph.initializer.extend([_tensor(TensorProto.INT64, [3], int64_data=[1, -2, 3]),
                                    _tensor(TensorProto.FLOAT16, [2], int32_data=[1, 2])])
    model.graph.sparse_initializer.extend([_sparse(numpy_helper.from_array(np.ones(2, np.float32), "sv"))])
    sub = _if_model([helper.make_node("Constant", [], ["t"], value=_weights("c"))]).graph.node[0]
    model.graph.node.extend([sub])
    model.training_info.add().algorithm.CopyFrom(_if_model([helper.make_node("Identity", ["w"], ["t"])],
                                                           [_weights()]).graph)
    return _bytes(model)


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind, at = rng.randrange(5), rng.randrange(len(data) + 1)
        if kind == 0 and at < len(data):
            data[at] = rng.randrange(256)
        elif kind == 1 and at < len(data):
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 2:
            del data[at:at + rng.randint(1, 16)]
        elif kind == 3:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            data = data[:at]
    return bytes(data)


def test_random_mutations_give_an_edge_error_or_a_summary():
    """Seeded fuzzing: the guard may accept or refuse, but never raise anything but EdgeError."""
    rng, model = random.Random(20240607), _rich_model()
    assert _code(model) == (None, "")
    codes = set()
    for case in range(3000):
        data = _mutate(rng, model) if case % 4 else bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        try:
            check_model_safety(data, ORT)
            codes.add(None)
        except EdgeError as exc:
            codes.add(exc.code)
    assert ErrorCode.INVALID_MODEL in codes and ErrorCode.TENSOR_SIZE_MISMATCH in codes


# ---- every model the host exports passes ----
@pytest.mark.parametrize("number_format", ["fp16", "fp32"])
def test_every_model_the_host_exports_passes(number_format):
    pytest.importorskip("torch")
    pytest.importorskip("onnxconverter_common")
    import torch

    from host_trainer.method.export import to_onnx_bytes
    from host_trainer.models.registry import BUILTIN_MODELS, build_model

    for ref in BUILTIN_MODELS:
        torch.manual_seed(0)
        model = build_model(ref, 10, (1, 32, 32)).eval()
        data = to_onnx_bytes(model, (1, 32, 32), number_format, "logits")
        for policy in (ORT, TRT):
            summary = check_model_safety(data, policy)
            assert summary.tensors > 0 and summary.nodes > 0, ref
