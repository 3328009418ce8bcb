"""The replay ledger: every signed job a board accepted, until it expires.

A signed job is identified by its key id and sequence number. The board records that pair
durably (one empty file, created with O_EXCL and fsync'ed) before it spools the job, so a copy
replayed later, even after the daemon restarted and after its stored result was pruned, is
refused instead of run a second time. A job past its expiry is refused anyway, so an entry can
be forgotten once its job has expired: the ledger stays as small as the jobs of the last
``max_job_age_s``. The entry's file name carries the expiry, so pruning needs no reads.
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

    def _prefix(self, key_id: str, seq: int) -> str:
        return f"{key_id}.{seq}."

    def seen(self, key_id: str, seq: int) -> bool:
        prefix = self._prefix(key_id, seq)
        return any(name.startswith(prefix) for name in self._names(prefix))

    def _names(self, prefix: str) -> list:
        # Listing is cheap next to a job's run; entries are few thousand at most (one per job a week).
        return [n for n in os.listdir(self.directory) if n.startswith(prefix)]

    def record(self, key_id: str, seq: int, expires_at: float) -> bool:
        """Note the job; False when it was already there (a replay). Durable before it returns."""
        if self.seen(key_id, seq):
            return False
        path = os.path.join(self.directory, f"{self._prefix(key_id, seq)}{int(expires_at + self.slack_s) + 1}")
        try:
            handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return False
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
        fsync_directory(self.directory)
        self.prune()
        return True

    def forget(self, key_id: str, seq: int) -> None:
        """Undo ``record`` when the job could not be stored after all (it may be sent again)."""
        for name in self._names(self._prefix(key_id, seq)):
            os.remove(os.path.join(self.directory, name))

    def prune(self, now: Optional[float] = None, force: bool = False) -> int:
        """Drop entries whose jobs have expired; at most every PRUNE_EVERY_S unless forced."""
        now = time.time() if now is None else now
        if not force and now - self._pruned_at < PRUNE_EVERY_S:
            return 0
        self._pruned_at = now
        dropped = 0
        for name in os.listdir(self.directory):
            try:
                keep_until = int(name.rsplit(".", 1)[1])
            except (IndexError, ValueError):
                continue  # not ours: leave it
            if keep_until < now:
                os.remove(os.path.join(self.directory, name))
                dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(os.listdir(self.directory))

