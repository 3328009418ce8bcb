"""The board's door: who may have a job run, and the board's signature on what it answers.

Jobs are opened with the host keys in the trust file (read and hashed at every job, so a key is
enrolled or revoked without a restart, and SIGHUP re-reads it at once), accepted signed jobs go
into the replay ledger, and every result leaves signed with the board's own key, made on first
start when there is none.
"""

import hashlib
import os
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import structlog

from ..errors import EdgeError, ErrorCode, clip_line
from ..protocol import FrameError, split_frame, valid_job_id
from ..trust.jobs import JobAuth, VerifyPolicy, is_signed, open_job, unwrap
from ..trust.keys import PUBLIC_PREFIX, TrustedKeys, TrustFileError, ensure_signing_key, parse_trusted
from ..trust.replay import ReplayLedger
from ..trust.results import sign_result
from .config import ServeConfig

log = structlog.get_logger("edge_evolver.gate")
BOARD_KEY = "board.key"
# 1200 key lines of 52 bytes. Kept small: read(n) allocates n bytes up front, at every job.
TRUST_FILE_MAX_BYTES = 64 * 1024
TRUST_OK, TRUST_MISSING = "ok", "missing"  # any other state is "malformed: ..." or "unreadable: ..."


def _read_bytes(path: str) -> Tuple[Optional[bytes], str]:
    """(the file's bytes, "") or (None, the state that says why there are none)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(TRUST_FILE_MAX_BYTES + 1)
    except FileNotFoundError:
        return None, TRUST_MISSING
    except OSError as exc:
        return None, "unreadable: " + clip_line(exc.strerror or exc)
    if len(data) > TRUST_FILE_MAX_BYTES:
        return None, f"malformed: larger than {TRUST_FILE_MAX_BYTES} bytes"
    return data, ""


def _parse(data: bytes) -> Tuple[TrustedKeys, str, str]:
    """(keys, state, detail for the local log only). The state goes into the status and into refusals,
    so it never quotes the file: a line pasted there by mistake may be a secret."""
    try:
        return parse_trusted(data.decode("utf-8")), TRUST_OK, ""
    except UnicodeDecodeError as exc:
        return TrustedKeys(), f"malformed: not UTF-8 text (byte {exc.start})", ""
    except TrustFileError as exc:
        return TrustedKeys(), f"malformed: line {exc.line} is not an {PUBLIC_PREFIX}<base64> public key", exc.detail


class TrustFile:
    """The trust file as it is now: its keys and its state ("ok", "missing", "malformed: why", "unreadable: why").

    It is read and its SHA-256 compared at every check: (mtime, size) alone misses a key swapped for another
    of the same length with the mtime kept (`cp -p`, `rsync -a` keep it), and a re-hash every few seconds
    would leave a revoked key those seconds. Reading and hashing a few hundred bytes costs about 20 us, once
    per job. A file that cannot be used trusts no key at all until it is fixed: keeping the last good keys
    would keep a key that the broken edit meant to revoke.
    """

    def __init__(self, path: str, on_change: Callable[[], None]) -> None:
        self.path = path
        self.current: Tuple[TrustedKeys, str] = (TrustedKeys(), TRUST_MISSING)  # one reference: read without the lock
        self.changes = 0  # how many times the keys or the state changed since the start
        self._on_change = on_change
        self._seen: Optional[Tuple[str, str]] = None  # (state before parsing, SHA-256 of the bytes)
        self._lock = threading.Lock()  # the network thread, the reload thread and the status all check

    def check(self) -> Tuple[TrustedKeys, str]:
        """(keys, state) as the file is now; a change is logged once and reported to on_change."""
        with self._lock:
            changed = self._refresh()
            current = self.current
        if changed:
            try:
                self._on_change()
            except Exception:  # a failed status update must not turn a job into an INTERNAL refusal
                log.exception("trust_change_callback_failed")
        return current

    def _refresh(self) -> bool:
        data, state = _read_bytes(self.path)
        seen = (state, hashlib.sha256(data).hexdigest() if data is not None else "")
        if seen == self._seen:
            return False
        keys, state, detail = _parse(data) if data is not None else (TrustedKeys(), state, "")
        self._seen, self.current = seen, (keys, state)
        self.changes += 1
        self._log(keys, state, detail)
        return True

    def _log(self, keys: TrustedKeys, state: str, detail: str) -> None:
        if state == TRUST_OK:
            log.info("trusted_keys_loaded", trust_file=self.path, keys=len(keys))
        elif state == TRUST_MISSING:
            log.warning("trust_file_missing", trust_file=self.path,
                        note="no host key is trusted: edge-evolver keys trust <host public key>")
        else:
            log.error("trust_file_invalid", trust_file=self.path, state=state, error=detail or None,
                      note="every signed job is refused until the file is fixed")


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
        # Called, from the thread that saw it, after the trust file's keys or state changed: the daemon
        # republishes its retained status with trust_state().
        self.on_trust_change: Optional[Callable[[Dict[str, Any]], None]] = None
        self.trust = TrustFile(self.trusted_path, self._trust_changed)
        keys, state = self.trust.check()
        if state not in (TRUST_OK, TRUST_MISSING):  # at start, a broken file is a setting to fix, in one line
            raise EdgeError(ErrorCode.BAD_INPUT, f"the trust file {self.trusted_path} is {state}")
        self.ledger = ReplayLedger(os.path.join(config.resolved_state_dir(), "replay"), config.clock_skew_s)
        self.ledger.prune(force=True)
        if not config.allow_unsigned and state == TRUST_OK and not len(keys):
            log.warning("no_trusted_host_keys", trust_file=self.trusted_path,
                        note="every job will be refused until a host key is trusted: edge-evolver keys trust")

    def _trust_changed(self) -> None:
        if self.on_trust_change is not None:
            self.on_trust_change(self.trust_state())

    def trusted(self) -> TrustedKeys:
        """The trust file's keys as it is now; none while it is missing, malformed or unreadable."""
        return self.trust.check()[0]

    def reload(self) -> Dict[str, Any]:
        """Re-read the trust file now and log what it holds, for whoever sent SIGHUP (on a helper thread; every
        job re-reads it too); its state, as trust_state()."""
        before = self.trust.changes
        self.trust.check()
        state = self.trust_state()
        log.info("trust_file_reloaded", trust_file=self.trusted_path, state=state["trust_file"],
                 keys=state["trusted_host_keys"], changed=self.trust.changes != before)
        return state

    def trust_state(self) -> Dict[str, Any]:
        """For the retained status: the trust file's state, and how many host keys it gives (0 unless ok)."""
        keys, state = self.trust.current
        return {"trust_file": state, "trusted_host_keys": len(keys)}

    def policy(self, keys: Optional[TrustedKeys] = None) -> VerifyPolicy:
        c = self.config
        return VerifyPolicy(self.trusted() if keys is None else keys, c.device_id, c.group, c.allow_unsigned,
                            c.max_job_age_s, c.clock_skew_s)

    def open(self, payload: bytes) -> Tuple[bytes, Optional[JobAuth]]:
        """The verified inner frame; FrameError (with a code) for anything this board must not run."""
        if len(payload) > self.config.max_payload_bytes:  # before any work on it
            raise FrameError(ErrorCode.OVERSIZE, f"job is {len(payload)} bytes, above the limit of "
                             f"{self.config.max_payload_bytes}")
        keys, state = self.trust.check()
        if state not in (TRUST_OK, TRUST_MISSING) and is_signed(payload):
            raise FrameError(ErrorCode.UNKNOWN_KEY, f"the trust file {self.trusted_path} is {state}; every signed "
                             "job is refused until it is fixed (docs/security.md)")
        return open_job(payload, self.policy(keys))

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
        self.trust.check()
        return dict({"key_id": self.key.key_id, "public_key": self.key.public.text,
                     "signed_jobs": "optional" if self.config.allow_unsigned else "required"}, **self.trust_state())


def job_id_hint(payload: bytes) -> Optional[str]:
    """The job id of a refused job, for the refusal only (the decision never depends on it), read
    from the inner header when that is plain JSON; None when it cannot be had cheaply."""
    try:
        header, _ = split_frame(unwrap(payload), len(payload))
    except (FrameError, ValueError, TypeError):
        return None
    job_id = header.get("job_id")
    return job_id if valid_job_id(job_id) else None

