"""One rank's whole life in `host-trainer evolve`: join the group, lead (rank 0) or follow (every other rank),
and leave it, with the exit code the command ends with. The CLI parses options and calls `run_rank`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from host_trainer import events
from host_trainer.distributed.orders import finish
from host_trainer.distributed.world import LAUNCHER_ENV, REPORTED, World, init, on_sigterm, reported, teardown


def run_rank(timeout_s: float, lead: Callable[[], int], follow: Callable[[], bool]) -> int:
    """Rank 0 (or the one process) runs `lead`, which reports its own errors and returns the exit code; every
    other rank runs `follow` (True: rank 0 said stop; False: it said the run failed). Raises DistributedError
    when the group cannot be joined."""
    me = init(timeout_s)  # one process without torchrun
    if not me.leader:
        return _follower(me, follow)
    on_sigterm()  # SIGTERM unwinds like Ctrl-C: the embedded broker and daemon are stopped too
    code = 1
    try:
        code = lead()
    finally:
        if code in REPORTED:  # its one line is printed: the launcher adds none
            reported()
        finish(code == 0)
    return code


def _follower(me: World, follow: Callable[[], bool]) -> int:
    """A rank other than 0: silent; it trains what rank 0 orders until rank 0 says stop (0) or fails (1)."""
    events.configure("warning", None, "critical")  # nothing shown, nothing written: rank 0 keeps the log
    try:
        return 0 if follow() else 1
    except BaseException as exc:  # rank 0 reports the run's failure; torchrun's report names this rank
        if not os.environ.get(LAUNCHER_ENV):
            sys.stderr.write(f"rank {me.rank}: stopped: {type(exc).__name__}: {str(exc).strip()[:200]}\n")
        return 1
    finally:
        events.close()
        teardown()
