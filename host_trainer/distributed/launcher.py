"""`host-trainer evolve --nproc-per-node N`: the same command under `torchrun --standalone --nproc-per-node N`
(torch.distributed.run, in this process), so that a failed run ends with one `error:` line: rank 0's own, or,
when rank 0 could not say (it was killed, or stopped by torchrun first), one naming the rank that failed first.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from host_trainer.distributed.world import LAUNCHER_ENV


def launch(nproc: int, args: list[str]) -> int:
    """`--nproc-per-node N`: this same command under `torchrun --standalone --nproc-per-node N`, in this process
    (torch.distributed.run), so that a failed rank ends as one `error:` line (rank 0's own, or this one naming the
    rank that failed first) instead of torchrun's report. Returns the exit code."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    folder = tempfile.mkdtemp(prefix="host-trainer-launch-")
    marker = Path(folder) / "reported"
    os.environ[LAUNCHER_ENV] = str(marker)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    try:
        run(parse_args(["--standalone", "--nproc-per-node", str(nproc), "--module", "host_trainer", *args]))
    except ChildFailedError as exc:
        zero = exc.failures.get(0)
        if marker.exists():  # rank 0 said what went wrong
            return zero.exitcode if zero is not None and zero.exitcode > 0 else 3
        rank, failure = exc.get_first_failure()
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else \
            f"exited with code {failure.exitcode}"
        sys.stderr.write(f"error: rank {rank} {how}; every rank stopped (continue with --resume RUN_DIR)\n")
        return 3
    except SignalException as exc:
        sys.stderr.write(f"interrupted ({exc.sigval.name}): continue with --resume RUN_DIR\n")
        return 130
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0
