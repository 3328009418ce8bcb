"""What a backend allows a model to declare: opset domains and versions (docs/model-safety.md).

Each backend names its ``model_policy``; ``check_policy`` compares it with what model_guard found in the
model (``ModelSummary``) and raises OPSET_NOT_ALLOWED for anything outside it.
"""

from typing import FrozenSet, Mapping, NamedTuple, Tuple

from ..errors import EdgeError, ErrorCode, printable


class ModelPolicy(NamedTuple):
    """What a backend accepts: opset domain ("" is the default ai.onnx) -> (min, max) version."""

    backend: str
    opsets: Mapping[str, Tuple[int, int]]


# The newest ai.onnx opset when this was written (onnx 1.23). A ceiling, not a promise: a runtime
# still refuses an opset it does not implement (UNSUPPORTED_OP); this one keeps absurd versions out.
MAX_ONNX_OPSET = 28


class ModelSummary(NamedTuple):
    """What the check learned, for check_policy and for logs."""

    opsets: Tuple[Tuple[str, int], ...]  # (domain, version) of the model's and its functions' opset_import
    ops: FrozenSet[Tuple[str, str]]  # (domain, op_type) of every node, subgraphs and functions included
    functions: FrozenSet[Tuple[str, str]]  # (domain, name) of the model's own functions
    graphs: int
    nodes: int
    tensors: int


def _refuse(policy: ModelPolicy, what: str) -> EdgeError:
    allowed = ", ".join(f"'{d or 'ai.onnx'}' {lo}..{hi}" for d, (lo, hi) in sorted(policy.opsets.items()))
    return EdgeError(ErrorCode.OPSET_NOT_ALLOWED, f"{what} is not allowed on {policy.backend} (allowed: {allowed})")


def check_policy(summary: ModelSummary, policy: ModelPolicy) -> None:
    """Raise OPSET_NOT_ALLOWED for a domain or version the backend does not declare."""
    own = {domain for domain, _ in summary.functions}  # the model's own function domains
    for domain, version in summary.opsets:
        span = policy.opsets.get(domain)
        if span is None and domain not in own:
            raise _refuse(policy, f"opset domain '{printable(domain or 'ai.onnx')}'")
        if span is not None and not span[0] <= version <= span[1]:
            raise _refuse(policy, f"opset '{printable(domain or 'ai.onnx')}' version {version}")
    imported = {domain for domain, _ in summary.opsets}
    for domain, op in sorted(summary.ops):
        if (domain, op) in summary.functions:
            continue  # a call to one of the model's own functions, whose bodies are checked as nodes too
        label = f"node {printable(op)} of domain '{printable(domain or 'ai.onnx')}'"
        if domain not in policy.opsets:
            raise _refuse(policy, label)
        if domain not in imported:
            raise EdgeError(ErrorCode.OPSET_NOT_ALLOWED, f"{label} has no opset_import for its domain")
