"""The user's detection sets in the two common on-disk formats: COCO JSON (`coco:PATH`) and YOLO text labels
(`yolo:PATH`). Both come back as a `RawDetection` (host_trainer/det_data.py).

Shared rules:
- Every image is resized as a whole to S×S (a plain resize, no letterbox: the network sees exactly that image), so
  a box scales by S/W horizontally and S/H vertically. Boxes come out as xyxy pixels of the S×S image.
- The set is grey (1 channel) when every image is grey, else RGB (3), as in data.py.
- A box overhanging its image by less than the tolerance is clipped; more is an error (a wrong box should stop
  the run, not train the detector). A box under a pixel after the resize is kept: dropping the user's labels
  silently would hide that the input size is too small for them.
- Images without boxes are kept as negatives; a set with no box at all is an error. A malformed annotation is a
  one-line UserError naming the file and the line (YOLO) or the annotation id (COCO).

COCO: PATH is an instances JSON file, or a folder: its only top-level *.json, else its annotations.json, else its
only instances*.json. An image's file is `file_name` relative to the JSON's folder, else in images/ beside it.
Categories map to class ids in ascending category-id order; names come from `name`. `iscrowd: 1` annotations are
skipped unchecked (a crowd region is not one object; COCO's own evaluation ignores them too). Images are ordered
by image id. An image's width/height in the JSON, when given, must match its file.

YOLO: PATH/images/** with PATH/labels/** (same relative path, `.txt`: the Ultralytics layout; its train/val
sub-folders are merged here and re-split by det_data), else image files with their `.txt` beside them anywhere
under PATH (or under PATH/images when there is no labels/). Images are ordered by relative path. Class names:
PATH/classes.txt, else `names:` in PATH/data.yaml or dataset.yaml, else "0".."largest id". PyYAML is not a
dependency, so a small parser reads `names:` in the forms label tools write: `[a, b]`, `{0: a, 1: b}`, a block
list (`- a`) or a block mapping (`0: a`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from host_trainer.data import IMAGE_EXTENSIONS, _read_image
from host_trainer.det_data import RawDetection
from host_trainer.errors import UserError
from host_trainer.yaml_names import yaml_names

COCO_TOLERANCE_PX = 1.0  # a COCO box may overhang its image by up to a pixel (rounding in label tools); clipped
YOLO_TOLERANCE = 1e-3    # normalised: about a pixel of a 1000-pixel image (writers round to 6 decimals)
_YAML_NAMES = ("data.yaml", "dataset.yaml")


# ---------------------------------------------------------------------------------------------------- shared

def _check_size(image_size: int) -> None:
    if image_size < 1:
        raise UserError(f"image size must be positive, got {image_size}")


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")  # -sig: label tools on Windows write a BOM
    except UnicodeDecodeError:
        raise UserError(f"{file} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None


def _image_size(file: Path) -> tuple[int, int]:
    """(width, height) from the header alone, so that boxes are checked before any image is decoded."""
    try:
        with Image.open(file) as img:
            return img.size
    except Exception as exc:  # PIL raises many types on bad files
        raise UserError(f"cannot read image {file}: {type(exc).__name__}: {exc}") from None


def _read_pixels(files: list[Path], size: int) -> np.ndarray:
    """float32 (N, C, S, S) in [0, 1]; C = 1 when every image is grey (a grey image read as RGB has 3 equal
    channels), else 3."""
    out = np.empty((len(files), 3, size, size), np.float32)
    greys = []
    for i, file in enumerate(files):
        arr, grey = _read_image(file, size)
        out[i] = arr.transpose(2, 0, 1)
        greys.append(grey)
    return np.ascontiguousarray(out[:, :1]) if all(greys) else out


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, hidden files and folders ignored, sorted by relative path."""
    found = [f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in f.relative_to(folder).parts)]
    return sorted(found, key=lambda f: f.relative_to(folder).as_posix())


def _raw(files: list[Path], size: int, boxes: list[Any], labels: list[Any], names: tuple[str, ...],
         sources: tuple[str, ...]) -> RawDetection:
    """The loaded set; pixels are decoded last, once every annotation has passed its checks."""
    return RawDetection(_read_pixels(files, size), tuple(np.asarray(b, np.float32).reshape(-1, 4) for b in boxes),
                        tuple(np.asarray(lab, np.int64).reshape(-1) for lab in labels), names, sources)


# ------------------------------------------------------------------------------------------------------ COCO

@dataclass(frozen=True)
class _CocoImage:
    id: int
    file_name: str
    width: int | None   # as the JSON states it (optional in the wild); checked against the file
    height: int | None


@dataclass(frozen=True)
class _CocoBox:
    where: str          # "FILE: annotation id N", for messages
    xywh: tuple[float, float, float, float]
    label: int


def read_coco(path: str | Path, image_size: int) -> RawDetection:
    """`coco:PATH`: an instances JSON file, or a folder holding one (see `_coco_json`), and its images."""
    _check_size(image_size)
    json_file = _coco_json(Path(path).expanduser())
    doc = _load_coco(json_file)
    cat_index, names = _coco_categories(doc, json_file)
    images = _coco_images(doc, json_file)
    per_image = _coco_annotations(doc, json_file, {im.id for im in images}, cat_index)
    if not any(per_image.values()):
        raise UserError(f"{json_file}: no annotations (crowd annotations are skipped): nothing to learn")
    files, boxes = [], []
    for im in images:
        file, width, height = _coco_file(json_file, im)
        files.append(file)
        boxes.append([_coco_xyxy(b, width, height, image_size, im.file_name) for b in per_image[im.id]])
    labels = [[b.label for b in per_image[im.id]] for im in images]
    return _raw(files, image_size, boxes, labels, names, tuple(im.file_name for im in images))


def _coco_json(path: Path) -> Path:
    """The annotation file: PATH itself, or in folder PATH its only top-level *.json, else its `annotations.json`,
    else its only `instances*.json`; anything else is ambiguous and asks for the file."""
    if not path.exists():
        raise UserError(f"COCO path does not exist: {path}")
    if path.is_file():
        return path
    jsons = sorted(f for f in path.glob("*.json") if f.is_file() and not f.name.startswith("."))
    if not jsons:
        raise UserError(f"no COCO annotation file (*.json) in {path}: use coco:FILE.json")
    if len(jsons) == 1:
        return jsons[0]
    if path / "annotations.json" in jsons:
        return path / "annotations.json"
    instances = [f for f in jsons if f.name.startswith("instances")]
    if len(instances) == 1:
        return instances[0]
    listed = ", ".join(f.name for f in jsons)
    raise UserError(f"{len(jsons)} JSON files in {path} ({listed}): name one with coco:FILE.json")


def _load_coco(file: Path) -> dict:
    try:
        doc = json.loads(_read_text(file))
    except json.JSONDecodeError as exc:
        raise UserError(f"{file}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise UserError(f"{file}: expected a COCO object with 'images', 'annotations' and 'categories'")
    missing = [key for key in ("images", "annotations", "categories") if key not in doc]
    if missing:
        raise UserError(f"{file}: not a COCO instances file: missing {', '.join(repr(k) for k in missing)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc[key], list) or not all(isinstance(e, dict) for e in doc[key]):
            raise UserError(f"{file}: {key!r} must be a list of objects")
    return doc


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coco_categories(doc: dict, file: Path) -> tuple[dict[int, int], tuple[str, ...]]:
    """({category id: class id}, class names): class ids follow ascending category id (COCO's ids have gaps)."""
    names: dict[int, str] = {}
    for k, cat in enumerate(doc["categories"]):
        cid = cat.get("id")
        if not _is_int(cid):
            raise UserError(f"{file}: category #{k} needs an integer 'id', got {cid!r}")
        if cid in names:
            raise UserError(f"{file}: duplicate category id {cid}")
        names[cid] = str(cat.get("name", cid))
    if not names:
        raise UserError(f"{file}: 'categories' is empty: at least one class is needed")
    order = sorted(names)
    return {cid: k for k, cid in enumerate(order)}, tuple(names[cid] for cid in order)


def _coco_images(doc: dict, file: Path) -> list[_CocoImage]:
    images: dict[int, _CocoImage] = {}
    for k, im in enumerate(doc["images"]):
        iid, name = im.get("id"), im.get("file_name")
        if not _is_int(iid):
            raise UserError(f"{file}: image #{k} needs an integer 'id', got {iid!r}")
        if not isinstance(name, str) or not name:
            raise UserError(f"{file}: image id {iid} needs a 'file_name'")
        if iid in images:
            raise UserError(f"{file}: duplicate image id {iid} ({images[iid].file_name} and {name})")
        for key in ("width", "height"):
            if key in im and not (_is_int(im[key]) and im[key] > 0):
                raise UserError(f"{file}: image id {iid}: {key} must be a positive integer, got {im[key]!r}")
        images[iid] = _CocoImage(iid, name, im.get("width"), im.get("height"))
    if not images:
        raise UserError(f"{file}: 'images' is empty: no images found")
    return [images[i] for i in sorted(images)]


def _coco_annotations(doc: dict, file: Path, image_ids: set[int],
                      cat_index: dict[int, int]) -> dict[int, list[_CocoBox]]:
    """{image id: its boxes}, every annotation checked except crowd ones (skipped)."""
    per_image: dict[int, list[_CocoBox]] = {i: [] for i in image_ids}
    for k, ann in enumerate(doc["annotations"]):
        where = f"{file}: annotation id {ann['id']}" if "id" in ann else f"{file}: annotation #{k} (no id)"
        if ann.get("iscrowd") in (1, True):
            continue
        iid, cid, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
        if not _is_int(iid) or iid not in image_ids:
            raise UserError(f"{where} refers to unknown image_id {iid!r}")
        if not _is_int(cid) or cid not in cat_index:
            raise UserError(f"{where} refers to unknown category_id {cid!r} (categories: {sorted(cat_index)})")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            raise UserError(f"{where}: bbox must be 4 numbers [x, y, width, height], got {bbox!r}")
        if bbox[2] <= 0 or bbox[3] <= 0:
            raise UserError(f"{where}: bbox width and height must be positive, got {bbox!r}")
        per_image[iid].append(_CocoBox(where, tuple(float(v) for v in bbox), cat_index[cid]))  # type: ignore[arg-type]
    return per_image


def _coco_file(json_file: Path, im: _CocoImage) -> tuple[Path, int, int]:
    """(the image's file, its width, its height): `file_name` beside the JSON, else in images/ beside it."""
    folder = json_file.parent
    for file in (folder / im.file_name, folder / "images" / im.file_name):
        if file.is_file():
            width, height = _image_size(file)
            if None not in (im.width, im.height) and (im.width, im.height) != (width, height):
                raise UserError(f"{json_file}: image id {im.id} ({im.file_name}): the JSON says "
                                f"{im.width}x{im.height}, the file is {width}x{height}")
            return file, width, height
    raise UserError(f"{json_file}: image id {im.id}: file {im.file_name!r} not found "
                    f"(looked in {folder} and {folder / 'images'})")


def _coco_xyxy(box: _CocoBox, width: int, height: int, size: int, file_name: str) -> list[float]:
    """Original-pixel [x, y, w, h] -> xyxy pixels of the S×S image, clipped to it."""
    x, y, w, h = box.xywh
    x1, y1, x2, y2 = x, y, x + w, y + h
    tol = COCO_TOLERANCE_PX
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        raise UserError(f"{box.where}: bbox {list(box.xywh)} lies outside the {width}x{height} image {file_name} "
                        "by more than a pixel")
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        raise UserError(f"{box.where}: bbox {list(box.xywh)} lies outside the {width}x{height} image {file_name}")
    sx, sy = size / width, size / height
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


# ------------------------------------------------------------------------------------------------------ YOLO

def read_yolo(path: str | Path, image_size: int) -> RawDetection:
    """`yolo:PATH`: images/ + labels/ (Ultralytics), or images with their .txt labels side by side."""
    _check_size(image_size)
    root = Path(path).expanduser()
    if not root.exists():
        raise UserError(f"YOLO folder does not exist: {root}")
    if not root.is_dir():
        raise UserError(f"yolo:PATH must be a folder (images/ and labels/, or images with .txt beside them): {root}")
    pairs, label_hint = _yolo_pairs(root)
    named = _yolo_names(root)
    parsed = [_yolo_labels(label, image_size, named) for _, label in pairs]
    if not any(len(lab) for _, lab in parsed):
        raise UserError(f"no boxes in any YOLO label file under {root} (expected {label_hint})")
    if named is None:
        top = max(int(lab.max()) for _, lab in parsed if len(lab))
        names = tuple(str(i) for i in range(top + 1))
    else:
        names = named[0]
    sources = tuple(image.relative_to(root).as_posix() for image, _ in pairs)
    return _raw([image for image, _ in pairs], image_size, [b for b, _ in parsed], [lab for _, lab in parsed],
                names, sources)


def _yolo_pairs(root: Path) -> tuple[list[tuple[Path, Path]], str]:
    """[(image, its label file)] sorted by image path, and where labels are expected (for messages)."""
    images_dir = root / "images"
    if images_dir.is_dir():
        files = _image_files(images_dir)
        labels_dir = root / "labels" if (root / "labels").is_dir() else images_dir  # no labels/: .txt beside
        pairs = [(f, (labels_dir / f.relative_to(images_dir)).with_suffix(".txt")) for f in files]
        where, hint = images_dir, "labels/<same path as under images/>.txt"
    else:
        files = _image_files(root)
        pairs = [(f, f.with_suffix(".txt")) for f in files]
        where, hint = root, "a .txt beside each image, or images/ and labels/ folders"
    if not files:
        raise UserError(f"no images found in {where} (looked for {' '.join(IMAGE_EXTENSIONS)})")
    return pairs, hint


def _yolo_labels(file: Path, size: int, named: tuple[tuple[str, ...], Path] | None) -> tuple[np.ndarray, np.ndarray]:
    """(boxes float32 (n, 4) xyxy pixels of the S×S image, labels int64 (n,)); no file or an empty one: none."""
    boxes: list[list[float]] = []
    labels: list[int] = []
    if file.is_file():
        for n, line in enumerate(_read_text(file).splitlines(), 1):
            if line.strip():
                label, box = _yolo_line(f"{file} line {n}", line, named)
                labels.append(label)
                boxes.append([v * size for v in box])
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
        lines = _read_text(classes).rstrip().splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                raise UserError(f"{classes} line {n}: empty class name")
        if not lines:
            raise UserError(f"{classes} is empty: write one class name per line")
        return tuple(line.strip() for line in lines), classes
    for name in _YAML_NAMES:
        file = root / name
        if file.is_file():
            names = yaml_names(_read_text(file), file)
            if names is not None:
                return names, file
    return None
