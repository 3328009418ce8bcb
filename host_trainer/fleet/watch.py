"""`host-trainer watch`: runs and devices, from the MQTT topics alone.

Runs come from `<prefix>/runs/+/generations` (the latest generation record is retained, so a late
watcher sees it at once); devices from their status, telemetry and results, via edge_evolver's monitor.
- On a terminal: a live table of runs above the device table, redrawn by rich.
- Elsewhere: one plain line per new generation of a run and per change of a device (`--json`: one JSON
  object per line instead), so a pipe or a log file gets a readable history.
- With `--duration`: watch that long, then print one snapshot (tables, or one JSON object with --json).
"""

from __future__ import annotations

import json
import math
import queue
import sys
import threading
import time
import uuid
from typing import Any

from edge_evolver.cli.monitor import COLUMNS as DEVICE_HEADERS
from edge_evolver.cli.monitor import (
    MonitorState,
    changed_rows,
    render_table,
    row_cells,
    row_json,
    row_line,
    subscriptions,
    tick_until,
)
from edge_evolver.logs import configure_logging
from edge_evolver.mqtt import MqttConnection, TlsFiles, parse_broker_url
from edge_evolver.protocol import Topics, loads
from host_trainer.record import COLUMNS, WATCH_COLUMNS, GenerationRecord

RUN_HEADERS = ("run", *(COLUMNS[k].header for k in WATCH_COLUMNS), "updated s ago")


class RunState:
    """The latest record of every run, and the devices; `apply` says what changed (for the line mode)."""

    def __init__(self, topics: Topics, run_filter: str | None = None) -> None:
        self.topics, self.run_filter = topics, run_filter
        self.runs: dict[str, dict] = {}
        self.devices = MonitorState(topics)
        self.runs_changed: queue.Queue[str] = queue.Queue()
        self.devices_changed: queue.Queue[str] = queue.Queue()
        self._lock = threading.Lock()

    def apply(self, topic: str, payload: bytes) -> None:
        head = self.topics.prefix + "/runs/"
        if not (topic.startswith(head) and topic.endswith("/generations")):
            device = self.devices.apply(topic, payload)
            if device is not None:
                self.devices_changed.put(device)
            return
        run_id = topic[len(head):-len("/generations")]
        if self.run_filter and run_id != self.run_filter:
            return
        try:
            row = loads(payload)
            GenerationRecord.from_json(row)  # a payload that is no generation record is not shown
        except ValueError:
            return
        with self._lock:
            self.runs[run_id] = dict(row, _seen=time.time())
        self.runs_changed.put(run_id)

    def snapshot(self) -> dict:
        with self._lock:
            runs = {k: dict(v) for k, v in sorted(self.runs.items())}
        return {"runs": runs, "devices": self.devices.snapshot()}


def run_cells(run_id: str, row: dict, now: float) -> list[str]:
    # A retained row may be old: age it by when it was published, not when it arrived (when it says).
    published: Any = row.get("published_at")
    if not (isinstance(published, (int, float)) and not isinstance(published, bool) and math.isfinite(published)):
        published = row["_seen"]
    age = now - float(published)
    return [run_id, *(COLUMNS[k].text(row) for k in WATCH_COLUMNS), f"{age:.0f}"]


def render(snapshot: dict) -> str:
    """Both tables as plain text."""
    now = time.time()
    rows = [list(RUN_HEADERS)] + [run_cells(r, row, now) for r, row in snapshot["runs"].items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(RUN_HEADERS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no run seen yet)")
    return "\n".join(lines) + "\n\n" + render_table(snapshot["devices"], now)


def _rich_tables(snapshot: dict) -> Any:
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    now = time.time()
    runs = Table(*RUN_HEADERS, title="runs", box=None, header_style="bold", title_justify="left")
    for run_id, row in snapshot["runs"].items():
        runs.add_row(*(Text(cell) for cell in run_cells(run_id, row, now)))  # Text: what devices send is no markup
    devices = Table(*DEVICE_HEADERS, title="devices", box=None, header_style="bold", title_justify="left")
    for row in snapshot["devices"]:
        devices.add_row(*(Text(cell) for cell in row_cells(row, now)))
    return Group(runs, "", devices)


def _run_line(run_id: str, row: dict, json_out: bool) -> str:
    if json_out:
        return json.dumps({"kind": "run", "run_id": run_id, **{k: v for k, v in row.items() if k != "_seen"}},
                          sort_keys=True, default=str)
    cells = run_cells(run_id, row, time.time())
    return "run " + " ".join(f"{h.replace(' ', '_')}={c}" for h, c in zip(RUN_HEADERS, cells))


def _device_line(device: dict, json_out: bool) -> str:
    if json_out:
        return json.dumps({"kind": "device", **row_json(device)}, sort_keys=True, default=str)
    return "device " + row_line(device)


def _follow(state: RunState, json_out: bool) -> None:
    """Until Ctrl-C: a live table on a terminal, else one line per update."""
    shown_runs: dict[str, Any] = {}
    shown_devices: dict[str, tuple] = {}

    def lines() -> list[str]:
        """Drained every tick, on a terminal too, so that the queues never grow."""
        changed = set()
        while not state.runs_changed.empty():
            changed.add(state.runs_changed.get())
        runs = state.snapshot()["runs"]  # after draining: every change taken is in it
        out = []
        for run_id in sorted(changed):
            row = runs.get(run_id, {})
            if shown_runs.get(run_id) != row.get("generation"):  # a new generation, not the same one again
                shown_runs[run_id] = row.get("generation")
                out.append(_run_line(run_id, row, json_out))
        devices = changed_rows(state.devices, state.devices_changed, shown_devices)
        return out + [_device_line(device, json_out) for device in devices]

    def show() -> None:
        for line in lines():
            print(line, flush=True)

    if sys.stdout.isatty() and not json_out:
        from rich.live import Live

        def drain() -> None:
            lines()  # the table shows it all: the lines are only drained

        with Live(get_renderable=lambda: _rich_tables(state.snapshot()), refresh_per_second=1):
            tick_until(None, drain)
        return
    tick_until(None, show)


def watch(broker: str, prefix: str, run_id: str | None, duration: float | None, json_out: bool,
          tls: TlsFiles | None = None) -> int:
    configure_logging("warning")  # the MQTT layer's warnings go to stderr, never between the lines of stdout
    topics = Topics(prefix)
    state = RunState(topics, run_id)
    conn = MqttConnection(parse_broker_url(broker), f"host-trainer-watch-{uuid.uuid4().hex[:8]}", persistent=False,
                          tls=tls)
    conn.on_message = state.apply

    def subscribe(_present: bool) -> None:
        for topic in [topics.run_generations("+"), *subscriptions(topics)]:
            conn.subscribe(topic, 0)

    conn.on_connect = subscribe
    if not conn.start(first_delay=0.5, max_delay=5.0, give_up_after=duration):
        raise ConnectionError(f"cannot reach the broker at {conn.broker.display()}")
    try:
        if duration is None:
            _follow(state, json_out)
        else:
            tick_until(duration, lambda: None)
    finally:
        conn.stop()
    if duration is not None:
        snap = state.snapshot()
        print(json.dumps(snap, sort_keys=True, default=str) if json_out else render(snap))
    return 0
