"""TensorRT's per-layer times: an ``IProfiler`` on the execution context, after the timed window.

Written against NVIDIA's documented Python API (TensorRT 8.2 to 10), with every feature detected,
never a version compared; it has run against the fakes in ``tests/trt_fakes.py`` only, not on
real TensorRT.

- Build: ``config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED`` where the config has
  it, so the engine keeps each layer's type and (TensorRT 10's ONNX parser) the ONNX nodes it came
  from as ``Metadata``, which ``IEngineInspector`` returns as JSON. Engines built without it (or
  plans cached before) still report layer names, which are then matched against the graph.
- Run: the profiler is attached with ``context.profiler = ...`` and TensorRT calls its
  ``report_layer_time(layer_name, ms)`` once per layer per run. The pass executes synchronously
  with ``execute_v2``: TensorRT 8.2-8.4 document profiling for synchronous execution only
  (``enqueue`` gained it in 8.5). The inputs were staged by one ordinary ``infer`` just before.
"""

import contextlib
import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import EdgeError, ErrorCode
from .profiling import ProfileSettings, RawLayer, RawProfile, run_pass

_ONNX_LAYER = "[ONNX Layer: "
Details = Tuple[str, Optional[Tuple[str, ...]]]  # (layer type, ONNX node names or None)


def set_detailed_verbosity(trt: Any, config: Any) -> bool:
    """Ask for DETAILED layer information where this TensorRT has it; False (silently) elsewhere."""
    detailed = getattr(getattr(trt, "ProfilingVerbosity", None), "DETAILED", None)
    if detailed is None or not hasattr(config, "profiling_verbosity"):
        return False
    try:
        config.profiling_verbosity = detailed
    except Exception:  # a binding that exposes the attribute read-only: names alone will do
        return False
    return True


def make_profiler(trt: Any) -> Any:
    """An IProfiler that sums each layer's reported milliseconds, in the order layers first report."""

    class LayerTimes(trt.IProfiler):
        def __init__(self) -> None:
            trt.IProfiler.__init__(self)  # TensorRT requires the explicit base initialisation
            self.totals: Dict[str, float] = {}

        def report_layer_time(self, layer_name: str, ms: float) -> None:
            name = str(layer_name)
            self.totals[name] = self.totals.get(name, 0.0) + float(ms)

        def reset(self) -> None:
            self.totals = {}

    return LayerTimes()


def metadata_nodes(metadata: str) -> Tuple[str, ...]:
    """ONNX node names in a layer's metadata: ``[ONNX Layer: a]\\x1f[ONNX Layer: b | f (Fn)]`` -> (a, b)."""
    names: List[str] = []
    for part in metadata.split("\x1f"):
        part = part.strip()
        if not part.startswith(_ONNX_LAYER):
            continue
        name = part[len(_ONNX_LAYER):]
        name = (name[:-1] if name.endswith("]") else name).split(" | ")[0].strip()
        if name and name not in names:
            names.append(name)
    return tuple(names)


def parse_layer_info(text: Any) -> Optional[Tuple[str, Details]]:
    """(layer name, details) from ``get_layer_information(i, JSON)``: a dict with Name, LayerType and
    Metadata when built DETAILED, the bare name as a JSON string otherwise; None if unreadable."""
    try:
        data = json.loads(str(text))
    except ValueError:
        return None
    if isinstance(data, str):
        return data, ("", None)
    if not isinstance(data, dict) or not isinstance(data.get("Name"), str):
        return None
    metadata = data.get("Metadata")
    origin = metadata_nodes(metadata) if isinstance(metadata, str) else ()
    return data["Name"], (str(data.get("LayerType") or ""), origin or None)


def layer_details(trt: Any, engine: Any) -> Dict[str, Details]:
    """Layer name -> details, from IEngineInspector (8.2+); {} where there is none or it fails."""
    create = getattr(engine, "create_engine_inspector", None)
    form = getattr(getattr(trt, "LayerInformationFormat", None), "JSON", None)
    count = getattr(engine, "num_layers", None)
    if create is None or form is None or count is None:
        return {}
    try:
        inspector = create()
        texts = [inspector.get_layer_information(index, form) for index in range(int(count))]
    except Exception:  # the inspector only adds detail; the names come from the profiler anyway
        return {}
    parsed = [parse_layer_info(text) for text in texts]
    return dict(item for item in parsed if item is not None)


def executor(context: Any, buffers: Sequence[Any], io: Any, cuda: Any) -> Callable[[], None]:
    """One synchronous run: ``execute_v2`` with the buffers' addresses by binding / I/O index, or
    (a binding without it) the engine's own enqueue (``_trt_io``) followed by a synchronise."""
    execute_v2 = getattr(context, "execute_v2", None)
    bindings = [0] * (max([b.tensor.position for b in buffers] or [-1]) + 1)
    for buffer in buffers:
        bindings[buffer.tensor.position] = buffer.device

    def enqueue() -> bool:
        ok = io.execute(cuda.stream_handle)
        cuda.sync()
        return bool(ok)

    def run() -> None:
        ok = execute_v2(bindings) if execute_v2 is not None else enqueue()
        if not ok:
            raise EdgeError(ErrorCode.INFERENCE_FAILED, "TensorRT execution failed during the profiling pass")

    return run


def profile_context(trt: Any, engine: Any, context: Any, run: Callable[[], None], profiler: Any,
                    settings: ProfileSettings) -> RawProfile:
    """The pass: attach ``profiler``, warm up, forget, measure, detach; layers in report order."""
    context.profiler = profiler
    try:
        runs = run_pass(run, settings, measuring=profiler.reset)
    finally:
        with contextlib.suppress(Exception):  # later runs are not profiled (the caller keeps ``profiler`` alive)
            context.profiler = None
    if not profiler.totals:
        raise EdgeError(ErrorCode.INTERNAL, "TensorRT reported no layer times to the profiler")
    details = layer_details(trt, engine)
    layers = []
    for name, total in profiler.totals.items():
        op, origin = details.get(name, ("", None))
        layers.append(RawLayer(name, op, total, origin))
    return RawProfile(layers, runs)
