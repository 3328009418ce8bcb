"""One way to read any split, whether its images sit in memory (types.py) or are streamed from files (stream*.py).

The loop and the tasks use these instead of `split.x`, so that a set of tens of thousands of camera images
never has to be one array: `images(split)` walks it a batch at a time, `head(split, n)` decodes only the
first n images (the export's parity samples, a job's reference images), `take(split, n)` shortens either kind.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from host_trainer.data.stream_files import FileClassSplit, FileDetSplit
from host_trainer.data.stream_loader import make_loader

EVAL_BATCH = 128


def streamed(split: Any) -> bool:
    return isinstance(split, (FileClassSplit, FileDetSplit))


def images_in(split: Any) -> int:
    """How many images a split holds (anything with `.x`, as the tests' stand-ins, or a streamed split)."""
    return len(split) if streamed(split) else len(split.x)


def loader_workers(world_size: int = 1) -> int:
    """Decoding processes per training process: the cores shared by every rank on this machine, at most 2."""
    return max(0, min(2, (os.cpu_count() or 1) // max(1, world_size)))


def take(split: Any, n: int) -> Any:
    """The first n images of a split (a quick run's --train-subset), of either kind."""
    if not streamed(split):
        return split.take(n)
    n = min(n, len(split))
    if isinstance(split, FileClassSplit):
        return split.view(files=split.files[:n], y=split.y[:n])
    end = int(split.offsets[n])
    return split.view(files=split.files[:n], sizes=split.sizes[:n], offsets=split.offsets[:n + 1],
                      unit_boxes=split.unit_boxes[:end], box_labels=split.box_labels[:end])


def images(split: Any, batch_size: int = EVAL_BATCH) -> Iterator[np.ndarray]:
    """The split's images in its own order, un-augmented, a batch at a time."""
    if not streamed(split):
        for start in range(0, len(split.x), batch_size):
            yield split.x[start: start + batch_size]
        return
    loader = make_loader(split, batch_size, train=False, seed=0, workers=loader_workers())
    for batch in loader:
        yield batch.x.numpy()


def head(split: Any, n: int) -> np.ndarray:
    """The first n images as one array (parity samples, a job's reference images)."""
    if not streamed(split):
        return split.x[:n]
    return next(images(take(split, n), batch_size=max(1, n)))
