"""ONNX Runtime's per-kernel times, from a second session with its profiler on.

ORT can only switch profiling on when a session is created (``SessionOptions.enable_profiling``),
so the measured session stays unprofiled and the pass builds its own, with the same options, from
the same bytes (the model, or the optimised plan from the engine cache). ORT writes its trace as
a JSON file when ``end_profiling()`` is called (or when the session goes away), so the file prefix
points into a temporary directory that is removed afterwards: a board writes nothing elsewhere.

The trace holds one event per kernel run: ``"cat": "Node"``, ``name`` = the kernel's node name
plus ``_kernel_time`` (ORT 1.10 also writes ``_fence_before``/``_fence_after`` events, ignored),
``dur`` in microseconds and ``args.op_name``. The warm-up runs' events are dropped by time: every
run is a ``"model_run"`` event, and only kernels that start after the first measured run began
are counted (or, without ``model_run`` events, each kernel's first ``warmup_runs`` occurrences).
"""

import json
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Sequence

from ..errors import EdgeError, ErrorCode
from .profiling import ProfileSettings, RawLayer, RawProfile, run_pass

KERNEL_SUFFIX = "_kernel_time"


def profile_session(ort: Any, source: bytes, options: Callable[[], Any], providers: Sequence[str],
                    feeds: Mapping[str, Any], settings: ProfileSettings) -> RawProfile:
    """Run the profiling pass in a new session of ``source``; ``options()`` makes its SessionOptions."""
    directory = tempfile.mkdtemp(prefix="edge-evolver-profile-")
    holder: List[Any] = []  # the session, dropped before the directory goes
    try:
        so = options()
        if not hasattr(so, "profile_file_prefix"):  # without it ORT would write into the working directory
            raise EdgeError(ErrorCode.BACKEND_UNAVAILABLE, "this onnxruntime cannot place its profile file")
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(directory, "profile")
        holder.append(ort.InferenceSession(bytes(source), sess_options=so, providers=list(providers)))
        session, names, inputs = holder[0], [output.name for output in holder[0].get_outputs()], dict(feeds)
        runs = run_pass(lambda: session.run(names, inputs), settings)
        events = _read_trace(str(session.end_profiling()), directory)
    finally:
        del holder[:]  # a profiling session writes its file when it ends: that must happen in `directory`
        shutil.rmtree(directory, ignore_errors=True)
    return summarize(events, settings.warmup_runs, runs)


def _read_trace(path: str, directory: str) -> List[Dict[str, Any]]:
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(directory):
        raise EdgeError(ErrorCode.INTERNAL, f"onnxruntime wrote its profile outside the temporary directory: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            events = json.load(handle)
    except (OSError, ValueError) as exc:
        raise EdgeError(ErrorCode.INTERNAL, f"onnxruntime's profile could not be read: {exc}") from None
    if not isinstance(events, list):
        raise EdgeError(ErrorCode.INTERNAL, "onnxruntime's profile is not a list of events")
    return [event for event in events if isinstance(event, dict)]


def _number(event: Dict[str, Any], key: str) -> float:
    value = event.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def _measured(kernels: List[Dict[str, Any]], events: List[Dict[str, Any]], warmup: int) -> List[Dict[str, Any]]:
    """The kernel events of the measured runs (see the module docstring)."""
    starts = sorted(_number(e, "ts") for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    if warmup <= 0:
        return kernels
    if len(starts) > warmup:
        first = starts[warmup]
        return [event for event in kernels if _number(event, "ts") >= first]
    seen: Dict[str, int] = {}
    kept = []
    for event in kernels:
        count = seen[event["name"]] = seen.get(event["name"], 0) + 1
        if count > warmup:
            kept.append(event)
    return kept


def summarize(events: List[Dict[str, Any]], warmup: int, runs: int) -> RawProfile:
    """Per kernel, in order of first execution: its op and its summed time over the measured runs."""
    kernels = [e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith(KERNEL_SUFFIX)]
    kernels.sort(key=lambda event: _number(event, "ts"))  # stable: ties keep the file's order
    totals: Dict[str, float] = {}
    ops: Dict[str, str] = {}
    for event in _measured(kernels, events, warmup):
        name = str(event["name"])[: -len(KERNEL_SUFFIX)]
        args = event.get("args")
        ops.setdefault(name, str(args.get("op_name") or "") if isinstance(args, dict) else "")
        totals[name] = totals.get(name, 0.0) + _number(event, "dur") / 1000.0  # µs -> ms
    if not totals:
        raise EdgeError(ErrorCode.INTERNAL, "onnxruntime's profile holds no kernel events")
    return RawProfile([RawLayer(name, ops[name], total) for name, total in totals.items()], runs)
