"""Error codes the device side reports.

A measurement never raises to its caller: failures come back as a result carrying one of
these codes, so the host and the MQTT daemon's results can tell a bad genome (INVALID_MODEL,
UNSUPPORTED_OP, BAD_SHAPE) from a broken device (BACKEND_UNAVAILABLE, INTERNAL).
Codes are plain strings so they survive JSON and MQTT unchanged.
"""

from typing import List


class ErrorCode:
    """String constants; a class rather than an Enum so the values serialise as themselves."""

    INVALID_MODEL = "INVALID_MODEL"  # bytes are not a loadable ONNX model
    UNSUPPORTED_OP = "UNSUPPORTED_OP"  # the backend has no kernel for an operator
    BAD_SHAPE = "BAD_SHAPE"  # an input shape cannot be resolved or is absurd
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"  # the runtime is not installed / usable
    BUILD_FAILED = "BUILD_FAILED"  # the runtime refused to build an engine/session
    INFERENCE_FAILED = "INFERENCE_FAILED"  # the engine built but running it failed
    SHA_MISMATCH = "SHA_MISMATCH"  # received bytes differ from the announced digest
    OVERSIZE = "OVERSIZE"  # the model or a request exceeds a size limit
    BAD_INPUT = "BAD_INPUT"  # a caller-supplied argument is wrong (unknown backend, file...)
    TIMEOUT = "TIMEOUT"  # the job took longer than allowed
    INVALID_FRAME = "INVALID_FRAME"  # an MQTT job payload that does not follow the framing
    QUEUE_FULL = "QUEUE_FULL"  # the daemon already holds its maximum of waiting jobs
    BROKER_UNREACHABLE = "BROKER_UNREACHABLE"  # CLI only: no MQTT connection within the time given
    INTERNAL = "INTERNAL"  # a bug: an exception nobody anticipated
    # The model safety check (measure/model_guard.py), before any runtime sees the bytes.
    EXTERNAL_DATA = "EXTERNAL_DATA"  # a tensor points at a file instead of carrying its bytes
    TENSOR_SIZE_MISMATCH = "TENSOR_SIZE_MISMATCH"  # a tensor's declared shape and its bytes disagree
    OPSET_NOT_ALLOWED = "OPSET_NOT_ALLOWED"  # an operator domain or opset the backend does not allow
    # Job authentication (edge_evolver/trust/): refused before the job is parsed or stored.
    UNSIGNED = "UNSIGNED"  # no signature, and this board requires one
    UNKNOWN_KEY = "UNKNOWN_KEY"  # signed by a key this board does not trust
    BAD_SIGNATURE = "BAD_SIGNATURE"  # the signature does not match the header (tampered or forged)
    EXPIRED = "EXPIRED"  # past its expiry, or issued further in the future than clocks can disagree
    WRONG_TARGET = "WRONG_TARGET"  # addressed to another board or group
    REPLAYED = "REPLAYED"  # a signed job seen before whose stored answer is gone: never run twice

    @classmethod
    def all(cls) -> List[str]:
        return sorted(v for k, v in vars(cls).items() if k.isupper() and isinstance(v, str))



MAX_TEXT = 60  # characters of a sender's name, path or value quoted in a message


def printable(text: str, limit: int = MAX_TEXT) -> str:
    """A name or path from the model, safe to put in a one-line message."""
    if len(text) <= limit and text.isprintable():
        return text  # the usual case, without a Python loop over the characters
    clean = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def one_line(text: str) -> str:
    """``text`` on one line: whitespace (newlines included) as a space, anything else unprintable as '?'.

    A message quotes values a sender chose, so it must never carry a line break or a control character.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in text)


MAX_MESSAGE = 400  # characters of a one-line message that quotes a runtime's or a sender's text


def clip_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """Any text (a runtime's multi-line error, a sender's value) as one short line: runs of whitespace become one
    space, anything else unprintable '?', and past `limit` characters it ends in '...'. The one clip every
    message uses."""
    line = one_line(" ".join(str(text).split()))
    return line if len(line) <= limit else line[: limit - 3] + "..."


class EdgeError(Exception):
    """A failure with a machine-readable ``code`` and a one-line human ``message``."""

    def __init__(self, code: str, message: str) -> None:
        message = one_line(message)
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
