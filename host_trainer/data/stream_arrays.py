"""The in-memory splits (`Split`, `DetSplit`: digits, glyphs, shapes-det) as torch Datasets of the same
`Sample`s as the file splits (data/stream_files.py), so that a training loop has one code path for both.

The pixels are already decoded and normalised: an item is a view of the array (no copy) unless augmented.
Classification gets a cheap augmentation (a shift of up to 2 pixels, zero fill, per sample; data/batching.py's
in-memory training batches shift once per batch instead), with no flip and no crop: a mirrored glyph is
another symbol, and the procedural sets are already centred at their size. Detection gets the same letterbox
jitter and flip as the file splits; the images are square at S already, so without augmentation an item is
the array itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset as TorchDataset

from host_trainer.data.stream_augment import Augment, letterbox, paste_offsets, place_boxes, sample_rng
from host_trainer.data.stream_files import Key, Sample, split_key
from host_trainer.data.types import DetSplit, Split


def shifted(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """(C, H, W) translated by (dx, dy) pixels, zero fill (0 is the mean after normalisation)."""
    out = torch.zeros_like(x)
    h, w = x.shape[1:]
    (cy, sy), (cx, sx) = paste_offsets(dy, h, h), paste_offsets(dx, w, w)
    out[:, cy, cx] = x[:, sy, sx]
    return out


@dataclass(frozen=True, eq=False)
class _ArraySplit(TorchDataset):
    """What both in-memory splits share: the wrapped split, the augmentation and its seeding."""

    split: Any
    augment: Augment | None = None
    seed: int = 0
    epoch: int = 0

    def __len__(self) -> int:
        return len(self.split)

    def view(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, eq=False)
class ArrayClassSplit(_ArraySplit):
    split: Split

    def __getitem__(self, key: Key) -> Sample:
        epoch, i = split_key(key, self.epoch)
        x = torch.from_numpy(self.split.x[i])
        aug = self.augment
        if aug is not None:
            rng = sample_rng(self.seed, epoch, i)
            if aug.shift > 0:
                dx, dy = (int(v) for v in rng.integers(-aug.shift, aug.shift + 1, 2))
                x = shifted(x, dx, dy)
            if aug.flip and rng.random() < 0.5:
                x = torch.flip(x, dims=[-1])
        return Sample(x, int(self.split.y[i]), i)


@dataclass(frozen=True, eq=False)
class ArrayDetSplit(_ArraySplit):
    split: DetSplit

    def __getitem__(self, key: Key) -> Sample:
        epoch, i = split_key(key, self.epoch)
        x = torch.from_numpy(self.split.x[i])
        boxes, labels = self.split.boxes[i], self.split.labels[i]
        if self.augment is None:
            return Sample(x, (torch.from_numpy(boxes), torch.from_numpy(labels)), i)
        size = x.shape[-1]
        where = letterbox(size, size, size, self.augment, sample_rng(self.seed, epoch, i))
        content = F.interpolate(x[None], size=(where.h, where.w), mode="bilinear", align_corners=False,
                                antialias=True)[0]
        canvas = torch.zeros_like(x)
        (cy, sy), (cx, sx) = paste_offsets(where.dy, where.h, size), paste_offsets(where.dx, where.w, size)
        canvas[:, cy, cx] = content[:, sy, sx]
        if where.flip:
            canvas = torch.flip(canvas, dims=[-1])
        moved, kept = place_boxes(boxes / np.float32(size), labels, where, size, drop_small=True)
        return Sample(canvas, (torch.from_numpy(moved), torch.from_numpy(kept)), i)
