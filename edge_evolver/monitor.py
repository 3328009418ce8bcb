"""`edge-evolver monitor`: a live table of every device, built only from the MQTT topics.

Anything a monitor shows can be had with ``mosquitto_sub`` too (docs/protocol.md); this
module folds status (retained), telemetry and results into one row per device.
"""

import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .protocol import Topics, loads

COLUMNS = ("device", "state", "activity", "job", "fps", "p50 ms", "power W", "last result", "backend", "seen s ago")


class MonitorState:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.devices: Dict[str, Dict[str, Any]] = {}
        self.changed = threading.Event()
        self._lock = threading.Lock()

    def apply(self, topic: str, payload: bytes) -> None:
        """Fold one message into the table; unparseable payloads are counted, not fatal."""
        parsed = self.topics.parse(topic)
        if parsed is None:
            return
        device_id, kind = parsed
        with self._lock:
            row = self.devices.setdefault(device_id, {"device_id": device_id, "bad_payloads": 0})
            try:
                data = loads(payload)
            except ValueError:
                row["bad_payloads"] += 1
                return
            row["seen"] = time.time()
            row[kind] = data
        self.changed.set()

    def snapshot(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [dict(self.devices[k]) for k in sorted(self.devices)]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def row_cells(row: Dict[str, Any], now: Optional[float] = None) -> List[str]:
    status = row.get("status") or {}
    telemetry = row.get("telemetry") or {}
    result = row.get("results") or {}
    now = time.time() if now is None else now
    if result.get("status") == "ok":
        last = f"{result.get('job_id')}: {_fmt(result.get('fps'))} fps"
    elif result:
        last = f"{result.get('job_id')}: {result.get('code')}"
    else:
        last = "-"
    return [
        row.get("device_id", "?"),
        status.get("state", "?"),
        telemetry.get("activity", "-"),
        _fmt(telemetry.get("job_id")),
        _fmt(telemetry.get("fps")),
        _fmt(telemetry.get("latency_ms_p50"), 3),
        _fmt(telemetry.get("power_w"), 2),
        last,
        _fmt(status.get("backend")),
        _fmt(now - row["seen"], 0) if row.get("seen") else "-",
    ]


def render_table(rows: List[Dict[str, Any]], now: Optional[float] = None) -> str:
    cells = [list(COLUMNS)] + [row_cells(r, now) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    if not rows:
        lines.append("(no devices seen yet)")
    return "\n".join(lines)


def tick_until(duration: Optional[float], on_tick: Callable[[], None]) -> None:
    """Call ``on_tick`` about once a second until ``duration`` has passed (forever when None); Ctrl-C ends it."""
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic())))
            on_tick()
    except KeyboardInterrupt:
        pass


def subscriptions(topics: Topics) -> List[str]:
    return [topics.all_devices(kind) for kind in ("status", "telemetry", "results")]
