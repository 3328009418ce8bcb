"""Status, telemetry and result payloads, assembled from facts the daemon gathered.

Field lists are documented in protocol.py and docs/protocol.md; this module only fills them.
"""

import platform
import time
from typing import Any, Dict, Optional

from .. import __version__
from ..measure.benchmark import RESULT_KEYS
from ..measure.pipeline import ENGINE_KEYS, POWER_KEYS
from ..protocol import DEVICE_STATES, PROTOCOL_VERSION


def status_payload(state: str, device_id: str, facts: Dict[str, Any], since: Optional[float] = None) -> Dict[str, Any]:
    """Retained device status: state (one of DEVICE_STATES) plus what makes this device's numbers comparable."""
    if state not in DEVICE_STATES:
        raise ValueError(f"unknown device state {state!r}")
    payload = {
        "protocol": PROTOCOL_VERSION,
        "state": state,
        "device_id": device_id,
        "ts": time.time(),
        "since": since,
        "edge_evolver_version": __version__,
        "python": platform.python_version(),
    }
    payload.update(facts)
    return payload


def will_payload(device_id: str, facts: Dict[str, Any]) -> Dict[str, Any]:
    """The Last Will: the broker publishes it, unchanged, when the connection dies uncleanly."""
    payload = status_payload("offline", device_id, facts)
    payload["ts"] = None  # fixed at connect time; the moment of death is unknown to the board
    return payload


def result_payload(
    device_id: str,
    job_id: Optional[str],
    measured: Dict[str, Any],
    timing: Dict[str, Optional[float]],
    board: Dict[str, Any],
    meta: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """One result: the measurement's flat dict plus job identity, timestamps and board state.

    Every measurement key is present even in an error result (null), so consumers never guess.
    """
    out: Dict[str, Any] = {key: None for key in RESULT_KEYS + POWER_KEYS + ENGINE_KEYS}
    out.update(model_sha256=None, code=None, message="", agreement=None, backend=None)
    if measured.get("status") != "ok":
        out["power_reason"] = "not measured: the job failed"
    out.update(measured)
    out.update(
        protocol=PROTOCOL_VERSION,
        job_id=job_id,
        device_id=device_id,
        edge_evolver_version=__version__,
        power_mode=board.get("power_mode"),
        clocks_locked=board.get("clocks_locked"),
        meta=meta or {},
    )
    out.update(timing)
    received, started = timing.get("received_at"), timing.get("started_at")
    out["queue_s"] = (started - received) if (received is not None and started is not None) else None
    return out


def telemetry_payload(device_id: str, activity: Dict[str, Any], queue: int, power_w: Optional[float],
                      temperatures: Dict[str, float], gauges: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    payload = {
        "protocol": PROTOCOL_VERSION,
        "device_id": device_id,
        "ts": time.time(),
        "activity": "idle",
        "job_id": None,
        "fps": None,
        "latency_ms_p50": None,
        "iterations": None,
        "power_w": power_w,
        "temperatures": temperatures,
        "queue": queue,
        # Always present (null when unknown), so that a consumer never guesses; devicefacts.gauges() fills them.
        "gpu_load_pct": None,
        "memory_used_mb": None,
        "memory_total_mb": None,
    }
    payload.update(gauges or {})
    payload.update({k: v for k, v in activity.items() if k != "power_w" or v is not None})
    return payload
