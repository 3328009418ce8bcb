"""COCO and YOLO detection sets: layouts, boxes (normalised by the readers, letterboxed by the loader), class
names, grey/RGB, and one clear error per mistake.

The readers (`coco_annotations`, `yolo_annotations`) are tested directly for what they check and return; the
set as the loop reads it (`stream_data`) for boxes in input pixels and for pixels. Every fixture is a few tiny
PNGs written into tmp_path, so that each test shows the exact files it reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from host_trainer.data.coco import coco_annotations
from host_trainer.data.stream import StreamDataset, stream_data
from host_trainer.data.yolo import yolo_annotations
from host_trainer.errors import UserError

S = 32


def write_png(path: Path, size: tuple[int, int], color: int | tuple[int, int, int], mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def streamed(ref: str) -> tuple[StreamDataset, dict[str, tuple[Any, int]]]:
    """The set as the loop reads it at S×S, and {file name: (its split, its index)} over train, val and test."""
    data = stream_data("detect", ref, seed=0, image_size=S)
    where = {Path(split.path(k)).name: (split, k) for split in (data.train, data.val, data.test)
             for k in range(len(split))}
    return data, where


def boxes_of(where: dict[str, tuple[Any, int]], name: str) -> tuple[list[list[float]], list[int]]:
    """An image's un-augmented boxes (xyxy pixels of the letterboxed S×S input) and their labels."""
    split, k = where[name]
    return split.boxes[k].tolist(), split.labels[k].tolist()


def pixels(data: StreamDataset, where: dict[str, tuple[Any, int]], name: str) -> np.ndarray:
    """An image as the loader gives it, un-normalised: (C, S, S) in [0, 1]."""
    split, k = where[name]
    return split[k].image.numpy() * np.array(data.std)[:, None, None] + np.array(data.mean)[:, None, None]


# ------------------------------------------------------------------------------------------------------ COCO

def coco_doc() -> dict:
    """Category ids 7 and 3 (class 0 = id 3 "dog", class 1 = id 7 "cat"), a crowd box, an image without boxes."""
    return {
        "images": [
            {"id": 3, "file_name": "a.png", "width": 64, "height": 32},
            {"id": 1, "file_name": "b.png", "width": 64, "height": 64},
            {"id": 2, "file_name": "c.png"},
            {"id": 7, "file_name": "sub/d.png", "width": 128, "height": 128},
        ],
        "annotations": [
            {"id": 10, "image_id": 3, "category_id": 7, "bbox": [8, 4, 16, 8]},
            {"id": 11, "image_id": 3, "category_id": 3, "bbox": [0, 0, 64, 32], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 3, "bbox": [-0.5, 10, 20.5, 6]},  # overhangs by half a pixel
            {"id": 13, "image_id": 1, "category_id": 7, "bbox": [0, 0, 999, 999], "iscrowd": 1},  # skipped
            {"id": 14, "image_id": 7, "category_id": 7, "bbox": [0, 0, 2, 2]},  # half a pixel after the resize
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }


def write_coco(root: Path, doc: dict | None = None, rgb: bool = True) -> Path:
    """a.png beside the JSON, the others in images/ beside it (both places are searched)."""
    write_png(root / "a.png", (64, 32), (255, 0, 0) if rgb else 200, "RGB" if rgb else "L")
    write_png(root / "images" / "b.png", (64, 64), 100)
    write_png(root / "images" / "c.png", (32, 32), 0)
    write_png(root / "images" / "sub" / "d.png", (128, 128), 255)
    file = root / "annotations.json"
    file.write_text(json.dumps(coco_doc() if doc is None else doc))
    return file


def test_coco_reads_normalised_boxes_labels_and_names(tmp_path: Path) -> None:
    file = write_coco(tmp_path)
    ann = coco_annotations(file)
    assert ann.names == ("dog", "cat")  # ascending category id: 3, then 7
    assert ann.sources == ("b.png", "c.png", "a.png", "sub/d.png")  # by image id: 1, 2, 3, 7
    assert ann.files == [tmp_path / "images" / "b.png", tmp_path / "images" / "c.png", tmp_path / "a.png",
                         tmp_path / "images" / "sub" / "d.png"]  # beside the JSON, else in images/
    assert ann.boxes[0] == [[0, 10 / 64, 20 / 64, 16 / 64]]  # clipped to x >= 0, then normalised by 64x64
    assert ann.labels[0] == [0]  # the crowd box is gone
    assert ann.boxes[1] == [] and ann.labels[1] == []  # a negative image is kept
    assert ann.boxes[2] == [[8 / 64, 4 / 32, 24 / 64, 12 / 32], [0, 0, 1, 1]]  # x by 64, y by 32
    assert ann.labels[2] == [1, 0]
    assert ann.boxes[3] == [[0, 0, 2 / 128, 2 / 128]]  # half a pixel at S = 32: kept


def test_coco_streams_letterboxed_boxes_and_pixels(tmp_path: Path) -> None:
    write_coco(tmp_path)
    data, where = streamed(f"coco:{tmp_path}")
    assert data.class_names == ("dog", "cat") and data.num_classes == 2 and data.input_shape == (3, S, S)
    assert len(data.train) + len(data.val) + len(data.test) == 4
    assert sorted(where) == ["a.png", "b.png", "c.png", "d.png"]
    assert boxes_of(where, "b.png") == ([[0, 5, 10, 8]], [0])  # 64x64 -> 32x32: scaled by 1/2, no padding
    assert boxes_of(where, "a.png") == ([[4, 10, 12, 14], [0, 8, 32, 24]], [1, 0])  # 64x32 -> 32x16 at y = 8
    assert boxes_of(where, "c.png") == ([], [])  # a negative image is kept
    assert boxes_of(where, "d.png") == ([[0, 0, 0.5, 0.5]], [1])  # under a pixel: kept
    for split in (data.train, data.val, data.test):
        assert all(b.dtype == np.float32 for b in split.boxes) and all(lab.dtype == np.int64 for lab in split.labels)
    red = pixels(data, where, "a.png")
    assert np.allclose(red[:, 8:24], np.array([1.0, 0.0, 0.0])[:, None, None], atol=1e-5)  # the content, red
    pad = np.array(data.mean)[:, None, None]  # the letterbox pads with the mean, per channel
    assert np.allclose(red[:, :8], pad, atol=1 / 255) and np.allclose(red[:, 24:], pad, atol=1 / 255)
    assert np.allclose(pixels(data, where, "b.png"), 100 / 255, atol=1e-5)


def test_coco_all_grey_gives_one_channel(tmp_path: Path) -> None:
    data, where = streamed(f"coco:{write_coco(tmp_path, rgb=False)}")
    assert data.input_shape == (1, S, S)
    grey = pixels(data, where, "a.png")
    assert grey.shape == (1, S, S) and np.allclose(grey[:, 8:24], 200 / 255, atol=1e-5)


def test_coco_folder_picks_its_json(tmp_path: Path) -> None:
    write_coco(tmp_path)
    assert coco_annotations(tmp_path).names == ("dog", "cat")  # the only *.json
    (tmp_path / "annotations.json").rename(tmp_path / "instances_train.json")
    (tmp_path / "notes.json").write_text("{}")
    assert len(coco_annotations(tmp_path).sources) == 4  # the only instances*.json
    (tmp_path / "instances_more.json").write_text("{}")  # no split named: which file is meant?
    with pytest.raises(UserError, match=r"3 JSON files in .*coco:FILE\.json"):
        coco_annotations(tmp_path)


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A change to the document: 'annotations.0.bbox' = value."""
    def change(doc: dict) -> None:
        *keys, last = path.split(".")
        target = doc
        for key in keys:
            target = target[int(key)] if isinstance(target, list) else target[key]
        target[last] = value
    return change


@pytest.mark.parametrize(("change", "expected"), [
    (_set("annotations.0.bbox", [1, 2, 3]), ["annotation id 10", "4 numbers"]),
    (_set("annotations.0.bbox", [1, 2, "3", 4]), ["annotation id 10", "4 numbers"]),
    (_set("annotations.1.bbox", [0, 0, 0, 5]), ["annotation id 11", "width and height must be positive"]),
    (_set("annotations.0.bbox", [60, 0, 10, 10]), ["annotation id 10", "outside the 64x32 image a.png"]),
    (_set("annotations.2.category_id", 99), ["annotation id 12", "unknown category_id 99"]),
    (_set("annotations.2.image_id", 42), ["annotation id 12", "unknown image_id 42"]),
    (_set("images.1.id", 3), ["duplicate image id 3"]),
    (_set("images.0.width", 100), ["image id 3 (a.png)", "100x32", "64x32"]),
    (_set("images.2.file_name", "gone.png"), ["image id 2", "'gone.png' not found"]),
    (_set("annotations", [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "iscrowd": 1}]),
     ["no annotations"]),
    (lambda doc: doc.pop("categories"), ["missing 'categories'"]),
    (_set("categories.1.id", 7), ["duplicate category id 7"]),
])
def test_coco_errors_name_file_and_annotation(tmp_path: Path, change: Callable[[dict], None],
                                             expected: list[str]) -> None:
    doc = coco_doc()
    change(doc)
    file = write_coco(tmp_path, doc)
    with pytest.raises(UserError) as info:
        coco_annotations(file)
    message = str(info.value)
    assert "annotations.json" in message and "\n" not in message
    for part in expected:
        assert part in message


def test_coco_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    file = tmp_path / "broken.json"
    file.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(UserError, match=r"broken\.json: invalid JSON at line 2 column 12"):
        coco_annotations(file)


def test_coco_unreadable_image_names_the_file(tmp_path: Path) -> None:
    file = write_coco(tmp_path)
    (tmp_path / "images" / "c.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"cannot read image .*c\.png") as info:
        stream_data("detect", f"coco:{file}", seed=0, image_size=S)
    assert "\n" not in str(info.value)


def test_coco_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"COCO path does not exist: .*nope"):
        coco_annotations(tmp_path / "nope")
    with pytest.raises(UserError, match=r"no COCO annotation file \(\*\.json\) in"):
        coco_annotations(tmp_path)


# ------------------------------------------------------------------------------------------------------ YOLO

def write_yolo(root: Path, classes: str | None = "car\nbus\ntruck\n") -> Path:
    """The Ultralytics layout, nested: images/{train,val/sub}/*.png with labels/ alongside; all grey."""
    write_png(root / "images" / "train" / "a.png", (64, 32), 128)
    write_png(root / "images" / "train" / "b.png", (32, 32), 0)
    write_png(root / "images" / "val" / "sub" / "c.png", (32, 32), 0)
    write_png(root / "images" / "val" / "sub" / "d.png", (32, 32), 0)  # no label file: a negative
    labels = root / "labels"
    (labels / "val" / "sub").mkdir(parents=True)
    (labels / "train").mkdir(parents=True)
    (labels / "train" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.25 0.25 0.5 0.5\n")
    (labels / "train" / "b.txt").write_text("")  # empty: a negative
    (labels / "val" / "sub" / "c.txt").write_text("2 0.5 0.5 1.0 1.0\n\n")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def test_yolo_ultralytics_layout(tmp_path: Path) -> None:
    ann = yolo_annotations(write_yolo(tmp_path))
    assert ann.names == ("car", "bus", "truck")
    assert ann.sources == ("images/train/a.png", "images/train/b.png", "images/val/sub/c.png", "images/val/sub/d.png")
    assert ann.boxes[0].tolist() == [[0.375, 0.25, 0.625, 0.75], [0, 0, 0.5, 0.5]]
    assert ann.labels[0].tolist() == [1, 0]
    assert ann.boxes[1].shape == (0, 4) and ann.boxes[3].shape == (0, 4)  # empty label file, no label file
    assert ann.boxes[2].tolist() == [[0, 0, 1, 1]] and ann.labels[2].tolist() == [2]
    assert all(b.dtype == np.float32 for b in ann.boxes) and all(lab.dtype == np.int64 for lab in ann.labels)


def test_yolo_streams_letterboxed_boxes_and_grey_pixels(tmp_path: Path) -> None:
    data, where = streamed(f"yolo:{write_yolo(tmp_path)}")
    assert data.num_classes == 3 and data.class_names == ("car", "bus", "truck")
    assert data.input_shape == (1, S, S)  # every image grey
    assert boxes_of(where, "a.png") == ([[12, 12, 20, 20], [0, 8, 16, 16]], [1, 0])  # 64x32 -> 32x16 at y = 8
    assert boxes_of(where, "b.png") == ([], []) and boxes_of(where, "d.png") == ([], [])
    assert boxes_of(where, "c.png") == ([[0, 0, 32, 32]], [2])
    assert np.allclose(pixels(data, where, "a.png")[:, 8:24], 128 / 255, atol=1e-5)


def test_yolo_side_by_side_rgb_and_numbered_names(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png", (40, 20), 50)
    (tmp_path / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    write_png(tmp_path / "sub" / "y.png", (20, 20), (0, 0, 255), "RGB")
    (tmp_path / "sub" / "y.txt").write_text("3 0.25 0.75 0.5 0.5\n0 0.5 0.5 1.0005 0.2\n")  # 2nd: clipped
    write_png(tmp_path / "z.png", (20, 20), 50)  # no label: a negative
    ann = yolo_annotations(tmp_path)
    assert ann.sources == ("sub/y.png", "x.png", "z.png")
    assert ann.names == ("0", "1", "2", "3")  # no classes.txt: up to the largest id
    assert np.allclose(ann.boxes[0], np.array([[0, 0.5, 0.5, 1], [0, 0.4, 1, 0.6]]))
    assert ann.labels[0].tolist() == [3, 0]
    assert ann.boxes[1].tolist() == [[0.25, 0.25, 0.75, 0.75]] and ann.boxes[2].tolist() == []
    data, where = streamed(f"yolo:{tmp_path}")
    assert data.input_shape == (3, S, S)  # one RGB image makes the set RGB
    blue = pixels(data, where, "y.png")
    assert np.allclose(blue[2], 1.0, atol=1e-5) and np.allclose(blue[:2], 0.0, atol=1e-5)
    y_boxes, y_labels = boxes_of(where, "y.png")
    assert np.allclose(y_boxes, [[0, 16, 16, 32], [0, 12.8, 32, 19.2]]) and y_labels == [3, 0]
    assert boxes_of(where, "x.png") == ([[8, 12, 24, 20]], [0])  # 40x20 -> 32x16 at y = 8
    assert boxes_of(where, "z.png") == ([], [])


@pytest.mark.parametrize(("text", "names"), [
    ("path: .\nnames: ['a b', \"c\"]  # two classes\n", ("a b", "c")),
    ("names:\n  0: person\n  1: 'bi cycle'\nnc: 2\n", ("person", "bi cycle")),
    ("names:\n  - x  # first\n\n  - y\ntrain: images\n", ("x", "y")),
    ("names: {0: p, 1: q}\n", ("p", "q")),
    ("nc: 2\nnames: [a,\n  b,]\n", ("a", "b")),
])
def test_yolo_names_from_data_yaml(tmp_path: Path, text: str, names: tuple[str, ...]) -> None:
    write_png(tmp_path / "x.png", (20, 20), 50)
    (tmp_path / "x.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text(text)
    assert yolo_annotations(tmp_path).names == names


def test_yolo_classes_txt_wins_and_yaml_errors(tmp_path: Path) -> None:
    write_yolo(tmp_path)
    (tmp_path / "data.yaml").write_text("names:\n  1: a\n  2: b\n")
    assert yolo_annotations(tmp_path).names == ("car", "bus", "truck")
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(UserError, match=r"data\.yaml line 1: 'names:' ids must be 0\.\.1"):
        yolo_annotations(tmp_path)
    (tmp_path / "data.yaml").write_text("names: a, b\n")
    with pytest.raises(UserError, match=r"data\.yaml line 1: cannot read 'names:'"):
        yolo_annotations(tmp_path)


@pytest.mark.parametrize(("line", "expected"), [
    ("0 0.5 0.5 0.2", 'expected 5 numbers "class cx cy w h", got 4'),
    ("0 0.5 0.5 0.2 0.2 0.9", "got 6"),
    ("0 0.5 abc 0.2 0.2", "non-numeric value 'abc'"),
    ("0 nan 0.5 0.2 0.2", "non-finite value 'nan'"),
    ("3 0.5 0.5 0.2 0.2", "class id 3 not in classes.txt (3 classes, ids 0..2)"),
    ("-1 0.5 0.5 0.2 0.2", "class id must be a non-negative integer, got -1"),
    ("1.5 0.5 0.5 0.2 0.2", "class id must be a non-negative integer, got 1.5"),
    ("0 1.5 0.5 0.2 0.2", "coordinate 1.5 outside [0, 1]"),
    ("0 0.9 0.5 0.4 0.2", "box reaches outside the image"),
    ("0 0.5 0.5 0 0.2", "width and height must be positive"),
])
def test_yolo_errors_name_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    write_yolo(tmp_path)
    (tmp_path / "labels" / "train" / "a.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(UserError) as info:
        yolo_annotations(tmp_path)
    message = str(info.value)
    assert "labels/train/a.txt line 2: " in message and expected in message and "\n" not in message


def test_yolo_set_level_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"YOLO folder does not exist: .*nope"):
        yolo_annotations(tmp_path / "nope")
    write_png(tmp_path / "file.png", (8, 8), 0)
    with pytest.raises(UserError, match=r"yolo:PATH must be a folder"):
        yolo_annotations(tmp_path / "file.png")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match=r"no images found in .*images"):
        yolo_annotations(tmp_path / "empty")
    with pytest.raises(UserError, match=r"no boxes in any YOLO label file"):
        yolo_annotations(tmp_path)  # file.png has no label
    root = write_yolo(tmp_path / "named", classes="car\n\nbus\n")
    with pytest.raises(UserError, match=r"classes\.txt line 2: empty class name"):
        yolo_annotations(root)
