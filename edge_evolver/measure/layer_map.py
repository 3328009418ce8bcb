"""Which nodes of the ONNX model as sent each profiled layer or kernel computes.

Runtimes rename what they execute. ONNX Runtime's optimiser fuses Conv+Relu into a kernel named
after the Conv (``FusedConv``) or, in its NCHWc layout, after the *output tensor* of the last
fused node (``/features/features.16/Relu_output_0_nchwc``), wraps it in prefixes
(``InsertedPrecisionFreeCast_...``, ``fused /fc1/Gemm``), adds kernels of its own
(``ReorderInput_token_18``) and calls an unnamed node ``<op_type>_<position>``. TensorRT joins
fused nodes with `` + ``, wraps pointwise fusions in ``PWN(...)``, names Myelin regions
``{ForeignNode[first...last]}``, calls unnamed nodes ``node_of_<output>`` and inserts
``Reformatting CopyNode ...`` layers. Hence:

1. A node is *named* by a layer when its name, or one of its output tensors' names, occurs in the
   layer's name at name boundaries (no letter or digit on both sides of the cut). Longer matches
   win over shorter ones inside them (``/Relu_1`` over ``/Relu``), and ``_token_N`` and
   ``(Unnamed Layer* N)`` are removed first so that numeric tensor names do not match them.
2. When a named node is an activation, BatchNormalization, Add, Cast, ... (``_PASS_OPS``) but the
   kernel's op type is a different one (an NCHWc ``Conv`` named after a Relu's output), the
   Conv/Gemm/MatMul feeding it is covered too (with the ops in between), walking back through
   single-input ones; a kernel of the Conv/Gemm's own op (``FusedConv``, ``Conv``) named after it
   also covers the activation and Add chain it may have absorbed (each step the sole consumer of
   the one before; when the runtime did not fuse them, their own kernels name them and win, see
   4; of two Convs feeding one residual Add, the later one fused it).
3. A data-movement kernel (``Cast``, ``ReorderInput``, ...) covers only nodes of its own op type:
   ``InsertedPrecisionFreeCast_/x/Relu_output_0`` converts the Relu's output, it does not compute it.
4. Each node is then given to the one layer with the best claim: the op types agree (``FusedConv``
   and ``Conv``), then named by node name over by output name over reached by a walk, then the
   earlier layer. So every node is in at most one layer's ``nodes``.

Layers whose runtime recorded their nodes (``RawLayer.origin``, TensorRT's metadata) use those;
layout conversions (``Reformat``) cover no node.

The search in 1. is bounded, since its work grows with the length of the names: only names and output names
of at most MAX_MATCH characters are looked for, and only in the first MAX_SCAN characters of a layer's name
(real names are under 100 characters; 48 layers named with 4,000 characters once took 340 s). A longer name
still counts where the runtime recorded it (``origin``) or as an end of a ``ForeignNode[...]`` in the scanned part.
"""

import re
from typing import Any, Dict, Iterable, List, Sequence, Set, Tuple

COMPUTE_OPS = frozenset(("Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger",
                         "QLinearConv", "QLinearMatMul"))
# Single-output element-wise ops that runtimes fuse into the Conv/Gemm/MatMul that feeds them.
_PASS_OPS = frozenset(("Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                       "Elu", "Selu", "Softplus", "Gelu", "Mish", "BatchNormalization", "Add", "Sum", "Sub",
                       "Mul", "Div", "Cast", "Identity"))
# What a fused Conv/Gemm kernel absorbs after it (ONNX Runtime: activation, Sum; TensorRT names them).
_FUSABLE = _PASS_OPS - {"Cast", "Identity"}
# Kernels that only move or convert data: they never compute the node whose tensor they carry.
_MOVE_OPS = frozenset(("Cast", "ReorderInput", "ReorderOutput", "Reformat", "Transpose", "Identity", "Reshape",
                       "Flatten", "Squeeze", "Unsqueeze", "Copy", "MemcpyToHost", "MemcpyFromHost"))
_WALK_DEPTH = 8
MAX_MATCH = 256
MAX_SCAN = 1024
_FUSED_CHAIN = 3  # activation chain a fused kernel absorbs at most (Conv -> Add -> Relu)
# Claim strength of a (layer, node) pair, besides op agreement.
_BY_NAME, _BY_OUTPUT, _BY_WALK, _BY_CHAIN = 3, 2, 1, 0
_NOISE = re.compile(r"_token_\d+|\(Unnamed Layer\* \d+\)")
_FOREIGN = re.compile(r"ForeignNode\[(.+?)\.\.\.(.+?)\]")
# A kernel's op and a node's op_type agree when one contains the other, or by these aliases.
_ALIASES = {"gemm": ("matmul", "fullyconnected", "matrixmultiply"), "matmul": ("gemm", "matrixmultiply")}


class GraphIndex:
    """Lookups over the graph's nodes (OnnxNode-like: name, op_type, inputs, outputs)."""

    def __init__(self, nodes: Sequence[Any]) -> None:
        self.nodes = list(nodes)
        self.by_name: Dict[str, List[int]] = {}
        self.producer: Dict[str, int] = {}
        self.consumers: Dict[str, List[int]] = {}
        for index, node in enumerate(self.nodes):
            if node.name:
                self.by_name.setdefault(node.name, []).append(index)
        for index, node in enumerate(self.nodes):
            # ONNX Runtime calls an unnamed node "<op_type>_<position>"; a real name of that form wins.
            if not node.name and f"{node.op_type}_{index}" not in self.by_name:
                self.by_name[f"{node.op_type}_{index}"] = [index]
            for output in node.outputs:
                if output:
                    self.producer.setdefault(output, index)
            for tensor in node.inputs:
                self.consumers.setdefault(tensor, []).append(index)
        self.names = frozenset(text for text in list(self.by_name) + list(self.producer) if len(text) <= MAX_MATCH)
        self.longest = max([len(text) for text in self.names] or [0])

    def label(self, index: int) -> str:
        """How a node is listed: its name, or its first output when it has none."""
        node = self.nodes[index]
        return node.name or (node.outputs[0] if node.outputs else f"#{index}")

    def resolve(self, text: str) -> List[Tuple[int, int]]:
        """(node index, claim kind) of the nodes that ``text`` names exactly."""
        found = [(index, _BY_NAME) for index in self.by_name.get(text, [])]
        if text.startswith("node_of_"):  # TensorRT's name for an unnamed node
            text = text[len("node_of_"):]
        if text in self.producer:
            found.append((self.producer[text], _BY_OUTPUT))
        return found


def _boundaries(text: str) -> List[int]:
    """Positions where a name may start or end: the ends, and next to any non-alphanumeric char."""
    cuts = [0]
    for pos in range(1, len(text)):
        if not (text[pos - 1].isalnum() and text[pos].isalnum()):
            cuts.append(pos)
    cuts.append(len(text))
    return cuts


def named_nodes(text: str, index: GraphIndex) -> List[Tuple[int, int]]:
    """(node index, claim kind) of every node named in ``text``, longest names first."""
    text = _NOISE.sub(" ", text)
    cuts = _boundaries(text[:MAX_SCAN])
    if len(text) > MAX_SCAN:  # the cut there is where the scan stops, not a name boundary
        text = text[:MAX_SCAN]
        cuts.pop()
    spans = []
    for i, start in enumerate(cuts):
        for end in cuts[i + 1:]:
            if end - start > index.longest:
                break
            piece = text[start:end]
            if piece in index.names or (piece.startswith("node_of_") and piece[8:] in index.producer):
                spans.append((start, end))
    spans.sort(key=lambda span: (span[0] - span[1], span[0]))
    taken = [False] * (len(text) + 1)
    found: List[Tuple[int, int]] = []
    for start, end in spans:
        if not any(taken[start:end]):
            taken[start:end] = [True] * (end - start)
            found.extend(index.resolve(text[start:end]))
    return found + _foreign_ranges(text, index)


def _foreign_ranges(text: str, index: GraphIndex) -> List[Tuple[int, int]]:
    """Every node between the two ends of a TensorRT ``ForeignNode[first...last]`` region."""
    found: List[Tuple[int, int]] = []
    for match in _FOREIGN.finditer(text):
        first = [i for i, _ in index.resolve(match.group(1))]
        last = [i for i, _ in index.resolve(match.group(2))]
        if first and last and min(first) <= max(last):
            found.extend((i, _BY_OUTPUT) for i in range(min(first), max(last) + 1))
    return found


def agrees(layer_op: str, node_op: str) -> bool:
    a, b = layer_op.lower(), node_op.lower()
    return bool(a and b) and (b in a or a in b or any(alias in a for alias in _ALIASES.get(b, ())))


def producers(start: int, index: GraphIndex) -> Tuple[List[int], List[int]]:
    """(Conv/Gemm/MatMul nodes feeding ``start`` through pass-through ops, the pass-through ops on
    the way); a bounded walk. A multi-input op (Add) contributes its direct compute producers only,
    so a residual Add never walks on into the previous block."""
    found: List[int] = []
    passed: List[int] = []
    frontier = [start]
    for _ in range(_WALK_DEPTH):
        following = []
        for current in frontier:
            fed = [index.producer[t] for t in index.nodes[current].inputs if t in index.producer]
            for node in fed:
                op = index.nodes[node].op_type
                if op in COMPUTE_OPS and node not in found:
                    found.append(node)
                elif op in _PASS_OPS and len(fed) == 1 and node not in passed and node != start:
                    passed.append(node)
                    following.append(node)
        frontier = following
    return found, (passed if found else [])


def fused_chain(start: int, index: GraphIndex) -> List[int]:
    """The pass-through ops after a Conv/Gemm that a fused kernel absorbs: each the sole consumer of
    the sole output before it (Conv -> Relu, Conv -> Add -> Relu)."""
    chain: List[int] = []
    current = start
    for _ in range(_FUSED_CHAIN):
        outputs = index.nodes[current].outputs
        users = index.consumers.get(outputs[0], []) if len(outputs) == 1 else []
        if len(users) != 1 or index.nodes[users[0]].op_type not in _FUSABLE or users[0] in chain:
            break
        current = users[0]
        chain.append(current)
    return chain


def _claims(layer: Any, index: GraphIndex) -> List[Tuple[int, int]]:
    """(node index, claim kind) for one layer, walks included; none for a reformat."""
    if layer.name.startswith("Reformatting CopyNode") or "reformat" in layer.op.lower():
        return []  # TensorRT's layout/precision conversions compute no node of the model
    if layer.origin is not None:
        return [claim for name in layer.origin for claim in index.resolve(name)]
    claims = named_nodes(layer.name, index)
    if layer.op in _MOVE_OPS:
        return [(node, kind) for node, kind in claims if agrees(layer.op, index.nodes[node].op_type)]
    walked: List[Tuple[int, int]] = []
    for node, _ in claims:
        op = index.nodes[node].op_type
        if op in _PASS_OPS and not agrees(layer.op, op):
            computes, between = producers(node, index)
            walked.extend((other, _BY_WALK) for other in computes + between)
        elif op in COMPUTE_OPS and agrees(layer.op, op):
            walked.extend((follower, _BY_CHAIN) for follower in fused_chain(node, index))
    return claims + walked


def assign_nodes(layers: Sequence[Any], nodes: Iterable[Any]) -> List[List[str]]:
    """For each layer (RawLayer-like: name, op, origin), the labels of the nodes it covers, in graph
    order; each node goes to at most one layer (see the module docstring)."""
    index = GraphIndex(list(nodes))
    best: Dict[int, Tuple[Tuple[int, int, int], int]] = {}
    for position, layer in enumerate(layers):
        for node, kind in _claims(layer, index):
            # Equal claims: the earlier layer, but for a fused chain the later one (a residual Add
            # is fused into the Conv that runs after the other branch is ready).
            order = position if kind == _BY_CHAIN else -position
            score = (int(agrees(layer.op, index.nodes[node].op_type)), kind, order)
            if node not in best or score > best[node][0]:
                best[node] = (score, position)
    covered: List[Set[int]] = [set() for _ in layers]
    for node, (_, position) in best.items():
        covered[position].add(node)
    return [[index.label(node) for node in sorted(chosen)] for chosen in covered]
