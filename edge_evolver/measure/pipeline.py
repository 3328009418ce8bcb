"""measure_model(): the single entry point shared by the host trainer, the CLI and the daemon.

Steps: the model safety check (measure/model_guard.py: no external data, tensor sizes that
match their bytes, opset domains and versions the backend allows; no onnx package needed),
check the ONNX (when the onnx package is there), get an engine (from the cache or by
building it), make the feeds, run once (smoke test, agreement with reference outputs), then
benchmark with the power sampler running exactly over the timed window, then (unless the
``profile`` option is false) a separate per-layer profiling pass (backends/profiling.py), whose
failure is reported in ``profile_error`` and never fails the measurement.

It never raises: every failure becomes a MeasureResult with status "error" and an ErrorCode,
because the caller is usually evaluating a whole population and one broken genome must not
stop the generation.
"""

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import structlog

from ..backends import resolve_backend
from ..backends.base import Backend, Engine
from ..backends.onnxruntime_backend import PLAN_LIMIT_OPTION
from ..backends.profiling import ProfileSettings
from ..backends.tensors import check_feeds
from ..errors import EdgeError, ErrorCode, clip_line
from ..protocol import LayerTime
from .agreement import compare_outputs
from .benchmark import RESULT_KEYS, BenchResult, BenchSettings, WindowMonitor, even_subsample, run_benchmark
from .engine_cache import DEFAULT_MAX_BYTES, EngineCache, entry_limit
from .inputs import synthesize_inputs
from .model_guard import check_model_safety
from .onnx_check import check_onnx, check_size
from .profile import bounded_profile, error_line, profile_option

log = structlog.get_logger("edge_evolver.measure")

# Power keys of to_dict(); null with ``power_reason`` whenever nothing was measured, never 0.
POWER_KEYS = ("power_w_mean", "energy_mj_per_inference", "power_meter", "power_rail", "power_reason")
ENGINE_KEYS = ("precision", "engine_build_s", "engine_bytes", "cache_hit")


@dataclass
class MeasureResult:
    status: str  # "ok" or "error"
    code: Optional[str] = None  # an ErrorCode when status == "error"
    message: str = ""
    backend: Optional[str] = None
    backend_version: Optional[str] = None
    threads: Optional[int] = None
    model_sha256: str = ""
    load_seconds: Optional[float] = None  # engine build, or plan load on a cache hit
    cache_hit: Optional[bool] = None
    engine_bytes: Optional[int] = None
    precision: Optional[str] = None
    engine_info: Dict[str, Any] = field(default_factory=dict)
    bench: Optional[BenchResult] = None
    power: Optional[Dict[str, Any]] = None  # PowerSummary.to_dict()
    agreement: Optional[Dict[str, Any]] = None
    # Outputs of the first (untimed) inference, for cross-device agreement checks.
    outputs: Optional[List[np.ndarray]] = None
    # The per-layer profiling pass after the timed window: entries and runs, or why it failed.
    profile: Optional[List[LayerTime]] = None
    profile_runs: Optional[int] = None
    profile_error: Optional[str] = None
    profile_truncated: bool = False  # the size bounds of measure/profile.py left entries, nodes or text out

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def energy_mj_per_inference(self) -> Optional[float]:
        energy = (self.power or {}).get("energy_j")
        if energy is None or self.bench is None or self.bench.iterations == 0:
            return None
        return energy * 1000.0 / (self.bench.iterations * self.bench.batch)

    def power_fields(self) -> Dict[str, Any]:
        power = self.power or {}
        return {
            "power_w_mean": power.get("mean_w"),
            "energy_mj_per_inference": self.energy_mj_per_inference(),
            "power_meter": power.get("meter"),
            "power_rail": power.get("rail"),
            "power_reason": power.get("reason") if self.power else "power was not measured",
        }

    def to_dict(self, include_samples: bool = False) -> Dict[str, Any]:
        """Flat, JSON-ready dict; bench keys are present (None) even when there is no bench."""
        out: Dict[str, Any] = {
            "status": self.status,
            "code": self.code,
            "message": clip_line(self.message) if self.message else "",  # may quote a runtime's text at length
            "backend": self.backend,
            "backend_version": self.backend_version,
            "threads": self.threads,
            "model_sha256": self.model_sha256,
            "load_seconds": self.load_seconds,
            "engine_build_s": self.load_seconds,
            "engine_bytes": self.engine_bytes,
            "cache_hit": self.cache_hit,
            "precision": self.precision,
        }
        if self.bench is not None:
            out.update(self.bench.to_dict(include_samples=include_samples))
        else:
            out.update((key, None) for key in RESULT_KEYS)
        out.update(self.power_fields())
        out["agreement"] = self.agreement
        if include_samples and self.power is not None:
            self._power_samples(out)
        if self.profile is not None:
            out["profile"] = [entry.to_dict() for entry in self.profile]
            out["profile_runs"] = self.profile_runs
            if self.profile_truncated:
                out["profile_truncated"] = True
        elif self.profile_error is not None:
            out["profile_error"] = self.profile_error
        return out

    def _power_samples(self, out: Dict[str, Any]) -> None:
        """The power samples, at most MAX_RESULT_SAMPLES of them like the latencies (``samples_truncated``)."""
        samples = (self.power or {}).get("samples_w")
        if samples is None:
            out["power_samples_w"] = None
            return
        out["power_samples_w"], truncated = even_subsample(samples)
        out["power_samples_total"] = len(samples)
        out["samples_truncated"] = bool(out.get("samples_truncated")) or truncated


class _PowerWindow(WindowMonitor):
    """Runs the power sampler over the timed window only, and lets an observer see progress."""

    def __init__(self, meter: Any, observer: Optional[WindowMonitor]) -> None:
        self.meter = meter
        self.observer = observer
        self.sampler: Any = None
        self.summary: Optional[Dict[str, Any]] = None
        self._observing = False

    def window_started(self, latencies_ms: List[float]) -> None:
        if self.meter is not None:
            from ..power.sampler import PowerSampler

            self.sampler = PowerSampler(self.meter)
            self.sampler.start()
        if self.observer is not None:
            self.observer.live_power = self.latest_w
            self.observer.window_started(latencies_ms)
            self._observing = True

    def window_finished(self) -> None:
        self.stop()
        if self._observing and self.observer is not None:
            self._observing = False
            self.observer.window_finished()

    def stop(self) -> None:
        """Idempotent: also called from the error path so no sampler thread outlives a job."""
        if self.sampler is not None:
            self.summary = self.sampler.stop().to_dict()
            self.sampler = None

    def latest_w(self) -> Optional[float]:
        sampler = self.sampler
        return None if sampler is None else sampler.latest_w


def _engine(runtime: Backend, model_bytes: bytes, result: MeasureResult, options: Dict[str, Any],
            cache: Optional[EngineCache]) -> Engine:
    """A cached plan when one loads, else a fresh build (stored for next time)."""
    key = runtime.cache_key(options) if cache is not None else {}
    plan = cache.get(result.model_sha256, key) if cache is not None else None
    if plan is not None and cache is not None:
        try:
            engine = runtime.load_plan(plan, options)
            result.cache_hit, result.engine_bytes = True, len(plan)
            return engine
        except EdgeError as exc:
            log.warning("engine_cache_stale", sha256=result.model_sha256[:12], error=exc.message)
            cache.discard(result.model_sha256, key)
    # The cache's entry limit bounds what the build itself writes (ONNX Runtime writes its plan to disk).
    limit = entry_limit(len(model_bytes), cache.max_bytes if cache is not None else DEFAULT_MAX_BYTES)
    engine, plan = runtime.build(model_bytes, dict(options, **{PLAN_LIMIT_OPTION: limit}))
    result.cache_hit = False
    result.engine_bytes = len(plan) if plan else None
    if cache is not None and plan:
        cache.put(result.model_sha256, key, plan, model_bytes=len(model_bytes))
    return engine


def _leading_dim(feeds: Mapping[str, np.ndarray]) -> Optional[int]:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else None


def _run_in_batches(engine: Engine, sample: Mapping[str, np.ndarray], batch: int) -> List[np.ndarray]:
    """Agreement samples, run ``batch`` at a time: a TensorRT engine is built for exactly one batch."""
    count = _leading_dim(sample) or 0
    if count % batch:
        raise EdgeError(ErrorCode.BAD_INPUT, f"{count} sample inputs do not split into batches of {batch}")
    chunks = [engine.infer({k: v[i:i + batch] for k, v in sample.items()}) for i in range(0, count, batch)]
    return [np.concatenate([chunk[j] for chunk in chunks]) for j in range(len(chunks[0]))]


@dataclass
class MeasureRequest:
    """Everything about one measurement besides the model bytes."""

    backend: str = "auto"
    settings: BenchSettings = field(default_factory=BenchSettings)
    options: Dict[str, Any] = field(default_factory=dict)
    inputs: Optional[Mapping[str, np.ndarray]] = None
    reference: Optional[Sequence[np.ndarray]] = None
    check: Optional[Dict[str, Any]] = None  # e.g. {"kind": "detect", ...}: also compare decoded boxes
    seed: int = 0
    cache: Optional[EngineCache] = None
    meter: Any = None  # a power.PowerMeter, or None for "not measured"
    observer: Optional[WindowMonitor] = None
    # The per-layer pass; options["profile"] = False switches it off as well.
    profile: ProfileSettings = field(default_factory=ProfileSettings)


def _profile(result: MeasureResult, engine: Engine, feeds: Mapping[str, np.ndarray], model_bytes: bytes,
             settings: ProfileSettings) -> None:
    """The per-layer pass; any failure becomes ``profile_error``, never a failed measurement."""
    try:
        raw = engine.profile(dict(feeds), settings)
        result.profile, result.profile_truncated = bounded_profile(raw, model_bytes)
        result.profile_runs = raw.runs
    except Exception as exc:  # a profiler problem must never cost the measurement (MemoryError included)
        result.profile, result.profile_runs, result.profile_error = None, None, error_line(exc)
        result.profile_truncated = False
        log.warning("profile_failed", model_sha256=result.model_sha256[:12], error=result.profile_error)


def _checked_backend(result: MeasureResult, model_bytes: bytes, req: MeasureRequest) -> Backend:
    """The model checks, then the backend, whose opset policy the model must meet."""
    check_size(model_bytes)
    runtime = resolve_backend(req.backend)  # a name lookup: it reads nothing of the model
    result.backend, result.backend_version = runtime.name, runtime.version()
    # Before anything else reads the bytes: onnx.checker and every runtime would follow a tensor's
    # external-data path to a file of this board (docs/model-safety.md). Before the engine cache
    # too: a policy may tighten.
    check_model_safety(model_bytes, runtime.model_policy)
    check_onnx(model_bytes)
    return runtime


def _run(result: MeasureResult, model_bytes: bytes, req: MeasureRequest, window: _PowerWindow) -> None:
    """Fill ``result`` step by step so that an error keeps everything learned before it."""
    req.settings.validate()
    runtime = _checked_backend(result, model_bytes, req)
    options = dict(req.options)
    profiling = profile_option(options.pop("profile", None)) and req.profile.enabled
    options.setdefault("batch", req.settings.batch)
    start = time.perf_counter()
    engine = _engine(runtime, model_bytes, result, options, req.cache)
    result.load_seconds = time.perf_counter() - start
    result.engine_info = dict(engine.info)
    result.threads, result.precision = engine.info.get("threads"), engine.info.get("precision")
    try:
        batch = req.settings.batch
        sample = check_feeds(engine.inputs, req.inputs) if req.inputs is not None else None
        # Job inputs drive the benchmark only at its batch; otherwise they are agreement samples.
        use_sample = sample is not None and _leading_dim(sample) == batch
        feeds = sample if (use_sample and sample is not None) else synthesize_inputs(
            engine.inputs, batch, seed=req.seed, overrides=options.get("shape_overrides"))
        # The first run doubles as a smoke test, so a failing model is reported as such
        # instead of as a benchmark failure, and its outputs are kept for agreement checks.
        result.outputs = engine.infer(feeds)
        if sample is not None and feeds is not sample:
            result.outputs = _run_in_batches(engine, sample, batch)
        if req.reference is not None:
            result.agreement = compare_outputs(result.outputs, req.reference, [s.name for s in engine.outputs],
                                               check=req.check)
        result.bench = run_benchmark(lambda: engine.infer(feeds), req.settings, monitor=window)
        result.power = window.summary
        if profiling:  # after the window (and its power sampler) closed: it never touches the headline numbers
            _profile(result, engine, feeds, model_bytes, req.profile)
    finally:
        window.window_finished()  # idempotent; after a failure mid-window it ends sampler and observer
        engine.close()


def measure_model(
    model_bytes: bytes,
    backend: str = "auto",
    settings: Optional[BenchSettings] = None,
    options: Optional[Dict[str, Any]] = None,
    inputs: Optional[Mapping[str, np.ndarray]] = None,
    seed: int = 0,
    request: Optional[MeasureRequest] = None,
) -> MeasureResult:
    """Load ``model_bytes`` on a backend and benchmark it; never raises.

    Either pass ``request`` (everything: cache, power meter, reference outputs, observer) or
    the short keyword form. ``inputs`` replace the synthetic feeds (names must match the
    model's true inputs, batch should equal ``settings.batch``, which scales throughput);
    ``options`` go to the backend (``threads``, ``providers``, ``fp16``, ``workspace_mb``,
    ``shape_overrides``), except ``profile``: false skips the per-layer profiling pass, which
    otherwise runs after the timed window. Errors come back as status "error" with a code.
    """
    if request is None:
        request = MeasureRequest(backend=backend, settings=settings or BenchSettings(),
                                 options=dict(options or {}), inputs=inputs, seed=seed)
    result = MeasureResult(status="ok", model_sha256=hashlib.sha256(bytes(model_bytes)).hexdigest())
    window = _PowerWindow(request.meter, request.observer)
    try:
        _run(result, model_bytes, request, window)
    except EdgeError as exc:
        result.status, result.code, result.message = "error", exc.code, exc.message
    except MemoryError:
        result.status, result.code = "error", ErrorCode.OVERSIZE
        result.message = "out of memory while loading or running the model"
    except Exception as exc:  # a bug somewhere: report it, keep the caller's loop alive
        result.status, result.code = "error", ErrorCode.INTERNAL
        result.message = f"{type(exc).__name__}: {exc}"
        log.exception("measure_internal_error", model_sha256=result.model_sha256)
    if not result.ok:
        result.bench = None
    return result
