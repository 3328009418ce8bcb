"""Classification data sets: `digits`, `glyphs` and the user's own `imagefolder:PATH` (types: data/types.py).

`seed` picks the random split of `digits`
and `imagefolder`; the same seed always gives the same arrays. `glyphs` is one fixed, generated set
whatever the seed: it is a calibrated benchmark, and a new draw per run would cost a regeneration
(GlyphsConfig(seed=...) gives other draws).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from host_trainer.data.images import IMAGE_EXTENSIONS, read_image
from host_trainer.data.procedural.glyphs import GlyphsConfig, load_glyphs
from host_trainer.data.types import Dataset, Split
from host_trainer.errors import UserError
from host_trainer.progress import NULL, Progress

FRACTIONS = (0.70, 0.15, 0.15)  # train / val / test


def load_dataset(ref: str, seed: int, image_size: int, progress: Progress = NULL) -> Dataset:
    """A built-in data set by name, or `imagefolder:PATH` (one sub-folder of images per class)."""
    if image_size < 4:
        raise UserError(f"image size must be at least 4 pixels, got {image_size}")
    if ref == "digits":
        return digits_dataset(seed, image_size)
    if ref == "glyphs":
        return glyphs_dataset(GlyphsConfig(image_size=image_size), progress)
    if ref.startswith("imagefolder:"):
        path = ref.partition(":")[2]
        if not path.strip():
            raise UserError("imagefolder needs a path: imagefolder:PATH (one sub-folder of images per class)")
        return imagefolder_dataset(path, seed, image_size)
    if ref == "shapes-det" or ref.startswith(("coco:", "yolo:")):
        raise UserError(f"{ref} is a detection data set: add --task detect")
    raise UserError(f"unknown dataset {ref!r}: choose digits, glyphs or imagefolder:PATH")


def stratified_split(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test), 70/15/15 within every class, each sorted.

    Small classes keep at least one image for training, then give one to val and one to test
    before the proportions apply, so that each split sees as many classes as the data allow.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        n = len(idx)
        n_val = min(max(1, round(n * FRACTIONS[1])), n - 1)
        n_test = min(max(1, round(n * FRACTIONS[2])), n - 1 - n_val)
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val:n_val + n_test])
        parts[0].append(idx[n_val + n_test:])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def _build(name: str, x: np.ndarray, y: np.ndarray, splits: tuple[np.ndarray, ...],
           class_names: tuple[str, ...]) -> Dataset:
    """Normalise `x` (float in [0, 1], NCHW) with train statistics and cut it into splits."""
    train, val, test = splits
    if len(val) == 0 or len(test) == 0:
        # Too few images for held-out splits: reuse what exists rather than fail (and say so).
        warnings.warn(f"{name}: too few images per class for separate val/test splits; reusing images",
                      stacklevel=3)
        val = val if len(val) else (test if len(test) else train)
        test = test if len(test) else val
    mean = float(x[train].mean())
    std = float(x[train].std()) or 1.0  # a constant image set would otherwise divide by zero
    x = ((x - mean) / std).astype(np.float32)

    def cut(i: np.ndarray) -> Split:
        return Split(np.ascontiguousarray(x[i]), y[i].astype(np.int64))
    return Dataset(name, cut(train), cut(val), cut(test), len(class_names),
                   tuple(int(d) for d in x.shape[1:]), class_names, mean, std)  # type: ignore[arg-type]


def digits_dataset(seed: int = 0, image_size: int = 32) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits, bilinearly upsampled to `image_size`."""
    import torch
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # pixel values are 0..16
    x = torch.nn.functional.interpolate(x, size=(image_size,) * 2, mode="bilinear", align_corners=False)
    y = bunch.target.astype(np.int64)
    return _build("digits", x.numpy(), y, stratified_split(y, seed), tuple(str(d) for d in range(10)))


def glyphs_dataset(config: GlyphsConfig = GlyphsConfig(), progress: Progress = NULL) -> Dataset:
    """The procedural `glyphs` set (data/procedural/glyphs.py); its splits are generated, not cut."""
    arrays = load_glyphs(config, progress)
    xs = [arrays[f"x_{s}"] for s in ("train", "val", "test")]
    x = np.concatenate(xs).astype(np.float32)[:, None] / 255.0
    y = np.concatenate([arrays[f"y_{s}"] for s in ("train", "val", "test")])
    bounds = np.cumsum([0] + [len(a) for a in xs])
    splits = tuple(np.arange(bounds[i], bounds[i + 1]) for i in range(3))
    return _build("glyphs", x, y, splits, tuple(config.classes))


def _class_images(root: Path) -> dict[str, list[Path]]:
    """{class name: sorted image files}, checking the layout; hidden files and folders are ignored."""
    if not root.exists():
        raise UserError(f"image folder does not exist: {root}")
    if not root.is_dir():
        raise UserError(f"image folder is not a directory: {root}")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"no class sub-folders in {root}: put each class's images in a folder named after it")
    found = {c.name: sorted(f for f in c.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in f.relative_to(c).parts))
             for c in classes}
    if not any(found.values()):
        kinds = " ".join(IMAGE_EXTENSIONS)
        raise UserError(f"no images found in the class folders of {root} (looked for {kinds})")
    empty = [name for name, files in found.items() if not files]
    if empty:
        raise UserError(f"class folder(s) without images in {root}: {', '.join(empty)}")
    if len(found) < 2:
        raise UserError(f"need at least 2 classes in {root}, found only {next(iter(found))!r}")
    return found


def imagefolder_dataset(path: str, seed: int = 0, image_size: int = 32) -> Dataset:
    """The user's images: one sub-folder per class, grey (1 channel) if every image is, else RGB."""
    root = Path(path).expanduser()
    found = _class_images(root)
    images, labels, greys = [], [], []
    for label, files in enumerate(found.values()):
        for f in files:
            arr, grey = read_image(f, image_size)
            images.append(arr)
            labels.append(label)
            greys.append(grey)
    x = np.stack(images).transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if all(greys):
        x = x[:, :1]  # a grey image converted to RGB has three equal channels
    y = np.asarray(labels, dtype=np.int64)
    return _build(f"imagefolder:{root}", x, y, stratified_split(y, seed), tuple(found))
