"""`make_loader`: batches of any split (a streamed file split or an in-memory one) through a torch DataLoader.

Seeding: the sampler sends (epoch, index) pairs, and a sample's augmentation is drawn from (seed, epoch,
index) alone (data/stream_augment.py `sample_rng`), so batches are the same whatever the number of workers,
and persistent workers see a new epoch without being restarted. Without a sampler a training loader shuffles
with a torch.Generator seeded by (seed, epoch); a val/test loader keeps the split's order.

With a `DistributedSampler`, call both `sampler.set_epoch(epoch)` (its shuffle) and `loader.set_epoch(epoch)`
(the augmentation) before each epoch: the sampler's is the caller's job, as in plain PyTorch.

Unreadable files (data/stream_files.py) arrive as `Batch.bad`; the loader warns once per file, and at the end
of an epoch that met any, once with their count.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, get_worker_info

from host_trainer.data.stream_arrays import ArrayClassSplit, ArrayDetSplit
from host_trainer.data.stream_augment import CLASSIFY_ARRAYS, CLASSIFY_FILES, DETECT, Augment
from host_trainer.data.stream_files import FileClassSplit, FileDetSplit, Sample
from host_trainer.data.types import DetSplit, Split

DEFAULT = Augment()  # a sentinel: "the split kind's default augmentation" (compared by identity)


class BadImageWarning(UserWarning):
    """An image that could not be decoded mid-epoch: replaced by a neighbour of its split."""


class Batch(NamedTuple):
    """A batch. Classification: `y` int64 (B,); detection: `boxes`/`labels`, one (n_i, 4) float32 xyxy pixel
    tensor and one (n_i,) int64 tensor per image, `y` None."""

    x: torch.Tensor                      # (B, C, S, S) float32, normalised
    y: torch.Tensor | None
    boxes: tuple[torch.Tensor, ...]
    labels: tuple[torch.Tensor, ...]
    idx: torch.Tensor                    # int64 (B,): the split index of each image (a substitute's own)
    bad: tuple[tuple[str, str], ...]     # (file, reason): unreadable files met while making this batch


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack the readable samples; a sample with no readable file at all is dropped (its `bad` kept)."""
    good = [s for s in samples if s.image is not None]
    bad = tuple(b for s in samples for b in s.bad)
    index = torch.tensor([s.idx for s in good], dtype=torch.int64)
    x = _stack([s.image for s in good]) if good else torch.zeros(0)  # type: ignore[misc]
    if good and isinstance(good[0].target, tuple):
        return Batch(x, None, tuple(s.target[0] for s in good), tuple(s.target[1] for s in good), index, bad)
    return Batch(x, torch.tensor([s.target for s in good], dtype=torch.int64), (), (), index, bad)


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    """torch.stack; in a worker, straight into shared memory (as torch's default_collate does): the batch then
    crosses to the training process without another copy, and without leaving the worker's heap fragmented."""
    if get_worker_info() is None:
        return torch.stack(images)
    shape = (len(images), *images[0].shape)
    storage = images[0].untyped_storage()._new_shared(math.prod(shape) * images[0].element_size())
    return torch.stack(images, out=images[0].new(storage).view(shape))


def as_dataset(split: Any) -> Any:
    """A stream split as it is; an in-memory `Split`/`DetSplit` wrapped (a view of its arrays, no copy)."""
    if isinstance(split, (FileClassSplit, FileDetSplit, ArrayClassSplit, ArrayDetSplit)):
        return split
    if isinstance(split, Split):
        return ArrayClassSplit(split)
    if isinstance(split, DetSplit):
        return ArrayDetSplit(split)
    raise TypeError(f"not a split: {type(split).__name__}")


def default_augment(dataset: Any) -> Augment:
    if isinstance(dataset, FileClassSplit):
        return CLASSIFY_FILES
    return CLASSIFY_ARRAYS if isinstance(dataset, ArrayClassSplit) else DETECT


def mix(*values: int) -> int:
    """One 63-bit seed from several ints (a SeedSequence, so nearby (seed, epoch) pairs do not collide)."""
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(1, np.uint64)[0] >> 1)


class EpochIndices(Sampler):
    """(epoch, index) pairs: `base`'s indices (a DistributedSampler, say), or 0..n-1, shuffled by a generator
    seeded with (seed, epoch) when `shuffle`."""

    def __init__(self, n: int, base: Iterable[int] | None, shuffle: bool, seed: int, epoch: int):
        self.n, self.base, self.shuffle, self.seed, self.epoch = n, base, shuffle, seed, epoch

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.n  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        if self.base is not None:
            order: Iterable[int] = self.base
        elif self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(mix(self.seed, epoch))).tolist()
        else:
            order = range(self.n)
        return ((epoch, int(i)) for i in order)


def _init_worker(_worker_id: int) -> None:
    # PIL decodes on one thread; torch's own pool in every worker would only fight the other workers for cores.
    torch.set_num_threads(1)


class StreamLoader(DataLoader):
    """A DataLoader of `Batch`es with `set_epoch`, and the bad-file report (`bad_files`, `bad_last_epoch`)."""

    epoch_indices: EpochIndices
    bad_files: dict[str, str]  # every unreadable file met so far, with its reason
    bad_last_epoch: int        # how many the last complete pass met

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass: the augmentation's and, without a sampler of the caller's, the shuffle's."""
        self.epoch_indices.epoch = epoch

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        met: dict[str, str] = {}
        for batch in super().__iter__():
            for file, reason in batch.bad:
                if file not in self.bad_files:
                    warnings.warn(f"cannot read image {file} ({reason}): replaced by another image of its split",
                                  BadImageWarning, stacklevel=2)
                self.bad_files[file] = met[file] = reason
            if len(batch.x):  # empty only when every sample and its substitutes were unreadable
                yield batch
        self.bad_last_epoch = len(met)
        if met:
            warnings.warn(f"{len(met)} unreadable image(s) this epoch, each replaced by another image of its split",
                          BadImageWarning, stacklevel=2)


def make_loader(split: Any, batch_size: int, *, train: bool, seed: int, epoch: int = 0,
                sampler: Iterable[int] | None = None, workers: int | None = None,
                augment: Augment | None = DEFAULT, drop_last: bool = False, pin_memory: bool = False) -> StreamLoader:
    """Batches of `split` (a file split from data/stream.py, or an in-memory Split/DetSplit).

    train: shuffle (unless `sampler` is given: it decides the order) and augment (`augment`, by default the
    split kind's: data/stream_augment.py); not train: the split's order, never augmented.
    workers: decoding processes; None: min(2, CPUs) for file splits, 0 for in-memory ones (nothing to decode).
    pin_memory: page-locked batches, for a faster copy to a GPU.
    """
    dataset = as_dataset(split)
    if not train or augment is None:
        augment = None
    elif augment is DEFAULT:
        augment = default_augment(dataset)
    dataset = dataset.view(augment=augment, seed=seed, epoch=epoch)
    files = isinstance(dataset, (FileClassSplit, FileDetSplit))
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if files else 0
    indices = EpochIndices(len(dataset), sampler, shuffle=train, seed=seed, epoch=epoch)
    loader = StreamLoader(dataset, batch_size=batch_size, sampler=indices, collate_fn=collate, drop_last=drop_last,
                          num_workers=workers, persistent_workers=workers > 0, worker_init_fn=_init_worker,
                          pin_memory=pin_memory, generator=torch.Generator().manual_seed(mix(seed, 1)))
    loader.epoch_indices, loader.bad_files, loader.bad_last_epoch = indices, {}, 0
    return loader
