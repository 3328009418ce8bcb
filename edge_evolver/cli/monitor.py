"""`edge-evolver monitor`: every device, built only from the MQTT topics.

Anything a monitor shows can be had with ``mosquitto_sub`` too (docs/protocol.md); this
module folds status (retained), telemetry and results into one row per device, with the board's hottest
thermal zone, GPU load and memory when its telemetry carries them. On a terminal the
rows are a table redrawn every second; elsewhere each device gets one line (``row_line``, or a JSON
object from ``row_json``) whenever its state, activity, job or last result changes.
"""

import queue
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from ..protocol import Topics, loads

COLUMNS = ("device", "state", "activity", "job", "fps", "p50 ms", "power W", "temp C", "gpu load", "memory",
           "last result", "backend", "seen s ago")
# Nano and TX1 report PMIC-Die as a constant 100 C (no sensor behind it): it would always be the hottest.
PLACEHOLDER_ZONES = ("PMIC-Die",)


class MonitorState:
    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.devices: Dict[str, Dict[str, Any]] = {}
        self.changed = threading.Event()
        self._lock = threading.Lock()

    def apply(self, topic: str, payload: bytes) -> Optional[str]:
        """Fold one message into the table; unparseable payloads are counted, not fatal.

        Returns the device id when what its line shows changed (state, activity, job, last result).
        """
        parsed = self.topics.parse(topic)
        if parsed is None:
            return None
        device_id, kind = parsed
        with self._lock:
            row = self.devices.setdefault(device_id, {"device_id": device_id, "bad_payloads": 0})
            try:
                data = loads(payload)
            except ValueError:
                row["bad_payloads"] += 1
                return None
            before = _summary(row)
            row["seen"] = time.time()
            row[kind] = data
            changed = _summary(row) != before
        self.changed.set()
        return device_id if changed else None

    def row(self, device_id: str) -> Dict[str, Any]:
        with self._lock:
            return dict(self.devices.get(device_id) or {"device_id": device_id})

    def snapshot(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [dict(self.devices[k]) for k in sorted(self.devices)]


def _summary(row: Dict[str, Any]) -> tuple:
    status, telemetry, result = (_part(row, k) for k in ("status", "telemetry", "results"))
    return (status.get("state"), telemetry.get("activity"), telemetry.get("job_id"), result.get("job_id"),
            result.get("code"))


def _part(row: Dict[str, Any], kind: str) -> Dict[str, Any]:
    value = row.get(kind)
    return value if isinstance(value, dict) else {}  # a payload that is JSON but not an object shows nothing


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _number(value: Any) -> Optional[float]:
    """A JSON number as float; anything else (telemetry is unsigned and may be junk) None."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def hottest(telemetry: Dict[str, Any]) -> Optional[float]:
    """The hottest real thermal zone in a telemetry message, in C."""
    zones = telemetry.get("temperatures")
    if not isinstance(zones, dict):
        return None
    read = [_number(v) for k, v in zones.items() if str(k).split("@")[0] not in PLACEHOLDER_ZONES]
    values = [v for v in read if v is not None]
    return max(values) if values else None


def _load_cells(telemetry: Dict[str, Any]) -> List[str]:
    """temp C, gpu load and memory: '-' for what the board does not report."""
    load, used, total = (_number(telemetry.get(k)) for k in ("gpu_load_pct", "memory_used_mb", "memory_total_mb"))
    memory = f"{used:.0f}" if used is not None else "-"
    if used is not None:
        memory += f"/{total:.0f} MiB" if total else " MiB"
    return [_fmt(hottest(telemetry)), "-" if load is None else f"{load:.0f}%", memory]


def row_cells(row: Dict[str, Any], now: Optional[float] = None) -> List[str]:
    status, telemetry, result = (_part(row, k) for k in ("status", "telemetry", "results"))
    now = time.time() if now is None else now
    if result.get("status") == "ok":
        last = f"{result.get('job_id')}: {_fmt(result.get('fps'))} fps"
    elif result:
        last = f"{result.get('job_id')}: {result.get('code')}"
    else:
        last = "-"
    return [str(cell) for cell in (
        row.get("device_id", "?"),
        status.get("state", "?"),
        telemetry.get("activity", "-"),
        _fmt(telemetry.get("job_id")),
        _fmt(telemetry.get("fps")),
        _fmt(telemetry.get("latency_ms_p50"), 3),
        _fmt(telemetry.get("power_w"), 2),
        *_load_cells(telemetry),
        last,
        _fmt(status.get("backend")),
        _fmt(now - row["seen"], 0) if row.get("seen") else "-",
    )]


def render_table(rows: List[Dict[str, Any]], now: Optional[float] = None) -> str:
    cells = [list(COLUMNS)] + [row_cells(r, now) for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    if not rows:
        lines.append("(no devices seen yet)")
    return "\n".join(lines)


def row_line(row: Dict[str, Any], now: Optional[float] = None) -> str:
    """One device as one plain line: ``device=tx1-01 state=online activity=idle …``."""
    names = [c.replace(" ago", "").replace(" ", "_") for c in COLUMNS]
    return " ".join("{}={}".format(n, f'"{c}"' if " " in c else c) for n, c in zip(names, row_cells(row, now)))


def row_json(row: Dict[str, Any]) -> Dict[str, Any]:
    """One device as one flat JSON object (the fields a line shows, unformatted)."""
    status, telemetry, result = (_part(row, k) for k in ("status", "telemetry", "results"))
    return {"device_id": row.get("device_id"), "state": status.get("state"), "activity": telemetry.get("activity"),
            "job_id": telemetry.get("job_id"), "fps": telemetry.get("fps"),
            "latency_ms_p50": telemetry.get("latency_ms_p50"), "power_w": telemetry.get("power_w"),
            "temperatures": telemetry.get("temperatures"), "gpu_load_pct": telemetry.get("gpu_load_pct"),
            "memory_used_mb": telemetry.get("memory_used_mb"), "memory_total_mb": telemetry.get("memory_total_mb"),
            "last_job_id": result.get("job_id"), "last_status": result.get("status"), "last_code": result.get("code"),
            "last_fps": result.get("fps"), "backend": status.get("backend"), "seen": row.get("seen")}


def changed_rows(state: MonitorState, changed: "queue.Queue[str]", shown: Dict[str, tuple]) -> List[Dict[str, Any]]:
    """The rows of the devices in ``changed`` whose line differs from the one last shown (``shown`` keeps
    those): several messages between two ticks, or one that changes nothing a line shows, print nothing."""
    out = []
    while not changed.empty():
        row = state.row(changed.get())
        summary = _summary(row)
        if shown.get(row["device_id"]) != summary:
            shown[row["device_id"]] = summary
            out.append(row)
    return out


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
