"""TensorRT backend: what a Jetson is measured with (ONNX Runtime stays the CPU reference).

One module spans TensorRT 8.2 (JetPack 4.6: Python 3.6, TX1/Nano) to 10.x (JetPack 6, Orin).
Their Python APIs differ, so features are detected with ``hasattr``, never by version string:
the workspace limit (``set_memory_pool_limit`` since 8.4; ``max_workspace_size`` before, gone
in 10), the explicit-batch flag (required in 8.x; ignored in 10, whose Builder lost
``max_batch_size`` with implicit batch), and I/O (named tensors + ``execute_async_v3`` since
8.5, preferred; bindings + ``execute_async_v2`` before, gone in 10: see ``_trt_io``).

Build: ONNX parser -> network -> one optimization profile with min = opt = max at the requested
batch (the benchmark measures exactly one shape) -> ``build_serialized_network``. The plan is
what the engine cache keeps; it only loads on the same TensorRT version and GPU, hence
``cache_key``. fp16 is on by default where the GPU has fast fp16 (every Jetson): that is how
the model would be deployed. This module holds the build, the engine and the backend; the I/O
adapters, dtype mapping and buffers are in ``_trt_io`` (its public names are re-exported
here with ``import X as X``, where they used to live). Buffers are allocated once per engine
through ``_cuda`` (pycuda or cuda-python); all CUDA work of an engine happens on the thread
that built or loaded it. ``tensorrt`` is imported inside functions: importing it initialises
CUDA, which takes seconds.
"""

import collections
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import EdgeError, ErrorCode, clip_line
from . import _cuda, _trt_profile
from ._trt_io import BindingsIo as BindingsIo
from ._trt_io import Buffer, allocate, np_dtype, select_io_api, stage
from ._trt_io import IoTensor as IoTensor
from ._trt_io import TensorAddressIo as TensorAddressIo
from .base import Backend, Engine
from .model_policy import ModelPolicy
from .profiling import ProfileSettings, RawProfile
from .tensors import TensorSpec, check_feeds, resolve_shape

DEFAULT_WORKSPACE_MB = 256  # TX1/Nano share 4 GiB between CPU and GPU
LOG_KEEP = 20
# Lower-cased fragments of ONNX parser errors that blame an operator rather than the file.
_UNSUPPORTED_MARKERS = ("unsupported_node", "no importer registered for op", "plugin not found", "is not supported")


def _import_trt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise EdgeError(
            ErrorCode.BACKEND_UNAVAILABLE,
            f"tensorrt is not installed ({exc}); JetPack provides it (system Python, or a venv made "
            "with --system-site-packages), elsewhere pip install tensorrt",
        ) from None
    return tensorrt


# ---- logging: one logger per process (TensorRT 8.0-8.4 keep the first one as a global) ----
_LOGGER: List[Tuple[Any, Any]] = []


def get_logger(trt: Any) -> Any:
    if not _LOGGER or _LOGGER[0][0] is not trt:
        _LOGGER[:] = [(trt, _make_logger(trt))]
    return _LOGGER[0][1]


def _make_logger(trt: Any) -> Any:
    warning = int(trt.ILogger.Severity.WARNING)

    class RecentLogger(trt.ILogger):
        """Keeps the last errors and warnings for one-line error texts instead of printing them."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.count = 0
            self.recent: Any = collections.deque(maxlen=LOG_KEEP)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= warning:  # INTERNAL_ERROR = 0, ERROR = 1, WARNING = 2
                self.count += 1
                self.recent.append((self.count, "{}: {}".format(str(severity).rsplit(".", 1)[-1], clip_line(msg))))

        def since(self, mark: int) -> List[str]:
            return [text for number, text in self.recent if number > mark]

    return RecentLogger()


def _log_tail(logger: Any, mark: int, fallback: str) -> str:
    lines = logger.since(mark)
    return clip_line("; ".join(lines[-3:]) if lines else fallback)


# ---- options ----
class BuildOptions(NamedTuple):
    batch: int
    shape_overrides: Dict[str, Any]  # JSON-ready: name -> int or list of ints, sorted
    fp16: Optional[bool]  # None = auto (fast fp16 platforms)
    workspace_mb: int


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _overrides(raw: Any) -> Dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise EdgeError(ErrorCode.BAD_SHAPE, f"shape_overrides must be a mapping, not {raw!r}")
    out: Dict[str, Any] = {}
    for key in sorted(raw, key=str):
        value = raw[key]
        if _is_int(value):
            out[str(key)] = int(value)
        elif isinstance(value, (list, tuple)) and all(_is_int(d) for d in value):
            out[str(key)] = [int(d) for d in value]
        else:
            raise EdgeError(ErrorCode.BAD_SHAPE, f"shape override '{key}' must be an int or a list of ints")
    return out


def parse_options(options: Optional[Mapping[str, Any]]) -> BuildOptions:
    """The keys this backend uses; others are ignored (one options dict serves every backend)."""
    options = options or {}
    batch = 1 if options.get("batch") is None else options["batch"]
    if not _is_int(batch) or batch < 1:
        raise EdgeError(ErrorCode.BAD_SHAPE, f"batch must be an integer >= 1 (got {batch!r})")
    fp16 = options.get("fp16")
    if fp16 is not None and not isinstance(fp16, (bool, np.bool_)):
        raise EdgeError(ErrorCode.BAD_INPUT, f"fp16 must be true, false or null for auto (got {fp16!r})")
    workspace = options.get("workspace_mb")
    workspace = DEFAULT_WORKSPACE_MB if workspace is None else workspace
    if not _is_int(workspace) or workspace < 1:
        raise EdgeError(ErrorCode.BAD_INPUT, f"workspace_mb must be an integer >= 1 (got {workspace!r})")
    fp16 = None if fp16 is None else bool(fp16)
    return BuildOptions(int(batch), _overrides(options.get("shape_overrides")), fp16, int(workspace))


# ---- version differences, detected by feature ----
def network_flags(trt: Any, builder: Any) -> int:
    """EXPLICIT_BATCH where implicit batch still exists (8.x); 0 where it is gone (10: always explicit)."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "EXPLICIT_BATCH", None)
    if flag is None or not hasattr(builder, "max_batch_size"):
        return 0
    return 1 << int(flag)


def set_workspace(trt: Any, config: Any, workspace_mb: int) -> str:
    """Cap the builder's scratch memory; returns the API used."""
    limit = int(workspace_mb) * 1024 * 1024
    if hasattr(config, "set_memory_pool_limit"):  # 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, limit)
        return "set_memory_pool_limit"
    config.max_workspace_size = limit  # 8.2/8.3
    return "max_workspace_size"


def cc_has_fast_fp16(major: int, minor: int) -> bool:
    """Native fast fp16 by compute capability: 5.3 (TX1/Nano), 6.0, 6.2 (TX2) and 7.0+."""
    return major >= 7 or (major, minor) in ((5, 3), (6, 0), (6, 2))


def platform_fast_fp16(builder: Any, device: _cuda.DeviceInfo) -> bool:
    value = getattr(builder, "platform_has_fast_fp16", None)  # deprecated in 10.5
    return cc_has_fast_fp16(device.major, device.minor) if value is None else bool(value)


def choose_fp16(trt: Any, requested: Optional[bool], fast: bool) -> bool:
    """Whether to set BuilderFlag.FP16: auto follows the platform, True/False are obeyed."""
    has_flag = hasattr(getattr(trt, "BuilderFlag", None), "FP16")  # gone in 11 (strongly typed only)
    if requested is None:
        return bool(fast and has_flag)
    if requested and not has_flag:
        raise EdgeError(
            ErrorCode.BUILD_FAILED,
            f"TensorRT {trt.__version__} has no BuilderFlag.FP16 (strongly typed); export the model in fp16",
        )
    return bool(requested)


_CAPS: List[Tuple[Any, Dict[str, Optional[bool]]]] = []


def _builder_caps(trt: Any) -> Dict[str, Optional[bool]]:
    """platform_has_fast_fp16/int8 of a throwaway Builder, once per process (a Builder is slow)."""
    if not _CAPS or _CAPS[0][0] is not trt:
        builder = trt.Builder(get_logger(trt))
        caps = {key: getattr(builder, "platform_has_" + key, None) for key in ("fast_fp16", "fast_int8")}
        _CAPS[:] = [(trt, {key: None if v is None else bool(v) for key, v in caps.items()})]
    return _CAPS[0][1]


def _resolve_fp16(trt: Any, opts: BuildOptions, device: _cuda.DeviceInfo) -> bool:
    """The build's fp16 decision without building (for the cache key and loaded plans)."""
    if opts.fp16 is not None:
        return choose_fp16(trt, opts.fp16, False)
    fast = _builder_caps(trt)["fast_fp16"]
    return choose_fp16(trt, None, cc_has_fast_fp16(device.major, device.minor) if fast is None else fast)


# ---- parse and build ----
def classify_parse_errors(errors: Sequence[Tuple[str, str]]) -> EdgeError:
    """UNSUPPORTED_OP when a parser error blames an operator, INVALID_MODEL otherwise."""
    text = "; ".join(f"{desc} ({code})" for code, desc in errors[:3]) or "no details (empty or not ONNX?)"
    code = ErrorCode.UNSUPPORTED_OP if any(m in text.lower() for m in _UNSUPPORTED_MARKERS) else ErrorCode.INVALID_MODEL
    return EdgeError(code, clip_line("TensorRT could not parse the model: " + text))


def parse_onnx(parser: Any, model_bytes: bytes) -> None:
    # Bytes without a path; external weights would still resolve against the working directory,
    # which is why measure_model refuses them first (measure/model_guard.py).
    try:
        ok = bool(parser.parse(model_bytes))
        errors = []
        for index in range(int(parser.num_errors)):
            error = parser.get_error(index)
            errors.append((str(error.code()).rsplit(".", 1)[-1], " ".join(str(error.desc()).split())))
    except Exception as exc:
        raise EdgeError(ErrorCode.INVALID_MODEL, clip_line(f"TensorRT could not parse the model: {exc}")) from None
    if not ok:
        raise classify_parse_errors(errors)


def _dim_name(tensor: Any, axis: int) -> Optional[str]:
    getter = getattr(tensor, "get_dimension_name", None)  # ONNX dim_param names, where exposed
    try:
        name = getter(axis) if getter is not None else None
    except Exception:
        name = None
    return str(name) if name else None


def network_input_specs(trt: Any, network: Any) -> List[TensorSpec]:
    """Inputs as parsed; a dynamic dim is its ONNX name when TensorRT exposes it, else None."""
    specs = []
    for index in range(int(network.num_inputs)):
        tensor = network.get_input(index)
        if getattr(tensor, "is_shape_tensor", False):
            raise EdgeError(ErrorCode.UNSUPPORTED_OP, f"input '{tensor.name}' is a shape tensor (not supported)")
        dims = tuple(int(d) if int(d) >= 0 else _dim_name(tensor, axis) for axis, d in enumerate(tensor.shape))
        dtype = np_dtype(trt, tensor.dtype)
        specs.append(TensorSpec(str(tensor.name), dims, dtype.name if dtype is not None else str(tensor.dtype)))
    return specs


def add_profile(builder: Any, config: Any, specs: Sequence[TensorSpec], opts: BuildOptions) -> None:
    """One profile, min = opt = max at the resolved shape, for the inputs with dynamic dims."""
    shapes = {spec.name: resolve_shape(spec, opts.batch, opts.shape_overrides) for spec in specs}
    dynamic = [spec for spec in specs if not all(isinstance(d, int) for d in spec.shape)]
    if not dynamic:
        return
    profile = builder.create_optimization_profile()
    for spec in dynamic:
        shape = shapes[spec.name]
        try:
            profile.set_shape(spec.name, shape, shape, shape)
        except Exception as exc:
            message = f"input '{spec.name}' cannot take shape {list(shape)}: {exc}"
            raise EdgeError(ErrorCode.BAD_SHAPE, clip_line(message)) from None
    if config.add_optimization_profile(profile) < 0:
        raise EdgeError(ErrorCode.BAD_SHAPE, f"TensorRT rejected the optimization profile {shapes}")


def build_plan(trt: Any, model_bytes: bytes, opts: BuildOptions, device: _cuda.DeviceInfo) -> Tuple[bytes, bool]:
    """(serialized engine, fp16 used). The parser must outlive the build: it owns the weights."""
    logger = get_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, builder))
    parser = trt.OnnxParser(network, logger)
    parse_onnx(parser, model_bytes)
    config = builder.create_builder_config()
    set_workspace(trt, config, opts.workspace_mb)
    _trt_profile.set_detailed_verbosity(trt, config)  # layer types and ONNX nodes for the profile
    use_fp16 = choose_fp16(trt, opts.fp16, platform_fast_fp16(builder, device))
    if use_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    add_profile(builder, config, network_input_specs(trt, network), opts)
    if not hasattr(builder, "build_serialized_network"):
        raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, f"TensorRT {trt.__version__} is too old (8.0+ needed)")
    mark = logger.count
    try:
        serialized, error = builder.build_serialized_network(network, config), "no engine and no log"
    except Exception as exc:
        serialized, error = None, str(exc)
    if serialized is None:
        raise EdgeError(ErrorCode.BUILD_FAILED, "TensorRT could not build an engine: " + _log_tail(logger, mark, error))
    return bytes(serialized), use_fp16


def deserialize(trt: Any, plan: bytes) -> Tuple[Any, Any]:
    """(runtime, engine); the runtime must outlive the engine."""
    logger = get_logger(trt)
    runtime = trt.Runtime(logger)
    mark = logger.count
    try:
        engine, error = runtime.deserialize_cuda_engine(plan), "no engine and no log"
    except Exception as exc:
        engine, error = None, str(exc)
    if engine is None:
        raise EdgeError(ErrorCode.BUILD_FAILED, "stale or damaged plan: " + _log_tail(logger, mark, error))
    return runtime, engine


class TensorRTEngine(Engine):
    """An engine, its execution context and fixed-size buffers. Use from the creating thread."""

    def __init__(self, trt: Any, runtime: Any, cuda_engine: Any, cuda: _cuda.CudaMemory, info: Dict[str, Any]) -> None:
        self._cuda: Optional[_cuda.CudaMemory] = cuda
        self._trt, self._logger, self._profiler = trt, get_logger(trt), None
        self._runtime, self._engine, self._context, self._io = runtime, cuda_engine, None, None
        self._in: List[Buffer] = []
        self._out: List[Buffer] = []
        self.inputs, self.outputs = [], []
        try:
            self.info = dict(info, io_api=self._setup(trt, cuda))
        except BaseException:
            self.close()
            raise

    def _setup(self, trt: Any, cuda: _cuda.CudaMemory) -> str:
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise EdgeError(ErrorCode.BUILD_FAILED, "TensorRT could not create an execution context (GPU memory?)")
        io = self._io = select_io_api(self._engine, self._context)
        tensors = io.tensors(trt)
        for tensor in tensors:
            dynamic = tensor.is_input and min(tensor.shape, default=0) < 0
            if dynamic and not io.set_input_shape(tensor, io.profile_shape(tensor)):
                raise EdgeError(ErrorCode.BUILD_FAILED, f"the plan's profile does not fit input '{tensor.name}'")
        buffers = [allocate(trt, cuda, io, tensor) for tensor in tensors]  # after every input shape is set
        if not io.bind([(buffer.tensor, buffer.device) for buffer in buffers]):
            raise EdgeError(ErrorCode.BUILD_FAILED, "TensorRT refused a buffer address")
        self._in = [b for b in buffers if b.tensor.is_input]
        self._out = [b for b in buffers if not b.tensor.is_input]
        self.inputs = [TensorSpec(b.tensor.name, b.host.shape, b.host.dtype.name) for b in self._in]
        self.outputs = [TensorSpec(b.tensor.name, b.host.shape, b.host.dtype.name) for b in self._out]
        return io.name

    def infer(self, feeds: Dict[str, np.ndarray]) -> List[np.ndarray]:
        cuda, io = self._cuda, self._io
        if cuda is None or io is None:
            raise EdgeError(ErrorCode.INFERENCE_FAILED, "engine is closed")
        arrays = check_feeds(self.inputs, feeds)
        for buffer in self._in:
            stage(buffer, arrays[buffer.tensor.name])
        mark = self._logger.count
        try:
            for buffer in self._in:
                cuda.htod(buffer.device, buffer.host)
            if not io.execute(cuda.stream_handle):
                raise RuntimeError(_log_tail(self._logger, mark, "execute returned false"))
            for buffer in self._out:
                cuda.dtoh(buffer.host, buffer.device)
            cuda.sync()
        except Exception as exc:
            raise EdgeError(ErrorCode.INFERENCE_FAILED, clip_line(f"TensorRT inference failed: {exc}")) from None
        return [buffer.host.copy() for buffer in self._out]

    def profile(self, feeds: Dict[str, np.ndarray], settings: ProfileSettings) -> RawProfile:
        """Per-layer times from an IProfiler over synchronous runs (``_trt_profile``)."""
        self.infer(feeds)  # stages the inputs in device memory (and fails if closed); the pass only executes
        run = _trt_profile.executor(self._context, self._in + self._out, self._io, self._cuda)
        self._profiler = _trt_profile.make_profiler(self._trt)  # alive as long as the context may call it
        return _trt_profile.profile_context(self._trt, self._engine, self._context, run, self._profiler, settings)

    def close(self) -> None:
        cuda, self._cuda = self._cuda, None
        if cuda is None:
            return
        # TensorRT objects go first (context, engine, runtime) while the CUDA context is current.
        self._in, self._out, self._io = [], [], None
        self._context = self._engine = self._runtime = self._profiler = None
        cuda.close()


class TensorRTBackend(Backend):
    name = "tensorrt"
    # The ONNX parser imports the default domain only (another domain's op would be looked up
    # as a plugin by name). Opsets 7..22: TensorRT 8.2 (JetPack 4.6) documents 7..13, 8.6 up to
    # 17, 10.x up to 20-22; the host exports opset 17 (host_trainer/method/export.py), and the
    # parser imports a newer opset's nodes one by one, failing on the ones it cannot with
    # UNSUPPORTED_OP. So the ceiling is the newest release's rather than each release's own.
    model_policy = ModelPolicy("tensorrt", {"": (7, 22)})

    @classmethod
    def available(cls) -> Tuple[bool, str]:
        try:
            trt = _import_trt()
            device = _cuda.device_info()
        except EdgeError as exc:
            return False, exc.message
        except Exception as exc:  # a broken install (wrong libnvinfer, numpy ABI...) must not crash `info`
            return False, f"tensorrt is not usable: {type(exc).__name__}: {exc}"
        return True, f"tensorrt {trt.__version__} ({device.api}, {device.name})"

    def version(self) -> str:
        return str(_import_trt().__version__)

    def cache_key(self, options: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        trt, opts, device = _import_trt(), parse_options(options), _cuda.device_info()
        return {
            "backend": self.name,
            "version": str(trt.__version__),
            "device": device.label,
            "precision": "fp16" if _resolve_fp16(trt, opts, device) else "fp32",
            "workspace_mb": opts.workspace_mb,
            "batch": opts.batch,
            "shape_overrides": opts.shape_overrides,
        }

    def build(self, model_bytes: bytes, options: Optional[Dict[str, Any]] = None) -> Tuple[Engine, Optional[bytes]]:
        trt, opts = _import_trt(), parse_options(options)
        if not model_bytes:
            raise EdgeError(ErrorCode.INVALID_MODEL, "model is empty (0 bytes)")
        device = _cuda.device_info()
        cuda = _cuda.open_cuda()
        try:
            plan, fp16 = build_plan(trt, bytes(model_bytes), opts, device)
            return self._engine(trt, plan, opts, fp16, device, cuda), plan
        except BaseException:
            cuda.close()
            raise

    def load_plan(self, plan: bytes, options: Optional[Dict[str, Any]] = None) -> Engine:
        trt, opts = _import_trt(), parse_options(options)
        if not plan:
            raise EdgeError(ErrorCode.BUILD_FAILED, "stale or damaged plan: it is empty")
        device = _cuda.device_info()
        fp16 = _resolve_fp16(trt, opts, device)
        cuda = _cuda.open_cuda()
        try:
            return self._engine(trt, bytes(plan), opts, fp16, device, cuda)
        except BaseException:
            cuda.close()
            raise

    @staticmethod
    def _engine(trt: Any, plan: bytes, opts: BuildOptions, fp16: bool, device: Any, cuda: Any) -> Engine:
        runtime, cuda_engine = deserialize(trt, plan)
        info = {
            "precision": "fp16" if fp16 else "fp32",
            "workspace_mb": opts.workspace_mb,
            "batch": opts.batch,
            "cuda_api": cuda.api,
            "engine_bytes": len(plan),
            "device": device.label,
            "tensorrt": str(trt.__version__),
        }
        return TensorRTEngine(trt, runtime, cuda_engine, cuda, info)

    def describe(self) -> Dict[str, Any]:
        ok, reason = self.available()
        out: Dict[str, Any] = {"name": self.name, "available": ok, "detail": reason}
        if not ok:
            return out
        trt, device = _import_trt(), _cuda.device_info()
        try:
            caps = _builder_caps(trt)
        except Exception:  # describing must not fail because a Builder could not be made
            caps = {"fast_fp16": None, "fast_int8": None}
        fast_fp16 = caps["fast_fp16"]
        out.update(
            version=str(trt.__version__),
            device=device.label,
            cuda_api=device.api,
            fast_fp16=cc_has_fast_fp16(device.major, device.minor) if fast_fp16 is None else fast_fp16,
            fast_int8=caps["fast_int8"],
            default_workspace_mb=DEFAULT_WORKSPACE_MB,
        )
        return out
