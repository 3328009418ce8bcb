"""ONNX Runtime backend: the CPU reference on every board, and the host's local measure.

Session settings aim at stable, comparable numbers rather than peak speed: one intra-op
thread by default (multi-threaded CPU timings on a Jetson swing with DVFS and other load),
one inter-op thread, sequential execution, and full graph optimisation as in deployment.
The cacheable "engine" is the model as ORT optimised it (``optimized_model_filepath``): it
may hold layout transforms specific to this CPU, which is why the cache key names the
machine; loading it skips the optimiser.
``onnxruntime`` is imported inside functions so a board without it can still list backends.
"""

import contextlib
import os
import platform
import re
import signal
import tempfile
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import EdgeError, ErrorCode, clip_line, printable
from .base import Backend, Engine
from .model_policy import MAX_ONNX_OPSET, ModelPolicy
from .profiling import ProfileSettings, RawProfile
from .tensors import TensorSpec

DEFAULT_THREADS = 1
DEFAULT_PROVIDERS = ["CPUExecutionProvider"]
# The options key measure_model sets for ``build``: the largest optimised model worth writing (the engine
# cache's entry limit); 0: none is wanted. Not a job option: job.py refuses it.
PLAN_LIMIT_OPTION = "plan_max_bytes"
# Without PLAN_LIMIT_OPTION (a direct caller), still a bound on what ORT may write while building.
MAX_FILE_BYTES = 2 * 1024 ** 3

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}

# Lower-cased fragments of ORT load errors, checked in this order. ORT's Python exception
# classes differ between releases (1.10 on JetPack vs 1.2x), so the text is what is stable.
_UNSUPPORTED_MARKERS = (
    "not_implemented",
    "could not find an implementation",
    "no op registered",
    "is not a registered function/op",
    "unsupported model ir version",
    "is till opset",
    "validateopsetfordomain",
)
_INVALID_MARKERS = (
    "invalid_protobuf",
    "protobuf parsing failed",
    "no graph was found",
    "invalid_graph",
    "invalid_argument",
    "this is an invalid model",
    "type error",
)
_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : (\w+) : ")
# "/onnxruntime_src/.../model.cc:256 onnxruntime::Model::Model(<args>) " precedes the reason.
_SOURCE_LOCATION = re.compile(r"^\S+\.(?:cc|cpp|h):\d+ [^(]*\([^)]*\)(?: const)? ")


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise EdgeError(
            ErrorCode.BACKEND_UNAVAILABLE,
            f"onnxruntime is not installed ({exc}); pip install onnxruntime, or the Jetson Zoo wheel",
        ) from None
    return onnxruntime


def clean_message(exc: BaseException) -> str:
    """One readable line from an ORT exception: status word kept, C++ location dropped."""
    text = " ".join(str(exc).split())
    status = ""
    match = _ORT_PREFIX.match(text)
    if match:
        status, text = match.group(1), text[match.end() :]
    text = clip_line(_SOURCE_LOCATION.sub("", text))
    return f"{text} ({status})" if status else text


def classify_load_error(exc: BaseException) -> EdgeError:
    """Map an InferenceSession failure to UNSUPPORTED_OP, INVALID_MODEL or BUILD_FAILED."""
    lowered = str(exc).lower()
    message = "onnxruntime could not load the model: " + clean_message(exc)
    if any(marker in lowered for marker in _UNSUPPORTED_MARKERS):
        return EdgeError(ErrorCode.UNSUPPORTED_OP, message)
    if any(marker in lowered for marker in _INVALID_MARKERS):
        return EdgeError(ErrorCode.INVALID_MODEL, message)
    return EdgeError(ErrorCode.BUILD_FAILED, message)


def ort_dtype(type_string: str) -> str:
    """ "tensor(float)" -> "float32"; unknown types keep ORT's own word."""
    if type_string in _ORT_DTYPES:
        return _ORT_DTYPES[type_string]
    if type_string.startswith("tensor(") and type_string.endswith(")"):
        return type_string[len("tensor(") : -1]
    return type_string


def _spec(node_arg: Any) -> TensorSpec:
    try:
        shape = tuple(node_arg.shape)
    except Exception:  # sequences/maps have no tensor shape
        shape = ()
    return TensorSpec(name=node_arg.name, shape=shape, dtype=ort_dtype(node_arg.type))


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity mask where the OS has one (a systemd ``CPUAffinity=``
    or a container narrows it), else every CPU of the board."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def check_threads(threads: Any) -> int:
    """``threads`` as an int from 1 to the usable cores, else EdgeError(BAD_INPUT).

    More intra-op threads than cores only adds contention (64 on a 2-core board made a child of 130
    threads), so a job asking for more is refused rather than silently clamped: its numbers would not
    mean what it asked for.
    """
    cores = usable_cores()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= cores:
        raise EdgeError(ErrorCode.BAD_INPUT, f"threads must be an integer from 1 to {cores} (the board's usable "
                                             f"cores), got {printable(repr(threads))}")
    return int(threads)


def _parse_options(options: Optional[Dict[str, Any]]) -> Tuple[int, List[str]]:
    # Unknown keys are ignored on purpose: one options dict is shared by all backends
    # (e.g. TensorRT's "fp16"), and backend="auto" may land on either.
    options = options or {}
    threads = options.get("threads")
    threads = check_threads(DEFAULT_THREADS if threads is None else threads)
    providers = options.get("providers") or DEFAULT_PROVIDERS
    if isinstance(providers, str):
        providers = [p.strip() for p in providers.split(",") if p.strip()]
    return threads, list(providers)


def _check_providers(ort: Any, providers: Sequence[str]) -> None:
    have = list(ort.get_available_providers())
    missing = [p for p in providers if p not in have]
    if missing:
        raise EdgeError(
            ErrorCode.BACKEND_UNAVAILABLE,
            f"onnxruntime provider(s) {missing} not available; this build has {have}",
        )


def _session_options(ort: Any, threads: int, optimize: bool = True) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    level = ort.GraphOptimizationLevel
    # A cached plan is already optimised; running the optimiser again would only cost time.
    so.graph_optimization_level = level.ORT_ENABLE_ALL if optimize else level.ORT_DISABLE_ALL
    # Errors only: ORT's warnings go straight to stderr and would break one-line output.
    so.log_severity_level = 4  # the exception carries the message; ORT would also print it
    return so


def _cpu_name() -> str:
    """The CPU model, part of the cache key (an optimised ORT model may use its layouts)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def file_size_limit(max_bytes: int) -> Iterator[bool]:
    """While the body runs, no file this process writes grows past ``max_bytes`` (RLIMIT_FSIZE): a runtime's
    write fails there (EFBIG) instead of filling the disk. SIGXFSZ, which would kill the process, is ignored
    meanwhile. Yields whether the limit is in force: only the main thread may change a signal's handler, and
    the measuring process runs every runtime call on its main thread."""
    try:
        import resource

        saved_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        saved_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    except (ImportError, AttributeError, ValueError, OSError):  # not Linux, or not the main thread
        saved_limit = saved_signal = None  # type: ignore[assignment]
    if saved_limit is None:
        yield False
        return
    soft, hard = saved_limit
    value = min(v for v in (max_bytes, soft, hard) if v != resource.RLIM_INFINITY)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (value, hard))
        yield True
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved_limit)
        signal.signal(signal.SIGXFSZ, saved_signal if saved_signal is not None else signal.SIG_DFL)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _read_and_remove(path: str, limit: int) -> Optional[bytes]:
    """The file's bytes, None when it is missing or has reached ``limit`` (the write stopped there: a part)."""
    try:
        if _size(path) >= limit:
            return None
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None
    finally:
        if os.path.exists(path):
            os.remove(path)


def _optimized_session(ort: Any, model: bytes, threads: int, providers: List[str],
                       plan_limit: Optional[int]) -> Tuple[Any, Optional[bytes]]:
    """The session, and ORT's optimised model (the cacheable plan) when it is smaller than ``plan_limit``.

    ORT writes that model to disk while it builds the session; constant folding once made 96 MiB of a
    167-byte model. Under the limit the write fails instead (ORT then refuses the session: it is built again
    without writing anything) and no file over the limit ever exists. ``plan_limit`` 0: no plan is wanted.
    """
    if plan_limit == 0:
        return _new_session(ort, model, _session_options(ort, threads), providers), None
    bound = plan_limit or MAX_FILE_BYTES
    so = _session_options(ort, threads)
    handle, plan_path = tempfile.mkstemp(prefix="edge-evolver-ort-", suffix=".onnx")
    os.close(handle)
    so.optimized_model_filepath = plan_path
    session = None
    try:
        with file_size_limit(bound):
            session = ort.InferenceSession(model, sess_options=so, providers=providers)
    except Exception as exc:
        if _size(plan_path) < bound:
            raise classify_load_error(exc) from None
    finally:
        plan = _read_and_remove(plan_path, bound)
    if session is None:  # only the optimised model's write failed, at the limit
        session = _new_session(ort, model, _session_options(ort, threads), providers)
    return session, plan


def _new_session(ort: Any, model: bytes, so: Any, providers: List[str]) -> Any:
    try:
        return ort.InferenceSession(model, sess_options=so, providers=providers)
    except Exception as exc:
        raise classify_load_error(exc) from None


class _Source(NamedTuple):
    """What the profiling pass needs to make a second session like the measured one."""

    model: bytes  # the model, or the optimised plan from the engine cache
    threads: int
    providers: List[str]
    optimize: bool


class OnnxRuntimeEngine(Engine):
    def __init__(self, session: Any, info: Dict[str, Any], source: Optional[_Source] = None) -> None:
        self._session = session
        self._source = source
        self.inputs = [_spec(arg) for arg in session.get_inputs()]
        self.outputs = [_spec(arg) for arg in session.get_outputs()]
        self._output_names = [spec.name for spec in self.outputs]
        self.info = info

    def profile(self, feeds: Dict[str, np.ndarray], settings: ProfileSettings) -> RawProfile:
        """Per-kernel times from a second, profiling session (``_ort_profile``)."""
        if self._session is None or self._source is None:
            raise EdgeError(ErrorCode.INFERENCE_FAILED, "engine is closed")
        from ._ort_profile import MAX_TRACE_BYTES, profile_session

        ort, source = _import_ort(), self._source
        try:
            with file_size_limit(MAX_TRACE_BYTES):  # ORT writes the trace: it stops at the bound, see _ort_profile
                return profile_session(ort, source.model, lambda: _session_options(ort, source.threads,
                                                                                    source.optimize),
                                       source.providers, feeds, settings)
        except EdgeError:
            raise
        except Exception as exc:
            raise EdgeError(ErrorCode.INFERENCE_FAILED, "onnxruntime profiling failed: " + clean_message(exc)) from None

    def infer(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        if self._session is None:
            raise EdgeError(ErrorCode.INFERENCE_FAILED, "engine is closed")
        try:
            return list(self._session.run(self._output_names, feeds))
        except Exception as exc:
            raise EdgeError(
                ErrorCode.INFERENCE_FAILED, "onnxruntime run failed: " + clean_message(exc)
            ) from None

    def close(self) -> None:
        # ORT frees the session when the last reference goes; dropping ours is the close.
        self._session = self._source = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    # ai.onnx from opset 1 (ORT keeps kernels for every opset); ai.onnx.ml, the classic-ML ops
    # every ORT build compiles in (sklearn/xgboost exports); com.microsoft, ORT's own contrib ops,
    # which its transformer fusions and some torch exports emit. All three are kernels inside
    # ORT: nothing is loaded from disk. Refused: any other domain (a custom-op library would have
    # to be registered, and this daemon registers none), ai.onnx.preview.training, and ORT's
    # internal layout domains (com.microsoft.nchwc, com.ms.internal.nhwc), which appear only in
    # ORT's own optimised output: the engine cache's plans, loaded by ``load_plan`` unchecked.
    model_policy = ModelPolicy("onnxruntime", {"": (1, MAX_ONNX_OPSET), "ai.onnx.ml": (1, 5),
                                               "com.microsoft": (1, 1)})

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        try:
            ort = _import_ort()
            return True, "onnxruntime {} ({})".format(
                ort.__version__, ", ".join(ort.get_available_providers())
            )
        except EdgeError as exc:
            return False, exc.message
        except Exception as exc:  # a broken wheel (wrong numpy ABI...) must not crash `info`
            return False, f"onnxruntime failed to import: {type(exc).__name__}: {exc}"

    def version(self) -> str:
        return str(_import_ort().__version__)

    def cache_key(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        threads, providers = _parse_options(options)
        return {
            "backend": self.name,
            "version": self.version(),
            "device": _cpu_name(),
            "machine": platform.machine(),
            "providers": providers,
            "precision": "as-model",  # ORT runs the model's own dtypes (fp16 weights are upcast on CPU)
            "optimization": "ORT_ENABLE_ALL",
        }

    def build(
        self, model_bytes: bytes, options: Optional[Dict[str, Any]] = None
    ) -> Tuple[Engine, Optional[bytes]]:
        ort = _import_ort()
        threads, providers = _parse_options(options)
        _check_providers(ort, providers)
        if not model_bytes:
            raise EdgeError(ErrorCode.INVALID_MODEL, "model is empty (0 bytes)")
        # Bytes, never a path. Even so ORT would read a tensor's external data relative to the working
        # directory: measure_model refuses such models first (measure/model_guard.py).
        limit = (options or {}).get(PLAN_LIMIT_OPTION)
        session, plan = _optimized_session(ort, bytes(model_bytes), threads, providers, limit)
        source = _Source(bytes(model_bytes), threads, providers, True)
        info = self._info(session, threads, "ORT_ENABLE_ALL")
        if limit and plan is None:
            info["optimized_model"] = f"not kept: ORT wrote none under the {limit}-byte limit of a cached plan"
        return OnnxRuntimeEngine(session, info, source), plan or None

    def load_plan(self, plan: bytes, options: Optional[Dict[str, Any]] = None) -> Engine:
        ort = _import_ort()
        threads, providers = _parse_options(options)
        try:
            session = ort.InferenceSession(
                bytes(plan), sess_options=_session_options(ort, threads, optimize=False), providers=providers
            )
        except Exception as exc:
            raise EdgeError(ErrorCode.BUILD_FAILED, "cached plan is stale or damaged: " + clean_message(exc)) from None
        source = _Source(bytes(plan), threads, providers, False)
        return OnnxRuntimeEngine(session, self._info(session, threads, "cached (optimised at build)"), source)

    @staticmethod
    def _info(session: Any, threads: int, optimization: str) -> Dict[str, Any]:
        return {
            "threads": threads,
            "inter_op_threads": 1,
            "providers": list(session.get_providers()),
            "graph_optimization": optimization,
            "execution_mode": "ORT_SEQUENTIAL",
            "precision": "as-model",
        }

    def describe(self) -> Dict[str, Any]:
        ok, reason = self.available()
        out: Dict[str, Any] = {"name": self.name, "available": ok, "detail": reason}
        if ok:
            ort = _import_ort()
            out.update(
                version=str(ort.__version__),
                available_providers=list(ort.get_available_providers()),
                default_providers=list(DEFAULT_PROVIDERS),
                default_threads=DEFAULT_THREADS,
                device=str(ort.get_device()),
                cpu_count=os.cpu_count(),
            )
        return out
