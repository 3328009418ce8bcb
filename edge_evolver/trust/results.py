"""Signed results: a board signs every result it publishes; a host checks it against the key it
enrolled for that device.

A result stays an ordinary JSON object that any MQTT client reads; the board adds::

    "signature": {"alg": "ed25519", "key_id": "<16 hex>", "sig": "<base64>"}

over ``RESULT_CONTEXT`` followed by the canonical JSON of every other field: ``protocol.dumps``
(sorted keys, no spaces, ASCII escapes, NaN and infinities as null). Python's JSON writes each
float in its shortest round-trip form, so parsing a result and writing it again gives the very
bytes that were signed; a stored result stays verifiable for as long as it is kept.
"""

import base64
import binascii
from typing import Any, Callable, Dict, Optional

from ..protocol import dumps
from .keys import SIGNATURE_BYTES, PublicKey, SigningKey

RESULT_CONTEXT = b"edge-evolver signed result v1\n"
SIGNATURE_FIELD = "signature"


def canonical(result: Dict[str, Any]) -> bytes:
    return RESULT_CONTEXT + dumps({k: v for k, v in result.items() if k != SIGNATURE_FIELD})


def sign_result(result: Dict[str, Any], key: SigningKey) -> Dict[str, Any]:
    """A copy of ``result`` with its signature (any earlier signature is replaced)."""
    body = {k: v for k, v in result.items() if k != SIGNATURE_FIELD}
    signature = base64.b64encode(key.sign(canonical(body))).decode("ascii")
    body[SIGNATURE_FIELD] = {"alg": "ed25519", "key_id": key.key_id, "sig": signature}
    return body


def result_key_id(result: Dict[str, Any]) -> Optional[str]:
    signature = result.get(SIGNATURE_FIELD)
    key_id = signature.get("key_id") if isinstance(signature, dict) else None
    return key_id if isinstance(key_id, str) else None


def check_result(result: Dict[str, Any], keys_of: Callable[[str], Any]) -> Optional[str]:
    """None when the result is signed by a key enrolled for its ``device_id``, else why not.

    ``keys_of(device_id)`` gives that device's enrolled public keys (an iterable of PublicKey).
    """
    device = result.get("device_id")
    signature = result.get(SIGNATURE_FIELD)
    if not isinstance(signature, dict):
        return "unsigned"
    if not isinstance(device, str):
        return "no device_id"
    keys = {key.key_id: key for key in keys_of(device) or ()}
    if not keys:
        return f"no key is enrolled for device {device!r}"
    key_id = signature.get("key_id")
    if not isinstance(key_id, str):
        return "malformed signature"
    key: Optional[PublicKey] = keys.get(key_id)
    if key is None:
        return f"signed by key {key_id[:16]!r}, not one enrolled for {device!r}"
    try:
        raw = base64.b64decode(str(signature.get("sig")).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return "malformed signature"
    if signature.get("alg") != "ed25519" or len(raw) != SIGNATURE_BYTES or not key.verify(raw, canonical(result)):
        return "bad signature (forged or altered)"
    return None
