"""`host-trainer watch`: a live view of runs and devices, from the MQTT topics alone.

Runs come from `<prefix>/runs/+/generations` (the latest generation is retained, so a late
watcher sees it at once); devices from their status and telemetry, via edge_evolver's monitor.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid

from edge_evolver.monitor import MonitorState, render_table, subscriptions, tick_until
from edge_evolver.mqtt import MqttConnection, parse_broker_url
from edge_evolver.protocol import Topics, loads

RUN_COLUMNS = ("run", "gen", "synapses", "alpha", "acc %", "fps", "device", "power W", "updated s ago")


class RunState:
    def __init__(self, topics: Topics, run_filter: str | None = None) -> None:
        self.topics, self.run_filter = topics, run_filter
        self.runs: dict[str, dict] = {}
        self.devices = MonitorState(topics)
        self._lock = threading.Lock()

    def apply(self, topic: str, payload: bytes) -> None:
        head = self.topics.prefix + "/runs/"
        if topic.startswith(head) and topic.endswith("/generations"):
            run_id = topic[len(head):-len("/generations")]
            if self.run_filter and run_id != self.run_filter:
                return
            try:
                row = loads(payload)
            except ValueError:
                return
            with self._lock:
                self.runs[run_id] = dict(row, _seen=time.time())
        else:
            self.devices.apply(topic, payload)

    def snapshot(self) -> dict:
        with self._lock:
            runs = {k: dict(v) for k, v in sorted(self.runs.items())}
        return {"runs": runs, "devices": self.devices.snapshot()}


def _cell(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def render(snapshot: dict) -> str:
    now = time.time()
    rows = [list(RUN_COLUMNS)]
    for run_id, r in snapshot["runs"].items():
        acc = r.get("accuracy")
        rows.append([run_id, _cell(r.get("generation")), _cell(r.get("synapses"), ","), _cell(r.get("alpha_c"), ".3f"),
                     _cell(acc * 100 if acc is not None else None, ".2f"), _cell(r.get("fps"), ".1f"),
                     _cell(r.get("device_id")), _cell(r.get("power_w_mean"), ".2f"),
                     f"{now - (r.get('published_at') or r['_seen']):.0f}"])  # a retained row may be old
    widths = [max(len(row[i]) for row in rows) for i in range(len(RUN_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    if len(rows) == 1:
        lines.append("(no run seen yet)")
    return "\n".join(lines) + "\n\n" + render_table(snapshot["devices"], now)


def watch(broker: str, prefix: str, run_id: str | None, duration: float | None, json_out: bool) -> int:
    topics = Topics(prefix)
    state = RunState(topics, run_id)
    conn = MqttConnection(parse_broker_url(broker), f"host-trainer-watch-{uuid.uuid4().hex[:8]}", persistent=False)
    conn.on_message = state.apply

    def subscribe(_present: bool) -> None:
        for topic in [topics.run_generations("+"), *subscriptions(topics)]:
            conn.subscribe(topic, 0)

    conn.on_connect = subscribe
    if not conn.start(first_delay=0.5, max_delay=5.0, give_up_after=duration):
        raise ConnectionError(f"cannot reach the broker at {conn.broker.display()}")
    def tick() -> None:
        if duration is None:  # live: redraw on a terminal, append a table otherwise
            clear = "\x1b[2J\x1b[H" if sys.stdout.isatty() else ""
            print(clear + render(state.snapshot()) + ("" if clear else "\n"), flush=True)

    try:
        tick_until(duration, tick)
    finally:
        conn.stop()
    if duration is not None:
        snap = state.snapshot()
        print(json.dumps(snap, sort_keys=True, default=str) if json_out else render(snap))
    return 0
