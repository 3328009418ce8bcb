"""The replay ledger: every signed job a board accepted, until it expires.

A signed job is identified by its key id and sequence number. The board records that pair
durably (one empty file, created with O_EXCL and fsync'ed) before it spools the job, so a copy
replayed later, even after the daemon restarted and after its stored result was pruned, is
refused instead of run a second time. A job past its expiry is refused anyway, so an entry can
be forgotten once its job has expired: the ledger stays as small as the jobs of the last
``max_job_age_s``. An entry is the file ``<key_id>.<seq>``, whose modification time is set to the time
it may be forgotten: a lookup is one ``stat``, pruning reads no file.
"""

import os
import time
from typing import Optional

from ..files import fsync_directory

PRUNE_EVERY_S = 600.0


class ReplayLedger:
    def __init__(self, directory: str, slack_s: float = 300.0) -> None:
        self.directory = directory
        self.slack_s = slack_s  # kept past expiry by the clock skew the board tolerates
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._pruned_at = 0.0

    def _path(self, key_id: str, seq: int) -> str:
        # key ids are hex and seq an int (checked when the job was opened): no path can be formed
        return os.path.join(self.directory, f"{key_id}.{int(seq)}")

    def seen(self, key_id: str, seq: int) -> bool:
        return os.path.exists(self._path(key_id, seq))

    def record(self, key_id: str, seq: int, expires_at: float) -> bool:
        """Note the job; False when it was already there (a replay). Durable before it returns."""
        path = self._path(key_id, seq)
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        try:
            keep_until = expires_at + self.slack_s
            os.utime(handle if os.utime in os.supports_fd else path, (keep_until, keep_until))
            os.fsync(handle)
        finally:
            os.close(handle)
        fsync_directory(self.directory)
        self.prune()
        return True

    def forget(self, key_id: str, seq: int) -> None:
        """Undo ``record`` when the job could not be stored after all (it may be sent again)."""
        if self.seen(key_id, seq):
            os.remove(self._path(key_id, seq))

    def prune(self, now: Optional[float] = None, force: bool = False) -> int:
        """Drop entries whose jobs have expired; at most every PRUNE_EVERY_S unless forced."""
        now = time.time() if now is None else now
        if not force and now - self._pruned_at < PRUNE_EVERY_S:
            return 0
        self._pruned_at = now
        dropped = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                try:
                    if entry.is_file() and entry.stat().st_mtime < now:
                        os.remove(entry.path)
                        dropped += 1
                except OSError:  # removed meanwhile
                    continue
        return dropped

    def __len__(self) -> int:
        return len(os.listdir(self.directory))
