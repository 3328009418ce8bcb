"""The per-layer profiling pass: how long it runs, and what a backend hands back.

The pass runs after the timed window, on its own (ONNX Runtime: a second session with its
profiler on; TensorRT: an IProfiler on the execution context), because a profiler slows every
run down and would otherwise distort the headline fps and latencies. A backend's
``Engine.profile`` returns a :class:`RawProfile` (its own layer names and summed times);
:func:`finish_profile` turns that into the result's ``LayerTime`` entries, each mapped to the
nodes of the ONNX model as sent (``layer_map``).
"""

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, List, NamedTuple, Optional, Sequence, Tuple

from ..errors import EdgeError, ErrorCode
from ..onnxgraph import read_nodes
from ..protocol import LayerTime
from .layer_map import assign_nodes

Clock = Callable[[], float]
MAX_PROFILE_ERROR = 300


@dataclass
class ProfileSettings:
    """The profiling pass: ``warmup_runs`` discarded, then runs until both ``min_runs`` and
    ``min_seconds`` are reached, stopping anyway after ``max_runs`` or ``max_seconds`` (after at
    least one run), so a slow model adds at most about ``max_seconds`` to a job."""

    enabled: bool = True
    warmup_runs: int = 2
    min_runs: int = 20
    min_seconds: float = 0.3
    max_runs: int = 1000
    max_seconds: float = 3.0


class RawLayer(NamedTuple):
    """One layer or kernel as the runtime reports it; ``total_ms`` is summed over all measured runs."""

    name: str
    op: str
    total_ms: float
    # Node names the runtime itself recorded for this layer (TensorRT's layer metadata), or None
    # when it recorded nothing and the name must be matched against the graph instead.
    origin: Optional[Tuple[str, ...]] = None


class RawProfile(NamedTuple):
    layers: List[RawLayer]  # in execution order
    runs: int


def profile_option(value: Any) -> bool:
    """The ``profile`` option of a job or of measure_model: true (default) or false."""
    if value is None:
        return True
    if not isinstance(value, bool):
        raise EdgeError(ErrorCode.BAD_INPUT, f"option 'profile' must be true or false (got {value!r})")
    return value


def run_pass(run_once: Callable[[], object], settings: ProfileSettings, clock: Clock = time.perf_counter,
             measuring: Optional[Callable[[], None]] = None) -> int:
    """Warm up, call ``measuring()`` (the backend forgets what the warm-up reported), then run
    the measured runs; returns how many there were."""
    for _ in range(max(0, int(settings.warmup_runs))):
        run_once()
    if measuring is not None:
        measuring()
    runs, start = 0, clock()
    while True:
        run_once()
        runs += 1
        elapsed = clock() - start
        if runs >= settings.max_runs or elapsed >= settings.max_seconds:
            return runs
        if runs >= settings.min_runs and elapsed >= settings.min_seconds:
            return runs


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
    text = " ".join(str(text).split()) or type(exc).__name__
    return text if len(text) <= MAX_PROFILE_ERROR else text[:MAX_PROFILE_ERROR - 3] + "..."
