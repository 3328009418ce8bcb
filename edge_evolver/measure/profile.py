"""The result's per-layer profile: a backend's :class:`RawProfile` (``backends/profiling.py``, the pass
itself) turned into ``LayerTime`` entries, each mapped to the nodes of the ONNX model as sent
(``layer_map``).

A result's profile is bounded whatever the model (docs/protocol.md, "Size bounds of a result"): at most
MAX_ENTRIES entries, the slowest, the rest summed into one last entry; at most MAX_NODES nodes per entry;
names and node labels of at most MAX_TEXT characters. The project's own models have at most 29 entries of at
most 3 nodes, named in under 100 characters, so the bounds only ever cut what a hostile model made.
"""

import math
from typing import Any, List, Optional, Sequence, Tuple

from ..backends.profiling import RawLayer, RawProfile
from ..errors import EdgeError, ErrorCode, clip_line
from ..onnxgraph import read_nodes
from ..protocol import LayerTime
from .layer_map import assign_nodes

MAX_PROFILE_ERROR = 300
MAX_ENTRIES = 64
MAX_NODES = 32
MAX_TEXT = 256


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
    return bounded_profile(raw, model_bytes)[0]


def bounded_profile(raw: RawProfile, model_bytes: bytes) -> Tuple[List[LayerTime], bool]:
    """Entries for a result within the size bounds (module docstring), and whether any bound cut something."""
    kept, fewer = slowest(raw)
    out = [_clipped(entry) for entry in entries(kept, read_nodes(model_bytes))]
    return [entry for entry, _ in out], fewer or any(cut for _, cut in out)


def slowest(raw: RawProfile) -> Tuple[RawProfile, bool]:
    """At most MAX_ENTRIES layers: the MAX_ENTRIES - 1 slowest in execution order, then one with the time of
    the rest, which covers no node (``origin`` empty). Chosen before the node mapping, whose work grows with
    the layers: a node that only a left-out layer named is listed nowhere."""
    layers = raw.layers
    if len(layers) <= MAX_ENTRIES:
        return raw, False
    order = sorted(range(len(layers)), key=lambda i: (-layers[i].total_ms, i))
    keep, rest = sorted(order[:MAX_ENTRIES - 1]), order[MAX_ENTRIES - 1:]
    other = RawLayer(f"(other: {len(rest)} entries)", "", sum(layers[i].total_ms for i in rest), ())
    return RawProfile([layers[i] for i in keep] + [other], raw.runs), True


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 3] + "..."


def _clipped(entry: LayerTime) -> Tuple[LayerTime, bool]:
    nodes = [_clip(name) for name in entry.nodes[:MAX_NODES]]
    out = LayerTime(_clip(entry.name), _clip(entry.op), entry.ms, entry.share, nodes)
    return out, (out.name, out.op, out.nodes) != (entry.name, entry.op, entry.nodes)


def error_line(exc: BaseException) -> str:
    """A one-line ``profile_error``: the EdgeError's message, or the exception's type and text."""
    text = exc.message if isinstance(exc, EdgeError) else f"{type(exc).__name__}: {exc}"
    return clip_line(text, MAX_PROFILE_ERROR) or type(exc).__name__
