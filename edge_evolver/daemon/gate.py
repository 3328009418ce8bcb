"""The board's door: who may have a job run, and the board's signature on what it answers.

Jobs are opened with the host keys in the trust file (re-read when the file changes, so a key
is enrolled or revoked without a restart), accepted signed jobs go into the replay ledger, and
every result leaves signed with the board's own key, made on first start when there is none.
"""

import os
from typing import Any, Dict, Optional, Tuple

import structlog

from ..errors import EdgeError, ErrorCode
from ..protocol import FrameError, split_frame, valid_job_id
from ..trust.jobs import JobAuth, VerifyPolicy, is_signed, open_job, split_signed, unwrap
from ..trust.keys import TrustedKeys, ensure_signing_key, read_trusted
from ..trust.replay import ReplayLedger
from ..trust.results import sign_result
from .config import ServeConfig

log = structlog.get_logger("edge_evolver.gate")
BOARD_KEY = "board.key"


class Gate:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        key_path = os.path.join(config.resolved_keys_dir(), BOARD_KEY)
        try:
            self.key, created = ensure_signing_key(key_path)
        except OSError as exc:
            raise EdgeError(ErrorCode.BAD_INPUT, f"cannot make the board key '{key_path}': "
                            f"{exc.strerror or exc}") from None
        if created:
            log.warning("board_key_created", path=key_path, public_key=self.key.public.text,
                        note="enrol it on the host: host-trainer keys enroll <device-id> <public key>")
        self.trusted_path = config.resolved_trusted_keys()
        self._trusted: TrustedKeys = read_trusted(self.trusted_path)
        self._stamp = self._file_stamp()
        self.ledger = ReplayLedger(os.path.join(config.resolved_state_dir(), "replay"), config.clock_skew_s)
        self.ledger.prune(force=True)
        if not config.allow_unsigned and not len(self._trusted):
            log.warning("no_trusted_host_keys", trust_file=self.trusted_path,
                        note="every job will be refused until a host key is trusted: edge-evolver keys trust")

    def _file_stamp(self) -> Optional[Tuple[float, int]]:
        try:
            stat = os.stat(self.trusted_path)
        except OSError:
            return None
        return stat.st_mtime, stat.st_size

    def trusted(self) -> TrustedKeys:
        """The trust file's keys, re-read when it changed; a file made unreadable keeps the last good list."""
        stamp = self._file_stamp()
        if stamp != self._stamp:
            try:
                self._trusted = read_trusted(self.trusted_path)
                log.info("trusted_keys_reloaded", keys=len(self._trusted))
            except EdgeError as exc:
                log.error("trusted_keys_unreadable", error=exc.message, kept=len(self._trusted))
            self._stamp = stamp
        return self._trusted

    def policy(self) -> VerifyPolicy:
        c = self.config
        return VerifyPolicy(self.trusted(), c.device_id, c.group, c.allow_unsigned, c.max_job_age_s, c.clock_skew_s)

    def open(self, payload: bytes) -> Tuple[bytes, Optional[JobAuth]]:
        """The verified inner frame; FrameError (with a code) for anything this board must not run."""
        if len(payload) > self.config.max_payload_bytes:  # before any work on it
            raise FrameError(ErrorCode.OVERSIZE, f"job is {len(payload)} bytes, above the limit of "
                             f"{self.config.max_payload_bytes}")
        return open_job(payload, self.policy())

    def remember(self, auth: Optional[JobAuth]) -> bool:
        """Note an accepted signed job in the ledger; False when it was accepted before (a replay)."""
        return auth is None or self.ledger.record(auth.key_id, auth.seq, auth.expires_at)

    def forget(self, auth: Optional[JobAuth]) -> None:
        if auth is not None:
            self.ledger.forget(auth.key_id, auth.seq)

    def sign(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return sign_result(body, self.key)

    def facts(self) -> Dict[str, Any]:
        """For the retained status: the key results are signed with, and what this board accepts."""
        return {"key_id": self.key.key_id, "public_key": self.key.public.text,
                "signed_jobs": "optional" if self.config.allow_unsigned else "required",
                "trusted_host_keys": len(self.trusted())}


def job_id_hint(payload: bytes) -> Optional[str]:
    """The job id of a refused job, for the refusal only (the decision never depends on it), read
    from the inner header when that is plain JSON; None when it cannot be had cheaply."""
    try:
        header, _ = split_frame(unwrap(payload), len(payload))
    except (FrameError, ValueError, TypeError):
        return None
    job_id = header.get("job_id")
    return job_id if valid_job_id(job_id) else None


def peek_auth(payload: bytes) -> Optional[Dict[str, Any]]:
    """{"key_id", "seq"} of a spooled signed job (verified when it arrived), else None."""
    if not is_signed(payload):
        return None
    try:
        block, frame = split_signed(payload)
        header, _ = split_frame(frame, len(frame))
        return {"key_id": block["key_id"], "seq": header["auth"]["seq"]}
    except (FrameError, KeyError, TypeError):
        return None
