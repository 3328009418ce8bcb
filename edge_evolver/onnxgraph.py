"""The node list of an ONNX model, read straight from its protobuf bytes (no onnx package).

A board has no ``onnx`` package (JetPack ships none for Python 3.6, and it is large), yet the
per-layer profile must name the nodes of the model the host exported. This is a minimal reader
of the protobuf wire format for exactly the fields that needs::

    ModelProto.graph (7) -> GraphProto.node (1) -> NodeProto.input (1), output (2), name (3),
                                                   op_type (4), domain (7)

Everything else (initializers, attributes, subgraphs, doc strings) is skipped by its length
without being decoded. The reader never recurses (the nesting is fixed at three levels), every
length is checked against the bytes that remain, and every malformed input (truncated, corrupt,
groups, invalid UTF-8, no graph) raises :class:`OnnxGraphError`, a ``ValueError``. It is meant
to be reused for checks of untrusted models, so it must never hang, recurse or over-read.
"""

from typing import Iterator, List, NamedTuple, Optional, Tuple

# Protobuf wire types.
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_MAX_VARINT_BYTES = 10  # a 64-bit varint takes at most 10 bytes

# Field numbers in onnx.proto (stable since IR version 1).
_MODEL_GRAPH = 7
_GRAPH_NODE = 1
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE, _NODE_DOMAIN = 1, 2, 3, 4, 7
_NODE_STRINGS = {_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP_TYPE, _NODE_DOMAIN}


class OnnxGraphError(ValueError):
    """The bytes are not a readable ONNX model (truncated, corrupt, or without a graph)."""


class OnnxNode(NamedTuple):
    name: str  # "" when the exporter left the node unnamed
    op_type: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    domain: str = ""  # "" is the default ONNX domain


Span = Tuple[int, int]  # [start, end) of a length-delimited field's payload


def _varint(data: memoryview, pos: int, end: int) -> Tuple[int, int]:
    """(value, position after it); at most 10 bytes, never past ``end``."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise OnnxGraphError(f"truncated varint at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, pos
    raise OnnxGraphError(f"varint longer than {_MAX_VARINT_BYTES} bytes before byte {pos}")


def _fields(data: memoryview, start: int, end: int,
            budget: Optional[List[int]] = None) -> Iterator[Tuple[int, int, Span]]:
    """(field number, wire type, payload span) of each field in data[start:end], in order.

    ``budget``: a one-item list of how many more fields may be read, shared by all the calls of
    one check and decremented in place, so that hostile bytes made of tiny fields cannot buy
    seconds of Python per megabyte.

    For varint and fixed-size fields the span covers the value's own bytes (decode a varint
    with ``_varint(data, *span)``); for length-delimited fields it is the payload. Shared with
    measure/model_guard.py, which needs varint values (dims, data types, opset versions).
    """
    pos = start
    while pos < end:
        if budget is not None:
            budget[0] -= 1
            if budget[0] < 0:
                raise OnnxGraphError(f"more protobuf fields than the check reads (limit reached at byte {pos})")
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxGraphError(f"field number 0 at byte {pos}: not protobuf")
        if wire == _VARINT:
            value_start = pos
            _, pos = _varint(data, pos, end)
            span = (value_start, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > end:
                raise OnnxGraphError(f"truncated fixed-size field {number} at byte {pos}")
            span = (pos, pos + size)
            pos += size
        elif wire == _LENGTH:
            length, pos = _varint(data, pos, end)
            if length > end - pos:
                raise OnnxGraphError(f"field {number} claims {length} bytes, only {end - pos} remain at byte {pos}")
            span = (pos, pos + length)
            pos += length
        else:  # 3/4 are the deprecated groups, 6/7 do not exist: no ONNX model has them
            raise OnnxGraphError(f"unsupported wire type {wire} for field {number} at byte {pos}")
        yield number, wire, span


# Shared with measure/model_guard.py: a field read with another wire type is not the model we expect.
def _want(wire: int, expected: int, number: int, owner: str) -> None:
    if wire != expected:
        raise OnnxGraphError(f"{owner} field {number} has wire type {wire}, expected {expected}")


def _value(data: memoryview, wire: int, span: Span, number: int, owner: str) -> int:
    _want(wire, _VARINT, number, owner)
    return _varint(data, span[0], span[1])[0]


def _varints(data: memoryview, wire: int, span: Span, number: int, owner: str) -> List[int]:
    """A repeated varint field's values from one occurrence, packed or not."""
    if wire == _VARINT:
        return [_varint(data, span[0], span[1])[0]]
    _want(wire, _LENGTH, number, owner)
    values, pos = [], span[0]
    while pos < span[1]:
        value, pos = _varint(data, pos, span[1])
        values.append(value)
    return values


def _text(data: memoryview, span: Span) -> str:
    try:
        return bytes(data[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise OnnxGraphError(f"a name at byte {span[0]} is not UTF-8") from None


def _node(data: memoryview, span: Span) -> OnnxNode:
    strings: dict = {number: [] for number in _NODE_STRINGS}
    for number, wire, field in _fields(data, span[0], span[1]):
        if number in _NODE_STRINGS:
            if wire != _LENGTH:
                raise OnnxGraphError(f"NodeProto field {number} has wire type {wire}, not a string")
            strings[number].append(_text(data, field))

    def last(number: int) -> str:  # a repeated scalar field: the last value wins, as in protobuf
        values = strings[number]
        return values[-1] if values else ""

    return OnnxNode(last(_NODE_NAME), last(_NODE_OP_TYPE), tuple(strings[_NODE_INPUT]),
                    tuple(strings[_NODE_OUTPUT]), last(_NODE_DOMAIN))


def _length_field(number: int, wire: int, owner: str) -> None:
    if wire != _LENGTH:
        raise OnnxGraphError(f"{owner} field {number} has wire type {wire}, not a message")


def read_nodes(model: bytes) -> List[OnnxNode]:
    """The main graph's nodes, in file order (topological for any valid ONNX model).

    Subgraphs (If/Loop bodies) and functions are not included. Raises OnnxGraphError when the
    bytes are not a model with a graph; a graph without nodes gives an empty list.
    """
    data = memoryview(bytes(model))
    graphs: List[Span] = []
    for number, wire, span in _fields(data, 0, len(data)):
        if number == _MODEL_GRAPH:
            _length_field(number, wire, "ModelProto")
            graphs.append(span)
    if not graphs:
        raise OnnxGraphError("no graph in the model (ModelProto field 7 is missing)")
    nodes = []
    for graph in graphs:  # a message field given twice is merged: the node lists concatenate
        for number, wire, span in _fields(data, graph[0], graph[1]):
            if number == _GRAPH_NODE:
                _length_field(number, wire, "GraphProto")
                nodes.append(_node(data, span))
    return nodes
