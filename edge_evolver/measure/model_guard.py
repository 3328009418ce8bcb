"""The model safety check: what a job's ONNX bytes may hold before any runtime sees them.

A tensor may keep its bytes in an external file (``data_location`` EXTERNAL, ``external_data``
``location`` = a path) that ONNX Runtime and TensorRT, given bytes, read relative to the working
directory: a hostile job could read any file of the board and get it back in its agreement errors.
This check needs neither ``onnx`` (JetPack 4.6 has none) nor a runtime. It visits every tensor the
format can hold (initializers, sparse initializers, attributes t/tensors/sparse_tensor(s), If/Loop/
Scan subgraphs, functions, training graphs) and raises EdgeError with EXTERNAL_DATA, TENSOR_SIZE_MISMATCH
(dims x element size vs the bytes present; negative dims; products over int64; segments),
INVALID_MODEL (not a model, unknown data_type, wrong wire types, nesting over MAX_GRAPH_DEPTH, over
MAX_FIELDS fields) or, in model_policy.check_policy, OPSET_NOT_ALLOWED (outside the backend's ModelPolicy).
An explicit stack of graphs (no recursion) and payloads skipped by their checked length keep the work
linear and bounded. EXTERNAL_DATA wins: other findings wait until the whole model was scanned.
Field numbers are onnx.proto's; tests/test_model_guard.py compares them with onnx's descriptors.
See docs/model-safety.md.
"""

from typing import Dict, List, NamedTuple, Optional, Set, Tuple

from ..backends.model_policy import ModelPolicy, ModelSummary, check_policy
from ..errors import EdgeError, ErrorCode, printable
from ..onnxgraph import _FIXED32, _FIXED64, _LENGTH, _VARINT, OnnxGraphError, Span, _fields, _value, _varints, _want

MAX_GRAPH_DEPTH = 16  # If/Loop bodies nest a few levels in real models; protobuf's own limit is 100
# Fields read per model, at most: ~0.7 us each in CPython on x86, so at most ~1.5 s for a hostile
# model of tiny fields; a legitimate model reads ~5-10 per node (200 000 nodes still pass).
MAX_FIELDS = 2000000
INT64_MAX = 2 ** 63 - 1
_HIGH_BYTES = bytes(range(0x80, 0x100))  # a packed varint ends at each byte without the high bit

MODEL_GRAPH, MODEL_OPSET_IMPORT, MODEL_TRAINING_INFO, MODEL_FUNCTIONS = 7, 8, 20, 25
OPSET_DOMAIN, OPSET_VERSION = 1, 2
GRAPH_NODE, GRAPH_NAME, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 2, 5, 15
NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 3, 4, 5, 7
ATTR_NAME, ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 1, 5, 6, 10, 11, 22, 23
FUNCTION_NAME, FUNCTION_NODE, FUNCTION_OPSET_IMPORT, FUNCTION_DOMAIN, FUNCTION_ATTRIBUTE_PROTO = 1, 7, 9, 10, 11
TRAINING_INITIALIZATION, TRAINING_ALGORITHM = 1, 2
SPARSE_VALUES, SPARSE_INDICES, SPARSE_DIMS = 1, 2, 3
ENTRY_KEY, ENTRY_VALUE = 1, 2
(TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_SEGMENT, TENSOR_FLOAT_DATA, TENSOR_INT32_DATA, TENSOR_STRING_DATA,
 TENSOR_INT64_DATA, TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_DOUBLE_DATA, TENSOR_UINT64_DATA) = range(1, 12)
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
LOCATION_DEFAULT, LOCATION_EXTERNAL = 0, 1

# Typed data fields: the wire type of one unpacked entry, and the bytes of one packed entry
# (0: packed varints, counted by their last bytes; None: string_data, never packed).
_TYPED = {TENSOR_FLOAT_DATA: (_FIXED32, 4), TENSOR_INT32_DATA: (_VARINT, 0), TENSOR_STRING_DATA: (_LENGTH, None),
          TENSOR_INT64_DATA: (_VARINT, 0), TENSOR_DOUBLE_DATA: (_FIXED64, 8), TENSOR_UINT64_DATA: (_VARINT, 0)}
_F, _I32, _S, _I64, _D, _U64 = (TENSOR_FLOAT_DATA, TENSOR_INT32_DATA, TENSOR_STRING_DATA, TENSOR_INT64_DATA,
                                TENSOR_DOUBLE_DATA, TENSOR_UINT64_DATA)


class DataType(NamedTuple):
    name: str
    bits: int  # per element in raw_data (0: STRING, which has no raw form)
    field: int  # the typed field that carries it otherwise
    per_entry: int  # elements per typed entry: 4-bit types pack 2 per int32, 2-bit types 4
    entries_per_element: int = 1  # COMPLEX types store 2 numbers per element


# onnx.proto's TensorProto.DataType, with the storage rules written next to it there.
DATA_TYPES = {
    1: DataType("FLOAT", 32, _F, 1), 2: DataType("UINT8", 8, _I32, 1), 3: DataType("INT8", 8, _I32, 1),
    4: DataType("UINT16", 16, _I32, 1), 5: DataType("INT16", 16, _I32, 1), 6: DataType("INT32", 32, _I32, 1),
    7: DataType("INT64", 64, _I64, 1), 8: DataType("STRING", 0, _S, 1), 9: DataType("BOOL", 8, _I32, 1),
    10: DataType("FLOAT16", 16, _I32, 1), 11: DataType("DOUBLE", 64, _D, 1), 12: DataType("UINT32", 32, _U64, 1),
    13: DataType("UINT64", 64, _U64, 1), 14: DataType("COMPLEX64", 64, _F, 1, 2),
    15: DataType("COMPLEX128", 128, _D, 1, 2), 16: DataType("BFLOAT16", 16, _I32, 1),
    17: DataType("FLOAT8E4M3FN", 8, _I32, 1), 18: DataType("FLOAT8E4M3FNUZ", 8, _I32, 1),
    19: DataType("FLOAT8E5M2", 8, _I32, 1), 20: DataType("FLOAT8E5M2FNUZ", 8, _I32, 1),
    21: DataType("UINT4", 4, _I32, 2), 22: DataType("INT4", 4, _I32, 2), 23: DataType("FLOAT4E2M1", 4, _I32, 2),
    24: DataType("FLOAT8E8M0", 8, _I32, 1), 25: DataType("UINT2", 2, _I32, 4), 26: DataType("INT2", 2, _I32, 4),
    27: DataType("FLOAT6E2M3", 6, _I32, 1), 28: DataType("FLOAT6E3M2", 6, _I32, 1),
}


def _domain(name: str) -> str:
    return "" if name == "ai.onnx" else name  # two spellings of the default domain


def _mismatch(message: str) -> EdgeError:
    return EdgeError(ErrorCode.TENSOR_SIZE_MISMATCH, message)


def _text(data: memoryview, span: Span) -> str:
    # proto2 strings are not UTF-8 checked by the runtimes, so a bad name is no reason to refuse
    return bytes(data[span[0]:span[1]]).decode("utf-8", "replace")


def _count(data: memoryview, wire: int, span: Span, number: int) -> int:
    """How many entries one occurrence of a typed data field holds, without decoding them."""
    unpacked, width = _TYPED[number]
    if wire == unpacked:
        return 1
    _want(wire, _LENGTH, number, "TensorProto")  # only string_data reaches here with its own wire type
    size = span[1] - span[0]
    if width == 0:
        if size and data[span[1] - 1] & 0x80:
            raise OnnxGraphError(f"TensorProto field {number} ends inside a varint")
        return len(bytes(data[span[0]:span[1]]).translate(None, _HIGH_BYTES))
    if width is None or size % width:
        raise OnnxGraphError(f"TensorProto field {number} holds {size} bytes, not whole entries")
    return size // width


def _entry(data: memoryview, span: Span, budget: List[int]) -> Tuple[str, str]:
    key = value = ""
    for number, wire, field in _fields(data, span[0], span[1], budget):
        if number in (ENTRY_KEY, ENTRY_VALUE):
            _want(wire, _LENGTH, number, "StringStringEntryProto")
            if number == ENTRY_KEY:
                key = _text(data, field)
            else:
                value = _text(data, field)
    return key, value


class _Tensor:
    """The fields of one TensorProto that decide where its bytes are and how many there are."""

    def __init__(self) -> None:
        self.dims: List[int] = []
        self.data_type = 0
        self.name = ""
        self.raw: Optional[int] = None  # length of raw_data; a bytes field given twice: the last wins
        self.counts: Dict[int, int] = {}
        self.segment = False
        self.location = LOCATION_DEFAULT
        self.external: List[Tuple[str, str]] = []


def _read_tensor(data: memoryview, span: Span, budget: List[int]) -> _Tensor:
    tensor, owner = _Tensor(), "TensorProto"
    for number, wire, field in _fields(data, span[0], span[1], budget):
        if number == TENSOR_DIMS:
            tensor.dims.extend(_varints(data, wire, field, number, owner))
        elif number == TENSOR_DATA_TYPE:
            tensor.data_type = _value(data, wire, field, number, owner)
        elif number == TENSOR_DATA_LOCATION:
            tensor.location = _value(data, wire, field, number, owner)
        elif number in _TYPED:
            tensor.counts[number] = tensor.counts.get(number, 0) + _count(data, wire, field, number)
        elif number in (TENSOR_NAME, TENSOR_RAW_DATA, TENSOR_EXTERNAL_DATA, TENSOR_SEGMENT):
            _want(wire, _LENGTH, number, owner)
            if number == TENSOR_NAME:
                tensor.name = _text(data, field)
            elif number == TENSOR_RAW_DATA:
                tensor.raw = field[1] - field[0]
            elif number == TENSOR_EXTERNAL_DATA:
                tensor.external.append(_entry(data, field, budget))
            else:
                tensor.segment = True
    return tensor


def _elements(tensor: _Tensor, label: str) -> int:
    """The product of the dims; refuses negative dims and products that overflow int64."""
    if any(dim > INT64_MAX for dim in tensor.dims):  # a negative int64 arrives as its 2^64 complement
        raise _mismatch(f"{label} has a negative dim")
    if 0 in tensor.dims:
        return 0
    count = 1
    for dim in tensor.dims:
        count *= dim
        if count > INT64_MAX:
            raise _mismatch(f"{label}: the product of its dims overflows int64")
    return count


def _check_external(tensor: _Tensor, label: str) -> None:
    if tensor.location not in (LOCATION_DEFAULT, LOCATION_EXTERNAL):
        raise EdgeError(ErrorCode.INVALID_MODEL, f"{label} has an unknown data_location {tensor.location}")
    if tensor.location == LOCATION_EXTERNAL or tensor.external:
        where = [value for key, value in tensor.external if key == "location"]
        path = repr(printable(where[-1])) if where else "no location given"
        raise EdgeError(ErrorCode.EXTERNAL_DATA, f"{label} keeps its data in an external file ({path}); "
                        "a job's model must carry all its weights")


def check_tensor(data: memoryview, span: Span, where: str, budget: List[int]) -> int:
    """Raise for one TensorProto whose bytes are external or disagree with its dims; its byte size."""
    tensor = _read_tensor(data, span, budget)
    label = f"tensor '{printable(tensor.name)}' ({where})"
    _check_external(tensor, label)
    kind = DATA_TYPES.get(tensor.data_type)
    if kind is None:
        raise EdgeError(ErrorCode.INVALID_MODEL, f"{label} has unknown data_type {tensor.data_type}")
    if tensor.segment:
        raise _mismatch(f"{label} is a segment of a larger tensor (not supported)")
    count = _elements(tensor, label)
    shape = f"dims {tensor.dims[:8]}{'...' if len(tensor.dims) > 8 else ''} of {kind.name}"
    typed = sum(tensor.counts.values())
    if tensor.raw is not None:
        expected = (count * kind.bits + 7) // 8
        if kind.bits == 0 or typed:
            raise _mismatch(f"{label} holds raw_data besides {'string_data' if kind.bits == 0 else 'typed data'}")
        if tensor.raw != expected:
            raise _mismatch(f"{label} declares {shape} ({expected} bytes) but raw_data holds {tensor.raw} bytes")
        return expected
    wanted = (count * kind.entries_per_element + kind.per_entry - 1) // kind.per_entry
    have = tensor.counts.get(kind.field, 0)
    if typed != have:
        raise _mismatch(f"{label} stores {kind.name} values in a field meant for another type")
    if have != wanted:
        raise _mismatch(f"{label} declares {shape} ({wanted} entries) but carries {have}")
    return (count * max(kind.bits, 8) + 7) // 8


class _Item(NamedTuple):
    """A graph or function body waiting on the explicit stack (no recursion)."""

    kind: str  # "graph" or "function"
    span: Span
    depth: int  # graphs enclosing it, itself included
    where: str


def _path(parent: str, part: str) -> str:
    text = f"{parent} > {part}" if parent else part
    return text if len(text) <= 240 else "..." + text[-237:]  # bounded: the message stays one line


class _Walk:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.stack: List[_Item] = []
        self.opsets: List[Tuple[str, int]] = []
        self.ops: Set[Tuple[str, str]] = set()
        self.functions: Set[Tuple[str, str]] = set()
        self.pending: Optional[EdgeError] = None  # the first non-external problem, raised at the end
        self.budget = [MAX_FIELDS]
        self.graphs = self.nodes = self.tensors = 0

    def fields(self, span: Span, owner: str, numbers: Tuple[int, ...]) -> Dict[int, List[Span]]:
        """The payloads of the message fields (or strings) ``numbers`` in ``span``; others skipped."""
        found: Dict[int, List[Span]] = {number: [] for number in numbers}
        for number, wire, field in _fields(self.data, span[0], span[1], self.budget):
            if number in found:
                _want(wire, _LENGTH, number, owner)
                found[number].append(field)
        return found

    def text(self, spans: List[Span]) -> str:
        return _text(self.data, spans[-1]) if spans else ""  # a string given twice: the last wins

    def tensor(self, span: Span, where: str) -> None:
        self.tensors += 1
        try:
            check_tensor(self.data, span, where, self.budget)
        except EdgeError as exc:
            if exc.code == ErrorCode.EXTERNAL_DATA:
                raise
            self.pending = self.pending or exc

    def sparse(self, span: Span, where: str) -> None:
        for number, wire, field in _fields(self.data, span[0], span[1], self.budget):
            if number in (SPARSE_VALUES, SPARSE_INDICES):
                _want(wire, _LENGTH, number, "SparseTensorProto")
                self.tensor(field, _path(where, "sparse values" if number == SPARSE_VALUES else "sparse indices"))
            elif number == SPARSE_DIMS and any(
                    dim > INT64_MAX for dim in _varints(self.data, wire, field, number, "SparseTensorProto")):
                self.pending = self.pending or _mismatch(f"sparse tensor ({where}) has a negative dim")

    def opset(self, span: Span) -> None:
        domain, version = "", 0
        for number, wire, field in _fields(self.data, span[0], span[1], self.budget):
            if number == OPSET_DOMAIN:
                _want(wire, _LENGTH, number, "OperatorSetIdProto")
                domain = _text(self.data, field)
            elif number == OPSET_VERSION:
                version = _value(self.data, wire, field, number, "OperatorSetIdProto")
        self.opsets.append((_domain(domain), version))

    def push(self, kind: str, span: Span, depth: int, where: str) -> None:
        if depth > MAX_GRAPH_DEPTH:
            raise EdgeError(ErrorCode.INVALID_MODEL, f"subgraphs nest deeper than {MAX_GRAPH_DEPTH} levels ({where})")
        self.stack.append(_Item(kind, span, depth, where))

    def attribute(self, span: Span, depth: int, where: str) -> None:
        found = self.fields(span, "AttributeProto", (ATTR_NAME, ATTR_T, ATTR_TENSORS, ATTR_SPARSE_TENSOR,
                                                     ATTR_SPARSE_TENSORS, ATTR_G, ATTR_GRAPHS))
        where = _path(where, f"attribute '{printable(self.text(found[ATTR_NAME]))}'")
        for field in found[ATTR_T] + found[ATTR_TENSORS]:
            self.tensor(field, where)
        for field in found[ATTR_SPARSE_TENSOR] + found[ATTR_SPARSE_TENSORS]:
            self.sparse(field, where)
        for field in found[ATTR_G] + found[ATTR_GRAPHS]:
            self.push("graph", field, depth + 1, where)

    def node(self, span: Span, depth: int, where: str) -> None:
        self.nodes += 1
        found = self.fields(span, "NodeProto", (NODE_NAME, NODE_OP_TYPE, NODE_DOMAIN, NODE_ATTRIBUTE))
        op_type = self.text(found[NODE_OP_TYPE])
        self.ops.add((_domain(self.text(found[NODE_DOMAIN])), op_type))
        if not found[NODE_ATTRIBUTE]:
            return  # most nodes: no tensor or graph inside, and no label to build
        where = _path(where, f"node '{printable(self.text(found[NODE_NAME]))}' ({printable(op_type)})")
        for field in found[NODE_ATTRIBUTE]:
            self.attribute(field, depth, where)

    def graph(self, item: _Item) -> None:
        self.graphs += 1
        found = self.fields(item.span, "GraphProto", (GRAPH_NAME, GRAPH_NODE, GRAPH_INITIALIZER,
                                                      GRAPH_SPARSE_INITIALIZER))
        where = _path(item.where, f"graph '{printable(self.text(found[GRAPH_NAME]))}'")
        for field in found[GRAPH_INITIALIZER]:
            self.tensor(field, _path(where, "initializer"))
        for field in found[GRAPH_SPARSE_INITIALIZER]:
            self.sparse(field, _path(where, "sparse initializer"))
        for field in found[GRAPH_NODE]:
            self.node(field, item.depth, where)

    def function(self, item: _Item) -> None:
        found = self.fields(item.span, "FunctionProto", (FUNCTION_NAME, FUNCTION_DOMAIN, FUNCTION_NODE,
                                                         FUNCTION_OPSET_IMPORT, FUNCTION_ATTRIBUTE_PROTO))
        name = self.text(found[FUNCTION_NAME])
        self.functions.add((_domain(self.text(found[FUNCTION_DOMAIN])), name))
        for field in found[FUNCTION_OPSET_IMPORT]:
            self.opset(field)
        where = _path(item.where, f"function '{printable(name)}'")
        for field in found[FUNCTION_ATTRIBUTE_PROTO]:  # default attribute values may hold tensors too
            self.attribute(field, item.depth, where)
        for field in found[FUNCTION_NODE]:
            self.node(field, item.depth, where)

    def model(self) -> None:
        found = self.fields((0, len(self.data)), "ModelProto", (MODEL_GRAPH, MODEL_OPSET_IMPORT,
                                                                 MODEL_TRAINING_INFO, MODEL_FUNCTIONS))
        if not found[MODEL_GRAPH]:
            raise OnnxGraphError("no graph in the model (ModelProto field 7 is missing)")
        for field in found[MODEL_OPSET_IMPORT]:
            self.opset(field)
        for field in found[MODEL_GRAPH]:  # a message field given twice is merged: both are read
            self.push("graph", field, 1, "")
        for field in found[MODEL_FUNCTIONS]:
            self.push("function", field, 0, "")
        for field in found[MODEL_TRAINING_INFO]:
            graphs = self.fields(field, "TrainingInfoProto", (TRAINING_INITIALIZATION, TRAINING_ALGORITHM))
            for graph in graphs[TRAINING_INITIALIZATION] + graphs[TRAINING_ALGORITHM]:
                self.push("graph", graph, 1, "training_info")

    def run(self) -> None:
        self.model()
        while self.stack:
            item = self.stack.pop()
            if item.kind == "graph":
                self.graph(item)
            else:
                self.function(item)


def inspect_model(model: bytes) -> ModelSummary:
    """Raise EXTERNAL_DATA, TENSOR_SIZE_MISMATCH or INVALID_MODEL; what the model declares otherwise."""
    if not model:
        raise EdgeError(ErrorCode.INVALID_MODEL, "model is empty (0 bytes)")
    walk = _Walk(memoryview(bytes(model)))
    try:
        walk.run()
    except OnnxGraphError as exc:
        raise EdgeError(ErrorCode.INVALID_MODEL, f"not an ONNX model: {exc}") from None
    if walk.pending is not None:
        raise walk.pending
    return ModelSummary(tuple(walk.opsets), frozenset(walk.ops), frozenset(walk.functions),
                        walk.graphs, walk.nodes, walk.tensors)


def check_model_safety(model: bytes, policy: ModelPolicy) -> ModelSummary:
    """The whole check: inspect_model, then check_policy. Raises only EdgeError."""
    summary = inspect_model(model)
    check_policy(summary, policy)
    return summary
