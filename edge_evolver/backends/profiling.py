"""The per-layer profiling pass a backend runs: how long it runs, and what it hands back.

The pass runs after the timed window, on its own (ONNX Runtime: a second session with its
profiler on; TensorRT: an IProfiler on the execution context), because a profiler slows every
run down and would otherwise distort the headline fps and latencies. A backend's
``Engine.profile`` returns a :class:`RawProfile` (its own layer names and summed times);
``measure/profile.py`` turns that into the result's ``LayerTime`` entries, each mapped to the
nodes of the ONNX model as sent (``measure/layer_map.py``).
"""

import time
from dataclasses import dataclass
from typing import Callable, List, NamedTuple, Optional, Tuple

Clock = Callable[[], float]


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
