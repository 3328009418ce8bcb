"""Which answers from the wire the host may believe: every one is bound to a job the host itself sent.

An answer on a results topic is hostile until proven otherwise. A signature only says which board wrote it;
binding says it answers *this* job, sent *there*, carrying *that* payload (docs/security.md, "What the
host believes"). The host keeps an answer only when all of these hold:

- it is signed by a key enrolled for the board it names (``HostTrust.check``, before this module), and was
  published on that board's own topic;
- that board is the one the job was sent to, or, for a group job, one of the group's boards;
- a refusal names the SHA-256 of the exact payload the host sent (found by that digest, never by the job
  id a refusal quotes: the board may have read that id from an unsigned header);
- a result names the job's model and, for a signed job, echoes the key id and sequence number the host
  signed (``job_auth``). A board repeating a stored answer (``repeated``) for a resumed run carries the
  sequence number of the first send; the model digest and the host's key id bind it then.

What a bound answer does is ``Verdict``: a result, a final refusal, a stop, a resend, or (for a frame the
board could not open) a bounce that ends the wait but is never stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

ANY = "any"
# A refusal after the board verified the job that can never succeed by sending it again: the host's keys,
# clock or addressing are wrong, and the board proved it is answering our very job. The run stops.
STOP_CODES = ("EXPIRED", "WRONG_TARGET")
# Answers that say nothing about the model: the job is sent again under a new id.
TRANSIENT_CODES = ("TIMEOUT", "INTERNAL", "QUEUE_FULL", "BACKEND_UNAVAILABLE", "REPLAYED")


@dataclass(frozen=True)
class SentJob:
    """What the host published under one job id: the facts every answer must match."""

    job_id: str
    device: str  # the board it was addressed to, or ANY (a group job)
    payload_sha256: str  # of the exact bytes published
    model_sha256: str
    key_id: str | None = None  # the host key that signed it; None for an unsigned (--insecure) job
    seq: int | None = None  # the signed sequence number


class Verdict(Enum):
    RESULT = "result"  # the job's answer: measured, or a final error about the model
    STOP = "stop"  # the addressed board proved the job can never run: the run stops
    BOUNCE = "bounce"  # our payload, but the board could not open it: the wait ends, nothing is stored


def is_refusal(answer: dict) -> bool:
    """A refusal of a job the board never took (its ``_reject``), as opposed to a finished job's answer."""
    return answer.get("refusal") is True


def unbound(answer: dict, topic_device: str, sent: SentJob | None, in_group: Callable[[str], bool]) -> str | None:
    """None when ``answer`` answers ``sent``; else why not (for the log). Signature checked before."""
    if sent is None:
        return "answers no job this host sent"
    device = answer.get("device_id")
    if device != topic_device:
        return f"published on {topic_device!r}'s topic but names {device!r}"
    if sent.device == ANY:
        if not in_group(str(device)):
            return f"group job answered by {device!r}, not a board of the group"
    elif device != sent.device:
        return f"job was sent to {sent.device!r}, answered by {device!r}"
    if is_refusal(answer):
        return None if answer.get("payload_sha256") == sent.payload_sha256 else "refuses a payload this host never sent"
    return _result_unbound(answer, sent)


def _result_unbound(answer: dict, sent: SentJob) -> str | None:
    if answer.get("job_id") != sent.job_id:
        return "names another job id"
    if answer.get("model_sha256") != sent.model_sha256:
        return "measured another model"
    repeated = answer.get("repeated") is True
    if sent.key_id is None:  # unsigned job: the payload digest is all there is
        ok = repeated or answer.get("payload_sha256") == sent.payload_sha256
        return None if ok else "names another payload"
    auth = answer.get("job_auth")
    if not isinstance(auth, dict) or auth.get("key_id") != sent.key_id:
        return "does not echo this host's signed job"
    if not repeated and (auth.get("seq") != sent.seq or isinstance(auth.get("seq"), bool)):
        return "echoes another signed sequence number"
    return None


def verdict(answer: dict) -> tuple[Verdict, str]:
    """What a bound answer does, and a one-line reason."""
    code = answer.get("code")
    if not is_refusal(answer):
        return Verdict.RESULT, "answer"
    if answer.get("unopened") is True:
        return Verdict.BOUNCE, f"the board could not open the job: {code}"
    if code in STOP_CODES:
        return Verdict.STOP, f"the board refused the job: {code}"
    return Verdict.RESULT, f"refused: {code}"  # a final answer (a model it cannot take) or a transient one
