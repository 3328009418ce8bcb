"""Training augmentation for the streaming loader (data/stream.py): what to draw, and how boxes follow.

Every random choice comes from a numpy Generator the caller derives from (seed, epoch, index) (`sample_rng`),
so an augmented image depends on nothing else: not on the worker that made it, nor on how many there are.

- classification files: a random resized crop (area 35-100 %, aspect 3/4-4/3, as torchvision's defaults) and
  a horizontal flip;
- detection: a letterbox (keep the aspect ratio, pad) that is also used for val/test, plus, for training, a
  scale jitter (0.75-1.25 of the letterboxed size, placed at random) and a horizontal flip; boxes follow;
- in-memory classification arrays (digits, glyphs): a cheap shift of up to 2 pixels, no flip (a mirrored
  digit or glyph is another symbol, or none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_BOX_PX = 1.0         # a box narrower or lower than this after augmentation is dropped
MIN_BOX_VISIBLE = 0.2    # ... and so is one with under 20 % of its area left on the canvas (a sliver is no object)


@dataclass(frozen=True)
class Augment:
    """What a training split draws. Each kind of split reads its own fields (see the module docstring)."""

    crop_scale: tuple[float, float] | None = (0.35, 1.0)  # classification files: crop area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)       # ... and its aspect-ratio range
    flip: bool = True                                     # horizontal flip with probability 1/2
    jitter: tuple[float, float] | None = None             # detection: scale of the letterboxed image
    shift: int = 0                                        # in-memory classification arrays: max pixels


CLASSIFY_FILES = Augment()
DETECT = Augment(crop_scale=None, jitter=(0.75, 1.25))
CLASSIFY_ARRAYS = Augment(crop_scale=None, flip=False, shift=2)  # = training.py's TrainConfig.augment_shift


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The one source of randomness of sample `index` in `epoch` (a SeedSequence mixes the three)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])


def resized_crop(width: int, height: int, aug: Augment, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a random crop: torchvision's RandomResizedCrop algorithm, in our own code.

    Ten tries at an area fraction and log-uniform aspect ratio that fit; else the centre crop at the nearest
    allowed ratio."""
    assert aug.crop_scale is not None
    area = width * height
    lo, hi = math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1])
    for _ in range(10):
        target = area * rng.uniform(*aug.crop_scale)
        ratio = math.exp(rng.uniform(lo, hi))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < aug.crop_ratio[0]:
        w, h = width, round(width / aug.crop_ratio[0])
    elif ratio > aug.crop_ratio[1]:
        w, h = round(height * aug.crop_ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


@dataclass(frozen=True)
class Placement:
    """Where an image of (width, height) lands on the S×S canvas: resized to (w, h) at (dx, dy), then flipped."""

    w: int
    h: int
    dx: int
    dy: int
    flip: bool


def letterbox(width: int, height: int, size: int, aug: Augment | None, rng: np.random.Generator | None) -> Placement:
    """Fit the long side to `size` (aspect kept), centred; with `aug`: times a jitter scale, at a random place
    (a larger image is cropped by the canvas, a smaller one padded), flipped with probability 1/2."""
    scale = size / max(width, height)
    if aug is not None and rng is not None and aug.jitter is not None:
        scale *= rng.uniform(*aug.jitter)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    if aug is None or rng is None:
        return Placement(w, h, (size - w) // 2, (size - h) // 2, False)
    dx = int(rng.integers(min(0, size - w), max(0, size - w) + 1))
    dy = int(rng.integers(min(0, size - h), max(0, size - h) + 1))
    return Placement(w, h, dx, dy, bool(aug.flip and rng.random() < 0.5))


def place_boxes(unit_boxes: np.ndarray, labels: np.ndarray, where: Placement, size: int,
                drop_small: bool) -> tuple[np.ndarray, np.ndarray]:
    """Boxes normalised to the image ([0, 1] xyxy) -> xyxy pixels of the canvas, clipped. With `drop_small`
    (training), boxes left too small or mostly outside the canvas are dropped with their labels; val/test keep
    every box (dropping the user's labels there would hide that the input size is too small for them)."""
    scale = np.array([where.w, where.h, where.w, where.h], np.float32)
    offset = np.array([where.dx, where.dy, where.dx, where.dy], np.float32)
    full = unit_boxes.reshape(-1, 4).astype(np.float32) * scale + offset
    boxes = np.clip(full, 0, size)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
    if drop_small:
        keep = (bw >= MIN_BOX_PX) & (bh >= MIN_BOX_PX) & (bw * bh >= MIN_BOX_VISIBLE * area)
        boxes, labels = boxes[keep], labels[keep]
    if where.flip:
        boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], axis=1)
    return boxes.astype(np.float32).reshape(-1, 4), labels.astype(np.int64)


def paste_offsets(start: int, length: int, size: int) -> tuple[slice, slice]:
    """(canvas slice, source slice) along one axis for a source of `length` pasted at `start` on a `size` canvas."""
    lo, hi = max(0, start), min(size, start + length)
    return slice(lo, hi), slice(lo - start, hi - start)
