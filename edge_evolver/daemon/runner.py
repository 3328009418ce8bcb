"""The measuring process: every job's build and benchmark run in one long-lived child process.

Why a process and not a thread: a job must be stoppable when it exceeds its time limit (a
TensorRT build cannot be interrupted from Python), a crash inside a runtime's C++ (a parser
segfault on a hostile model) must cost one job and not the daemon, and memory a runtime leaks
is returned when the child is recycled. All runtime and CUDA work happens on the child's main
thread; its only other thread reports progress. The child is started with "spawn", so it
never inherits the parent's MQTT sockets or threads.

Each job reaches the child as bytes over the pipe: the daemon reads the spool file, so the child is
never handed a path into the state directory. It runs as the daemon's user, though (docs/security.md).
Containment of a hostile model (a private working directory per job, a memory limit, the OOM killer's
first choice) is in containment.py; docs/security.md explains it.
"""

import contextlib
import multiprocessing
import os
import shutil
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Union

import structlog

from ..errors import ErrorCode, clip_line
from .containment import (
    apply_memory_limit,
    available_memory_bytes,
    explain_memory_failure,
    job_directory,
    physical_memory_bytes,
    plan_memory_limit,
    prepare_work_root,
    raise_oom_score,
    resolve_backend_name,
)

log = structlog.get_logger("edge_evolver.runner")

ProgressFn = Callable[[Dict[str, Any]], None]
RECYCLE_AFTER_JOBS = 100


def error_result(code: str, message: str) -> Dict[str, Any]:
    return {"status": "error", "code": code, "message": clip_line(message)}


class _Progress:
    """Child side: sends ("progress", {...}) about once per interval while a window is open."""

    def __init__(self, send: Callable[[Any], None], interval_s: float, batch: int) -> None:
        from ..measure.benchmark import WindowMonitor

        self._send, self.interval_s, self.batch = send, interval_s, batch
        self._latencies: Optional[List[float]] = None
        self._done = threading.Event()
        outer = self

        class Monitor(WindowMonitor):
            def window_started(self, latencies_ms: List[float]) -> None:
                outer._start(latencies_ms)

            def window_finished(self) -> None:
                outer._done.set()

        self.monitor = Monitor()

    def _start(self, latencies: List[float]) -> None:
        self._latencies = latencies
        self._send(("progress", {"activity": "benchmarking"}))
        threading.Thread(target=self._loop, name="progress", daemon=True).start()

    def _loop(self) -> None:
        seen, last = 0, time.monotonic()
        while not self._done.wait(self.interval_s):
            latencies = self._latencies or []
            now, count = time.monotonic(), len(latencies)
            fresh = sorted(latencies[seen:count])
            live_power = self.monitor.live_power
            if fresh:
                self._send(("progress", {
                    "activity": "benchmarking",
                    "power_w": live_power() if live_power is not None else None,
                    "fps": (count - seen) * self.batch / (now - last),
                    "latency_ms_p50": fresh[len(fresh) // 2],
                    "iterations": count,
                }))
            seen, last = count, now


_PARENT_PID = [0]


def _watch_parent() -> None:
    """A SIGKILLed daemon cannot stop its child: the child notices it was re-parented and quits,
    so an abandoned build or benchmark does not skew the measurements of the restarted daemon."""
    while True:
        if os.getppid() != _PARENT_PID[0]:
            os._exit(1)
        time.sleep(0.5)


def _child_main(conn: Any, params: Dict[str, Any]) -> None:
    """Loop: receive a job's bytes -> send progress messages, then ("result", dict)."""
    _PARENT_PID[0] = params.get("parent_pid") or os.getppid()
    threading.Thread(target=_watch_parent, name="watch-parent", daemon=True).start()
    # systemd signals the whole cgroup on stop; the parent decides what happens to a job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from ..logs import configure_logging

    configure_logging(params.get("log_level", "info"))
    raise_oom_score()  # before any runtime loads: whatever this process allocates, the OOM killer takes it first
    lock = threading.Lock()

    def send(message: Any) -> None:
        with lock:
            conn.send(message)

    from ..measure.engine_cache import DEFAULT_MAX_BYTES, EngineCache

    meter = _child_meter(params.get("power", "none"), params.get("power_reason") or "")
    cache_mb = params.get("cache_max_mb")
    # Absolute: the working directory changes with every job.
    cache = EngineCache(os.path.abspath(params["cache_dir"]),
                        int(cache_mb * 1024 * 1024) if cache_mb else DEFAULT_MAX_BYTES)
    # Resolve "auto" and import the runtime before the limit, as the limit depends on the runtime.
    params = dict(params, backend=resolve_backend_name(params.get("backend", "auto")))
    limit = plan_memory_limit(params["backend"], float(params.get("memory_mb") or 0), physical_memory_bytes(),
                              available_memory_bytes())
    apply_memory_limit(limit)
    root = prepare_work_root(params.get("work_dir"))
    os.chdir(root)
    try:
        _serve(conn, params, (meter, cache, limit, root), send)
    finally:
        if not params.get("work_dir"):
            shutil.rmtree(root, ignore_errors=True)


def _serve(conn: Any, params: Dict[str, Any], context: Any, send: Callable[[Any], None]) -> None:
    meter, cache, limit, root = context
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the daemon is gone
            return
        if request is None:
            return
        try:
            payload = conn.recv_bytes()  # the job itself, announced by ``request`` (RunnerClient.run)
        except (EOFError, OSError):
            return
        try:
            with job_directory(root):
                result = _measure(payload, params, meter, cache, send)
        except Exception as exc:  # measure_model never raises; this is the job decoding around it
            result = error_result(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        send(("result", explain_memory_failure(result, limit)))


def _child_meter(name: str, reason: str) -> Any:
    """The meter the daemon chose at start-up; "none" keeps the daemon's reason (no meter found,
    or disabled), so every result says why its power is null."""
    from ..power import resolve_meter
    from ..power.none_meter import NoneMeter

    if name == "none":
        return NoneMeter(reason or "power measurement disabled")
    try:
        return resolve_meter(name)[0]
    except Exception as exc:
        return NoneMeter(f"power meter '{name}' failed in the measuring process: {exc}")


def _measure(payload: bytes, params: Dict[str, Any], meter: Any, cache: Any,
             send: Callable[[Any], None]) -> Dict[str, Any]:
    from ..job import decode_job
    from ..measure.pipeline import MeasureRequest, measure_model
    from ..protocol import FrameError

    try:
        job = decode_job(payload, max_bytes=len(payload))
    except FrameError as exc:
        return error_result(exc.code, exc.message)
    send(("progress", {"activity": "building", "job_id": job.job_id}))
    options = dict(job.options)
    options.setdefault("threads", params.get("threads", 1))
    progress = _Progress(send, params.get("telemetry_interval_s", 1.0), job.settings.batch)
    req = MeasureRequest(backend=params["backend"], settings=job.settings, options=options, inputs=job.inputs,
                         reference=job.reference, check=job.check, seed=job.seed, cache=cache,
                         meter=meter, observer=progress.monitor)
    result = measure_model(job.model, request=req)
    out = result.to_dict(include_samples=job.include_samples)
    out["engine_info"] = result.engine_info
    return out


def _shutting_down(exit_code: Optional[int], cancelled: Callable[[], bool], grace_s: float = 2.0) -> bool:
    """Did the child die because the service is stopping? systemd's stop signals the whole
    cgroup, so the child may die a moment before the daemon's own handler has run: give a
    SIGTERM/SIGINT death a short grace to turn into a cancellation, so the job stays spooled
    instead of getting a final INTERNAL error."""
    if cancelled():
        return True
    if exit_code not in (-signal.SIGTERM, -signal.SIGINT):
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if cancelled():
            return True
        time.sleep(0.05)
    return False


def _death_result(message: str, exit_code: Optional[int]) -> Dict[str, Any]:
    """The runner kills its child itself only after returning (timeout, cancel): a SIGKILL seen here
    came from outside, nearly always the kernel's out-of-memory killer (GPU memory of a Jetson is the
    same RAM, and not counted by the child's rlimit)."""
    if exit_code == -signal.SIGKILL:
        return error_result(ErrorCode.OVERSIZE, "the measuring process was killed (SIGKILL) while running the job, "
                                                "most likely by the kernel's out-of-memory killer: the job needs "
                                                "more memory than the board has free")
    return error_result(ErrorCode.INTERNAL, message)


class RunnerClient:
    """Parent side: runs one job at a time in the child, with a deadline; restarts a dead child.

    ``params``: backend, power, power_reason, cache_dir, cache_max_mb (the engine cache's budget),
    work_dir (the jobs' private directories, e.g. <state_dir>/work), memory_mb (0: automatic), threads,
    telemetry_interval_s, log_level.
    """

    def __init__(self, params: Dict[str, Any]) -> None:
        self.params = params
        self._ctx = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Any = None
        self._jobs_done = 0

    def start(self) -> None:
        self.params["parent_pid"] = os.getpid()
        parent_conn, child_conn = self._ctx.Pipe()
        self._process = self._ctx.Process(target=_child_main, args=(child_conn, self.params),
                                          name="edge-evolver-runner", daemon=True)
        self._process.start()
        child_conn.close()
        self._conn = parent_conn
        self._jobs_done = 0

    def stop(self) -> None:
        """Ask the child to exit, then make sure it has."""
        if self._process is None:
            return
        with contextlib.suppress(OSError, ValueError):  # the child may already be gone
            self._conn.send(None)
        self._process.join(2.0)
        if self._process.is_alive():
            self._process.kill() if hasattr(self._process, "kill") else self._process.terminate()
            self._process.join(5.0)
        self._conn.close()
        self._process = None

    def pid(self) -> Optional[int]:
        return self._process.pid if self._process is not None else None

    def run(self, job: Union[str, bytes], timeout_s: float, on_progress: ProgressFn,
            cancelled: Callable[[], bool] = lambda: False) -> Optional[Dict[str, Any]]:
        """Run ``job``, the spooled job's path (read here, by the daemon) or its bytes. The result dict; an
        error dict on timeout or child death; None when cancelled (shutdown)."""
        failed = self._hand_over(job)
        if failed is not None:
            return failed
        deadline = time.monotonic() + timeout_s
        while True:
            if cancelled():
                self.stop()
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                return error_result(ErrorCode.TIMEOUT, f"job exceeded its time limit of {timeout_s:g} s")
            message = self._receive(min(remaining, 0.25))
            if message is None:
                continue
            if message[0] == "dead":
                if _shutting_down(message[2], cancelled):
                    return None
                return _death_result(message[1], message[2])
            if message[0] == "progress":
                on_progress(message[1])
            else:
                self._jobs_done += 1
                return message[1]

    def _hand_over(self, job: Union[str, bytes]) -> Optional[Dict[str, Any]]:
        """Send the job's bytes to a live child (the child never gets a path); an error dict when that failed."""
        try:
            if isinstance(job, (bytes, bytearray, memoryview)):
                payload = bytes(job)
            else:
                with open(job, "rb") as handle:
                    payload = handle.read()
        except OSError as exc:
            return error_result(ErrorCode.INTERNAL, f"the spooled job could not be read: {exc}")
        if self._process is None or not self._process.is_alive() or self._jobs_done >= RECYCLE_AFTER_JOBS:
            self.stop()
            self.start()
        try:
            self._conn.send({"bytes": len(payload)})
            self._conn.send_bytes(payload)  # no pickling: one copy of a job of up to max_payload_mb
        except (EOFError, OSError):
            _, message, code = self._dead()
            return _death_result(message, code)
        return None

    def _receive(self, wait_s: float) -> Any:
        try:
            if not self._conn.poll(wait_s):
                return None
            return self._conn.recv()
        except (EOFError, OSError):
            return self._dead()

    def _dead(self) -> Any:
        code = self._process.exitcode if self._process is not None else None
        self._process.join(1.0)
        code = self._process.exitcode if code is None else code
        self.stop()
        return ("dead", f"the measuring process died (exit code {code}) while running the job", code)
