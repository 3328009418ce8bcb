"""The two ways a rank stops that are not a plain error."""

from __future__ import annotations

from host_trainer.errors import UserError


class DistributedError(UserError):
    """Ranks that cannot go on together: a rank died or stopped answering, or their networks differ."""


class Terminated(BaseException):
    """SIGTERM (torchrun stops every rank when one fails): unwinds like Ctrl-C, so the run's helpers stop."""
