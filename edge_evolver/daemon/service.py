"""EdgeDaemon: MQTT intake, one worker, telemetry, retained status, clean shutdown.

Threads: paho's network loop (callbacks: they only validate, store and enqueue, never measure),
the worker (one job at a time, through the measuring child process), the telemetry publisher,
and the main thread, which waits for SIGTERM/SIGINT. A job is fsync'ed to the spool inside the
message callback, before paho sends the PUBACK, so a daemon killed at any point loses none.
"""

import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Set

import structlog

from ..errors import ErrorCode
from ..job import decode_job
from ..mqtt import MqttConnection
from ..protocol import FrameError, Topics, dumps, qos, retained
from .config import ServeConfig, broker_with_credentials
from .jobstore import JobStore
from .payloads import result_payload, status_payload, telemetry_payload, will_payload
from .runner import RunnerClient, error_result

log = structlog.get_logger("edge_evolver.serve")

SUMMARY_KEYS = ("status", "code", "backend", "precision", "cache_hit", "engine_build_s", "fps",
                "latency_ms_p50", "latency_ms_p99", "power_w_mean", "energy_mj_per_inference", "queue_s")


class EdgeDaemon:
    def __init__(self, config: ServeConfig, facts: Dict[str, Any], meter: Any,
                 board_state: Callable[[], Dict[str, Any]], temperatures: Callable[[], Dict[str, float]]) -> None:
        self.config = config
        self.facts = facts  # static: board, backend, power meter... (goes into the status)
        self.meter = meter  # the daemon's own meter instance, for idle telemetry
        self.board_state = board_state  # dynamic: power mode and clock lock, re-read per job
        self.temperatures = temperatures
        self.topics = Topics(config.prefix)
        self.store = JobStore(config.resolved_state_dir())
        self.jobs: queue.Queue[Optional[str]] = queue.Queue()
        self._known: Set[str] = set()  # queued or running ids: drops duplicate deliveries
        self._received: Dict[str, float] = {}
        self._republish: List[str] = []  # finished before a kill, result not yet published
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.activity: Dict[str, Any] = {"activity": "idle"}
        self.started_at = time.time()
        self.runner = RunnerClient({
            "backend": config.backend, "power": facts.get("power_meter") or "none",
            "cache_dir": config.resolved_cache_dir(), "threads": config.threads,
            "telemetry_interval_s": config.telemetry_interval_s, "log_level": config.log_level,
        })
        self.mqtt = MqttConnection(broker_with_credentials(config), f"edge-evolver-{config.device_id}",
                                   config.mqtt_version, persistent=True)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_message = self._on_message

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        """Serve until ``stop()``; returns the exit status (0 after a clean stop)."""
        device = self.config.device_id
        self.mqtt.will(self.topics.status(device), dumps(will_payload(device, self.facts)), qos("status"), True)
        self._recover()
        self.runner.start()
        threads = [threading.Thread(target=self._work, name="worker", daemon=True),
                   threading.Thread(target=self._telemetry, name="telemetry", daemon=True)]
        for thread in threads:
            thread.start()
        log.info("serve_start", device_id=device, broker=self.mqtt.broker.display(), prefix=self.config.prefix,
                 group=self.config.group or None, backend=self.facts.get("backend"),
                 power_meter=self.facts.get("power_meter"), pending=self.jobs.qsize())
        if self.mqtt.start():
            while not self.stopping.wait(0.5):
                pass
        self.jobs.put(None)
        for thread in threads:
            thread.join(10.0)
        self.runner.stop()
        stopped = status_payload("stopped", device, self.facts, since=self.started_at)
        self.mqtt.stop(lambda: self.mqtt.publish(self.topics.status(device), dumps(stopped), qos("status"), True))
        log.info("serve_stop", device_id=device, pending=len(self.store.pending()))
        return 0

    def stop(self, *_: Any) -> None:
        """Signal handler: finish the current step, leave unfinished jobs spooled.

        The event is set from a helper thread because a handler runs on the main thread, which may
        be inside ``stopping.wait()`` holding the event's non-reentrant lock: setting it right here
        can deadlock (it did, about once in fifty stops).
        """
        threading.Thread(target=self._request_stop, name="stop", daemon=True).start()

    def _request_stop(self) -> None:
        self.stopping.set()
        self.mqtt.request_stop()  # also ends a first-connection retry loop (broker unreachable)

    def _recover(self) -> None:
        """Jobs spooled by an earlier run: republish finished ones, queue the rest."""
        for job_id in self.store.pending():
            if self.store.result(job_id) is None:
                self._enqueue(job_id, received_at=None)
        # A finished job whose spool file survived was killed between storing and publishing.
        self._republish = [j for j in self.store.pending() if self.store.result(j) is not None]

    # ------------------------------------------------------------------ MQTT callbacks (paho's thread)
    def _on_connect(self, session_present: bool) -> None:
        device = self.config.device_id
        self.mqtt.subscribe(self.topics.jobs(device), qos("jobs"))
        if self.config.group:
            self.mqtt.subscribe(self.topics.shared_jobs(self.config.group), qos("jobs"))
        online = status_payload("online", device, self.facts, since=self.started_at)
        self.mqtt.publish(self.topics.status(device), dumps(online), qos("status"), retained("status"))
        republish, self._republish = self._republish, []
        for job_id in republish:
            self._publish_result(job_id, self.store.result(job_id) or {})
        log.info("mqtt_connected", session_present=session_present)

    def _on_disconnect(self, rc: int) -> None:
        if not self.stopping.is_set():
            log.warning("mqtt_disconnected", code=rc, note="paho reconnects with back-off")

    def _on_message(self, topic: str, payload: bytes) -> None:
        try:
            self._intake(payload)
        except Exception:  # never let one message take the network thread down
            log.exception("intake_internal_error", topic=topic, bytes=len(payload))

    def _intake(self, payload: bytes) -> None:
        received_at = time.time()
        try:
            job = decode_job(payload, self.config.max_payload_bytes)
        except FrameError as exc:
            self._reject(exc.job_id, exc.code, exc.message)
            return
        if job.reply_to is not None and not self.topics.reply_allowed(job.reply_to):
            self._reject(job.job_id, ErrorCode.BAD_INPUT,
                         f"reply_to '{job.reply_to}' is outside '{self.topics.prefix}/'")
            return
        stored = self.store.result(job.job_id)
        if stored is not None:
            log.info("job_repeated", job_id=job.job_id, status=stored.get("status"))
            self._publish(job.reply_to, dict(stored, repeated=True))
            return
        with self._lock:
            if job.job_id in self._known or self.store.is_spooled(job.job_id):
                log.info("job_duplicate_delivery", job_id=job.job_id)
                return
            if len(self._known) >= self.config.max_queue:
                self._reject(job.job_id, ErrorCode.QUEUE_FULL, f"{len(self._known)} jobs already waiting")
                return
            self.store.spool(job.job_id, payload)  # durable before paho acknowledges the message
            self._enqueue(job.job_id, received_at)

    def _enqueue(self, job_id: str, received_at: Optional[float]) -> None:
        self._known.add(job_id)
        if received_at is not None:
            self._received[job_id] = received_at
        self.jobs.put(job_id)

    def _reject(self, job_id: Optional[str], code: str, message: str) -> None:
        """An error result for a job that was never accepted (not stored: it may be resent fixed)."""
        log.warning("job_rejected", job_id=job_id, code=code, message=message)
        body = result_payload(self.config.device_id, job_id, error_result(code, message),
                              {"received_at": time.time(), "started_at": None, "finished_at": time.time()},
                              {})
        self._publish(None, body)

    def _publish(self, reply_to: Optional[str], body: Dict[str, Any]) -> None:
        topic = reply_to or self.topics.results(self.config.device_id)
        self.mqtt.publish(topic, dumps(body), qos("results"), retained("results"))

    def _publish_result(self, job_id: str, body: Dict[str, Any]) -> None:
        self._publish(body.get("reply_to"), body)
        self.store.finish(job_id)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self.stopping.is_set():
            job_id = self.jobs.get()
            if job_id is None or self.stopping.is_set():
                return
            try:
                self._handle(job_id)
            except Exception:
                log.exception("job_internal_error", job_id=job_id)
            finally:
                with self._lock:
                    self._known.discard(job_id)
                self.activity = {"activity": "idle"}

    def _handle(self, job_id: str) -> None:
        board = self.board_state()
        started = time.time()
        self.activity = {"activity": "building", "job_id": job_id}
        payload = self.store.read_job(job_id)
        job = decode_job(payload, max_bytes=len(payload))
        limit = min(job.timeout_s or self.config.job_timeout_s, self.config.job_timeout_s)
        measured = self.runner.run(self.store.job_path(job_id), limit, self._progress(job_id),
                                   cancelled=self.stopping.is_set)
        if measured is None:
            log.info("job_interrupted", job_id=job_id, note="left in the spool; it runs again after restart")
            return
        timing = {"received_at": self._received.pop(job_id, None), "started_at": started, "finished_at": time.time()}
        body = result_payload(self.config.device_id, job_id, measured, timing, board, job.meta)
        body["reply_to"] = job.reply_to
        self.store.store_result(job_id, body)
        self._publish_result(job_id, body)
        log.info("job", job_id=job_id, sha256=(body.get("model_sha256") or "")[:12],
                 **{k: round(v, 3) if isinstance(v, float) else v for k, v in
                    ((k, body.get(k)) for k in SUMMARY_KEYS)})

    def _progress(self, job_id: str) -> Callable[[Dict[str, Any]], None]:
        def update(message: Dict[str, Any]) -> None:
            self.activity = dict(message, job_id=job_id)

        return update

    # ------------------------------------------------------------------ telemetry
    def _telemetry(self) -> None:
        while not self.stopping.is_set():
            busy = self.activity.get("activity") != "idle"
            if self.mqtt.connected.is_set():
                try:
                    self._publish_telemetry(busy)
                except Exception:
                    log.exception("telemetry_error")
            interval = self.config.telemetry_interval_s if busy else self.config.idle_telemetry_interval_s
            # Wake early when a job starts, so live numbers appear within a busy interval.
            deadline = time.monotonic() + interval
            while time.monotonic() < deadline and not self.stopping.is_set():
                if not busy and self.activity.get("activity") != "idle":
                    break
                self.stopping.wait(min(0.2, interval))

    def _publish_telemetry(self, busy: bool) -> None:
        # While benchmarking, power comes from the child's sampler (in the progress message).
        power_w = None if busy or self.meter is None else _safe_read(self.meter)
        body = telemetry_payload(self.config.device_id, dict(self.activity), len(self._known), power_w,
                                 self.temperatures())
        self.mqtt.publish(self.topics.telemetry(self.config.device_id), dumps(body), qos("telemetry"),
                          retained("telemetry"))


def _safe_read(meter: Any) -> Optional[float]:
    try:
        return meter.read_watts()
    except Exception:
        return None
