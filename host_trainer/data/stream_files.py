"""Lazy splits over the user's image files (data/stream.py builds them): paths and small labels in memory,
pixels decoded per sample, in the DataLoader's workers.

A split holds its paths as one fixed-width bytes array and its boxes as flat arrays with offsets, not as
Python lists of objects: a forked worker that reads a list of str touches every object's reference count and
so copies its pages; numpy buffers stay shared.

Bad files: every header was read when the set was built (data/stream.py `scan_headers`: an unreadable one is
refused there, with a one-line error). A file that fails later, while its pixels are decoded (truncated,
changed on disk), never stops the epoch: the sample is replaced by the next readable index of the split
(up to SUBSTITUTE_TRIES), and the file is reported in `Sample.bad`, for the loader to warn about once
(data/stream_loader.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset as TorchDataset

from host_trainer.data.images import to_rgb
from host_trainer.data.stream_augment import Augment, Placement, letterbox, place_boxes, resized_crop, sample_rng

SUBSTITUTE_TRIES = 16  # neighbours tried in place of an unreadable file before the sample is dropped
Key = Union[int, "tuple[int, int]"]  # an index, or (epoch, index) as the loader's sampler sends them


class Sample(NamedTuple):
    """One item: `image, target = sample[:2]`."""

    image: torch.Tensor | None  # (C, S, S) float32, normalised; None: no readable file found (dropped)
    target: Any                 # class id (int), or (boxes (n, 4) float32 xyxy pixels, labels (n,) int64)
    idx: int                    # the split index the pixels came from (a substitute's, if one stood in)
    bad: tuple[tuple[str, str], ...] = ()  # (file, reason) of each unreadable file met on the way


def split_key(key: Key, default_epoch: int) -> tuple[int, int]:
    """(epoch, index) from what the sampler sent."""
    if isinstance(key, tuple):
        return int(key[0]), int(key[1])
    return default_epoch, int(key)


def pack_paths(files: list[Any]) -> np.ndarray:
    return np.array([os.fsencode(str(f)) for f in files], dtype=bytes)


def first_good(n: int, index: int, load: Callable[[int], Sample], path_of: Callable[[int], str]) -> Sample:
    """`load(index)`, else the next indices in turn; each failure is recorded, none is raised."""
    bad: list[tuple[str, str]] = []
    for k in range(min(n, SUBSTITUTE_TRIES)):
        j = (index + k) % n
        try:
            sample = load(j)
        except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError ...) on bad files
            bad.append((path_of(j), f"{type(exc).__name__}: {exc}"))
            continue
        return sample._replace(bad=tuple(bad))
    return Sample(None, None, index, tuple(bad))


def open_image(path: str, channels: int, need: tuple[int, int]) -> Image.Image:
    """The decoded image as RGB (or L when the set is grey). A JPEG much larger than `need` is decoded at
    1/2, 1/4 or 1/8 scale (PIL's draft; never below `need`): a camera image costs a fraction of a full decode."""
    with Image.open(path) as img:
        img.draft(None, (max(1, need[0]), max(1, need[1])))
        img.load()
        rgb = to_rgb(img)  # 16-bit greys scaled to 8 bits; CMYK, P, LA, ... converted
    return rgb.convert("L") if channels == 1 else rgb


def to_tensor(img: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(C, H, W) float32, normalised per channel in float32 arithmetic (a scalar mean/std gave the same bits)."""
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    m, s = (np.asarray(v, np.float32).reshape(-1, 1, 1) for v in (mean, std))
    return torch.from_numpy(np.ascontiguousarray((arr - m) / s, dtype=np.float32))


def stats_row(a: np.ndarray, channels: int) -> np.ndarray:
    """What data/stream.py `pixel_stats` adds up over images, from one image's pixels in [0, 1] (float64, H×W or
    H×W×C): [sum, sum of squares, count] over every value (the one-mean/std statistics, computed as they always
    were), then the sums, the sums of squares and the pixel count per channel."""
    per = a.reshape(-1, channels)
    return np.concatenate([[a.sum(), (a * a).sum(), a.size], per.sum(axis=0), (per * per).sum(axis=0),
                           [len(per)]])


@dataclass(frozen=True, eq=False)
class _FileSplit(TorchDataset):
    files: np.ndarray        # bytes paths, fixed width
    size: int                # S: every image comes out S×S
    channels: int            # 1 when every image of the set is grey, else 3
    mean: tuple[float, ...]  # normalisation per channel, from the training split (data/stream.py `pixel_stats`)
    std: tuple[float, ...]
    augment: Augment | None  # None: no augmentation (val/test, or a loader with train=False)
    seed: int
    epoch: int               # used when indexed with a plain int; the loader sends (epoch, index)

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> str:
        return os.fsdecode(bytes(self.files[i]))

    def view(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)

    def __getitem__(self, key: Key) -> Sample:
        epoch, index = split_key(key, self.epoch)
        rng = sample_rng(self.seed, epoch, index)
        return first_good(len(self), index, lambda j: self.load(j, rng), self.path)

    def load(self, j: int, rng: np.random.Generator) -> Sample:
        raise NotImplementedError

    def stats_of(self, j: int) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class FileClassSplit(_FileSplit):
    """Classification images by path with their class ids; train: random resized crop and flip."""

    y: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # int64 (N,)

    def _pixels(self, j: int, rng: np.random.Generator | None) -> Image.Image:
        s, aug = self.size, self.augment if rng is not None else None
        if aug is None or aug.crop_scale is None or rng is None:
            return open_image(self.path(j), self.channels, (s, s)).resize((s, s), Image.Resampling.BILINEAR)
        # a crop keeps at least ~half of each side (area 0.35, ratio 4/3): decode at twice S to keep its detail
        img = open_image(self.path(j), self.channels, (2 * s, 2 * s))
        out = img.resize((s, s), Image.Resampling.BILINEAR, box=resized_crop(*img.size, aug, rng))
        return out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if aug.flip and rng.random() < 0.5 else out

    def load(self, j: int, rng: np.random.Generator) -> Sample:
        return Sample(to_tensor(self._pixels(j, rng), self.mean, self.std), int(self.y[j]), j)

    def stats_of(self, j: int) -> np.ndarray:
        return stats_row(np.asarray(self._pixels(j, None), dtype=np.float64) / 255.0, self.channels)


@dataclass(frozen=True, eq=False)
class FileDetSplit(_FileSplit):
    """Detection images by path with their boxes (normalised xyxy, flat, `offsets` per image); letterboxed,
    train: scale jitter and flip, boxes moved to match."""

    sizes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 2), np.int32))  # (W, H) headers
    offsets: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, np.int64))  # (N+1,)
    unit_boxes: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), np.float32))
    box_labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def _annotations(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = int(self.offsets[j]), int(self.offsets[j + 1])
        return self.unit_boxes[lo:hi], self.box_labels[lo:hi]

    def _placement(self, j: int, rng: np.random.Generator | None) -> Placement:
        # from the header's size, so that val/test boxes (`boxes`) are known without decoding anything
        width, height = (int(v) for v in self.sizes[j])
        return letterbox(width, height, self.size, self.augment if rng is not None else None, rng)

    def load(self, j: int, rng: np.random.Generator) -> Sample:
        where = self._placement(j, rng)
        content = open_image(self.path(j), self.channels, (where.w, where.h))
        content = content.resize((where.w, where.h), Image.Resampling.BILINEAR)
        fill = tuple(round(m * 255) for m in self.mean)  # pad with the mean: 0 after normalisation
        canvas = Image.new(content.mode, (self.size, self.size), fill[0] if self.channels == 1 else fill)
        canvas.paste(content, (where.dx, where.dy))
        if where.flip:
            canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        boxes, labels = place_boxes(*self._annotations(j), where, self.size, drop_small=self.augment is not None)
        return Sample(to_tensor(canvas, self.mean, self.std), (torch.from_numpy(boxes), torch.from_numpy(labels)), j)

    def stats_of(self, j: int) -> np.ndarray:
        where = self._placement(j, None)  # the letterboxed content, without the padding
        img = open_image(self.path(j), self.channels, (where.w, where.h))
        img = img.resize((where.w, where.h), Image.Resampling.BILINEAR)
        return stats_row(np.asarray(img, dtype=np.float64) / 255.0, self.channels)

    @property
    def boxes(self) -> tuple[np.ndarray, ...]:
        """Per image: the un-augmented (val/test) boxes, xyxy pixels of the letterboxed S×S input."""
        return tuple(place_boxes(*self._annotations(j), self._placement(j, None), self.size, False)[0]
                     for j in range(len(self)))

    @property
    def labels(self) -> tuple[np.ndarray, ...]:
        return tuple(self._annotations(j)[1].astype(np.int64) for j in range(len(self)))


def flat_boxes(boxes: list[Any], labels: list[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets (N+1,), boxes (M, 4) float32, labels (M,) int64) from per-image lists."""
    per = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
    counts = [len(b) for b in per]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat = np.concatenate(per) if per else np.zeros((0, 4), np.float32)
    labs = np.concatenate([np.asarray(lab, np.int64).reshape(-1) for lab in labels]) if labels else np.zeros(0)
    return offsets, flat.astype(np.float32).reshape(-1, 4), labs.astype(np.int64)
