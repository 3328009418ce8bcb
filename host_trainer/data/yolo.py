"""`yolo:PATH`: YOLO text labels, every line checked, and their images; data/stream.py streams the images.

PATH/images/** with PATH/labels/** (same relative path, `.txt`: the Ultralytics layout), else
PATH/<split>/images/** with PATH/<split>/labels/** for split folders train, val (valid) and test (Roboflow's
export), else image files with their `.txt` beside them anywhere under PATH (or under PATH/images when there is
no labels/). Images are ordered by relative path, and tagged with the split folder they sit in (images/train/…,
train/images/…, train/…), which data/presplit.py keeps unless --split asks for another. Class names:
PATH/classes.txt, else `names:` in PATH/data.yaml or dataset.yaml (data/yaml_names.py), else "0".."largest id".

Coordinates may overshoot [0, 1] by YOLO_TOLERANCE (writers round to 6 decimals) and are clipped; more is an
error. Images without a label file, or with an empty one, are negatives; a set with no box at all is an
error. A malformed line is a one-line UserError naming the file and the line.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from host_trainer.data.annotations import Annotations, read_text
from host_trainer.data.images import IMAGE_EXTENSIONS, image_files, split_name, tag_of
from host_trainer.data.yaml_names import yaml_names
from host_trainer.errors import UserError

YOLO_TOLERANCE = 1e-3    # normalised: about a pixel of a 1000-pixel image (writers round to 6 decimals)
_YAML_NAMES = ("data.yaml", "dataset.yaml")


def yolo_annotations(path: str | Path) -> Annotations:
    """`yolo:PATH`: images/ + labels/ (Ultralytics), or images with their .txt labels side by side, every check
    made; boxes xyxy normalised to their image."""
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"YOLO folder does not exist: {root}")
    if not root.is_dir():
        raise UserError(f"yolo:PATH must be a folder (images/ and labels/, or images with .txt beside them): {root}")
    pairs, label_hint = _yolo_pairs(root)
    named = _yolo_names(root)
    parsed = [_yolo_labels(label, named) for _, label in pairs]
    if not any(len(lab) for _, lab in parsed):
        raise UserError(f"no boxes in any YOLO label file under {root} (expected {label_hint})")
    if named is None:
        top = max(int(lab.max()) for _, lab in parsed if len(lab))
        names = tuple(str(i) for i in range(top + 1))
    else:
        names = named[0]
    files = [image for image, _ in pairs]
    sources = tuple(image.relative_to(root).as_posix() for image in files)
    splits = tuple(tag_of(image.relative_to(root).parts) for image in files)
    return Annotations(files, [b for b, _ in parsed], [lab for _, lab in parsed], names, sources, splits)


def _yolo_pairs(root: Path) -> tuple[list[tuple[Path, Path]], str]:
    """[(image, its label file)] sorted by image path, and where labels are expected (for messages)."""
    images_dir = root / "images"
    split_dirs = [] if images_dir.is_dir() else _split_image_dirs(root)
    if images_dir.is_dir():
        files = image_files(images_dir)
        labels_dir = root / "labels" if (root / "labels").is_dir() else images_dir  # no labels/: .txt beside
        pairs = [(f, (labels_dir / f.relative_to(images_dir)).with_suffix(".txt")) for f in files]
        where, hint = images_dir, "labels/<same path as under images/>.txt"
    elif split_dirs:
        pairs, where, hint = [], root, "<split>/labels/<same path as under <split>/images/>.txt"
        for split_dir in split_dirs:
            images, labels = split_dir / "images", split_dir / "labels"
            labels = labels if labels.is_dir() else images
            pairs += [(f, (labels / f.relative_to(images)).with_suffix(".txt")) for f in image_files(images)]
        files = [image for image, _ in pairs]
    else:
        files = image_files(root)
        pairs = [(f, f.with_suffix(".txt")) for f in files]
        where, hint = root, "a .txt beside each image, or images/ and labels/ folders"
    if not files:
        raise UserError(f"no images found in {where} (looked for {' '.join(IMAGE_EXTENSIONS)})")
    return pairs, hint


def _split_image_dirs(root: Path) -> list[Path]:
    """Roboflow's layout: the split folders (train, valid, test) of `root` that hold an images/ folder."""
    return sorted(p for p in root.iterdir() if p.is_dir() and split_name(p.name) and (p / "images").is_dir())


def _yolo_labels(file: Path, named: tuple[tuple[str, ...], Path] | None) -> tuple[np.ndarray, np.ndarray]:
    """(boxes float32 (n, 4) xyxy normalised to the image, labels int64 (n,)); no file or an empty one: none."""
    boxes: list[list[float]] = []
    labels: list[int] = []
    if file.is_file():
        for n, line in enumerate(read_text(file).splitlines(), 1):
            if line.strip():
                label, box = _yolo_line(f"{file} line {n}", line, named)
                labels.append(label)
                boxes.append(box)
    return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _yolo_line(where: str, line: str, named: tuple[tuple[str, ...], Path] | None) -> tuple[int, list[float]]:
    """One `class cx cy w h` line -> (class id, normalised xyxy clipped to [0, 1])."""
    tokens = line.split()
    if len(tokens) != 5:
        extra = " (segmentation polygons are not supported)" if len(tokens) > 5 else ""
        raise UserError(f'{where}: expected 5 numbers "class cx cy w h", got {len(tokens)}{extra}')
    values = []
    for token in tokens:
        try:
            values.append(float(token))
        except ValueError:
            raise UserError(f"{where}: non-numeric value {token!r}") from None
        if not math.isfinite(values[-1]):
            raise UserError(f"{where}: non-finite value {token!r}")
    cls, cx, cy, w, h = values
    if cls < 0 or cls != int(cls):
        raise UserError(f"{where}: class id must be a non-negative integer, got {tokens[0]}")
    if named is not None and cls >= len(named[0]):
        raise UserError(f"{where}: class id {int(cls)} not in {named[1].name} "
                        f"({len(named[0])} classes, ids 0..{len(named[0]) - 1})")
    if w <= 0 or h <= 0:
        raise UserError(f"{where}: width and height must be positive, got w={tokens[3]} h={tokens[4]}")
    eps = YOLO_TOLERANCE
    for token, v in zip(tokens[1:], values[1:]):
        if not -eps <= v <= 1 + eps:
            raise UserError(f"{where}: coordinate {token} outside [0, 1] (YOLO labels are normalised by image size)")
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    if min(box) < -eps or max(box) > 1 + eps:
        raise UserError(f"{where}: box reaches outside the image: x {box[0]:.4g}..{box[2]:.4g}, "
                        f"y {box[1]:.4g}..{box[3]:.4g} (must lie in [0, 1])")
    return int(cls), [min(max(v, 0.0), 1.0) for v in box]


def _yolo_names(root: Path) -> tuple[tuple[str, ...], Path] | None:
    """(class names, the file they came from), or None when the set names no classes."""
    classes = root / "classes.txt"
    if classes.is_file():
        lines = read_text(classes).rstrip().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                raise UserError(f"{classes} line {n}: empty class name")
        if not lines:
            raise UserError(f"{classes} is empty: write one class name per line")
        return tuple(line.strip() for line in lines), classes
    for name in _YAML_NAMES:
        file = root / name
        if file.is_file():
            names = yaml_names(read_text(file), file)
            if names is not None:
                return names, file
    return None
