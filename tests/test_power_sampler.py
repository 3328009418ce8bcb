"""The power sampler: its energy maths (fake clock, fake meters), counters and threading."""

import json
import threading
import time
from typing import Any, Callable, List, Optional

import pytest

from edge_evolver.power import PowerSampler
from edge_evolver.power import sampler as sampler_module
from edge_evolver.power.base import PowerMeter
from edge_evolver.power.none_meter import NoneMeter
from edge_evolver.power.rapl import RaplMeter
from edge_evolver.power.sampler import PowerSummary, trapezoid

from .power_support import RAPL_RANGE_UJ, FakeClock, copy_board


class FakeMeter(PowerMeter):
    """``read_watts`` returns (or raises) what ``read()`` gives; the counter pops ``energy``."""

    name, rail = "fake", "FAKE_IN"

    def __init__(self, read: Callable[[], Any], energy: Optional[List[float]] = None) -> None:
        self.read, self.energy = read, energy

    @classmethod
    def probe(cls, root: str = "/") -> "FakeMeter":
        raise NotImplementedError

    def read_watts(self) -> Optional[float]:
        value = self.read()
        if isinstance(value, Exception):
            raise value
        return value

    def read_energy_j(self) -> Optional[float]:
        return None if self.energy is None else self.energy.pop(0)


def script(*values: Any) -> Callable[[], Any]:
    """Readings in order, the last one repeated."""
    queue = list(values)
    return lambda: queue.pop(0) if len(queue) > 1 else queue[0]


def window(meter: PowerMeter, step: float = 1.0) -> PowerSummary:
    """A window with only the start and stop samples, ``step`` fake seconds long."""
    sampler = PowerSampler(meter, interval_s=10.0, clock=FakeClock(step))
    sampler.start()
    return sampler.stop()


def test_trapezoid_helper():
    assert trapezoid([0.0, 1.0, 3.0], [2.0, 4.0, 4.0]) == (pytest.approx(11.0 / 3.0), 3.0)
    assert trapezoid([0.0], [5.0]) == (5.0, 0.0)
    assert trapezoid([], []) == (None, 0.0)


def test_sampler_integrates_a_known_power_curve(monkeypatch):
    monkeypatch.setattr(sampler_module, "JOIN_TIMEOUT_S", 60.0)  # a bound for a stuck thread, not a timing
    clock = FakeClock(step=0.01)
    thread_reads: List[float] = []

    def read() -> float:
        """The curve at the time the sampler just took. After three samples, the sampling thread waits out a
        long interval: none of its samples can fall between stop()'s clock and its read, nor after the window,
        however the threads are scheduled on a loaded machine."""
        watts = 2.0 + 3.0 * clock.t
        if threading.current_thread() is not threading.main_thread():
            thread_reads.append(watts)
            if len(thread_reads) == 3:
                sampler.interval_s = 3600.0
        return watts

    sampler = PowerSampler(FakeMeter(read), interval_s=0.001, clock=clock)
    sampler.start()
    deadline = time.monotonic() + 60
    while len(thread_reads) < 3 or sampler.latest_w != thread_reads[2]:  # the thread's third sample is recorded
        assert time.monotonic() < deadline, "the sampling thread took no samples"
        time.sleep(0.001)
    summary = sampler.stop()
    span = summary.seconds
    assert summary.method == "trapezoid" and summary.samples == 5  # start, three of the thread's, stop
    assert summary.sample_t[0] == 0.0 and summary.sample_t[-1] == pytest.approx(span)
    # P(t) = 2 + 3t from the start time t0: E = 2T + 3(t0 T + T^2 / 2), exact for a linear curve.
    t0 = clock.t - span
    expected = 2.0 * span + 3.0 * (t0 * span + span * span / 2.0)
    assert summary.energy_j == pytest.approx(expected)
    assert summary.mean_w == pytest.approx(expected / span)
    assert sampler.latest_w == summary.samples_w[-1]


def test_sampler_short_real_window_still_has_two_samples():
    sampler = PowerSampler(FakeMeter(script(5.0)), interval_s=0.05)
    sampler.start()
    summary = sampler.stop()
    assert summary.samples >= 2 and summary.mean_w == 5.0 and summary.reason is None
    assert summary.energy_j == pytest.approx(5.0 * summary.seconds)


def test_sampler_prefers_the_hardware_counter():
    summary = window(FakeMeter(script(7.0), energy=[100.0, 112.5]), step=2.5)
    assert (summary.method, summary.energy_j, summary.seconds) == ("counter", 12.5, 2.5)
    assert summary.mean_w == pytest.approx(5.0) and summary.samples_w == [7.0, 7.0]


def test_sampler_counter_across_a_rapl_wrap(tmp_path):
    root = copy_board(tmp_path, "x86-rapl")
    sampler = PowerSampler(RaplMeter.probe(str(root)), interval_s=10.0, clock=FakeClock(1.0))
    sampler.start()
    (root / "sys/class/powercap/intel-rapl:0/energy_uj").write_text("1000\n")
    summary = sampler.stop()
    assert summary.method == "counter"
    assert summary.energy_j == pytest.approx((RAPL_RANGE_UJ - 123456789 + 1000) / 1e6)


def test_sampler_counter_reset_falls_back_to_samples():
    summary = window(FakeMeter(script(4.0), energy=[100.0, 50.0]))
    assert summary.method == "trapezoid" and summary.energy_j == pytest.approx(4.0)


def test_sampler_counts_failed_reads_and_uses_the_rest():
    summary = window(FakeMeter(script(OSError("EIO"), 6.0)))
    assert (summary.read_errors, summary.samples, summary.mean_w) == (1, 1, 6.0)
    assert summary.energy_j == pytest.approx(6.0)


def test_sampler_all_reads_failed_gives_none_with_reason():
    summary = window(FakeMeter(script(OSError("EIO"))))
    assert summary.mean_w is None and summary.energy_j is None and summary.method == "none"
    assert summary.reason == "all 2 power reads failed (fake): OSError: EIO"


def test_no_meter_never_reports_zero():
    meter = NoneMeter("no power meter found (jtop: not installed)")
    sampler = PowerSampler(meter, interval_s=0.01)
    sampler.start()
    time.sleep(0.02)
    out = sampler.stop().to_dict()
    assert out["mean_w"] is None and out["energy_j"] is None and out["samples"] == 0
    assert out["reason"] == meter.reason and out["method"] == "none" and out["read_errors"] == 0
    assert out["meter"] == "none" and out["rail"] is None
    assert json.loads(json.dumps(out)) == out


def _sampler_threads(besides: frozenset = frozenset()) -> list:
    """Sampling threads alive now, other than `besides` (left over by other tests)."""
    return [t for t in threading.enumerate() if t.name == "power-sampler" and t.is_alive() and t not in besides]


def test_sampler_stops_without_waiting_out_its_interval_and_can_run_again(monkeypatch):
    """stop() wakes the sampling thread (an Event, not a sleep): with an hour's interval, the thread is gone when
    stop() returns, long before the interval. The join may wait 60 s here (a bound for a stuck thread on a loaded
    machine, not a timing): a thread that slept its interval out would still be there after it."""
    monkeypatch.setattr(sampler_module, "JOIN_TIMEOUT_S", 60.0)
    others = frozenset(_sampler_threads())
    sampler = PowerSampler(FakeMeter(script(3.0)), interval_s=3600.0)
    for _ in range(2):
        sampler.start()
        assert len(_sampler_threads(others)) == 1
        summary = sampler.stop()
        assert _sampler_threads(others) == [] and summary.samples == 2


def test_sampler_misuse():
    with pytest.raises(RuntimeError):
        PowerSampler(FakeMeter(script(1.0))).stop()
    with pytest.raises(ValueError):
        PowerSampler(FakeMeter(script(1.0)), interval_s=0)


def test_summary_fields():
    assert set(window(FakeMeter(script(1.0))).to_dict()) == {
        "meter", "rail", "mean_w", "energy_j", "seconds", "samples", "method", "reason",
        "samples_w", "sample_t", "read_errors",
    }  # fmt: skip


def test_a_hung_read_does_not_block_stop(monkeypatch):
    monkeypatch.setattr(sampler_module, "JOIN_TIMEOUT_S", 0.05)
    release, stuck = threading.Event(), threading.Event()

    def read() -> float:
        if threading.current_thread() is not threading.main_thread():
            stuck.set()
            release.wait(60)  # a jtop service that stopped answering (until the test releases it)
        return 1.0

    ticks = iter(range(1000))
    others = frozenset(_sampler_threads())
    sampler = PowerSampler(FakeMeter(read), interval_s=0.001, clock=lambda: float(next(ticks)))
    sampler.start()
    (abandoned,) = _sampler_threads(others)
    assert stuck.wait(60)  # the thread is now stuck in a read (waited for, not slept for)
    summary = sampler.stop()
    # stop() did not wait for the stuck read (the thread is still in it), and the window ended at the
    # closing sample, not when the join gave up.
    assert summary.samples == 2 and _sampler_threads(others) == [abandoned]
    assert summary.sample_t[-1] == summary.seconds
    sampler.start()  # a new window; only then does the abandoned thread finish its read: it must not leak into it
    release.set()
    abandoned.join(60)
    assert not abandoned.is_alive()
    assert all(t >= 0 for t in sampler.stop().sample_t)
