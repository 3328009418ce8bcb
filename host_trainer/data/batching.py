"""Batches of a split, whether its images sit in memory (types.py) or are streamed from files (stream*.py): the
one way training, BatchNorm recalibration and the Taylor scores draw them (evaluation, export parity and job
samples read a split through data/splits.py).

- `training_batches`: endless passes, each a fresh permutation from the caller's generator; this rank's share of
  every global batch (`shard`); augmented (in memory: one random shift per batch, `shift`; streamed: the loader's
  per-image augmentation, data/stream_augment.py).
- `sample_batches`: `count` batches in an order seeded by `seed`, un-augmented, with their labels: the same on
  every rank.

Labels come from the task (`task.labels(split)` for a whole in-memory split, `task.batch_labels(batch)` for a
streamed batch); the task is passed in, never imported, so data stays below tasks. Batches stay on the CPU (pinned
when `pin`); the caller moves them where it trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from host_trainer.data.splits import images_in, streamed
from host_trainer.data.stream_loader import make_loader

Batch = tuple[torch.Tensor, list[torch.Tensor]]  # images and the task's label tensors
Shard = Callable[[torch.Tensor], torch.Tensor]  # a global batch's indices -> this rank's


def shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to `max_shift` pixels with zero fill (one shift per batch)."""
    if max_shift <= 0 or x.dim() != 4:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    padded = F.pad(x, (max_shift,) * 4)
    h, w = x.shape[2], x.shape[3]
    return padded[:, :, max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]


def training_batches(split: Any, task: Any, batch_size: int, gen: torch.Generator, *, max_shift: int = 0,
                     shard: Shard = lambda idx: idx, world_size: int = 1, seed: int = 0, workers: int = 0,
                     pin: bool = False) -> Iterator[Batch]:
    """Endless: a fresh permutation of the split (drawn from `gen`) for every pass; this rank's share of each
    global batch of `batch_size`. `seed` seeds a streamed loader's augmentation."""
    if streamed(split):
        yield from _streamed_training(split, task, batch_size, gen, shard, world_size, seed, workers, pin)
        return
    x, labels = torch.from_numpy(split.x), task.labels(split)
    while True:
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = shard(order[start: start + batch_size])
            yield shift(x[idx], max_shift, gen), [t[idx] for t in labels]


def _streamed_training(split: Any, task: Any, batch_size: int, gen: torch.Generator, shard: Shard, world_size: int,
                       seed: int, workers: int, pin: bool) -> Iterator[Batch]:
    """The same seeded permutation and shares, the images decoded and augmented by a DataLoader's workers
    (data/stream_loader.py): this rank's shares of one pass, in order, are the loader's sampler; every share but
    the pass's last holds ceil(batch_size / world size) images."""
    order = _Order()
    loader = make_loader(split, math.ceil(batch_size / world_size), train=True, seed=seed, sampler=order,
                         workers=workers, pin_memory=pin)
    epoch = 0
    while True:
        perm = torch.randperm(images_in(split), generator=gen)
        order.items = [int(i) for start in range(0, len(perm), batch_size)
                       for i in shard(perm[start: start + batch_size])]
        loader.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            yield batch.x, task.batch_labels(batch)


def sample_batches(split: Any, task: Any | None, seed: int, count: int, batch_size: int, *, workers: int = 0,
                   pin: bool = False) -> Iterator[Batch]:
    """Up to `count` batches of `batch_size` in an order seeded by `seed`, un-augmented; with `task`, their labels
    (else an empty list)."""
    count = min(count, math.ceil(images_in(split) / batch_size))
    if streamed(split):
        loader = make_loader(split, batch_size, train=True, seed=seed, augment=None, workers=workers,
                             pin_memory=pin)
        for _, batch in zip(range(count), loader):
            yield batch.x, (task.batch_labels(batch) if task is not None else [])
        return
    x = torch.from_numpy(split.x)
    labels = task.labels(split) if task is not None else []
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    for i in range(count):
        idx = order[i * batch_size: (i + 1) * batch_size]
        yield x[idx], [t[idx] for t in labels]


class _Order:
    """A sampler whose indices the training loop sets before each pass (the loader reads it in this process)."""

    def __init__(self) -> None:
        self.items: list[int] = []

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
