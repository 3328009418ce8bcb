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
from typing import Any, Callable, Dict, Optional

from ..protocol import dumps, qos, retained
from .jobstore import JobStore


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
        self._lock = threading.Lock()

    def topic_for(self, reply_to: Optional[str]) -> str:
        return reply_to if reply_to and self.allowed(reply_to) else self.default_topic

    def publish(self, body: Dict[str, Any], reply_to: Optional[str] = None) -> Any:
        """Fire and forget (answers that are not stored: rejections, repeats)."""
        return self.mqtt.publish(self.topic_for(reply_to), dumps(self.sign(body)), qos("results"),
                                 retained("results"))

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
                self.store.finish(job_id)
            elif state == "failed" and self.mqtt.connected.is_set():
                body = self.store.result(job_id)
                if body is None:  # result file gone (pruned): nothing left to deliver
                    with self._lock:
                        self._pending.pop(job_id, None)
                    self.store.finish(job_id)
                    continue
                info = self.publish(body, body.get("reply_to"))
                with self._lock:
                    self._pending[job_id] = info
        return len(self._pending)
