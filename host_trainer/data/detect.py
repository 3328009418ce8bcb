"""The built-in detection set, `shapes-det`, in memory (types: data/types.py), the split rule of the user's
detection sets, and the one-line errors for a bad reference.

The user's `coco:PATH` and `yolo:PATH` are streamed from disk (data/stream.py), cut by `random_split`.
`shapes-det` comes as generated `RawDetection` splits (images in [0, 1], boxes in input pixels), normalised with
the training split's per-channel mean/std (or the given ones), like the classification sets (data/classify.py).
"""

from __future__ import annotations

import numpy as np

from host_trainer.data.options import DataOptions, array_stats, normalised, resolve_norm
from host_trainer.data.procedural.shapes_det import ShapesDetConfig, load_shapes_det, to_raw
from host_trainer.data.types import DetDataset, DetSplit, RawDetection
from host_trainer.errors import UserError
from host_trainer.progress import NULL, Progress


def load_det_dataset(ref: str, seed: int, image_size: int, progress: Progress = NULL,
                     options: DataOptions = DataOptions()) -> DetDataset:
    """`shapes-det` at a fixed S×S input (S a multiple of 16); any other reference is a one-line UserError
    (`coco:`/`yolo:` files are streamed: data/stream.py `stream_data`, which calls this for everything it does not
    stream)."""
    if image_size < 16 or image_size % 16:
        raise UserError(f"detection input size must be a positive multiple of 16, got {image_size}")
    if ref == "shapes-det":
        cfg = ShapesDetConfig(image_size=image_size)
        arrays = load_shapes_det(cfg, progress)
        raws = [to_raw(arrays, split, cfg) for split in ("train", "val", "test")]
        return _from_splits("shapes-det", raws, options)
    kind, _, path = ref.partition(":")
    if kind in ("coco", "yolo") and not path.strip():
        raise UserError(f"{kind} needs a path: {kind}:PATH (see docs/detection.md)")
    if kind in ("coco", "yolo"):
        raise ValueError(f"{ref}: the user's detection sets are streamed (data/stream.py stream_data)")
    hint = " (a classification set: drop --task detect)" if ref in ("digits", "glyphs") or kind == "imagefolder" else ""
    raise UserError(f"unknown detection dataset {ref!r}: choose shapes-det, coco:PATH or yolo:PATH{hint}")


def random_split(n: int, seed: int, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`fractions` (70/15/15) of n images by a seeded permutation; val and test get at least one image when
    n >= 3, unless their fraction is 0."""
    if n < 3:
        raise UserError(f"a detection data set needs at least 3 images (train, val, test), found {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * fractions[1])) if fractions[1] else 0
    n_test = max(1, round(n * fractions[2])) if fractions[2] else 0
    return (np.sort(order[n_val + n_test:]), np.sort(order[:n_val]), np.sort(order[n_val:n_val + n_test]))


def _from_splits(name: str, raws: list[RawDetection], options: DataOptions = DataOptions()) -> DetDataset:
    """Normalise every split with the training split's per-channel mean/std, as for classification."""
    train = raws[0]
    mean, std = resolve_norm(options, train.images.shape[1],
                             lambda per_channel: array_stats(train.images, per_channel))

    def cut(r: RawDetection) -> DetSplit:
        x = np.ascontiguousarray(normalised(r.images, mean, std))
        return DetSplit(x, tuple(np.asarray(b, np.float32).reshape(-1, 4) for b in r.boxes),
                        tuple(np.asarray(lab, np.int64).reshape(-1) for lab in r.labels))
    c, h, w = train.images.shape[1:]
    return DetDataset(name, cut(raws[0]), cut(raws[1]), cut(raws[2]), len(train.class_names), (int(c), int(h), int(w)),
                      tuple(train.class_names), mean, std)
