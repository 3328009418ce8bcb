"""The MQTT wire protocol, in one place: topics, QoS, retained flags, job framing, payload fields.

``docs/protocol.md`` is the prose version of this module; change both together. The topic
prefix is added only by ``Topics``. Everything here is pure (no paho), so the host, the daemon,
the monitor and the tests share it.

Job framing (works over MQTT 3.1.1 and 5, which carry opaque binary payloads)::

    offset 0   4 bytes   magic b"EEJ1" (edge-evolver job, framing version 1)
    offset 4   4 bytes   header length H, unsigned big-endian
    offset 8   H bytes   header: UTF-8 JSON object (JOB_HEADER_FIELDS)
    offset 8+H           body: the ONNX model bytes, then each tensor of header["tensors"] in order
                         (raw little-endian C-order array bytes)
"""

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .errors import one_line

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "edge-evolver"
MAGIC = b"EEJ1"
_LENGTH = struct.Struct(">I")
HEADER_OFFSET = len(MAGIC) + _LENGTH.size
MAX_HEADER_BYTES = 1024 * 1024
DEFAULT_MAX_PAYLOAD_MB = 64
# The most a result may weigh on the wire: far below any broker's packet limit a fleet could run with
# (ours is 64 MiB), so a result can never get its board disconnected. The board trims what is above it
# (edge_evolver/daemon/outbox.py): raw samples and the profile go first, the figures stay.
MAX_RESULT_BYTES = 1024 * 1024
# What a trimmed result keeps, whatever else it had: identity, binding, verdict and the headline figures.
RESULT_ESSENTIAL_FIELDS = ("protocol", "job_id", "device_id", "status", "code", "message", "model_sha256",
                           "payload_sha256", "job_auth", "refusal", "unopened", "repeated", "reply_to",
                           "fps", "latency_ms_mean", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
                           "iterations", "agreement", "power_w_mean", "energy_mj_per_inference", "power_reason",
                           "precision", "backend", "power_mode", "clocks_locked",
                           "received_at", "started_at", "finished_at", "queue_s", "edge_evolver_version", "trimmed")

# kind -> (QoS, retained). Status is retained so a late subscriber sees every board's state;
# telemetry is QoS 0 because a lost sample is replaced a second later.
TOPIC_QOS: Dict[str, Tuple[int, bool]] = {
    "status": (1, True),
    "jobs": (1, False),
    "results": (1, False),
    "telemetry": (0, False),
}

# The host's run progress topic: QoS 1, retained (latest generation), see Topics.run_generations.
RUN_PROGRESS_QOS = 1

# A device's retained status "state" (docs/protocol.md, "Status"); the only values a board publishes.
DEVICE_STATES = ("online", "offline", "stopped")

# Matched whole (fullmatch): a "$" anchor would let a trailing newline through, and an id ends up in topics
# and file names.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Header fields: name -> (required, meaning). Unknown fields are ignored (forward compatible).
JOB_HEADER_FIELDS: Dict[str, Tuple[bool, str]] = {
    "protocol": (True, "framing/protocol version, 1"),
    "job_id": (True, "1-128 chars of [A-Za-z0-9._:-]; a repeated id returns the stored result"),
    "model": (True, '{"size": bytes, "sha256": hex digest of the model bytes}'),
    "bench": (False, "batch, min_iterations, min_seconds, warmup_s, max_seconds (defaults: 1, 200, 1.0, 0.2, 30)"),
    "tensors": (False, '[{"role": "input"|"reference", "name", "dtype", "shape", "size"}] in body order'),
    "reply_to": (False, "topic for the result: <prefix>/devices/<id>/results (the default) or "
                        "<prefix>/runs/<run_id>/results of the header's run_id"),
    "run_id": (False, "the host's run this job belongs to; names the one other topic reply_to may use"),
    "auth": (False, "signed jobs only: body_sha256, target, issued_at, expires_at, seq (docs/security.md)"),
    "options": (False, "backend options: fp16 (null=auto), threads, workspace_mb, shape_overrides, "
                       "profile (false: no per-layer profiling pass)"),
    "timeout_s": (False, "job time limit, capped by the daemon's job_timeout_s"),
    "include_samples": (False, "true: the result carries raw latency and power samples"),
    "seed": (False, "seed of the synthetic inputs (default 0)"),
    "meta": (False, "free JSON object echoed back in the result (generation, genome id...)"),
    "check": (False, 'how to compare outputs with the references beyond raw values: {"kind": "detect", '
                     '"num_classes": K, "stride": s} decodes boxes (edge_evolver/measure/detection.py), box_agreement'),
}
CHECK_KINDS = ("detect",)
BENCH_FIELDS = ("batch", "min_iterations", "min_seconds", "warmup_s", "max_seconds")
OPTION_FIELDS = ("fp16", "threads", "workspace_mb", "shape_overrides", "profile")

# Optional result fields of the per-layer profile (docs/protocol.md "Per-layer profile"): "profile" (a
# list of LayerTime.to_dict()) with "profile_runs", or "profile_error" when the pass failed. Older
# boards send none of them.
PROFILE_FIELDS = ("profile", "profile_runs", "profile_error")


@dataclass
class LayerTime:
    """One entry of a result's ``profile``: a layer (TensorRT) or kernel (ONNX Runtime) and its time.

    ``ms`` is its mean time per run of the engine (one run = one batch) over the profiling pass,
    ``share`` its fraction of the sum of all entries' ``ms``, and ``nodes`` the names of the
    nodes of the ONNX model as sent that this entry computes (empty when none is known, e.g. a
    layout conversion the runtime inserted).
    """

    name: str
    op: str = ""
    ms: float = 0.0
    share: float = 0.0
    nodes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "op": self.op, "ms": self.ms, "share": self.share, "nodes": list(self.nodes)}

    @classmethod
    def from_dict(cls, data: Any) -> "LayerTime":
        """Read one entry of a received result; ValueError when it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError(f"a profile entry needs a string 'name': {data!r:.200}")
        nodes = data.get("nodes") or []
        if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
            raise ValueError(f"profile entry {data['name']!r}: 'nodes' must be a list of strings")
        op = data.get("op") or ""
        if not isinstance(op, str):
            raise ValueError(f"profile entry {data['name']!r}: 'op' must be a string")
        return cls(data["name"], op, _number(data, "ms"), _number(data, "share"), list(nodes))


def _number(data: Dict[str, Any], key: str) -> float:
    """A finite float; null (how dumps() sends NaN) reads as NaN, anything else is refused."""
    value = data.get(key)
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"profile entry {data.get('name')!r}: '{key}' must be a number, not {value!r:.50}")
    return float(value)


class FrameError(Exception):
    """A job payload that cannot be accepted; ``job_id`` is set when the header was readable."""

    def __init__(self, code: str, message: str, job_id: Optional[str] = None) -> None:
        message = one_line(message)  # it quotes header values a sender chose; the refusal stays one line
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.job_id = job_id
        self.reply_to: Optional[str] = None  # the header's reply_to, when it could be read
        self.run_id: Optional[str] = None  # and its run_id (the one run topic reply_to may name)


def valid_job_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_ID.fullmatch(value))


def valid_device_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_DEVICE_ID.fullmatch(value))


class Topics:
    """All topic names for one prefix. The only place the prefix is joined to a topic."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix or any(c in prefix for c in "+#\x00") or prefix.startswith(("$", "/")) or prefix.endswith("/"):
            raise ValueError(f"invalid topic prefix {prefix!r}: no wildcards, no leading '$' or '/', no trailing '/'")
        self.prefix = prefix

    def device(self, device_id: str, kind: str) -> str:
        if kind not in TOPIC_QOS:
            raise ValueError(f"unknown topic kind {kind!r}")
        return f"{self.prefix}/devices/{device_id}/{kind}"

    def status(self, device_id: str) -> str:
        return self.device(device_id, "status")

    def jobs(self, device_id: str) -> str:
        return self.device(device_id, "jobs")

    def results(self, device_id: str) -> str:
        return self.device(device_id, "results")

    def telemetry(self, device_id: str) -> str:
        return self.device(device_id, "telemetry")

    def group_jobs(self) -> str:
        """Where the host publishes a job that any one board of a group may take."""
        return f"{self.prefix}/jobs"

    def shared_jobs(self, group: str) -> str:
        """A board's subscription to group jobs: the broker gives each message to one member."""
        return f"$share/{group}/{self.group_jobs()}"

    def run_generations(self, run_id: str) -> str:
        """The host's progress: one JSON message per generation, the latest retained."""
        return f"{self.prefix}/runs/{run_id}/generations"

    def all_devices(self, kind: str) -> str:
        """Wildcard over every device, for monitors."""
        return self.device("+", kind)

    def parse(self, topic: str) -> Optional[Tuple[str, str]]:
        """'<prefix>/devices/<id>/<kind>' -> (id, kind); None for anything else."""
        head = self.prefix + "/devices/"
        if not topic.startswith(head):
            return None
        device_id, _, kind = topic[len(head):].partition("/")
        return (device_id, kind) if device_id and kind in TOPIC_QOS else None

    def run_results(self, run_id: str) -> str:
        """Where a run may ask boards to answer (a job's ``reply_to`` naming its own ``run_id``)."""
        return f"{self.prefix}/runs/{run_id}/results"

    def reply_allowed(self, topic: str, device_id: str, run_id: Any = None) -> bool:
        """A job may name its result topic only among the topics this board answers on: its own
        results, or the results topic of the run its (signed) header names. Anything else would let
        a job make the board publish where another board or the host speaks."""
        if topic == self.results(device_id):
            return True
        return valid_job_id(run_id) and topic == self.run_results(str(run_id))

    def is_reply_topic(self, topic: str, device_id: str) -> bool:
        """The shape check for a stored result's topic: own results, or some run's results topic."""
        if topic == self.results(device_id):
            return True
        head, tail = self.prefix + "/runs/", "/results"
        run_id = topic[len(head):-len(tail)] if topic.startswith(head) and topic.endswith(tail) else None
        return run_id is not None and valid_job_id(run_id)


def qos(kind: str) -> int:
    return TOPIC_QOS[kind][0]


def retained(kind: str) -> bool:
    return TOPIC_QOS[kind][1]


def dumps(payload: Dict[str, Any]) -> bytes:
    """JSON payload bytes; NaN/inf become null so every MQTT client can parse them."""
    return json.dumps(_finite(payload), sort_keys=True, separators=(",", ":")).encode("utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def loads(payload: bytes) -> Dict[str, Any]:
    """Parse a JSON topic payload; ValueError for anything that is not a JSON object."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except RecursionError:  # absurdly nested: anyone on the broker can send it
        raise ValueError("payload is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError("payload is not a JSON object")
    return data


def encode_frame(header: Dict[str, Any], body_parts: List[bytes]) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return b"".join([MAGIC, _LENGTH.pack(len(head)), head] + list(body_parts))


def split_frame(payload: bytes, max_bytes: int) -> Tuple[Dict[str, Any], memoryview]:
    """(header, body) of a framed payload, or FrameError(INVALID_FRAME / OVERSIZE)."""
    if len(payload) < HEADER_OFFSET or bytes(payload[:4]) != MAGIC:
        raise FrameError("INVALID_FRAME", "payload is not an edge-evolver job (no EEJ1 magic)")
    (size,) = _LENGTH.unpack_from(payload, 4)
    if size > MAX_HEADER_BYTES or HEADER_OFFSET + size > len(payload):
        raise FrameError("INVALID_FRAME", f"header length {size} does not fit the {len(payload)}-byte payload")
    try:
        header = json.loads(bytes(payload[HEADER_OFFSET:HEADER_OFFSET + size]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise FrameError("INVALID_FRAME", f"header is not usable JSON: {type(exc).__name__}") from None
    if not isinstance(header, dict):
        raise FrameError("INVALID_FRAME", "header is not a JSON object")
    job_id = header.get("job_id") if valid_job_id(header.get("job_id")) else None
    if len(payload) > max_bytes:
        error = FrameError("OVERSIZE", f"job is {len(payload)} bytes, above the limit of {max_bytes}", job_id)
        error.reply_to = header.get("reply_to") if isinstance(header.get("reply_to"), str) else None
        raise error
    return header, memoryview(payload)[HEADER_OFFSET + size:]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
