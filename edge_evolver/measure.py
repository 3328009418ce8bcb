"""measure_model(): the single entry point shared by the host trainer, the CLI and the daemon.

It never raises: every failure becomes a MeasureResult with status "error" and an
ErrorCode, because the caller is usually evaluating a whole population and one broken
genome must not stop the generation.
"""

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import structlog

from .backends import resolve_backend
from .backends.base import Engine
from .benchmark import RESULT_KEYS, BenchResult, BenchSettings, run_benchmark
from .errors import EdgeError, ErrorCode
from .inputs import check_feeds, synthesize_inputs

log = structlog.get_logger("edge_evolver.measure")


@dataclass
class MeasureResult:
    status: str  # "ok" or "error"
    code: Optional[str] = None  # an ErrorCode when status == "error"
    message: str = ""
    backend: Optional[str] = None
    backend_version: Optional[str] = None
    threads: Optional[int] = None
    model_sha256: str = ""
    load_seconds: Optional[float] = None
    bench: Optional[BenchResult] = None
    # Outputs of the first (untimed) inference, for cross-device agreement checks.
    outputs: Optional[List[np.ndarray]] = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self, include_samples: bool = False) -> Dict[str, Any]:
        """Flat, JSON-ready dict; bench keys are present (None) even when there is no bench."""
        out: Dict[str, Any] = {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "threads": self.threads,
            "model_sha256": self.model_sha256,
            "load_seconds": self.load_seconds,
        }
        if self.bench is not None:
            out.update(self.bench.to_dict(include_samples=include_samples))
        else:
            out.update((key, None) for key in RESULT_KEYS)
        return out


def _feeds(
    engine: Engine, inputs: Optional[Mapping[str, np.ndarray]], batch: int, seed: int
) -> Dict[str, np.ndarray]:
    if inputs is not None:
        return check_feeds(engine.inputs, inputs)
    return synthesize_inputs(engine.inputs, batch, seed=seed)


def _run(
    result: MeasureResult,
    model_bytes: bytes,
    backend: str,
    settings: BenchSettings,
    options: Dict[str, Any],
    inputs: Optional[Mapping[str, np.ndarray]],
    seed: int,
) -> None:
    """Fill ``result`` step by step so that an error keeps everything learned before it."""
    settings.validate()
    runtime = resolve_backend(backend)
    result.backend = runtime.name
    result.backend_version = runtime.version()
    start = time.perf_counter()
    engine = runtime.load(model_bytes, options)
    result.load_seconds = time.perf_counter() - start
    result.threads = engine.info.get("threads")
    try:
        feeds = _feeds(engine, inputs, settings.batch, seed)
        # The first run doubles as a smoke test, so a failing model is reported as such
        # instead of as a benchmark failure, and its outputs are kept for agreement checks.
        result.outputs = engine.infer(feeds)
        result.bench = run_benchmark(lambda: engine.infer(feeds), settings)
    finally:
        engine.close()


def measure_model(
    model_bytes: bytes,
    backend: str = "auto",
    settings: Optional[BenchSettings] = None,
    options: Optional[Dict[str, Any]] = None,
    inputs: Optional[Mapping[str, np.ndarray]] = None,
    seed: int = 0,
) -> MeasureResult:
    """Load ``model_bytes`` on ``backend`` and benchmark it; never raises.

    ``inputs`` replaces the synthetic feeds (names must match the model's true inputs, and
    their batch should equal ``settings.batch``, which is what throughput is scaled by);
    ``options`` go to the backend (ONNX Runtime: ``threads``, ``providers``). Synthetic
    feeds are deterministic in ``seed``. Errors come back as status "error" with a code.
    """
    settings = settings if settings is not None else BenchSettings()
    result = MeasureResult(status="ok", model_sha256=hashlib.sha256(bytes(model_bytes)).hexdigest())
    try:
        _run(result, model_bytes, backend, settings, dict(options or {}), inputs, seed)
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
