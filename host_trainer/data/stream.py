"""The user's data sets, `imagefolder:PATH`, `coco:PATH` and `yolo:PATH`, streamed: read lazily, a batch at a
time, by a torch DataLoader's workers, so that memory does not grow with the number of images (docs/data.md).
These are the only readers of those formats.

`load_data(task, ref, seed, image_size, options=DataOptions())` is how the loop and the bench scripts read any
data set (it is `stream_data` with the task checked; `options`: --split, --mean, --std, data/options.py). For the
user's files each split holds only paths and labels (data/stream_files.py); the built-in sets (digits, glyphs,
shapes-det) come from data/classify.py and data/detect.py in memory, as a `Dataset`/`DetDataset`, and so does the
one-line error for any other reference. `make_loader` (data/stream_loader.py) takes either kind of split.

Splits: an image folder is listed per class (data/images.py `folder_images`), a COCO or YOLO set is read by
`coco_annotations`/`yolo_annotations` (every annotation checked, boxes normalised to their image); each image
comes tagged with the split folder it sits in, if any. data/presplit.py `choose_parts` keeps the set's own
train/val/test split, or cuts it by classify.py's `stratified_split` (detection: detect.py's `random_split`,
in the reader's image order) and `held_out`. The same files and seed always give the same splits.

Normalisation: a mean and a std per channel, from up to STATS_IMAGES training images (un-augmented:
classification the S×S resize, detection the letterboxed content without its padding) drawn by a generator
seeded with the run's seed; with no more training images than that, every training image counts. Given ones
(--mean/--std) are used as they are; a grey set, and a run from before per-channel statistics, get one value
over every channel (`pixel_stats`, `per_channel=False`), computed exactly as it always was.

Every file's header is read while the set is built: a file PIL cannot identify (zero bytes, not an image)
stops the run there with a one-line error naming it; the header also tells grey (1 channel when every image
is) from colour, and a detection image's size. Later failures are skipped (data/stream_files.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from host_trainer.config import TASKS
from host_trainer.data.classify import load_dataset
from host_trainer.data.coco import coco_annotations
from host_trainer.data.detect import load_det_dataset
from host_trainer.data.images import folder_images, is_grey
from host_trainer.data.options import DataOptions, Norm, resolve_norm
from host_trainer.data.presplit import choose_parts
from host_trainer.data.stream_files import FileClassSplit, FileDetSplit, flat_boxes, pack_paths, stats_row
from host_trainer.data.stream_loader import BadImageWarning, Batch, StreamLoader, make_loader
from host_trainer.data.yolo import yolo_annotations
from host_trainer.errors import UserError
from host_trainer.progress import NULL, Progress

__all__ = ["Batch", "BadImageWarning", "StreamDataset", "StreamLoader", "make_loader", "stream_data"]

STATS_IMAGES = 2000  # training images the normalisation is computed on, at most


@dataclass(frozen=True, eq=False)
class StreamDataset:
    """A streamed set: the fields of types.py's Dataset/DetDataset, with file splits."""

    name: str
    train: Any  # FileClassSplit or FileDetSplit
    val: Any
    test: Any
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel
    std: tuple[float, ...]
    image_px: int = 0  # the files' median side (classification: shorter, detection: longer): what S shrinks


def load_data(task: str, ref: str, seed: int, image_size: int, progress: Progress = NULL,
              options: DataOptions = DataOptions()) -> Any:
    """The task's data set `ref`: the user's files (imagefolder:, coco:, yolo:) streamed, the built-in sets in
    memory (a Dataset or a DetDataset); an unknown task, or a set of the other task, is a one-line error."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}: choose {' or '.join(TASKS)}")
    return stream_data(task, ref, seed=seed, image_size=image_size, progress=progress, options=options)


def stream_data(task: str, ref: str, seed: int, image_size: int, progress: Progress = NULL,
                workers: int | None = None, options: DataOptions = DataOptions()) -> Any:
    """`imagefolder:`/`coco:`/`yolo:` as a StreamDataset; the built-in sets in memory (a Dataset or DetDataset),
    with their fixed splits (`options.split` is for the user's sets)."""
    kind, _, path = ref.partition(":")
    if task == "classify" and kind == "imagefolder" and path.strip():
        if image_size < 4:
            raise UserError(f"image size must be at least 4 pixels, got {image_size}")
        return stream_imagefolder(path, seed, image_size, workers, options, progress)
    if task == "detect" and kind in ("coco", "yolo") and path.strip():
        if image_size < 16 or image_size % 16:
            raise UserError(f"detection input size must be a positive multiple of 16, got {image_size}")
        return stream_detection(kind, path, seed, image_size, workers, options, progress)
    loader = load_dataset if task == "classify" else load_det_dataset  # messages for everything else
    return loader(ref, seed=seed, image_size=image_size, progress=progress, options=options)


def scan_headers(files: list[Path]) -> tuple[np.ndarray, bool]:
    """((W, H) int32 per file, is every image grey?) from the headers: no pixel decoded except for palette
    images while all so far were grey (a palette is grey only if its colours are)."""
    sizes = np.empty((len(files), 2), np.int32)
    grey = True
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                sizes[i] = img.size
                grey = grey and is_grey(img)
        except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ...) on bad files
            raise UserError(f"cannot read image {file}: {type(exc).__name__}: {exc}") from None
        if sizes[i].min() < 1:
            raise UserError(f"cannot read image {file}: it has no pixels ({sizes[i][0]}x{sizes[i][1]})")
    return sizes, grey


class _Stats(TorchDataset):
    def __init__(self, split: Any, indices: np.ndarray):
        self.split, self.indices = split, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> np.ndarray:
        try:
            return self.split.stats_of(int(self.indices[k]))
        except Exception:  # an unreadable file: left out here, reported by the training loader
            return stats_row(np.zeros((0, self.split.channels)), self.split.channels)


def pixel_stats(split: Any, seed: int, workers: int | None = None, per_channel: bool = True) -> Norm:
    """(mean, std) per channel of pixels in [0, 1] over up to STATS_IMAGES of `split`'s images, in workers; not
    `per_channel`: the one mean/std over every value, repeated per channel (summed exactly as it always was)."""
    n, channels = len(split), split.channels
    picked = np.sort(np.random.default_rng(seed).choice(n, size=min(n, STATS_IMAGES), replace=False))
    loader = DataLoader(_Stats(split, picked), batch_size=64, collate_fn=list,
                        num_workers=min(2, len(picked) // 64) if workers is None else workers)
    total = np.zeros(4 + 2 * channels)  # stream_files.stats_row's layout
    for part in loader:
        total += np.sum(part, axis=0)
    if total[2] == 0:
        raise UserError("none of the sampled training images could be read")
    if not per_channel:
        mean, std = _moments(total[0], total[1], total[2])
        return (mean,) * channels, (std,) * channels
    per = [_moments(total[3 + c], total[3 + channels + c], total[-1]) for c in range(channels)]
    return tuple(m for m, _ in per), tuple(s for _, s in per)


def _moments(total: float, squares: float, count: float) -> tuple[float, float]:
    mean = total / count
    std = float(np.sqrt(max(squares / count - mean * mean, 0.0)))
    return float(mean), std or 1.0  # a constant image set would otherwise divide by zero


def stream_imagefolder(path: str, seed: int, image_size: int, workers: int | None = None,
                       options: DataOptions = DataOptions(), progress: Progress = NULL) -> StreamDataset:
    """imagefolder:PATH: one sub-folder of images per class (under train/, val/, test/ when the set is split
    already), split per class; pixels left on disk."""
    root = Path(path).expanduser()
    name = f"imagefolder:{root}"
    found, tags = folder_images(root)
    files = [f for fs in found.values() for f in fs]
    y = np.repeat(np.arange(len(found), dtype=np.int64), [len(fs) for fs in found.values()])
    sizes, grey = scan_headers(files)
    channels = 1 if grey else 3
    parts = choose_parts(name, len(files), tags, y, seed, options, progress)
    paths = pack_paths(files)

    def cut(idx: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> FileClassSplit:
        return FileClassSplit(files=paths[idx], size=image_size, channels=channels, mean=mean, std=std,
                              augment=None, seed=seed, epoch=0, y=y[idx])
    mean, std = resolve_norm(options, channels, lambda per_channel: pixel_stats(
        cut(parts[0], (0.0,) * channels, (1.0,) * channels), seed, workers, per_channel))
    train, val, test = (cut(idx, mean, std) for idx in parts)
    return StreamDataset(name, train, val, test, len(found), (channels, image_size, image_size), tuple(found),
                         mean, std, median_side(sizes, longer=False))


def stream_detection(kind: str, path: str, seed: int, image_size: int, workers: int | None = None,
                     options: DataOptions = DataOptions(), progress: Progress = NULL) -> StreamDataset:
    """coco:PATH / yolo:PATH: the annotations checked, the set's own split or a seeded random one; pixels left on
    disk, letterboxed."""
    ann = (coco_annotations if kind == "coco" else yolo_annotations)(path)
    files, boxes, labels = ann.files, ann.boxes, ann.labels
    sizes, grey = scan_headers(files)
    channels = 1 if grey else 3
    parts = choose_parts(f"{kind}:{path}", len(files), ann.splits or None, None, seed, options, progress)
    paths = pack_paths(files)

    def cut(idx: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> FileDetSplit:
        offsets, flat, flat_labels = flat_boxes([boxes[i] for i in idx], [labels[i] for i in idx])
        return FileDetSplit(files=paths[idx], size=image_size, channels=channels, mean=mean, std=std,
                            augment=None, seed=seed, epoch=0, sizes=sizes[idx], offsets=offsets, unit_boxes=flat,
                            box_labels=flat_labels)
    mean, std = resolve_norm(options, channels, lambda per_channel: pixel_stats(
        cut(parts[0], (0.0,) * channels, (1.0,) * channels), seed, workers, per_channel))
    train, val, test = (cut(idx, mean, std) for idx in parts)
    return StreamDataset(f"{kind}:{path}", train, val, test, len(ann.names), (channels, image_size, image_size),
                         tuple(ann.names), mean, std, median_side(sizes, longer=True))


def median_side(sizes: np.ndarray, longer: bool) -> int:
    """The files' median side in pixels (their longer side when they are letterboxed, else the shorter)."""
    if not len(sizes):
        return 0
    return int(np.median(sizes.max(axis=1) if longer else sizes.min(axis=1)))
