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

The trace is bounded (``MAX_TRACE_BYTES``), because every event repeats its node's name: a 393 KiB model
with long node names once made a 92 MiB trace. The pass runs at most as many runs as a generous estimate
of each run's trace allows (``run_bytes``; refused when not even one fits), ORT writes it under a file size
limit (the caller's ``file_size_limit``), a trace that reached the bound is not read, and one below it is
read one event at a time, keeping only what ``summarize`` needs.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from typing import IO, Any, Callable, Dict, Iterator, List, Mapping, Sequence

from ..errors import EdgeError, ErrorCode
from ..onnxgraph import read_nodes
from .profiling import ProfileSettings, RawLayer, RawProfile, run_pass

KERNEL_SUFFIX = "_kernel_time"
MAX_TRACE_BYTES = 16 * 1024 ** 2
# Per kernel and run, ORT 1.10 writes three events (fence before, kernel time, fence after), each with the
# node's name; besides the names, the three take under 1 KiB (ORT 1.32: one event of ~550 bytes of shapes,
# sizes and thread statistics on two threads). The estimate is 2-5x what ORT 1.32 writes for the project's models.
EVENTS_PER_KERNEL = 3
EVENT_BYTES = 1024
_READ_CHUNK = 1024 * 1024


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
        settings = within_trace_budget(settings, run_bytes(source))
        holder.append(ort.InferenceSession(bytes(source), sess_options=so, providers=list(providers)))
        session, names, inputs = holder[0], [output.name for output in holder[0].get_outputs()], dict(feeds)
        runs = run_pass(lambda: session.run(names, inputs), settings)
        events = _read_trace(str(session.end_profiling()), directory)
    finally:
        del holder[:]  # a profiling session writes its file when it ends: that must happen in `directory`
        shutil.rmtree(directory, ignore_errors=True)
    return summarize(events, settings.warmup_runs, runs)


def run_bytes(source: bytes) -> int:
    """A generous estimate of the trace one run adds (every node a kernel, named after its longest name or
    output); 0 when the model cannot be read here (the size bound still holds)."""
    try:
        nodes = read_nodes(source)
    except Exception:  # ORT loaded it, so it is a model; the reader may still not follow every part
        return 0
    total = 0
    for node in nodes:
        longest = max([len(node.name)] + [len(output) + 16 for output in node.outputs])
        total += EVENT_BYTES + EVENTS_PER_KERNEL * longest + 32 * (len(node.inputs) + len(node.outputs))
    return total


def within_trace_budget(settings: ProfileSettings, per_run: int) -> ProfileSettings:
    """``settings`` with at most as many runs (warm-up included) as MAX_TRACE_BYTES holds at ``per_run``."""
    if per_run <= 0:
        return settings
    warmup = max(0, int(settings.warmup_runs))
    runs = MAX_TRACE_BYTES // per_run - warmup
    if runs < 1:
        need = per_run * (warmup + 1) >> 10
        raise EdgeError(ErrorCode.OVERSIZE, f"no profile: one run of this model would write about {need} KiB of "
                                            f"profile trace, above its {_mib(MAX_TRACE_BYTES)} bound")
    if runs >= settings.max_runs:
        return settings
    return dataclasses.replace(settings, max_runs=runs, min_runs=min(settings.min_runs, runs))


def _mib(size: int) -> str:
    return f"{size / 1024 ** 2:g} MiB"


def _read_trace(path: str, directory: str) -> List[Dict[str, Any]]:
    """The kernel and ``model_run`` events of the trace, each cut down to what ``summarize`` reads."""
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(directory):
        raise EdgeError(ErrorCode.INTERNAL, f"onnxruntime wrote its profile outside the temporary directory: {path}")
    try:
        if os.path.getsize(path) >= MAX_TRACE_BYTES:  # before reading a byte: the write stopped at the bound
            raise EdgeError(ErrorCode.OVERSIZE, f"no profile: onnxruntime's profile trace reached its "
                                                f"{_mib(MAX_TRACE_BYTES)} bound")
        with open(path, encoding="utf-8") as handle:
            return [_kept(event) for event in _events(handle) if _wanted(event)]
    except (OSError, ValueError) as exc:
        raise EdgeError(ErrorCode.INTERNAL, f"onnxruntime's profile could not be read: {exc}") from None


def _events(handle: IO[str]) -> Iterator[Any]:
    """The items of the JSON list in ``handle``, one at a time: the whole trace is never in memory."""
    reader = _Reader(handle)
    reader.take("[")
    if reader.peek() == "]":
        return
    while True:
        yield reader.value()
        if reader.peek() == "]":
            return
        reader.take(",")


class _Reader:
    """A JSON text read a chunk at a time; ValueError where it is not what the caller expects."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle, self.buffer, self.position, self.done = handle, "", 0, False
        self.decoder = json.JSONDecoder()

    def _more(self) -> bool:
        chunk = "" if self.done else self.handle.read(_READ_CHUNK)
        self.buffer, self.position, self.done = self.buffer[self.position:] + chunk, 0, not chunk
        return bool(chunk)

    def peek(self) -> str:
        """The next character that is not white space; "" at the end."""
        while True:
            while self.position < len(self.buffer) and self.buffer[self.position] in " \t\r\n":
                self.position += 1
            if self.position < len(self.buffer) or not self._more():
                return self.buffer[self.position:self.position + 1]

    def take(self, char: str) -> None:
        if self.peek() != char:
            raise ValueError(f"the trace is not a JSON list of events (expected {char!r})")
        self.position += 1

    def value(self) -> Any:
        self.peek()
        while True:
            try:
                item, end = self.decoder.raw_decode(self.buffer, self.position)
            except ValueError:
                item, end = None, -1
            # A value that ends with the buffer may go on in the next chunk (a number): read on to be sure.
            if end != -1 and (end < len(self.buffer) or self.done):
                self.position = end
                return item
            if not self._more() and end == -1:
                raise ValueError("the trace ends inside an event")


def _wanted(event: Any) -> bool:
    if not isinstance(event, dict):
        return False
    if event.get("cat") == "Session":
        return event.get("name") == "model_run"
    return event.get("cat") == "Node" and str(event.get("name", "")).endswith(KERNEL_SUFFIX)


def _kept(event: Dict[str, Any]) -> Dict[str, Any]:
    args = event.get("args")
    op = args.get("op_name") if isinstance(args, dict) else None
    return {"cat": event.get("cat"), "name": event.get("name"), "ts": event.get("ts"), "dur": event.get("dur"),
            "args": {"op_name": op}}


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
