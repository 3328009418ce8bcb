"""Samples a power meter on a background thread over exactly one timed window.

The caller calls ``start()`` right before its timed loop and ``stop()`` right after it. One
sample is taken inside ``start()`` and one inside ``stop()``, so even a window shorter than the
interval has two samples and the integral spans the whole window. Energy comes from the
meter's hardware counter when it has one (RAPL, NVML on Volta+), else from the trapezoid
integral of the samples. When nothing could be measured, mean and energy are None with a
reason: a missing meter must never look like a model that costs 0 W.
"""

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .base import PowerMeter, exception_text

# stop() waits this long for the thread; a meter read stuck longer (a hung jtop service) is
# abandoned on its daemon thread rather than blocking the benchmark.
JOIN_TIMEOUT_S = 2.0


@dataclass
class PowerSummary:
    meter: str
    rail: Optional[str]
    mean_w: Optional[float]
    energy_j: Optional[float]
    seconds: float
    samples: int
    method: str  # "counter", "trapezoid" or "none"
    reason: Optional[str]  # why mean_w / energy_j are None
    samples_w: List[float] = field(default_factory=list)
    sample_t: List[float] = field(default_factory=list)  # seconds since start()
    read_errors: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def trapezoid(sample_t: List[float], samples_w: List[float]) -> Tuple[Optional[float], float]:
    """(mean W over the sampled span, span in s); the mean of the values when the span is 0."""
    if not samples_w:
        return None, 0.0
    span = sample_t[-1] - sample_t[0]
    if span <= 0:
        return sum(samples_w) / len(samples_w), 0.0
    area = 0.0
    for i in range(1, len(samples_w)):
        area += (samples_w[i] + samples_w[i - 1]) / 2.0 * (sample_t[i] - sample_t[i - 1])
    return area / span, span


class PowerSampler:
    def __init__(self, meter: PowerMeter, interval_s: float = 0.05, clock: Callable[[], float] = time.monotonic):
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        self.meter = meter
        self.interval_s = float(interval_s)
        self._clock = clock
        # Guards the sample lists only; never held across a meter read, which may hang (jtop).
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread: Optional[threading.Thread] = None
        # Bumped by start(): a thread abandoned by an earlier stop() cannot write into this window.
        self._window = 0
        self.latest_w: Optional[float] = None
        self._reset()

    def _reset(self) -> None:
        self._samples_w: List[float] = []
        self._sample_t: List[float] = []
        self._errors = 0
        self._last_error: Optional[str] = None
        self._t0 = 0.0
        self._energy0: Optional[float] = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("PowerSampler.start() called twice without stop()")
        with self._lock:
            self._window += 1
            self._reset()
        self._energy0 = self._read_energy()
        self._t0 = self._clock()
        self._record(self._window, self._t0)
        self._stop_event = threading.Event()  # per window, so an abandoned thread still sees its own
        self._thread = threading.Thread(
            target=self._run, args=(self._stop_event, self._window), name="power-sampler", daemon=True
        )
        self._thread.start()

    def _run(self, stop_event: threading.Event, window: int) -> None:
        # Event.wait sleeps without holding the GIL and returns at once when stop() sets it.
        while not stop_event.wait(self.interval_s):
            self._record(window, self._clock())

    def _record(self, window: int, now: float) -> None:
        """Read the meter at time ``now`` (clock first: a meter may follow the same clock)."""
        watts: Optional[float] = None
        error = None
        try:
            watts = self.meter.read_watts()
        except Exception as exc:  # a sensor hiccup must not end the window; it is counted instead
            error = exception_text(exc)
        with self._lock:
            if window != self._window:
                return
            if error is not None:
                self._errors += 1
                self._last_error = error
            elif watts is not None:  # None is the "none" meter: nothing to record, not an error
                self._samples_w.append(float(watts))
                self._sample_t.append(now - self._t0)
                self.latest_w = float(watts)

    def _read_energy(self) -> Optional[float]:
        try:
            return self.meter.read_energy_j()
        except Exception:  # no counter this time: the trapezoid integral still works
            return None

    def stop(self) -> PowerSummary:
        if self._thread is None:
            raise RuntimeError("PowerSampler.stop() called before start()")
        # The closing sample and counter read come first: the window ends now, not after a join
        # that a hung meter read could stretch (which would inflate seconds and energy).
        t1 = self._clock()
        self._record(self._window, t1)
        energy1 = self._read_energy()
        self._stop_event.set()
        self._thread.join(JOIN_TIMEOUT_S)
        self._thread = None
        with self._lock:
            return self._summarize(max(0.0, t1 - self._t0), energy1)

    def _summarize(self, seconds: float, energy1: Optional[float]) -> PowerSummary:
        # In time order even if a thread abandoned after a hung read recorded late.
        pairs = sorted(zip(self._sample_t, self._samples_w))
        summary = PowerSummary(
            meter=self.meter.name,
            rail=self.meter.rail,
            mean_w=None,
            energy_j=None,
            seconds=seconds,
            samples=len(self._samples_w),
            method="none",
            reason=None,
            samples_w=[w for _, w in pairs],
            sample_t=[t for t, _ in pairs],
            read_errors=self._errors,
        )
        counter = None if self._energy0 is None or energy1 is None else energy1 - self._energy0
        if counter is not None and counter >= 0:  # negative: the counter was reset mid-window
            summary.method, summary.energy_j = "counter", counter
            summary.mean_w = counter / seconds if seconds > 0 else _mean(summary.samples_w)
        elif pairs:
            summary.method = "trapezoid"
            summary.mean_w = trapezoid(summary.sample_t, summary.samples_w)[0]
            # The samples span start..stop; scaling by ``seconds`` also covers a failed end read.
            summary.energy_j = None if summary.mean_w is None else summary.mean_w * seconds
        else:
            summary.reason = self._no_data_reason()
        return summary

    def _no_data_reason(self) -> str:
        reason = getattr(self.meter, "reason", None)
        if self._errors:
            return f"all {self._errors} power reads failed ({self.meter.name}): {self._last_error}"
        if reason:
            return str(reason)
        return f"meter {self.meter.name} returned no reading"


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None
