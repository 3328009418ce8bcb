"""Tensors across ranks: a network sent whole from rank 0 (`share`), the collectives training needs (DDP,
the mean loss, rank 0's decision, BatchNorm buffers), each rank's share of a global batch, and checksums that
prove every rank holds the same network. On one process every helper is a no-op.

Tensors travel on the CPU by gloo (a network, `agree`, checksums); on CUDA, what lives there (DDP's gradients,
BatchNorm buffers, the loss) travels by NCCL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from host_trainer.distributed.errors import DistributedError
from host_trainer.distributed.world import World, world
from host_trainer.torch_device import device_of

TensorSpec = list[list[Any]]  # [name, shape, dtype] per tensor, in the order `share` sends them


def network(model: nn.Module, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A network as named tensors: its state dict and its masks (`mask:<layer>`, as in a checkpoint)."""
    return {**model.state_dict(), **{f"mask:{k}": v for k, v in masks.items()}}


def load_network(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`network`'s inverse: load the state into `model`, return the masks."""
    model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("mask:")}, strict=True)
    return {k[len("mask:"):]: v for k, v in tensors.items() if k.startswith("mask:")}


def tensor_spec(tensors: dict[str, torch.Tensor]) -> TensorSpec:
    """Names, shapes and dtypes (JSON), so that a follower can allocate what `share` fills."""
    return [[name, list(t.shape), str(t.dtype).replace("torch.", "")] for name, t in tensors.items()]


def share(spec: TensorSpec, tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Broadcast rank 0's `tensors` (in `spec`'s order); every rank returns its copy. Bools travel as uint8."""
    out = {}
    for name, shape, dtype in spec:
        kind = getattr(torch, dtype)
        wire = torch.uint8 if kind == torch.bool else kind
        if tensors is not None and world().leader:
            t = tensors[name].detach().cpu().to(wire).contiguous().clone()  # on the CPU on every rank: gloo
        else:
            t = torch.empty(shape, dtype=wire)
        dist.broadcast(t, src=0)
        out[name] = t.to(kind)
    return out


def sync_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, bit for bit."""
    if world().active:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, src=0)


def wrap(model: nn.Module) -> nn.Module:
    """The model under DistributedDataParallel (gradients averaged over ranks), or itself on one process. On CUDA
    DDP is given the model's own device (cuda:LOCAL_RANK)."""
    if not world().active:
        return model
    device = device_of(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)  # buffers: rank 0's, synced at every forward


def mean(value: torch.Tensor) -> float:
    """The mean over ranks of a scalar (each rank's loss on its shard: the global batch's loss)."""
    me = world()
    if not me.active:
        return float(value.item())
    total = value.detach().to(torch.float64).reshape(1).clone()
    dist.all_reduce(total)
    return float(total.item()) / me.size


def agree(value: float) -> float:
    """Rank 0's value on every rank (a decision every rank must take alike, e.g. stop training here)."""
    if not world().active:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t.item())


def shard(indices: torch.Tensor, me: World | None = None) -> torch.Tensor:
    """This rank's share of one global batch, DistributedSampler's way: padded to a multiple of the world size
    with its own first images, then every world-size-th from the rank's offset. One process: all of it."""
    me = me or world()
    if me.size == 1:
        return indices
    positions: Any = range(len(indices))  # a Sized of positions is all the sampler reads
    sampler: DistributedSampler[int] = DistributedSampler(positions, num_replicas=me.size, rank=me.rank,
                                                          shuffle=False)
    return indices[list(sampler)]


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
    me = world()
    if not me.active:
        return
    gathered: list[Any] = [None] * me.size
    dist.all_gather_object(gathered, digest(model, masks))
    compare([str(d) for d in gathered], what)
