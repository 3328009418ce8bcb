"""Training on several processes with torch.distributed, started by torchrun (docs/distributed.md).

`host-trainer evolve` under `torchrun` finds RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and
MASTER_PORT in its environment and joins one process group: gloo on CPU, and `cpu:gloo,cuda:nccl` when CUDA and
NCCL are there. Training on CUDA (`--train-device`, host_trainer/torch_device.py), each local rank takes
cuda:LOCAL_RANK and NCCL carries what lives there (DDP's gradients, BatchNorm buffers, the loss); gloo carries the
CPU tensors (a network sent with an order, `agree`, checksums) on either device. Rank 0 leads: it
synthesises, exports, measures and writes the run directory; every other rank follows its orders and only
trains. An order ({"op": "setup" | "train" | "stop" | "abort", ...}, JSON) travels through torchrun's own
key-value store, not a collective: a follower waits as long as rank 0 measures (which may take longer than the
collective timeout) and gives up only when rank 0's heartbeat stops for `timeout_s`. Tensors (the offspring's
weights and masks) travel by `broadcast`; every collective fails after `timeout_s` instead of hanging.

One process (no torchrun, or WORLD_SIZE=1) is `SINGLE`: every function here is then a no-op, so a run computes
exactly what it computed before distributed training existed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from host_trainer.errors import UserError
from host_trainer.torch_device import device_of

# Set by `--nproc-per-node N` to a file rank 0 creates once it has printed its one error line; without it the
# launcher prints one naming the rank that failed first.
LAUNCHER_ENV = "HOST_TRAINER_LAUNCHER"
REPORTED = (2, 3, 130)  # rank 0's exit codes after it printed its own one line (error:, or interrupted)
BEAT_S = 1.0  # rank 0's heartbeat period
POLL_S = 2.0  # how long a follower waits on the store between heartbeat checks


class DistributedError(UserError):
    """Ranks that cannot go on together: a rank died or stopped answering, or their networks differ."""


class Terminated(BaseException):
    """SIGTERM (torchrun stops every rank when one fails): unwinds like Ctrl-C, so the run's helpers stop."""


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
        raise DistributedError(f"cannot join the process group: {_first_line(exc)}") from None
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun sets 1 with several local ranks, --nproc-per-node cores // N
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, found.local_size)))
    _watch_parent()
    _world = found
    _channel = Channel(found, timeout_s)
    return _world


def finish(ok: bool) -> None:
    """Rank 0 at the end: tell the other ranks to stop (or that the run failed), then leave the group."""
    with contextlib.suppress(Exception):  # the store is gone with a failed rank: they are stopping anyway
        order({"op": "stop" if ok else "abort"})
    teardown()


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
        raise DistributedError(f"{what} on {_world.size} ranks failed: {_first_line(exc)} (a rank died or stopped "
                               f"answering)") from None


def teardown() -> None:
    global _world, _channel
    if _channel is not None:
        _channel.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    _world, _channel = SINGLE, None


def reported() -> None:
    """Rank 0 has printed its one error line: the `--nproc-per-node` launcher (loop/launcher.py) adds none."""
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


# ---- rank 0's orders ------------------------------------------------------------------------------------------
class Channel:
    """Orders from rank 0 through torchrun's store (MASTER_ADDR:MASTER_PORT), in sequence, with a heartbeat."""

    def __init__(self, me: World, timeout_s: float):
        self.me, self.timeout_s, self.seq, self.done = me, timeout_s, 0, False
        run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
        self.prefix = f"host_trainer/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.store = self._connect()
        self._stop = threading.Event()
        if me.leader:
            threading.Thread(target=self._beat, name="rank0-heartbeat", daemon=True).start()

    def _connect(self) -> dist.TCPStore:
        return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                             timeout=timedelta(seconds=self.timeout_s), wait_for_workers=False)

    def _beat(self) -> None:
        store = self._connect()  # its own connection: the main thread's may be waiting
        while not self._stop.wait(BEAT_S):
            try:
                store.add(self.prefix + "beat", 1)
            except Exception:  # the store went away: the run is ending
                return

    def send(self, order: dict) -> None:
        self.store.set(f"{self.prefix}order/{self.seq}", json.dumps(order))
        self.seq += 1
        self.done = order["op"] in ("stop", "abort")

    def receive(self) -> dict:
        key, beat, since = f"{self.prefix}order/{self.seq}", -1, time.monotonic()
        while True:
            try:
                self.store.wait([key], timedelta(seconds=POLL_S))
                break
            except RuntimeError:  # not there yet (DistStoreError is a RuntimeError): is rank 0 still beating?
                now = int(self.store.add(self.prefix + "beat", 0))
                if now != beat:
                    beat, since = now, time.monotonic()
                elif time.monotonic() - since > self.timeout_s:
                    raise DistributedError(f"rank 0 has not been heard from for {self.timeout_s:g} s") from None
        self.seq += 1
        return json.loads(self.store.get(key))

    def close(self) -> None:
        self._stop.set()


def order(message: dict) -> None:
    """Rank 0: tell every other rank what to do next (nothing without torchrun)."""
    if _channel is not None and _world.leader and not _channel.done:
        _channel.send(message)


@contextlib.contextmanager
def lead_training(kind: str, model: nn.Module, masks: dict[str, torch.Tensor], train: dict, generation: int,
                  architecture: Callable[[nn.Module], dict], teacher: nn.Module | None = None) -> Iterator[None]:
    """Rank 0 around one training: order every other rank to train this network (`kind`: fixed or plateau;
    `train`: the TrainConfig's fields) and send it whole (architecture, weights, masks; the teacher's too);
    afterwards, check that every rank holds the same network. Nothing on one process."""
    if not _world.active:
        yield
        return
    with guarded(f"training generation {generation}"):
        tensors = network(model, masks)
        spec, teacher_spec = tensor_spec(tensors), []
        message: dict[str, Any] = {"op": "train", "kind": kind, "generation": generation, "spec": spec,
                                   "train": train, "architecture": architecture(model)}
        if teacher is not None:
            teacher_spec = tensor_spec(teacher.state_dict())
            message.update(teacher=architecture(teacher), teacher_spec=teacher_spec)
        order(message)
        share(spec, tensors)
        if teacher is not None:
            share(teacher_spec, teacher.state_dict())
        yield
        check_identical(model, masks, f"generation {generation}")


def next_order() -> dict:
    """A follower: wait for rank 0's next order."""
    if _channel is None:
        raise RuntimeError("next_order() outside a process group")
    return _channel.receive()


def network(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A network as named tensors: its state dict and its masks (`mask:<layer>`, as in a checkpoint)."""
    return {**model.state_dict(), **{f"mask:{k}": v for k, v in masks.items()}}


def load_network(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`network`'s inverse: load the state into `model`, return the masks."""
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("mask:")}, strict=True)
    return {k[len("mask:"):]: v for k, v in tensors.items() if k.startswith("mask:")}


# ---- tensors ------------------------------------------------------------------------------------------------
def tensor_spec(tensors: dict[str, torch.Tensor]) -> list[list[Any]]:
    """Names, shapes and dtypes (JSON), so that a follower can allocate what `share` fills."""
    return [[name, list(t.shape), str(t.dtype).replace("torch.", "")] for name, t in tensors.items()]


def share(spec: list[list[Any]], tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Broadcast rank 0's `tensors` (in `spec`'s order); every rank returns its copy. Bools travel as uint8."""
    out = {}
    for name, shape, dtype in spec:
        kind = getattr(torch, dtype)
        wire = torch.uint8 if kind == torch.bool else kind
        if tensors is not None and _world.leader:
            t = tensors[name].detach().cpu().to(wire).contiguous().clone()  # on the CPU on every rank: gloo
        else:
            t = torch.empty(shape, dtype=wire)
        dist.broadcast(t, src=0)
        out[name] = t.to(kind)
    return out


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, bit for bit."""
    if _world.active:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def wrap(model: nn.Module) -> nn.Module:
    """The model under DistributedDataParallel (gradients averaged over ranks), or itself on one process. On CUDA
    DDP is given the model's own device (cuda:LOCAL_RANK)."""
    if not _world.active:
        return model
    device = device_of(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)  # buffers: rank 0's, synced at every forward


def mean(value: torch.Tensor) -> float:
    """The mean over ranks of a scalar (each rank's loss on its shard: the global batch's loss)."""
    if not _world.active:
        return float(value.item())
    total = value.detach().to(torch.float64).reshape(1).clone()
    dist.all_reduce(total)
    return float(total.item()) / _world.size


def agree(value: float) -> float:
    """Rank 0's value on every rank (a decision every rank must take alike, e.g. stop training here)."""
    if not _world.active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t.item())


# ---- the batch order ------------------------------------------------------------------------------------------
def shard(indices: torch.Tensor, me: World | None = None) -> torch.Tensor:
    """This rank's share of one global batch, DistributedSampler's way: padded to a multiple of the world size
    with its own first images, then every world-size-th from the rank's offset. One process: all of it.

    This is the seam for a DataLoader: the same DistributedSampler, or one over the whole epoch's order, can be
    passed as `sampler=` (its `set_epoch` then takes the place of the fresh permutation per pass)."""
    me = me or _world
    if me.size == 1:
        return indices
    positions: Any = range(len(indices))  # a Sized of positions is all the sampler reads
    sampler: DistributedSampler[int] = DistributedSampler(positions, num_replicas=me.size, rank=me.rank,
                                                          shuffle=False)
    return indices[list(sampler)]


# ---- the same network on every rank -----------------------------------------------------------------------------
def digest(model: nn.Module, masks: dict[str, torch.Tensor]) -> str:
    """A sha256 over every parameter, buffer and mask, by name."""
    h = hashlib.sha256()
    named: Iterable[tuple[str, torch.Tensor]] = [*model.state_dict().items(),
                                                 *((f"mask:{k}", v) for k, v in masks.items())]
    for name, t in sorted(named, key=lambda item: item[0]):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def compare(digests: list[str], what: str) -> None:
    """A DistributedError naming the ranks whose network differs from rank 0's."""
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise DistributedError(f"{what}: ranks {', '.join(map(str, differ))} hold a different network than rank 0 "
                               f"(checksum {digests[differ[0]][:12]} vs {digests[0][:12]})")


def check_identical(model: nn.Module, masks: dict[str, torch.Tensor], what: str) -> None:
    """Every rank's network and masks, compared by checksum (all_gather); a mismatch stops every rank."""
    if not _world.active:
        return
    gathered: list[Any] = [None] * _world.size
    dist.all_gather_object(gathered, digest(model, masks))
    compare([str(d) for d in gathered], what)


def _first_line(exc: BaseException) -> str:
    """The gist of a torch.distributed error: gloo's `[file.cc:537] Read error ...: Connection reset by peer.
    This is typically ...` -> `Read error ...: Connection reset by peer`."""
    lines = str(exc).strip().splitlines()
    text = re.sub(r"^\[[^\]]*\]\s*", "", lines[0] if lines else "")
    return text.split(". ")[0].rstrip(".") or type(exc).__name__
