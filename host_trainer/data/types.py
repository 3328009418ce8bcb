"""The in-memory data-set types: what the built-in sets (digits, glyphs, shapes-det) fill.

Images are float32 NCHW arrays. A `Dataset` (classification) or `DetDataset` (detection) holds three
deterministic splits: `train` (weights), `val` (accepting or rejecting offspring) and `test` (held out,
for the reported numbers), all normalised with one mean/std per channel, computed on the training split (or
given: --mean/--std). The user's streamed sets (data/stream.py `StreamDataset`) have the same fields, with file
splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Split:
    """Classification images with their class ids."""

    x: np.ndarray  # float32, (N, C, H, W), normalised with the data set's per-channel mean/std
    y: np.ndarray  # int64, (N,), class ids in [0, num_classes)

    def __len__(self) -> int:
        return len(self.x)

    def take(self, n: int) -> Split:
        """The first n images (a quick run's --train-subset)."""
        return Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, pixels in [0, 1]
    std: tuple[float, ...]


@dataclass(frozen=True)
class RawDetection:
    """One generated detection split (shapes-det, data/procedural/shapes_det.py), before normalisation."""

    images: np.ndarray              # float32 (N, C, S, S) in [0, 1]; C = 1 (grey) or 3 (RGB)
    boxes: tuple[np.ndarray, ...]   # per image float32 (n_i, 4), xyxy pixels of the S×S image; n_i may be 0
    labels: tuple[np.ndarray, ...]  # per image int64 (n_i,), class ids in [0, len(class_names))
    class_names: tuple[str, ...]
    source: tuple[str, ...]         # per image: where it came from (a file name), for messages


@dataclass(frozen=True)
class DetSplit:
    """Detection images with their boxes and box labels."""

    x: np.ndarray                   # float32 (N, C, S, S), normalised with the data set's mean/std
    boxes: tuple[np.ndarray, ...]   # per image float32 (n_i, 4), xyxy input pixels
    labels: tuple[np.ndarray, ...]  # per image int64 (n_i,)

    def __len__(self) -> int:
        return len(self.x)

    def take(self, n: int) -> DetSplit:
        """The first n images (a quick run's --train-subset)."""
        return DetSplit(self.x[:n], self.boxes[:n], self.labels[:n])


@dataclass(frozen=True)
class DetDataset:
    name: str
    train: DetSplit
    val: DetSplit
    test: DetSplit
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, S, S)
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, pixels in [0, 1]
    std: tuple[float, ...]
