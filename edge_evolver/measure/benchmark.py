"""The timing loop: a trtexec-like method for any ``infer()`` callable.

Method (mirrors trtexec's defaults in spirit):

1. Warm-up: call ``infer`` repeatedly for at least ``warmup_s`` seconds and discard those
   runs, so lazy allocations, kernel selection and CPU frequency ramp-up are not measured.
2. Timed window: call ``infer`` back to back until BOTH ``min_iterations`` calls and
   ``min_seconds`` have elapsed, stopping anyway once ``max_seconds`` have elapsed (or after
   MAX_ITERATIONS samples, which bounds memory for very fast models).
   Each call's latency is kept as a raw sample.
3. Throughput = inferences (iterations * batch) / wall time of the timed window.

Latencies are taken with one clock read per iteration (the end of one call is the start of
the next), so the samples add up exactly to the window's wall time and the loop adds only a
list append between calls.
"""

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import EdgeError, ErrorCode

Clock = Callable[[], float]

# Bounds that keep one measurement's memory and result size sane on a 4 GiB board: a million
# raw samples are ~30 MB in memory and ~20 MB as JSON (under the default 64 MB payload limit).
MAX_ITERATIONS = 1000000
MAX_SECONDS = 3600.0
# Raw samples a result carries (include_samples): the statistics use every sample, but a million of them
# would make a 20 MB result; 10,000 evenly spaced ones (~200 KB of JSON) still show the distribution and drift.
MAX_RESULT_SAMPLES = 10000

# Keys of BenchResult.to_dict(), in the order they are documented; the host's generation record
# (host_trainer/fleet/measurers.py) and the daemon's result payload rely on these names.
STAT_KEYS = ("mean", "p50", "p90", "p99", "min", "max")
RESULT_KEYS = (
    "fps",
    "latency_ms_mean",
    "latency_ms_p50",
    "latency_ms_p90",
    "latency_ms_p99",
    "latency_ms_min",
    "latency_ms_max",
    "iterations",
    "seconds",
    "batch",
    "warmup_seconds",
)


@dataclass
class BenchSettings:
    """How long to measure. ``batch`` only scales throughput; the caller builds the inputs."""

    batch: int = 1
    warmup_s: float = 0.2
    min_iterations: int = 200
    min_seconds: float = 1.0
    max_seconds: float = 30.0

    def validate(self) -> None:
        """Raise EdgeError(BAD_INPUT) for settings the loop cannot honour."""
        problems = []
        for name in ("batch", "min_iterations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                problems.append(f"{name} must be an integer >= 1 (got {value!r})")
        if isinstance(self.min_iterations, (int, np.integer)) and self.min_iterations > MAX_ITERATIONS:
            problems.append(f"min_iterations must be <= {MAX_ITERATIONS} (got {self.min_iterations!r})")
        for name in ("warmup_s", "min_seconds", "max_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name} must be a finite number (got {value!r})")
            elif value < 0 or value > MAX_SECONDS:
                problems.append(f"{name} must be between 0 and {MAX_SECONDS:g} (got {value!r})")
        if not problems and (self.max_seconds <= 0 or self.max_seconds < self.min_seconds):
            problems.append(f"max_seconds must be > 0 and >= min_seconds (got {self.max_seconds!r})")
        if problems:
            raise EdgeError(ErrorCode.BAD_INPUT, "; ".join(problems))


@dataclass
class BenchResult:
    """Raw samples plus the statistics derived from them (all latencies in milliseconds)."""

    latencies_ms: List[float]
    iterations: int
    seconds: float
    batch: int
    warmup_iterations: int
    fps: float
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    warmup_seconds: float = field(default=0.0)

    def to_dict(self, include_samples: bool = False) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "fps": self.fps,
            "iterations": self.iterations,
            "seconds": self.seconds,
            "batch": self.batch,
            "warmup_seconds": self.warmup_seconds,
        }
        for key in STAT_KEYS:
            out["latency_ms_" + key] = getattr(self, key)
        if include_samples:
            out["latencies_ms"], out["samples_truncated"] = even_subsample(self.latencies_ms)
        return out


def even_subsample(samples: Sequence[float], limit: int = MAX_RESULT_SAMPLES) -> Tuple[List[float], bool]:
    """At most ``limit`` of ``samples``, evenly spaced in time with the first and the last kept, and whether
    any were left out."""
    if len(samples) <= limit:
        return [float(value) for value in samples], False
    picks = np.linspace(0, len(samples) - 1, num=max(1, limit)).round().astype(np.int64)
    return [float(samples[int(i)]) for i in picks], True


def summarize(latencies_ms: Sequence[float]) -> Dict[str, float]:
    """Statistics of latency samples: mean, p50, p90, p99, min, max (same unit as input).

    Percentiles use numpy's default method, linear interpolation between the two closest
    ranks (``np.percentile`` default on every numpy since 1.x), i.e. for sorted samples
    x[0..n-1] the p-th percentile is at fractional rank (n - 1) * p / 100. The argument is
    left at its default because its name changed (``interpolation`` -> ``method``) in 1.22.
    """
    if len(latencies_ms) == 0:
        raise ValueError("summarize() needs at least one sample")
    samples = np.asarray(latencies_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(samples, [50.0, 90.0, 99.0])
    # Plain floats, so results serialise with json and compare cleanly in tests.
    return {
        "mean": float(samples.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "min": float(samples.min()),
        "max": float(samples.max()),
    }


def throughput(iterations: int, batch: int, seconds: float) -> float:
    """Inferences per second; 0.0 when no time elapsed (only possible with a fake clock)."""
    if seconds <= 0:
        return 0.0
    return iterations * batch / seconds


def _warm_up(infer: Callable[[], object], warmup_s: float, clock: Clock) -> Tuple[int, float]:
    """Run ``infer`` for at least ``warmup_s`` seconds; returns (iterations, seconds)."""
    start = clock()
    now = start
    count = 0
    while now - start < warmup_s:
        infer()
        count += 1
        now = clock()
    return count, now - start


class WindowMonitor:
    """Told when the timed window opens and closes: power sampling and live telemetry hook in here.

    ``window_started`` receives the list the loop appends latency samples to, so an observer on
    another thread can read live progress (``len``, the last few items) without slowing the loop.
    """

    # Set by measure_model while a power sampler runs: returns the latest sample in W (or None).
    live_power: Optional[Callable[[], Optional[float]]] = None

    def window_started(self, latencies_ms: List[float]) -> None:
        pass

    def window_finished(self) -> None:
        pass


def _timed_window(
    infer: Callable[[], object], settings: BenchSettings, clock: Clock, monitor: WindowMonitor
) -> Tuple[List[float], float]:
    """(latency samples in ms, window seconds) once both minimums are met or max_seconds is."""
    latencies: List[float] = []
    monitor.window_started(latencies)
    start = clock()
    previous = start
    while True:
        infer()
        now = clock()
        latencies.append((now - previous) * 1000.0)
        previous = now
        elapsed = now - start
        if elapsed >= settings.max_seconds or len(latencies) >= MAX_ITERATIONS:
            break
        if len(latencies) >= settings.min_iterations and elapsed >= settings.min_seconds:
            break
    monitor.window_finished()
    return latencies, previous - start


def run_benchmark(
    infer: Callable[[], object],
    settings: Optional[BenchSettings] = None,
    clock: Clock = time.perf_counter,
    monitor: Optional[WindowMonitor] = None,
) -> BenchResult:
    """Measure ``infer`` (one call = one batch of ``settings.batch`` inferences).

    ``clock`` returns seconds; tests pass a fake one. Exceptions from ``infer`` propagate
    (``monitor.window_finished`` is then not called; the caller cleans up its own observer).
    """
    settings = settings if settings is not None else BenchSettings()
    settings.validate()
    warm_iterations, warm_seconds = _warm_up(infer, settings.warmup_s, clock)
    # The samples tile the window exactly, so they sum to ``seconds`` (up to rounding).
    latencies, seconds = _timed_window(infer, settings, clock, monitor or WindowMonitor())
    stats = summarize(latencies)
    return BenchResult(
        latencies_ms=latencies,
        iterations=len(latencies),
        seconds=float(seconds),
        batch=int(settings.batch),
        warmup_iterations=warm_iterations,
        fps=throughput(len(latencies), int(settings.batch), seconds),
        warmup_seconds=warm_seconds,
        **stats,
    )
