"""The result's per-layer profile: a backend's :class:`RawProfile` (``backends/profiling.py``, the pass
itself) turned into ``LayerTime`` entries, each mapped to the nodes of the ONNX model as sent
(``layer_map``).
"""

import math
from typing import Any, List, Optional, Sequence

from ..backends.profiling import RawProfile
from ..errors import EdgeError, ErrorCode, clip_line
from ..onnxgraph import read_nodes
from ..protocol import LayerTime
from .layer_map import assign_nodes

MAX_PROFILE_ERROR = 300


def profile_option(value: Any) -> bool:
    """The ``profile`` option of a job or of measure_model: true (default) or false."""
    if value is None:
        return True
    if not isinstance(value, bool):
        raise EdgeError(ErrorCode.BAD_INPUT, f"option 'profile' must be true or false (got {value!r})")
    return value


def entries(raw: RawProfile, nodes: Optional[Sequence[Any]]) -> List[LayerTime]:
    """LayerTime per raw layer: mean ms per run, share of the total, and the ONNX nodes it covers."""
    if raw.runs < 1 or not raw.layers:
        raise EdgeError(ErrorCode.INTERNAL, "the profiler reported no layers")
    total = sum(layer.total_ms for layer in raw.layers)
    covered = assign_nodes(raw.layers, nodes) if nodes is not None else [[] for _ in raw.layers]
    out = []
    for layer, names in zip(raw.layers, covered):
        ms = layer.total_ms / raw.runs
        share = layer.total_ms / total if total > 0 else 0.0
        out.append(LayerTime(layer.name, layer.op, float(ms), float(share) if math.isfinite(share) else 0.0, names))
    return out


def finish_profile(raw: RawProfile, model_bytes: bytes) -> List[LayerTime]:
    """Entries for a result; the node mapping needs the model's graph, read without onnx."""
    return entries(raw, read_nodes(model_bytes))


def error_line(exc: BaseException) -> str:
    """A one-line ``profile_error``: the EdgeError's message, or the exception's type and text."""
    text = exc.message if isinstance(exc, EdgeError) else f"{type(exc).__name__}: {exc}"
    return clip_line(text, MAX_PROFILE_ERROR) or type(exc).__name__
