"""Signed jobs: the host seals a framed job; the board opens it, or refuses it with a code.

A signed job is the ordinary ``EEJ1`` frame (protocol.py) behind a small signature block::

    offset 0    4 bytes  magic b"EES1" (edge-evolver signed, version 1)
    offset 4    2 bytes  length L of the signature block, unsigned big-endian, at most 1024
    offset 6    L bytes  UTF-8 JSON {"alg": "ed25519", "key_id": "<16 hex>", "sig": "<base64>"}
    offset 6+L           the EEJ1 frame

The signature covers ``JOB_CONTEXT`` followed by the frame's header bytes exactly as sent, so
nothing is re-serialised. The header's ``auth`` object (signed with it) binds the body through
its SHA-256 and says who the job is for and when it is valid::

    "auth": {"body_sha256": hex, "target": {"device": id} or {"group": name or "*"},
             "issued_at": unix s, "expires_at": unix s, "seq": per-key sequence number}

The board decides before it reads a byte of the header: the signature block is parsed, the key
looked up and the signature checked over the raw header bytes; only then is the header parsed.
"""

import base64
import binascii
import hashlib
import json
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from ..errors import ErrorCode, printable
from ..protocol import HEADER_OFFSET, MAGIC, MAX_HEADER_BYTES, FrameError, encode_frame, sha256_hex
from .keys import SIGNATURE_BYTES, SigningKey, TrustedKeys

SIGNED_MAGIC = b"EES1"
_BLOCK_LENGTH = struct.Struct(">H")
SIGNED_OFFSET = len(SIGNED_MAGIC) + _BLOCK_LENGTH.size
MAX_BLOCK_BYTES = 1024
JOB_CONTEXT = b"edge-evolver signed job v1\n"  # a result's signature can never pass for a job's
ANY_GROUP = "*"


@dataclass
class JobAuth:
    """What a verified job's signature established; echoed in its result as ``job_auth``."""

    key_id: str
    seq: int
    issued_at: float
    expires_at: float
    target: Dict[str, str]

    def to_dict(self) -> Dict[str, Any]:
        return {"key_id": self.key_id, "seq": self.seq}


class JobSigner:
    """The host's side: adds the ``auth`` object to a header and seals the frame.

    The sequence number is the signing time in microseconds, kept strictly increasing within
    the process: unique per key without a counter file, and still ordered after a restart.
    """

    def __init__(self, key: SigningKey, ttl_s: float = 3600.0, clock: Any = time.time) -> None:
        self.key, self.ttl_s, self.clock = key, ttl_s, clock
        self._last = 0
        self._lock = threading.Lock()

    def _next_seq(self, now: float) -> int:
        with self._lock:
            self._last = max(self._last + 1, int(now * 1e6))
            return self._last

    def seal(self, header: Dict[str, Any], body_parts: Any, target: Dict[str, str]) -> bytes:
        """A signed job from a header (without ``auth``) and its body parts, for ``target``."""
        body = b"".join(bytes(p) for p in body_parts)
        now = float(self.clock())
        header = dict(header, auth={"body_sha256": sha256_hex(body), "target": dict(target), "issued_at": now,
                                    "expires_at": now + self.ttl_s, "seq": self._next_seq(now)})
        frame = encode_frame(header, [body])
        head = frame[HEADER_OFFSET:HEADER_OFFSET + _header_length(frame)]
        block = json.dumps({"alg": "ed25519", "key_id": self.key.key_id,
                            "sig": base64.b64encode(self.key.sign(JOB_CONTEXT + head)).decode("ascii")},
                           sort_keys=True, separators=(",", ":")).encode("utf-8")
        return SIGNED_MAGIC + _BLOCK_LENGTH.pack(len(block)) + block + frame


def _header_length(frame: bytes) -> int:
    return int(struct.unpack_from(">I", frame, len(MAGIC))[0])


def is_signed(payload: bytes) -> bool:
    return bytes(payload[:len(SIGNED_MAGIC)]) == SIGNED_MAGIC


def unwrap(payload: bytes) -> bytes:
    """The EEJ1 frame inside a signed job, without verifying it: for the daemon's own spool, whose jobs were
    verified when they arrived. Anything else is returned as it is."""
    if not is_signed(payload) or len(payload) < SIGNED_OFFSET:
        return payload
    (size,) = _BLOCK_LENGTH.unpack_from(payload, len(SIGNED_MAGIC))
    return payload[SIGNED_OFFSET + size:]


@dataclass
class VerifyPolicy:
    """The board's rules: whom it trusts, who it is, and how long a job may be valid."""

    trusted: TrustedKeys
    device_id: str
    group: str = ""
    allow_unsigned: bool = False
    max_age_s: float = 7 * 24 * 3600.0
    clock_skew_s: float = 300.0


def open_job(payload: bytes, policy: VerifyPolicy, now: Optional[float] = None) -> Tuple[bytes, Optional[JobAuth]]:
    """(the inner EEJ1 frame, its JobAuth or None when unsigned and allowed); FrameError with a code.

    The caller checks the payload size first; this never parses header JSON before the signature
    has been verified over its bytes.
    """
    if not is_signed(payload):
        if policy.allow_unsigned:
            return payload, None
        raise FrameError(ErrorCode.UNSIGNED, "this board runs signed jobs only (see docs/security.md); "
                         + _enrol_hint(policy))
    block, frame = split_signed(payload)
    key = policy.trusted.find(block["key_id"])
    if key is None:
        raise FrameError(ErrorCode.UNKNOWN_KEY, f"signed by key {printable(block['key_id'])}, which this board "
                         f"does not trust; {_enrol_hint(policy)}")
    head = _raw_header(frame)
    if not key.verify(block["sig"], JOB_CONTEXT + head):
        raise FrameError(ErrorCode.BAD_SIGNATURE, "the signature does not match the job header: tampered or forged")
    try:
        header = json.loads(head.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise FrameError(ErrorCode.INVALID_FRAME, "the signed header is not usable JSON") from None
    auth = _auth(header, block["key_id"])
    if hashlib.sha256(memoryview(frame)[HEADER_OFFSET + len(head):]).hexdigest() != auth.pop("body_sha256"):
        raise FrameError(ErrorCode.BAD_SIGNATURE, "the body does not match the signed body_sha256: tampered")
    job_auth = JobAuth(block["key_id"], **auth)
    _check_time(job_auth, policy, time.time() if now is None else now)
    _check_target(job_auth, policy)
    return frame, job_auth


def _enrol_hint(policy: VerifyPolicy) -> str:
    if not len(policy.trusted):
        return "it trusts no host key yet: run `edge-evolver keys trust <host public key>` on the board"
    return "enrol the host's key with `edge-evolver keys trust <host public key>` on the board"


def split_signed(payload: bytes) -> Tuple[Dict[str, Any], bytes]:
    """The signature block (alg, key_id, sig as bytes) and the frame behind it; FrameError otherwise."""
    if len(payload) < SIGNED_OFFSET:
        raise FrameError(ErrorCode.BAD_SIGNATURE, "signed job is truncated before its signature block")
    (size,) = _BLOCK_LENGTH.unpack_from(payload, len(SIGNED_MAGIC))
    if size > MAX_BLOCK_BYTES or SIGNED_OFFSET + size > len(payload):
        raise FrameError(ErrorCode.BAD_SIGNATURE, f"signature block length {size} does not fit the payload")
    try:
        block = json.loads(bytes(payload[SIGNED_OFFSET:SIGNED_OFFSET + size]).decode("utf-8"))
        key_id, sig = block["key_id"], base64.b64decode(block["sig"].encode("ascii"), validate=True)
        usable = block.get("alg") == "ed25519" and isinstance(key_id, str) and len(sig) == SIGNATURE_BYTES
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, RecursionError):
        usable = False
    if not usable:
        raise FrameError(ErrorCode.BAD_SIGNATURE, "the signature block is not {alg: ed25519, key_id, sig}")
    return {"key_id": key_id, "sig": sig}, bytes(payload[SIGNED_OFFSET + size:])


def _raw_header(frame: bytes) -> bytes:
    if len(frame) < HEADER_OFFSET or frame[:len(MAGIC)] != MAGIC:
        raise FrameError(ErrorCode.INVALID_FRAME, "the signed payload holds no edge-evolver job (no EEJ1 magic)")
    size = _header_length(frame)
    if size > MAX_HEADER_BYTES or HEADER_OFFSET + size > len(frame):
        raise FrameError(ErrorCode.INVALID_FRAME, f"header length {size} does not fit the {len(frame)}-byte frame")
    return frame[HEADER_OFFSET:HEADER_OFFSET + size]


def _number(value: Any, limit: float = 1e15) -> bool:
    """Within +-limit: no NaN, no infinity, no integer too large for float arithmetic or a file name."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and -limit < value < limit


def _auth(header: Any, key_id: str) -> Dict[str, Any]:
    """The signed header's auth fields, type-checked (a trusted host wrote them, but a bug must not crash us)."""
    auth = header.get("auth") if isinstance(header, dict) else None
    auth = auth if isinstance(auth, dict) else {}
    target = auth.get("target")
    ok = (isinstance(auth.get("body_sha256"), str) and _number(auth.get("issued_at"))
          and _number(auth.get("expires_at")) and isinstance(auth.get("seq"), int)
          and _number(auth.get("seq"), 2 ** 63) and isinstance(target, dict) and len(target) == 1
          and all(k in ("device", "group") and isinstance(v, str) for k, v in target.items()))
    if not ok:
        raise FrameError(ErrorCode.INVALID_FRAME, f"signed header (key {key_id}) lacks a valid 'auth' object: "
                         "body_sha256, target, issued_at, expires_at, seq")
    return {k: auth[k] for k in ("body_sha256", "seq", "issued_at", "expires_at", "target")}


def _check_time(auth: JobAuth, policy: VerifyPolicy, now: float) -> None:
    if now > auth.expires_at:
        raise FrameError(ErrorCode.EXPIRED, f"the job expired {now - auth.expires_at:.0f} s ago")
    if auth.issued_at > now + policy.clock_skew_s:
        raise FrameError(ErrorCode.EXPIRED, f"the job was issued {auth.issued_at - now:.0f} s in the future: "
                         "check the clocks of the host and the board (NTP)")
    if auth.expires_at - auth.issued_at > policy.max_age_s:
        raise FrameError(ErrorCode.EXPIRED, f"the job is valid for {auth.expires_at - auth.issued_at:.0f} s, "
                         f"longer than this board's max_job_age_s of {policy.max_age_s:g}")


def _check_target(auth: JobAuth, policy: VerifyPolicy) -> None:
    device, group = auth.target.get("device"), auth.target.get("group")
    if device is not None and device != policy.device_id:
        raise FrameError(ErrorCode.WRONG_TARGET, f"the job is addressed to device {device[:64]!r}, "
                         f"this is {policy.device_id!r}")
    if group is not None and group not in (ANY_GROUP, policy.group):
        raise FrameError(ErrorCode.WRONG_TARGET, f"the job is addressed to group {group[:64]!r}, this board "
                         f"is in {policy.group or 'no group'!r}")


def sealed_auth(payload: bytes) -> Optional[Dict[str, Any]]:
    """{"key_id", "seq"} of a signed job, read without verifying: for its own sender, which must bind the
    board's answer to what it sealed, and for the board's spool, whose jobs are verified again on start.
    None for an unsigned or malformed payload."""
    if not is_signed(payload):
        return None
    try:
        block, frame = split_signed(payload)
        header = json.loads(_raw_header(frame).decode("utf-8"))
        seq = header["auth"]["seq"]
    except (FrameError, KeyError, TypeError, ValueError, RecursionError):
        return None
    return {"key_id": block["key_id"], "seq": seq} if isinstance(seq, int) and not isinstance(seq, bool) else None
