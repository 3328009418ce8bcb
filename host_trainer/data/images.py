"""The user's image files: listing them (an image folder's classes, a detection set's images), the split folder
each sits in (train/, val/, test/), telling grey from colour, converting any mode PIL reads to RGB, and a file's
size from its header.

Decoding, resizing and augmenting happen per sample, in data/stream_files.py. A bad layout, or a header PIL
cannot read, is a one-line UserError that names the folder or the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from host_trainer.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Folder names that mark a data set's own split (data/presplit.py), as the common tools write them.
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def is_grey(img: Image.Image) -> bool:
    if img.mode in _GREY_MODES:
        return True
    if img.mode == "P":  # a palette image is grey when every palette entry is
        rgb = np.asarray(img.convert("RGB"))
        return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return False


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit greys: PIL's convert("L") would clip, so scale by the type's range instead.
        a = np.asarray(img, dtype=np.float32)
        a = a / (65535.0 if a.max() > 255 else 255.0)
        img = Image.fromarray(np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def image_size_of(file: Path) -> tuple[int, int]:
    """(width, height) from the header alone, so that boxes are checked before any image is decoded."""
    try:
        with Image.open(file) as img:
            return img.size
    except Exception as exc:  # PIL raises many types on bad files
        raise UserError(f"cannot read image {file}: {type(exc).__name__}: {exc}") from None


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, hidden files and folders ignored, sorted by relative path."""
    found = [f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in f.relative_to(folder).parts)]
    return sorted(found, key=lambda f: f.relative_to(folder).as_posix())


def split_name(folder: str) -> str | None:
    """The split a folder name stands for (train, val or test), or None."""
    return SPLIT_NAMES.get(folder.lower())


def tag_of(parts: tuple[str, ...]) -> str | None:
    """An image's split from its path relative to the set's root: images/train/a.jpg (Ultralytics), train/… (an
    image folder, Roboflow's train/images/a.jpg); None when its first folder names no split."""
    parts = parts[1:] if len(parts) > 2 and parts[0] == "images" else parts
    return split_name(parts[0]) if len(parts) > 1 else None


def folder_images(root: Path) -> tuple[dict[str, list[Path]], list[str | None] | None]:
    """`imagefolder:PATH`: ({class: its files}, each file's split). PATH holding only split folders (train/ and
    val/ or test/, each of class folders) is a set split already: files class by class, train, val, test within
    each; else PATH holds the class folders (`class_images`) and no file has a split (None)."""
    groups = _split_folders(root)
    if groups is None:
        return class_images(root), None
    per = {split: class_images(folder, min_classes=1) for split, folder in groups.items()}
    classes = sorted({c for found in per.values() for c in found})
    if len(classes) < 2:
        raise UserError(f"need at least 2 classes in {root}, found only {classes[0]!r}")
    found: dict[str, list[Path]] = {c: [] for c in classes}
    tags: list[str | None] = []
    for c in classes:
        for split in ("train", "val", "test"):
            files = per.get(split, {}).get(c, [])
            found[c] += files
            tags += [split] * len(files)
    return found, tags


def _split_folders(root: Path) -> dict[str, Path] | None:
    """{split: folder} when every sub-folder of `root` names a split, train among them, and each holds folders
    (its classes); else None (a folder of images directly under train/ is a class named "train")."""
    if not root.is_dir():
        return None
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    named = [(split_name(p.name), p) for p in subs]
    if not subs or any(s is None for s, _ in named) or "train" not in {s for s, _ in named}:
        return None
    if not all(any(q.is_dir() for q in p.iterdir()) for p in subs):
        return None
    groups: dict[str, Path] = {}
    for split, folder in named:
        if split in groups:
            raise UserError(f"two {split} folders in {root}: {groups[split].name} and {folder.name}; keep one")
        groups[split] = folder  # type: ignore[index]
    return groups


def class_images(root: Path, min_classes: int = 2) -> dict[str, list[Path]]:
    """`imagefolder:PATH`: {class name: sorted image files}, one sub-folder per class, the layout checked;
    hidden files and folders are ignored."""
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
    if len(found) < min_classes:
        raise UserError(f"need at least 2 classes in {root}, found only {next(iter(found))!r}")
    return found
