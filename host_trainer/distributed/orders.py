"""What rank 0 tells the other ranks, typed, with both sides of each exchange side by side.

Rank 0 leads: it synthesises, exports, measures and writes the run directory; every other rank follows its
orders and only trains. The orders, in the sequence a run sends them:

- `Setup(config)`: load the data of this EvolveConfig (as a dict), once, before anything else;
- `Train(...)`: train this network (architecture, then weights and masks by broadcast, and the distillation
  teacher's when there is one) with rank 0, for a fixed budget (`kind` "fixed") or until rank 0's validation
  score stops improving ("plateau"); afterwards every rank's checksum is compared;
- `Stop(ok)`: the run ended (ok) or failed (not ok); nothing follows.

An order travels as JSON through the store (distributed/channel.py), its tensors by `share`
(distributed/tensors.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import nn

from host_trainer.distributed.errors import DistributedError
from host_trainer.distributed.tensors import TensorSpec, check_identical, load_network, network, share, tensor_spec
from host_trainer.distributed.world import channel, guarded, teardown, world

TRAIN_KINDS = ("fixed", "plateau")


@dataclass(frozen=True)
class Setup:
    config: dict[str, Any]


@dataclass(frozen=True)
class Train:
    kind: str                       # fixed | plateau
    generation: int
    spec: TensorSpec              # the network's tensors (weights and masks), in broadcast order
    train: dict[str, Any]           # TrainConfig's fields
    architecture: dict[str, Any]    # what loop/checkpoint.py builds the network from
    teacher: dict[str, Any] | None = None
    teacher_spec: TensorSpec = dataclasses.field(default_factory=list)


@dataclass(frozen=True)
class Stop:
    ok: bool


Order = Union[Setup, Train, Stop]
_OPS: dict[str, type] = {"setup": Setup, "train": Train}


def encode(order: Order) -> dict[str, Any]:
    if isinstance(order, Stop):
        return {"op": "stop" if order.ok else "abort"}
    op = next(name for name, kind in _OPS.items() if isinstance(order, kind))
    return {"op": op, **dataclasses.asdict(order)}


def decode(message: dict[str, Any]) -> Order:
    """A received order; anything else is a DistributedError (ranks of different versions, a corrupt store)."""
    op = message.get("op")
    if op in ("stop", "abort"):
        return Stop(op == "stop")
    kind = _OPS.get(str(op))
    try:
        order = kind(**{k: v for k, v in message.items() if k != "op"}) if kind else None
    except TypeError as exc:
        raise DistributedError(f"rank 0 sent a malformed {op} order: {exc}") from None
    if order is None or (isinstance(order, Train) and order.kind not in TRAIN_KINDS):
        raise DistributedError(f"rank 0 sent an order this rank does not know: {str(op)[:40]!r}")
    return order


# ---- rank 0 --------------------------------------------------------------------------------------------------
def send(order: Order) -> None:
    """Rank 0: tell every other rank what to do next (nothing on one process, or after the final order)."""
    found = channel()
    if found is not None and world().leader and not found.done:
        found.send(encode(order))


def finish(ok: bool) -> None:
    """Rank 0 at the end: tell the other ranks to stop (or that the run failed), then leave the group."""
    with contextlib.suppress(Exception):  # the store is gone with a failed rank: they are stopping anyway
        send(Stop(ok))
    teardown()


@contextlib.contextmanager
def lead_training(kind: str, model: nn.Module, masks: dict[str, torch.Tensor], train: dict, generation: int,
                  architecture: Callable[[nn.Module], dict], teacher: nn.Module | None = None) -> Iterator[None]:
    """Rank 0 around one training: order every other rank to train this network and send it whole (its
    counterpart is `receive_networks`); afterwards, check that every rank holds the same network. Nothing on one
    process."""
    if not world().active:
        yield
        return
    with guarded(f"training generation {generation}"):
        tensors = network(model, masks)
        order = Train(kind, generation, tensor_spec(tensors), train, architecture(model))
        if teacher is not None:
            order = dataclasses.replace(order, teacher=architecture(teacher),
                                        teacher_spec=tensor_spec(teacher.state_dict()))
        send(order)
        share(order.spec, tensors)
        if teacher is not None:
            share(order.teacher_spec, teacher.state_dict())
        yield
        check_identical(model, masks, f"generation {generation}")


# ---- every other rank ----------------------------------------------------------------------------------------
def receive() -> Order:
    """A follower: wait for rank 0's next order."""
    found = channel()
    if found is None:
        raise RuntimeError("receive() outside a process group")
    return decode(found.receive())


def receive_networks(order: Train, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict[str, torch.Tensor],
                                                                                  nn.Module | None]:
    """A follower's side of `lead_training`: (the network with its weights, its masks, the teacher or None)."""
    model = build(order.architecture)
    masks = load_network(model, share(order.spec))
    teacher = None
    if order.teacher:
        teacher = build(order.teacher)
        teacher.load_state_dict(share(order.teacher_spec))
    return model, masks, teacher
