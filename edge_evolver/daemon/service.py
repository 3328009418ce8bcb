"""EdgeDaemon: MQTT intake, one worker, telemetry, retained status, clean shutdown.

Threads: paho's network loop (callbacks: they only validate, store and enqueue, never measure),
the worker (one job at a time, through the measuring child process), the telemetry publisher,
and the main thread, which waits for SIGTERM/SIGINT. A job is fsync'ed to the spool inside the
message callback, before paho sends the PUBACK, so a daemon killed at any point loses none.
"""

import os
import queue
import threading
import time
from typing import Any, Callable, Dict, Optional, Set

import structlog

from ..errors import ErrorCode, clip_line
from ..job import decode_job
from ..mqtt import MqttConnection, TlsFiles
from ..protocol import FrameError, Topics, dumps, qos, retained, sha256_hex, split_frame
from ..trust.jobs import open_job, sealed_auth, unwrap
from .config import ServeConfig, broker_with_credentials
from .gate import Gate, job_id_hint
from .intake import RefusalLimiter
from .jobstore import JobStore
from .outbox import Outbox
from .payloads import result_payload, status_payload, telemetry_payload, will_payload
from .runner import RunnerClient, error_result

log = structlog.get_logger("edge_evolver.serve")

SUMMARY_KEYS = ("status", "code", "backend", "precision", "cache_hit", "engine_build_s", "fps",
                "latency_ms_p50", "latency_ms_p99", "power_w_mean", "energy_mj_per_inference", "queue_s")


class EdgeDaemon:
    def __init__(self, config: ServeConfig, facts: Dict[str, Any], meter: Any,
                 board_state: Callable[[], Dict[str, Any]], temperatures: Callable[[], Dict[str, float]],
                 gauges: Optional[Callable[[], Dict[str, Any]]] = None) -> None:
        self.config = config
        self.facts = facts  # static: board, backend, power meter... (goes into the status)
        self.meter = meter  # the daemon's own meter instance, for idle telemetry
        self.board_state = board_state  # dynamic: power mode and clock lock, re-read per job
        self.temperatures = temperatures
        self.gauges = gauges  # GPU load and memory for telemetry (devicefacts.gauges)
        self.topics = Topics(config.prefix)
        self.gate = Gate(config)
        self.refusals = RefusalLimiter(lambda summary: log.warning(
            "refusals_suppressed", **summary, note="unauthenticated jobs refused without an answer (rate limit)"))
        self.facts.update(self.gate.facts())
        self.store = JobStore(config.resolved_state_dir(), max_results=config.max_results,
                              max_bytes=int(config.max_results_mb * 1024 * 1024))
        self.jobs: queue.Queue[Optional[str]] = queue.Queue()
        self._known: Set[str] = set()  # queued or running ids: drops duplicate deliveries
        self._received: Dict[str, float] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.activity: Dict[str, Any] = {"activity": "idle"}
        self.started_at = time.time()
        self.runner = RunnerClient({
            "backend": config.backend, "power": facts.get("power_meter") or "none",
            "power_reason": facts.get("power_reason"),
            "cache_dir": config.resolved_cache_dir(), "threads": config.threads,
            "telemetry_interval_s": config.telemetry_interval_s, "log_level": config.log_level,
            "memory_mb": config.child_memory_mb, "cache_max_mb": config.cache_max_mb,
            "work_dir": os.path.join(config.resolved_state_dir(), "work"),
        })
        self.mqtt = MqttConnection(broker_with_credentials(config), f"edge-evolver-{config.device_id}",
                                   config.mqtt_version, persistent=True, tls=tls_files(config))
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_delivery = self._on_message
        self.mqtt.on_retained = self._on_retained
        self.outbox = Outbox(self.mqtt, self.store, self.topics.results(config.device_id),
                             lambda topic: self.topics.is_reply_topic(topic, config.device_id), self.gate.sign)
        self.gate.on_trust_change = self._trust_changed

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
        """Jobs spooled by an earlier run: queue unfinished ones, resend unconfirmed results.

        An unfinished job is verified again, signature and all, before it is queued: the spool is a directory
        on disk, and what sits there now need not be what was accepted."""
        for job_id in self.store.pending():
            if self.store.result(job_id) is not None:  # stored, but killed before the broker confirmed the result
                self.outbox.resend_later(job_id)
                continue
            problem = self._spool_problem(job_id)
            if problem is None:
                self._enqueue(job_id, received_at=None)
                continue
            log.error("spooled_job_refused", job_id=job_id, code=problem.code, message=problem.message)
            payload = self._read_spool(job_id)
            self.store.finish(job_id)
            self._reject(job_id, problem.code, f"spooled job failed its check at start-up: {problem.message}",
                         payload=payload, unopened=True)

    def _read_spool(self, job_id: str) -> Optional[bytes]:
        try:
            return self.store.read_job(job_id)
        except OSError:
            return None

    def _spool_problem(self, job_id: str) -> Optional[FrameError]:
        """None when the spooled job still opens as it did at intake (as of when it was spooled), else why not."""
        payload = self._read_spool(job_id)
        if payload is None:
            return FrameError(ErrorCode.INTERNAL, "the spool file cannot be read")
        if len(payload) > self.config.max_payload_bytes:
            return FrameError(ErrorCode.OVERSIZE, f"the spooled job is {len(payload)} bytes, above the limit")
        try:
            spooled_at = os.stat(self.store.job_path(job_id)).st_mtime
            frame, _ = open_job(payload, self.gate.policy(), now=min(spooled_at, time.time()))
            header, _ = split_frame(frame, len(frame))
        except (FrameError, OSError) as exc:
            return exc if isinstance(exc, FrameError) else FrameError(ErrorCode.INTERNAL, str(exc))
        if header.get("job_id") != job_id:
            return FrameError(ErrorCode.INVALID_FRAME, "the spooled job's header names another job id")
        return None

    def _trust_changed(self, state: Dict[str, Any]) -> None:
        """The trust file's keys or state changed (seen at a job, on SIGHUP or by the telemetry loop): the
        retained status says so. Runs on the thread that saw it: paho's, `reload` or `telemetry`."""
        self.facts.update(state)
        if self.mqtt.connected.is_set():
            device = self.config.device_id
            online = status_payload("online", device, self.facts, since=self.started_at)
            self.mqtt.publish(self.topics.status(device), dumps(online), qos("status"), retained("status"))

    # ------------------------------------------------------------------ MQTT callbacks (paho's thread)
    def _on_connect(self, session_present: bool) -> None:
        device = self.config.device_id
        self.mqtt.subscribe(self.topics.jobs(device), qos("jobs"), retain_as_published=True)
        if self.config.group:
            self.mqtt.subscribe(self.topics.shared_jobs(self.config.group), qos("jobs"), retain_as_published=True)
        online = status_payload("online", device, self.facts, since=self.started_at)
        self.mqtt.publish(self.topics.status(device), dumps(online), qos("status"), retained("status"))
        log.info("mqtt_connected", session_present=session_present)

    def _on_disconnect(self, rc: int) -> None:
        if not self.stopping.is_set():
            log.warning("mqtt_disconnected", code=rc, note="paho reconnects with back-off")

    def _on_retained(self, topic: str, size: int) -> None:
        """A retained job comes back at every reconnect: never a request, so never run nor answered."""
        log.warning("job_retained_ignored", topic=topic, bytes=size)

    def _on_message(self, topic: str, payload: bytes, duplicate: bool = False) -> None:
        try:
            self._intake(payload, duplicate)
        except Exception as exc:  # never let one message take the network thread down, nor go unanswered
            log.exception("intake_internal_error", topic=topic, bytes=len(payload))
            self._reject(None, ErrorCode.INTERNAL, f"job intake failed: {type(exc).__name__}: {exc}",
                         payload=payload, unopened=True)

    def _intake(self, payload: bytes, duplicate: bool = False) -> None:
        received_at = time.time()
        try:
            frame, auth = self.gate.open(payload)  # signature, expiry, target: before anything is parsed
        except FrameError as exc:  # refused unauthenticated: the answer goes to our own results topic only
            if self.refusals.answer(exc.code):  # a flood of forged jobs gets a few answers, not one each
                self._reject(job_id_hint(payload), exc.code, exc.message, payload=payload, unopened=True)
            return
        try:
            job = decode_job(frame, self.config.max_payload_bytes)
        except FrameError as exc:
            self._reject(exc.job_id, exc.code, exc.message, self._reply_topic(exc.reply_to, exc.run_id), payload,
                         auth)
            return
        if job.reply_to is not None and self._reply_topic(job.reply_to, job.run_id) is None:
            self._reject(job.job_id, ErrorCode.BAD_INPUT, f"reply_to '{job.reply_to}' is neither this board's "
                         f"results topic nor the results topic of the job's run_id", payload=payload, auth=auth)
            return
        with self._lock:  # one decision per job_id, also against the worker storing its result
            stored = self.store.result(job.job_id)
            if stored is not None and duplicate and not self.store.is_spooled(job.job_id):
                # The broker delivers a job again when our acknowledgement was lost (a restart): its result is
                # already with the broker (the spool goes once the result is acknowledged), so the host has it
                # or will: answering again would only be a duplicate. A host's own resend is no DUP: answered.
                log.info("job_redelivered_already_answered", job_id=job.job_id)
            elif stored is not None:
                log.info("job_repeated", job_id=job.job_id, status=stored.get("status"))
                self.outbox.publish(dict(stored, repeated=True), stored.get("reply_to"))
            elif job.job_id in self._known or self.store.is_spooled(job.job_id):
                log.info("job_duplicate_delivery", job_id=job.job_id)
            elif len(self._known) >= self.config.max_queue:
                self._reject(job.job_id, ErrorCode.QUEUE_FULL, f"{len(self._known)} jobs already waiting",
                             job.reply_to, payload, auth)
            elif not self.gate.remember(auth):
                self._reject(job.job_id, ErrorCode.REPLAYED, "this signed job was accepted before and its "
                             "stored answer is gone: a job never runs twice", payload=payload, auth=auth)
            else:
                self._accept(job.job_id, payload, received_at, job.reply_to, auth)

    def _reply_topic(self, reply_to: Optional[str], run_id: Optional[str]) -> Optional[str]:
        """``reply_to`` when this board may answer there, else None (then: its own results topic)."""
        allowed = reply_to is not None and self.topics.reply_allowed(reply_to, self.config.device_id, run_id)
        return reply_to if allowed else None

    def _accept(self, job_id: str, payload: bytes, received_at: float, reply_to: Optional[str],
                auth: Any = None) -> None:
        try:
            self.store.spool(job_id, payload)  # durable before paho acknowledges the message
        except OSError as exc:
            self.gate.forget(auth)  # not taken: the same job may come again
            self._reject(job_id, ErrorCode.INTERNAL, f"cannot store the job: {exc}", reply_to, payload, auth)
            return
        self._enqueue(job_id, received_at)

    def _enqueue(self, job_id: str, received_at: Optional[float]) -> None:
        self._known.add(job_id)
        if received_at is not None:
            self._received[job_id] = received_at
        self.jobs.put(job_id)

    def _reject(self, job_id: Optional[str], code: str, message: str, reply_to: Optional[str] = None,
                payload: Optional[bytes] = None, auth: Any = None, unopened: bool = False) -> None:
        """A signed refusal of a job that was never accepted (not stored: it may be resent fixed).

        ``refusal`` marks it; ``payload_sha256`` names the exact payload refused, the only thing a host binds a
        refusal by (docs/security.md). ``unopened``: the board could not verify the frame, so the job id it
        quotes came from an unsigned header. ``job_auth`` echoes a verified job's key id and sequence number.
        """
        message = clip_line(message)  # a message may quote a sender's value: never a megabyte of it
        log.warning("job_rejected", job_id=job_id, code=code, message=message, unopened=unopened)
        now = time.time()
        body = result_payload(self.config.device_id, job_id, error_result(code, message),
                              {"received_at": now, "started_at": None, "finished_at": now}, {})
        body.update(refusal=True, unopened=unopened,
                    payload_sha256=sha256_hex(payload) if payload is not None else None)
        if auth is not None:
            body["job_auth"] = auth.to_dict()
        self.outbox.publish(body, None if unopened else reply_to)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while not self.stopping.is_set():
            self.outbox.confirm()
            try:
                job_id = self.jobs.get(timeout=1.0)
            except queue.Empty:
                continue
            if job_id is None or self.stopping.is_set():
                return
            try:
                self._handle(job_id)
            except Exception as exc:  # our own failure: the job still gets a final, coded answer
                log.exception("job_internal_error", job_id=job_id)
                self._finish(job_id, error_result(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"), {},
                             self._header_of(self._read_spool(job_id)))
            finally:
                with self._lock:
                    self._known.discard(job_id)
                self.activity = {"activity": "idle"}

    def _handle(self, job_id: str) -> None:
        board = self.board_state()
        started = time.time()
        self.activity = {"activity": "building", "job_id": job_id}
        payload = self._read_spool(job_id)  # read once: its header here, its bytes for the measuring process
        header = self._header_of(payload)
        limit = min(header.get("timeout_s") or self.config.job_timeout_s, self.config.job_timeout_s)
        measured = self.runner.run(self.store.job_path(job_id) if payload is None else payload, limit,
                                   self._progress(job_id), cancelled=self.stopping.is_set)
        if measured is None:
            log.info("job_interrupted", job_id=job_id, note="left in the spool; it runs again after restart")
            return
        self._finish(job_id, measured, board, header, started)

    @staticmethod
    def _header_of(payload: Optional[bytes]) -> Dict[str, Any]:
        """A spooled job's header (verified at intake and again at start-up), with what binds its answer to it:
        the payload's SHA-256 and, for a signed job, its key id and sequence number; {} when unreadable."""
        if payload is None:
            return {}
        try:
            header, _ = split_frame(unwrap(payload), len(payload))
        except FrameError:
            return {}
        header["payload_sha256"] = sha256_hex(payload)
        header["job_auth"] = sealed_auth(payload)
        return header

    def _finish(self, job_id: str, measured: Dict[str, Any], board: Dict[str, Any], header: Dict[str, Any],
                started: Optional[float] = None) -> None:
        timing = {"received_at": self._received.pop(job_id, None), "started_at": started, "finished_at": time.time()}
        body = result_payload(self.config.device_id, job_id, measured, timing, board, header.get("meta"))
        body["reply_to"] = self._reply_topic(header.get("reply_to"), header.get("run_id"))
        if not body.get("model_sha256"):  # the measurement names it; an early failure does not
            body["model_sha256"] = (header.get("model") or {}).get("sha256")
        body["payload_sha256"] = header.get("payload_sha256")
        if header.get("job_auth") is not None:
            body["job_auth"] = header["job_auth"]
        body = self.gate.sign(body)
        with self._lock:
            self.store.store_result(job_id, body)
        self.outbox.send(job_id, body)
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
            self.gate.trusted()  # about 20 us: an edit made while idle reaches the status within one interval
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
                                 self.temperatures(), self.gauges() if self.gauges else None)
        self.mqtt.publish(self.topics.telemetry(self.config.device_id), dumps(body), qos("telemetry"),
                          retained("telemetry"))


def _safe_read(meter: Any) -> Optional[float]:
    try:
        return meter.read_watts()
    except Exception:
        return None


def tls_files(config: ServeConfig) -> TlsFiles:
    return TlsFiles(os.path.expanduser(config.ca_file), os.path.expanduser(config.cert_file),
                    os.path.expanduser(config.key_file))
