"""The built-in classification sets, `digits` and `glyphs`, in memory (types: data/types.py), the split rule
every classification set uses, and the one-line errors for a bad reference.

The user's `imagefolder:PATH` is streamed from disk (data/stream.py) with the same split rule
(`stratified_split`, then `held_out`; data/presplit.py keeps a folder's own train/val/test). `seed` picks the
random split of `digits` and of an image folder; the same seed always gives the same split. `glyphs` is one
fixed, generated set whatever the seed: it is a calibrated benchmark, and a new draw per run would cost a
regeneration (GlyphsConfig(seed=...) gives other draws). Normalisation: per channel from the training split, or
as given (`DataOptions`, data/options.py).
"""

from __future__ import annotations

import warnings

import numpy as np

from host_trainer.data.options import DataOptions, array_stats, normalised, resolve_norm
from host_trainer.data.procedural.glyphs import GlyphsConfig, load_glyphs
from host_trainer.data.types import Dataset, Split
from host_trainer.errors import UserError
from host_trainer.progress import NULL, Progress

FRACTIONS = (0.70, 0.15, 0.15)  # train / val / test


def load_dataset(ref: str, seed: int, image_size: int, progress: Progress = NULL,
                 options: DataOptions = DataOptions()) -> Dataset:
    """A built-in data set by name; any other reference is a one-line UserError (an image folder is streamed:
    data/stream.py `stream_data`, which calls this for everything it does not stream)."""
    if image_size < 4:
        raise UserError(f"image size must be at least 4 pixels, got {image_size}")
    if ref == "digits":
        return digits_dataset(seed, image_size, options)
    if ref == "glyphs":
        return glyphs_dataset(GlyphsConfig(image_size=image_size), progress, options)
    if ref.startswith("imagefolder:"):
        if not ref.partition(":")[2].strip():
            raise UserError("imagefolder needs a path: imagefolder:PATH (one sub-folder of images per class)")
        raise ValueError(f"{ref}: the user's image folders are streamed (data/stream.py stream_data)")
    if ref == "shapes-det" or ref.startswith(("coco:", "yolo:")):
        raise UserError(f"{ref} is a detection data set: add --task detect")
    raise UserError(f"unknown dataset {ref!r}: choose digits, glyphs or imagefolder:PATH")


def stratified_split(y: np.ndarray, seed: int, fractions: tuple[float, float, float] = FRACTIONS,
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test), `fractions` (70/15/15) within every class, each sorted.

    Small classes keep at least one image for training, then give one to val and one to test (unless their
    fraction is 0) before the proportions apply, so that each split sees as many classes as the data allow.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n = len(idx)
        n_val = min(max(1, round(n * fractions[1])), n - 1) if fractions[1] else 0
        n_test = min(max(1, round(n * fractions[2])), n - 1 - n_val) if fractions[2] else 0
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val:n_val + n_test])
        parts[0].append(idx[n_val + n_test:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def held_out(name: str, splits: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test), an empty val or test replaced by what exists, with a warning: too few images for
    held-out splits should not stop a run."""
    train, val, test = splits
    if len(val) == 0 or len(test) == 0:
        warnings.warn(f"{name}: too few images per class for separate val/test splits; reusing images",
                      stacklevel=3)
        val = val if len(val) else (test if len(test) else train)
        test = test if len(test) else val
    return train, val, test


def _build(name: str, x: np.ndarray, y: np.ndarray, splits: tuple[np.ndarray, ...],
           class_names: tuple[str, ...], options: DataOptions = DataOptions()) -> Dataset:
    """Normalise `x` (float in [0, 1], NCHW) with train statistics (or the given ones) and cut it into splits."""
    train, val, test = held_out(name, splits)
    mean, std = resolve_norm(options, x.shape[1], lambda per_channel: array_stats(x[train], per_channel))
    x = normalised(x, mean, std)

    def cut(i: np.ndarray) -> Split:
        return Split(np.ascontiguousarray(x[i]), y[i].astype(np.int64))
    return Dataset(name, cut(train), cut(val), cut(test), len(class_names),
                   tuple(int(d) for d in x.shape[1:]), class_names, mean, std)  # type: ignore[arg-type]


def digits_dataset(seed: int = 0, image_size: int = 32, options: DataOptions = DataOptions()) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits, bilinearly upsampled to `image_size`."""
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # pixel values are 0..16
    x = torch.nn.functional.interpolate(x, size=(image_size,) * 2, mode="bilinear", align_corners=False)
    y = bunch.target.astype(np.int64)
    return _build("digits", x.numpy(), y, stratified_split(y, seed), tuple(str(d) for d in range(10)), options)


def glyphs_dataset(config: GlyphsConfig = GlyphsConfig(), progress: Progress = NULL,
                   options: DataOptions = DataOptions()) -> Dataset:
    """The procedural `glyphs` set (data/procedural/glyphs.py); its splits are generated, not cut."""
    arrays = load_glyphs(config, progress)
    xs = [arrays[f"x_{s}"] for s in ("train", "val", "test")]
    x = np.concatenate(xs).astype(np.float32)[:, None] / 255.0
    y = np.concatenate([arrays[f"y_{s}"] for s in ("train", "val", "test")])
    bounds = np.cumsum([0] + [len(a) for a in xs])
    splits = tuple(np.arange(bounds[i], bounds[i + 1]) for i in range(3))
    return _build("glyphs", x, y, splits, tuple(config.classes), options)
