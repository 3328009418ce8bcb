"""Training on several processes with torch.distributed, started by torchrun (docs/distributed.md).

- world.py     this process's rank and world, joining and leaving the group, SIGTERM and a vanished torchrun
- channel.py   rank 0's orders through torchrun's key-value store, with a heartbeat
- orders.py    the orders, typed (Setup, Train, Stop), rank 0's side and the followers' side together
- tensors.py   a network broadcast whole, the collectives training needs, batch shards, checksums
- supervise.py one rank's life in `host-trainer evolve`: lead or follow, and its exit code
- launcher.py  `--nproc-per-node N`: this same command under torchrun, ending in one `error:` line
- errors.py    DistributedError, Terminated

On one process every helper is a no-op, so a run computes exactly what it would without torch.distributed. The
names below are the package's surface: the loop imports `host_trainer.distributed` and nothing deeper.
"""

from host_trainer.distributed.errors import DistributedError, Terminated
from host_trainer.distributed.orders import (
    Setup,
    Stop,
    Train,
    finish,
    lead_training,
    receive,
    receive_networks,
    send,
)
from host_trainer.distributed.supervise import run_rank
from host_trainer.distributed.tensors import (
    agree,
    check_identical,
    compare,
    digest,
    load_network,
    mean,
    network,
    shard,
    share,
    sync_buffers,
    tensor_spec,
    wrap,
)
from host_trainer.distributed.world import (
    LAUNCHER_ENV,
    REPORTED,
    SINGLE,
    World,
    backend,
    guarded,
    init,
    launched,
    on_sigterm,
    reported,
    teardown,
    world,
)

__all__ = ["LAUNCHER_ENV", "REPORTED", "SINGLE", "DistributedError", "Setup", "Stop", "Terminated", "Train", "World",
           "agree", "backend", "check_identical", "compare", "digest", "finish", "guarded", "init", "launched",
           "lead_training", "load_network", "mean", "network", "on_sigterm", "receive", "receive_networks",
           "reported", "run_rank", "send", "share", "shard", "sync_buffers", "teardown", "tensor_spec", "world",
           "wrap"]
