"""`coco:PATH`: a COCO instances JSON file, every annotation checked, and where its images are; data/stream.py
streams the images.

PATH is an instances JSON file, or a folder: its only top-level *.json, else its annotations.json, else its
only instances*.json. An image's file is `file_name` relative to the JSON's folder, else in images/ beside it.
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
from dataclasses import dataclass
from pathlib import Path

from host_trainer.data.annotations import Annotations, read_text
from host_trainer.data.images import image_size_of
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
    """`coco:PATH`: an instances JSON file, or a folder holding one (see `_coco_json`), every check made; boxes
    xyxy normalised to their image."""
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


def _coco_file(json_file: Path, im: _CocoImage) -> tuple[Path, int, int]:
    """(the image's file, its width, its height): `file_name` beside the JSON, else in images/ beside it."""
    folder = json_file.parent
    for file in (folder / im.file_name, folder / "images" / im.file_name):
        if file.is_file():
            width, height = image_size_of(file)
            if None not in (im.width, im.height) and (im.width, im.height) != (width, height):
                raise UserError(f"{json_file}: image id {im.id} ({im.file_name}): the JSON says "
                                f"{im.width}x{im.height}, the file is {width}x{height}")
            return file, width, height
    raise UserError(f"{json_file}: image id {im.id}: file {im.file_name!r} not found "
                    f"(looked in {folder} and {folder / 'images'})")


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
