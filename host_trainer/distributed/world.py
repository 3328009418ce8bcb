"""This process's place in the run: the world (rank, size, local rank), joining and leaving torchrun's process
group, and the signals that end a rank (docs/distributed.md).

`host-trainer evolve` under `torchrun` finds RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in its environment and joins one process group: gloo on CPU, and `cpu:gloo,cuda:nccl` when CUDA and
NCCL are there. One process (no torchrun, or WORLD_SIZE=1) is `SINGLE`, and every helper of this package is then
a no-op, so a run on one process computes exactly what it would without torch.distributed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from host_trainer.distributed.channel import Channel
from host_trainer.distributed.errors import DistributedError, Terminated

# Set by `--nproc-per-node N` to a file rank 0 creates once it has printed its one error line; without it the
# launcher prints one naming the rank that failed first.
LAUNCHER_ENV = "HOST_TRAINER_LAUNCHER"
REPORTED = (2, 3, 130)  # rank 0's exit codes after it printed its own one line (error:, or interrupted)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


SINGLE = World()
_world = SINGLE
_channel: Channel | None = None


def launched() -> bool:
    """Started by torchrun (or anything that sets its environment) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def world() -> World:
    return _world


def channel() -> Channel | None:
    """Rank 0's order channel (distributed/orders.py); None on one process."""
    return _channel


def backend() -> str:
    """gloo for CPU tensors; with CUDA and NCCL, NCCL for CUDA tensors too (NCCL not run here: no GPU)."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init(timeout_s: float) -> World:
    """Join torchrun's process group (a no-op without torchrun). Each rank gets OMP_NUM_THREADS threads, or
    cores // local ranks."""
    global _world, _channel
    if not launched() or _world.active:
        return _world
    env = os.environ
    found = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")),
                  int(env.get("LOCAL_WORLD_SIZE", "1")))
    try:
        dist.init_process_group(backend(), timeout=timedelta(seconds=timeout_s))
    except Exception as exc:  # a rendezvous that never completes, a port in use
        raise DistributedError(f"cannot join the process group: {first_line(exc)}") from None
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun sets 1 with several local ranks, --nproc-per-node cores // N
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, found.local_size)))
    _watch_parent()
    _world = found
    _channel = Channel(found.leader, timeout_s)
    return _world


@contextlib.contextmanager
def guarded(what: str) -> Iterator[None]:
    """A failed collective or store call (a rank died, a timeout) as one DistributedError naming `what`."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as exc:  # gloo's errors, DistBackendError, DistStoreError, DDP's reducer
        if not _world.active:
            raise
        raise DistributedError(f"{what} on {_world.size} ranks failed: {first_line(exc)} (a rank died or stopped "
                               f"answering)") from None


def teardown() -> None:
    global _world, _channel
    if _channel is not None:
        _channel.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    _world, _channel = SINGLE, None


def reported() -> None:
    """Rank 0 has printed its one error line: the `--nproc-per-node` launcher (distributed/launcher.py) adds
    none."""
    marker = os.environ.get(LAUNCHER_ENV)
    if marker and _world.leader:
        with contextlib.suppress(OSError):
            Path(marker).touch()


def _watch_parent() -> None:
    """torchrun starts each rank in a session of its own: if torchrun is killed (SIGKILL of its group), no rank
    must go on writing. A rank whose parent is gone stops itself (SIGTERM, then SIGKILL 10 s later)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def on_sigterm() -> None:
    """SIGTERM raises Terminated in the main thread (on rank 0, or the one process), so `finally` blocks run."""
    def raise_terminated(_signum: int, _frame: Any) -> None:
        raise Terminated()
    signal.signal(signal.SIGTERM, raise_terminated)


def first_line(exc: BaseException) -> str:
    """The gist of a torch.distributed error: gloo's `[file.cc:537] Read error ...: Connection reset by peer.
    This is typically ...` -> `Read error ...: Connection reset by peer`."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0] if lines else "")
    return text.split(". ")[0].rstrip(".") or type(exc).__name__
