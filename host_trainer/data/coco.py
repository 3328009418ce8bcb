"""`coco:PATH`: a COCO instances JSON file, every annotation checked, and where its images are; data/stream.py
streams the images.

PATH is an instances JSON file, or a folder: its only top-level *.json, else its annotations.json, else one
instances JSON per split (`split_jsons`: train and val or test, named so, at the top, in annotations/, or one
in each split folder: train/, valid/, test/, as Roboflow exports), else its only instances*.json. An image's
file is `file_name` relative to the JSON's folder, else in images/ beside it, else (a split's JSON) in the
folder its split is named by (instances_train2017.json: PATH/train2017/ or PATH/images/train2017/). Split files
must name the same classes; their images keep their split (data/presplit.py) unless --split asks for another.
Categories map to class ids in ascending category-id order; names come from `name`. `iscrowd: 1` annotations
are skipped unchecked (a crowd region is not one object; COCO's own evaluation ignores them too). Images are
ordered by image id. An image's width/height in the JSON, when given, must match its file's header (read here;
no pixel is decoded).

A box overhanging its image by up to COCO_TOLERANCE_PX is clipped; more is an error (a wrong box should stop
the run, not train the detector). No box is dropped for being small: at the input size, that is the loader's
decision (data/stream_augment.py `place_boxes`). Images without boxes are kept as negatives; a set with no box
at all is an error. A malformed annotation is a one-line UserError naming its id.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from host_trainer.data.annotations import Annotations, read_text
from host_trainer.data.images import image_size_of, split_name
from host_trainer.errors import UserError

COCO_TOLERANCE_PX = 1.0  # a COCO box may overhang its image by up to a pixel (rounding in label tools); clipped


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


def coco_annotations(path: str | Path) -> Annotations:
    """`coco:PATH`: an instances JSON file, or a folder holding one (see `_coco_json`) or one per split
    (`split_jsons`), every check made; boxes xyxy normalised to their image."""
    root = Path(path).expanduser()
    per_split = split_jsons(root)
    if not per_split:
        return _read_coco(_coco_json(root))
    read = [(split, file, _read_coco(file, _named_dirs(root, file))) for split, file in per_split]
    _, first_file, first = read[0]
    for _, file, ann in read[1:]:
        if ann.names != first.names:
            raise UserError(f"{file} names other classes than {first_file} ({', '.join(ann.names)} vs "
                            f"{', '.join(first.names)}): every split must have the same categories")
    return Annotations([f for *_, a in read for f in a.files], [b for *_, a in read for b in a.boxes],
                       [lab for *_, a in read for lab in a.labels], first.names,
                       tuple(src for *_, a in read for src in a.sources),
                       tuple(split for split, _, a in read for _ in a.files))


def split_jsons(root: Path) -> list[tuple[str, Path]]:
    """[(split, its instances JSON)] in train, val, test order when folder `root` holds one JSON per split (not
    when it has a single top-level JSON or an annotations.json: that is the whole set); else []."""
    if not root.is_dir():
        return []
    top = sorted(f for f in root.glob("*.json") if f.is_file() and not f.name.startswith("."))
    if len(top) == 1 or root / "annotations.json" in top:
        return []
    found: dict[str, list[Path]] = {}
    for file in top + sorted((root / "annotations").glob("*.json")):
        word = _split_word(file.stem)
        if word:
            found.setdefault(split_name(word.rstrip("0123456789")), []).append(file)  # type: ignore[arg-type]
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and split_name(p.name)):
        inside = sorted(folder.glob("*.json"))
        if len(inside) == 1 and not top:  # Roboflow: train/_annotations.coco.json
            found.setdefault(split_name(folder.name), []).append(inside[0])  # type: ignore[arg-type]
    # annotations/ of a COCO download also holds captions_* and person_keypoints_*: the instances file counts
    picked = {s: [f for f in fs if f.name.startswith("instances")] if len(fs) > 1 else fs for s, fs in found.items()}
    if "train" not in picked or not {"val", "test"} & set(picked) or any(len(fs) != 1 for fs in picked.values()):
        return []
    return [(s, picked[s][0]) for s in ("train", "val", "test") if s in picked]


def _split_word(stem: str) -> str | None:
    """The word of a JSON's name that names a split, digits kept ("train2017" in instances_train2017), or None."""
    for word in re.split(r"[_\-.\s]+", stem):
        if split_name(word.rstrip("0123456789")):
            return word
    return None


def _named_dirs(root: Path, json_file: Path) -> tuple[Path, ...]:
    """Where a split JSON's images may lie besides its own folder: the folder its split word names, at the top
    or under images/ (COCO's own download: annotations/instances_train2017.json, images in train2017/)."""
    word = _split_word(json_file.stem)
    return () if word is None else (root / word, root / "images" / word)


def _read_coco(json_file: Path, more_dirs: tuple[Path, ...] = ()) -> Annotations:
    """One instances JSON, every check made."""
    doc = _load_coco(json_file)
    cat_index, names = _coco_categories(doc, json_file)
    images = _coco_images(doc, json_file)
    per_image = _coco_annotations(doc, json_file, {im.id for im in images}, cat_index)
    if not any(per_image.values()):
        raise UserError(f"{json_file}: no annotations (crowd annotations are skipped): nothing to learn")
    files, boxes = [], []
    for im in images:
        file, width, height = _coco_file(json_file, im, more_dirs)
        files.append(file)
        boxes.append([_coco_xyxy(b, width, height, im.file_name) for b in per_image[im.id]])
    labels = [[b.label for b in per_image[im.id]] for im in images]
    return Annotations(files, boxes, labels, names, tuple(im.file_name for im in images))


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
        doc = json.loads(read_text(file))
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


def _coco_file(json_file: Path, im: _CocoImage, more_dirs: tuple[Path, ...] = ()) -> tuple[Path, int, int]:
    """(the image's file, its width, its height): `file_name` beside the JSON, else in images/ beside it, else
    in `more_dirs`."""
    folder = json_file.parent
    for file in (folder / im.file_name, folder / "images" / im.file_name, *(d / im.file_name for d in more_dirs)):
        if file.is_file():
            width, height = image_size_of(file)
            if None not in (im.width, im.height) and (im.width, im.height) != (width, height):
                raise UserError(f"{json_file}: image id {im.id} ({im.file_name}): the JSON says "
                                f"{im.width}x{im.height}, the file is {width}x{height}")
            return file, width, height
    looked = ", ".join(str(d) for d in (folder, folder / "images", *more_dirs))
    raise UserError(f"{json_file}: image id {im.id}: file {im.file_name!r} not found (looked in {looked})")


def _coco_xyxy(box: _CocoBox, width: int, height: int, file_name: str) -> list[float]:
    """Original-pixel [x, y, w, h] -> xyxy normalised to the image, clipped to it."""
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
    return [x1 / width, y1 / height, x2 / width, y2 / height]
