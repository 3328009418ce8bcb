"""How an offspring's speed is measured: in-process (ONNX Runtime) or on devices over MQTT.

Both return a `Measurement`: the generation record's measurement fields (host_trainer/record.py), and the
leading device's per-layer profile (the entries of docs/protocol.md, "Per-layer profile"), which the loop gives
the latency model; the profile is not a record field. fps and
latency_ms_* keep their names (from the first device); device-side facts keep theirs, or get a
`device_` prefix where the plain name means something else in a record; with several devices every
device's result sits under `devices`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog

from edge_evolver.measure.benchmark import RESULT_KEYS, BenchSettings
from edge_evolver.measure.pipeline import measure_model
from host_trainer.fleet.jobs import Fleet
from host_trainer.progress import NULL, Progress
from host_trainer.record import GenerationRecord, sanitized
from host_trainer.tasks.base import Task

BENCH_PREFIXED = ("iterations", "seconds", "status", "code", "message", "backend", "backend_version", "threads")
DEVICE_KEYS = ("device_id", "job_id", "backend", "backend_version", "precision", "engine_build_s", "engine_bytes",
               "cache_hit", "power_w_mean", "energy_mj_per_inference", "power_meter", "power_rail", "power_reason",
               "power_mode", "clocks_locked", "iterations", "seconds", "status", "code", "message")
AGREEMENT_SAMPLES = 8
PROBE_SETTINGS = BenchSettings(batch=1, min_iterations=50, min_seconds=0.2)  # a probe is one small layer
# The same settings as a probe job's bench (docs/protocol.md): without them a board timed each of a run's ~90 probes
# for its default second, and profiled it too (2.5 of make evolve's minutes went to probing; about 40 s with these).
PROBE_BENCH = asdict(PROBE_SETTINGS)
log = structlog.get_logger("host_trainer.fleet")
# Device fields whose plain names mean something else in a record (precision = the host's macro
# precision; backend/iterations = the in-process benchmark's) get a device_ prefix.
PREFIXED = ("job_id", "backend", "backend_version", "precision", "iterations", "seconds", "status", "code", "message")


@dataclass(frozen=True)
class Measurement:
    """One offspring measured: its record's measurement fields, and the leading device's per-layer profile
    (an empty list from a board that sends none)."""

    fields: dict[str, Any]
    profile: list[dict[str, Any]] = field(default_factory=list)


class DeviceError(Exception):
    """A device answered with an error result: the offspring is unfit (recorded, not fatal)."""


class Measurer(Protocol):
    parallel: bool  # may several measurements be in flight at once?

    def measure(self, name: str, onnx_bytes: bytes, samples: np.ndarray, meta: dict) -> Measurement: ...
    def probe(self, name: str, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> float: ...
    def publish(self, record: GenerationRecord) -> None: ...
    def cancel(self) -> None: ...


def _row_key(key: str) -> str:
    return "device_" + key if key in PREFIXED else key


def _timing(result: dict) -> dict:
    return {k: result.get(k) for k in RESULT_KEYS if k == "fps" or k.startswith("latency_ms_")}


class LocalMeasurer:
    """The in-process benchmark (`--no-mqtt`): no devices, no power."""

    parallel = False  # timings in this process must not overlap

    def __init__(self, cfg: Any, progress: Progress = NULL) -> None:
        self.settings = BenchSettings(batch=1, min_iterations=cfg.bench_min_iterations,
                                      min_seconds=cfg.bench_min_seconds)
        self.threads, self.backend, self.progress = cfg.bench_threads, cfg.bench_backend, progress

    def measure(self, name: str, onnx_bytes: bytes, samples: np.ndarray, meta: dict) -> Measurement:
        with self.progress.step(f"{name}: benchmarking in this process ({self.backend})"):
            result = measure_model(onnx_bytes, backend=self.backend, settings=self.settings,
                                   options={"threads": self.threads}).to_dict()
        out = _timing(result)
        out.update({"bench_" + k: result[k] for k in BENCH_PREFIXED})
        return Measurement(out, _profile(result))

    def probe(self, name: str, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> float:
        """A probe layer's median latency in ms here (short settings: the layer is small)."""
        with self.progress.step(f"{name}: probing in this process ({self.backend})"):
            result = measure_model(onnx_bytes, backend=self.backend, settings=PROBE_SETTINGS,
                                   options={"threads": self.threads, "profile": False}).to_dict()
        return _probe_ms(name, result)

    def publish(self, record: GenerationRecord) -> None:
        """No broker, no progress topic."""

    def cancel(self) -> None:
        """Nothing waits."""


class FleetMeasurer:
    """Each offspring as an MQTT job with agreement samples; the first device's numbers lead.

    The task says how the device checks its engine's outputs (top-1 for classifiers, decoded boxes
    for detectors) and which answers make the offspring unfit.
    """

    parallel = True  # K offspring may be in flight at once (the devices, not this host, do the work)

    def __init__(self, fleet: Fleet, task: Task) -> None:
        self.fleet, self.task = fleet, task

    def measure(self, name: str, onnx_bytes: bytes, samples: np.ndarray, meta: dict) -> Measurement:
        inputs, reference = host_reference(onnx_bytes, samples)
        check = self.task.job_check()
        extra = {"check": check} if check else {}
        results = self.fleet.measure(name, onnx_bytes, inputs, reference, meta, **extra)
        self._raise_on_failure(results)
        first = next(iter(results.values()))
        out = _timing(first)
        out.update({_row_key(k): first.get(k) for k in DEVICE_KEYS})
        agreement = _agreement(first)
        out["agreement_max_abs_error"] = agreement.get("max_abs_error")
        out["agreement_top1"] = agreement.get("top1_agreement")
        out["agreement_boxes"] = agreement.get("box_agreement")
        if len(results) > 1:
            out["devices"] = {d: {**_timing(r), **{k: r.get(k) for k in DEVICE_KEYS}} for d, r in results.items()}
        fit, refused = sanitized(out)
        if refused:  # a board of another version, or a broken one: the run goes on, the record stays readable
            log.warning("device_field_refused", device=first.get("device_id"), fields=refused)
        return Measurement(fit, _profile(first))

    def probe(self, name: str, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> float:
        """A probe layer as a job to the leading device (random inputs; the engine must still agree), timed on the
        probe's short settings, without a per-layer profile."""
        samples = np.random.default_rng(0).standard_normal((1, *input_shape)).astype(np.float32)
        inputs, reference = host_reference(onnx_bytes, samples)
        results = self.fleet.measure(name, onnx_bytes, inputs, reference, {"probe": True}, bench=PROBE_BENCH,
                                     options={"profile": False})
        return _probe_ms(name, next(iter(results.values())))

    def _raise_on_failure(self, results: dict[str, dict]) -> None:
        """An error result, or an engine that does not compute the exported model, makes the offspring unfit."""
        for device, result in results.items():
            if result.get("status") != "ok":
                raise DeviceError(f"device {result.get('device_id') or device}: {result.get('code')}: "
                                  f"{result.get('message')}")
        for device, result in results.items():
            problem = self.task.disagreement(_agreement(result))
            if problem:
                raise DeviceError(f"device {result.get('device_id') or device}: engine disagrees with the "
                                  f"exported model ({problem})")

    def publish(self, record: GenerationRecord) -> None:
        self.fleet.publish_progress(record)

    def cancel(self) -> None:
        self.fleet.cancel()


def _profile(result: dict) -> list[dict]:
    """The result's per-layer profile entries (an older board sends none: an empty list)."""
    profile = result.get("profile")
    return [e for e in profile if isinstance(e, dict)] if isinstance(profile, list) else []


def _probe_ms(name: str, result: dict) -> float:
    latency = result.get("latency_ms_p50")
    if result.get("status") != "ok" or not isinstance(latency, (int, float)) or not latency > 0:
        raise DeviceError(f"probe {name}: {result.get('code')}: {result.get('message') or 'no latency'}")
    return float(latency)


def _agreement(result: dict) -> dict:
    agreement = result.get("agreement")
    return agreement if isinstance(agreement, dict) else {}  # a result without a usable check says nothing


def host_reference(onnx_bytes: bytes, samples: np.ndarray) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The sample feeds and what the exported model computes on them here (ONNX Runtime, CPU):
    the device's engine must agree."""
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    inputs = {session.get_inputs()[0].name: np.ascontiguousarray(samples, dtype=np.float32)}
    return inputs, list(session.run(None, inputs))
