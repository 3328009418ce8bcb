"""Results leave the spool only after the broker has acknowledged them.

A finished job keeps its spool file until its QoS 1 result is confirmed (PUBACK), so a result
produced while the broker is away, or just before a kill, is published again (after the
reconnect, or from the stored result at the next start) instead of being lost. Delivery is
therefore at-least-once; hosts key on ``job_id``.

paho's ``MQTTMessageInfo.is_published()`` raises when the publish call found no connection
(1.6 and 2.x alike), even though paho may still send its queued copy later: such a result is
simply published again once connected, and a duplicate is harmless.
"""

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import structlog

from ..errors import ErrorCode, clip_line
from ..protocol import MAX_RESULT_BYTES, RESULT_ESSENTIAL_FIELDS, dumps, qos, retained
from .jobstore import JobStore

log = structlog.get_logger("edge_evolver.outbox")
# Publishes of one stored result, while connected, that the broker never confirmed: after TRIM_AFTER the result
# goes out trimmed to its essentials (a broker with a smaller packet limit than ours drops the connection
# instead of answering); after DROP_AFTER it is dropped, and said so, so nothing wedges the outbox.
TRIM_AFTER = 3
DROP_AFTER = 6


def _state(info: Any) -> str:
    """'acked', 'waiting' (in flight), or 'failed' (never left: publish again)."""
    if info is None:
        return "failed"
    try:
        return "acked" if info.is_published() else "waiting"
    except (RuntimeError, ValueError):
        return "failed"


class Outbox:
    def __init__(self, mqtt: Any, store: JobStore, default_topic: str, allowed: Callable[[str], bool],
                 sign: Callable[[Dict[str, Any]], Dict[str, Any]] = lambda body: body) -> None:
        self.mqtt = mqtt
        self.sign = sign  # every result leaves signed with the board's key
        self.store = store
        self.default_topic = default_topic
        self.allowed = allowed
        self._pending: Dict[str, Any] = {}  # job_id -> MQTTMessageInfo, or None = not yet sent
        self._tries: Dict[str, int] = {}  # job_id -> publishes made while connected, none confirmed
        self._lock = threading.Lock()

    def topic_for(self, reply_to: Optional[str]) -> str:
        return reply_to if reply_to and self.allowed(reply_to) else self.default_topic

    def publish(self, body: Dict[str, Any], reply_to: Optional[str] = None) -> Any:
        """Fire and forget (answers that are not stored: rejections, repeats). Never above MAX_RESULT_BYTES."""
        data = self.encode(body)
        return self.mqtt.publish(self.topic_for(reply_to), data, qos("results"), retained("results"))

    def encode(self, body: Dict[str, Any], limit: int = MAX_RESULT_BYTES) -> bytes:
        """The signed result's bytes, trimmed to ``limit`` (bulky fields first, then all but the essentials)."""
        data = dumps(self.sign(body))
        if len(data) <= limit:
            return data
        trimmed, dropped = fit(body, limit)
        log.warning("result_trimmed", job_id=body.get("job_id"), bytes=len(data), limit=limit, dropped=dropped)
        return dumps(self.sign(trimmed))

    def send(self, job_id: str, body: Dict[str, Any]) -> None:
        """Publish a stored result; its spool file goes once the broker confirms it."""
        info = self.publish(body, body.get("reply_to")) if self.mqtt.connected.is_set() else None
        with self._lock:
            self._pending[job_id] = info
        self.confirm()

    def resend_later(self, job_id: str) -> None:
        """A result stored by an earlier run whose delivery was never confirmed."""
        with self._lock:
            self._pending[job_id] = None

    def confirm(self) -> int:
        """Finish acknowledged results, publish again the ones that never left; returns how many wait."""
        with self._lock:
            states = {job_id: _state(info) for job_id, info in self._pending.items()}
            for job_id, state in states.items():
                if state == "acked":
                    del self._pending[job_id]
        for job_id, state in states.items():
            if state == "acked":
                self._tries.pop(job_id, None)
                self.store.finish(job_id)
            elif state == "failed" and self.mqtt.connected.is_set():
                self._resend(job_id)
        return len(self._pending)

    def _resend(self, job_id: str) -> None:
        body = self.store.result(job_id)
        tries = self._tries.get(job_id, 0) + 1
        if body is None or tries > DROP_AFTER:  # pruned, or refused by the broker every time: never a wedge
            if body is not None:
                log.error("result_dropped", job_id=job_id, tries=tries - 1,
                          note="the broker never confirmed it; it stays in the results directory")
            with self._lock:
                self._pending.pop(job_id, None)
            self._tries.pop(job_id, None)
            self.store.finish(job_id)
            return
        if tries > TRIM_AFTER and not body.get("trimmed"):
            body, dropped = fit(body, 0)  # essentials only: a smaller broker limit than ours is the likely cause
            log.warning("result_trimmed_after_refusals", job_id=job_id, tries=tries - 1, dropped=dropped)
            self.store.store_result(job_id, self.sign(body))
        self._tries[job_id] = tries
        info = self.publish(body, body.get("reply_to"))
        with self._lock:
            self._pending[job_id] = info


def fit(body: Dict[str, Any], limit: int) -> Tuple[Dict[str, Any], List[str]]:
    """``body`` without its bulkiest optional fields until its JSON fits ``limit`` (0: keep only the essentials),
    marked ``trimmed`` with what went; past that, a coded error that keeps the job's identity."""
    out = {k: v for k, v in body.items() if k != "signature"}
    optional = sorted((k for k in out if k not in RESULT_ESSENTIAL_FIELDS), key=lambda k: -len(dumps({k: out[k]})))
    dropped: List[str] = []
    for key in optional:
        if limit and len(dumps(out)) + 200 <= limit:  # room for the signature and the "trimmed" list
            break
        dropped.append(key)
        del out[key]
    out["trimmed"] = dropped
    if len(dumps(out)) + 200 > (limit or MAX_RESULT_BYTES):  # the essentials themselves are too big
        out = {k: out.get(k) for k in ("protocol", "job_id", "device_id", "model_sha256", "payload_sha256",
                                       "job_auth", "refusal", "unopened", "reply_to")}
        out.update(status="error", code=ErrorCode.INTERNAL, trimmed=dropped,
                   message=clip_line("the result was too large to publish, even trimmed"))
    return out, dropped
