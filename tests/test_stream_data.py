"""The streaming data layer (host_trainer/data/stream*.py), the one reader of the user's data sets: lazy splits
(membership, class names, pixels, letterboxed boxes), the one-line errors for bad references, seeded
augmentation, boxes that follow it, bad files, the DistributedSampler seam."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from host_trainer.data.classify import load_dataset, stratified_split
from host_trainer.data.detect import load_det_dataset, random_split
from host_trainer.data.stream import BadImageWarning, StreamDataset, make_loader, stream_data
from host_trainer.data.stream_augment import DETECT, Augment
from host_trainer.data.types import DetSplit, Split
from host_trainer.errors import UserError


def write_folder(root: Path, per_class: int = 12, size: tuple[int, int] = (40, 30)) -> Path:
    """3 classes of random RGB PNGs (reproducible), one folder each."""
    rng = np.random.default_rng(0)
    for c in ("ant", "bee", "cat"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:03d}.png")
    return root


def rect_image(path: Path, size: tuple[int, int], box: tuple[int, int, int, int]) -> None:
    """A black image with a white filled rectangle at `box` (x1, y1, x2, y2; x2/y2 exclusive)."""
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[box[1]:box[3], box[0]:box[2]] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def write_coco(root: Path, n: int = 10) -> Path:
    """n images of varying aspect, each with one white rectangle and its COCO box."""
    images, anns = [], []
    for i in range(n):
        w, h = (96, 48) if i % 2 else (40, 80)
        box = (w // 4 + i, h // 4, w // 2 + i, h // 2 + 4)
        rect_image(root / "images" / f"{i}.png", (w, h), box)
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": w, "height": h})
        anns.append({"id": 100 + i, "image_id": i + 1, "category_id": 5 + i % 2,
                     "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]})
    doc = {"images": images, "annotations": anns, "categories": [{"id": 5, "name": "a"}, {"id": 6, "name": "b"}]}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def write_yolo(root: Path, n: int = 9) -> Path:
    for i in range(n):
        rect_image(root / "images" / f"{i}.png", (64, 32), (16, 8, 32, 24))
        (root / "labels").mkdir(exist_ok=True)
        (root / "labels" / f"{i}.txt").write_text(f"{i % 3} 0.375 0.5 0.25 0.5\n")
    return root


def samples(loader: object) -> dict[int, torch.Tensor]:
    return {int(i): x for batch in loader for i, x in zip(batch.idx, batch.x)}  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------ membership

def resized(file: str, size: int) -> np.ndarray:
    """(3, S, S) in [0, 1]: the whole image resized to S×S, bilinear (a classification image, un-augmented)."""
    with Image.open(file) as img:
        rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, np.float32).transpose(2, 0, 1) / 255.0


def test_imagefolder_streams_stratified_splits_and_resized_pixels(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f")
    data = stream_data("classify", f"imagefolder:{root}", 3, 16)
    assert isinstance(data, StreamDataset)
    assert (data.num_classes, data.class_names, data.input_shape) == (3, ("ant", "bee", "cat"), (3, 16, 16))
    files = [str(f) for c in data.class_names for f in sorted((root / c).glob("*.png"))]  # class by class
    y = np.repeat(np.arange(3), 12)
    splits = dict(zip(("train", "val", "test"), stratified_split(y, 3)))
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(36))  # disjoint, complete
    for name, idx in splits.items():
        split = getattr(data, name)
        assert [split.path(k) for k in range(len(split))] == [files[i] for i in idx]
        assert np.bincount(y[idx]).tolist() == {"train": [8] * 3, "val": [2] * 3, "test": [2] * 3}[name]
        # un-augmented, an image is the file resized to S×S, normalised with the training images' statistics
        batch = next(iter(make_loader(split, 64, train=False, seed=0, workers=0)))
        assert batch.y.tolist() == y[idx].tolist()
        expected = np.stack([resized(files[i], 16) for i in idx])
        mean, std = (np.array(v)[:, None, None] for v in (data.mean, data.std))
        assert np.allclose(batch.x.numpy(), (expected - mean) / std, atol=1e-4)
    train = np.stack([resized(files[i], 16) for i in splits["train"]]).astype(np.float64)  # per channel:
    assert data.mean == pytest.approx(train.mean(axis=(0, 2, 3)), abs=1e-6)
    assert data.std == pytest.approx(train.std(axis=(0, 2, 3)), abs=1e-6)


def letterboxed(box: tuple[int, int, int, int], width: int, height: int, size: int) -> list[float]:
    """A box of a (width, height) image in pixels of its letterbox on the S×S input: long side S, centred."""
    scale = size / max(width, height)
    dx, dy = (size - width * scale) / 2, (size - height * scale) / 2
    return [box[0] * scale + dx, box[1] * scale + dy, box[2] * scale + dx, box[3] * scale + dy]


def fixture_boxes(kind: str, i: int) -> tuple[list[float], int]:
    """Image i's one box, letterboxed at 32, and its class, from write_coco's and write_yolo's geometry."""
    if kind == "yolo":
        return letterboxed((16, 8, 32, 24), 64, 32, 32), i % 3
    w, h = (96, 48) if i % 2 else (40, 80)
    return letterboxed((w // 4 + i, h // 4, w // 2 + i, h // 2 + 4), w, h, 32), i % 2


@pytest.mark.parametrize("kind", ["coco", "yolo"])
def test_detection_streams_seeded_splits_and_letterboxed_boxes(tmp_path: Path, kind: str) -> None:
    root = (write_coco if kind == "coco" else write_yolo)(tmp_path / kind)
    data = stream_data("detect", f"{kind}:{root}", 5, 32)
    files = sorted((root / "images").glob("*.png"), key=lambda f: int(f.stem))  # COCO by image id, YOLO by path
    parts = random_split(len(files), 5)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(files)))  # disjoint, complete
    for name, idx in zip(("train", "val", "test"), parts):
        split = getattr(data, name)
        assert [split.path(k) for k in range(len(split))] == [str(files[i]) for i in idx]
        for k, i in enumerate(idx):
            box, label = fixture_boxes(kind, int(i))
            assert np.allclose(split.boxes[k], [box], atol=1e-4) and split.labels[k].tolist() == [label]
    names = ("a", "b") if kind == "coco" else ("0", "1", "2")  # COCO: category names; YOLO: ids up to the largest
    assert data.class_names == names and data.num_classes == len(names) and data.input_shape == (3, 32, 32)


@pytest.mark.parametrize(("task", "ref", "message"), [
    ("classify", "imagefolder:", "imagefolder needs a path: imagefolder:PATH"),
    ("classify", "imagefolder:  ", "imagefolder needs a path: imagefolder:PATH"),
    ("detect", "coco:", "coco needs a path: coco:PATH"),
    ("detect", "yolo: ", "yolo needs a path: yolo:PATH"),
    ("classify", "coco:/data/x.json", "coco:/data/x.json is a detection data set: add --task detect"),
    ("classify", "shapes-det", "shapes-det is a detection data set: add --task detect"),
    ("detect", "imagefolder:/data", "(a classification set: drop --task detect)"),
    ("detect", "glyphs", "(a classification set: drop --task detect)"),
    ("classify", "mnist", "unknown dataset 'mnist': choose digits, glyphs or imagefolder:PATH"),
    ("detect", "voc:/data", "unknown detection dataset 'voc:/data': choose shapes-det, coco:PATH or yolo:PATH"),
])
def test_bad_references_are_one_line_errors(task: str, ref: str, message: str) -> None:
    with pytest.raises(UserError) as info:
        stream_data(task, ref, 0, 32)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_the_in_memory_loaders_read_no_user_files() -> None:
    with pytest.raises(ValueError, match="streamed"):
        load_dataset("imagefolder:/data", 0, 32)
    with pytest.raises(ValueError, match="streamed"):
        load_det_dataset("coco:/data", 0, 32)


def test_builtin_sets_stay_in_memory_and_load_through_the_same_api() -> None:
    data = stream_data("classify", "digits", 0, 8)
    assert isinstance(data.train, Split)
    batch = next(iter(make_loader(data.train, 32, train=True, seed=1)))
    assert batch.x.shape == (32, 1, 8, 8) and batch.y.dtype == torch.int64
    again = next(iter(make_loader(data.train, 32, train=True, seed=1)))
    assert torch.equal(batch.x, again.x)  # seeded shift and order
    plain = next(iter(make_loader(data.val, 16, train=False, seed=1)))
    assert torch.equal(plain.x, torch.from_numpy(data.val.x[:16]))


# ---------------------------------------------------------------------------------------- augmentation

def test_augmentation_reproducible_across_workers_and_new_each_epoch(tmp_path: Path) -> None:
    data = stream_data("classify", f"imagefolder:{write_folder(tmp_path / 'f')}", 0, 16)
    runs = {w: samples(make_loader(data.train, 8, train=True, seed=7, epoch=2, workers=w)) for w in (0, 2)}
    assert runs[0].keys() == runs[2].keys() == set(range(len(data.train)))
    assert all(torch.equal(runs[0][i], runs[2][i]) for i in runs[0])
    loader = make_loader(data.train, 8, train=True, seed=7, epoch=2, workers=0)
    loader.set_epoch(3)
    other = samples(loader)
    assert sum(not torch.equal(runs[0][i], other[i]) for i in other) > len(other) // 2
    plain = samples(make_loader(data.train, 8, train=False, seed=7, workers=0))
    assert sum(not torch.equal(runs[0][i], plain[i]) for i in plain) > len(plain) // 2


def test_val_and_test_are_not_augmented(tmp_path: Path) -> None:
    data = stream_data("detect", f"coco:{write_coco(tmp_path / 'c')}", 0, 32)
    for split in (data.val, data.test):
        first = samples(make_loader(split, 4, train=False, seed=1, epoch=0, workers=0))
        later = samples(make_loader(split, 4, train=False, seed=2, epoch=9, workers=0))
        assert first.keys() == later.keys() and all(torch.equal(first[i], later[i]) for i in first)


def bright_box(x: torch.Tensor, mean: float, std: float) -> tuple[float, float, float, float]:
    """The bounding box (xyxy pixels) of the white rectangle in a normalised image."""
    pixels = x[0].numpy() * std + mean
    ys, xs = np.nonzero(pixels > 0.5)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


@pytest.mark.parametrize("train", [False, True])
def test_boxes_follow_letterbox_flip_and_jitter(tmp_path: Path, train: bool) -> None:
    data = stream_data("detect", f"coco:{write_coco(tmp_path / 'c', n=12)}", 0, 64)
    flipped = checked = 0
    epochs = 4 if train else 1
    for epoch in range(epochs):
        loader = make_loader(data.train, 4, train=train, seed=3, epoch=epoch, workers=0)
        for batch in loader:
            for x, boxes in zip(batch.x, batch.boxes):
                if not len(boxes):
                    continue  # jittered off the canvas
                found = bright_box(x, data.mean[0], data.std[0])
                assert np.allclose(boxes[0].numpy(), found, atol=1.5), (boxes, found)
                flipped, checked = flipped + (found[0] > 32), checked + 1
    assert checked >= epochs * len(data.train) * 3 // 4 and (flipped > 0 or not train)  # few jittered off


def test_in_memory_detection_boxes_follow_flip_and_jitter() -> None:
    x = np.zeros((6, 1, 32, 32), np.float32)
    x[:, :, 8:16, 4:12] = 1.0
    split = DetSplit(x, tuple(np.array([[4, 8, 12, 16]], np.float32) for _ in range(6)),
                     tuple(np.array([1]) for _ in range(6)))
    for batch in make_loader(split, 3, train=True, seed=0, augment=Augment(crop_scale=None, jitter=(0.9, 1.1))):
        for img, boxes in zip(batch.x, batch.boxes):
            assert np.allclose(boxes[0].numpy(), bright_box(img, 0.0, 1.0), atol=1.5)
    eval_batch = next(iter(make_loader(split, 6, train=False, seed=0)))
    assert torch.equal(eval_batch.x, torch.from_numpy(x)) and eval_batch.boxes[0].tolist() == [[4, 8, 12, 16]]


def test_letterbox_keeps_aspect_and_pads_with_the_mean(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "y")  # 64x32 images, box (16, 8, 32, 24)
    data = stream_data("detect", f"yolo:{root}", 0, 32)
    sample = data.val[0]
    boxes, _ = sample.target
    assert boxes.tolist() == [[8.0, 12.0, 16.0, 20.0]]  # scale 1/2, 8 px of padding above and below
    assert torch.allclose(sample.image[:, :8], torch.zeros(()), atol=0.05)  # pad = the mean = 0 normalised


# ------------------------------------------------------------------------------------------------ memory

def test_a_split_holds_paths_not_pixels(tmp_path: Path) -> None:
    small = stream_data("classify", f"imagefolder:{write_folder(tmp_path / 's', per_class=4)}", 0, 64)
    large = stream_data("classify", f"imagefolder:{write_folder(tmp_path / 'l', per_class=40)}", 0, 64)
    grown = len(pickle.dumps(large.train)) - len(pickle.dumps(small.train))
    per_image = grown / (len(large.train) - len(small.train))
    path_bytes = max(len(large.train.path(i)) for i in range(len(large.train)))
    assert per_image < path_bytes + 16  # a path and a label, far from 3x64x64 floats (49 kB)


# ------------------------------------------------------------------------------------------- bad images

def broken_files(root: Path) -> dict[str, Path]:
    """Convertible modes that must load, and two files PIL decodes only partway."""
    root.mkdir(parents=True)
    files = {name: root / name for name in ("cmyk.jpg", "deep.png", "pal.png", "la.png", "cut.jpg", "cut.png")}
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(files["cmyk.jpg"])  # red
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(files["deep.png"])  # 16-bit white
    Image.new("RGB", (20, 20), (0, 0, 255)).convert("P").save(files["pal.png"])
    Image.new("LA", (20, 20), (128, 255)).save(files["la.png"])
    rng = np.random.default_rng(0)
    for name in ("cut.jpg", "cut.png"):
        whole = root / f"whole{Path(name).suffix}"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
        files[name].write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
        whole.unlink()
    return files


def test_unidentifiable_files_are_refused_up_front(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", per_class=3)
    (root / "bee" / "empty.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"cannot read image .*empty\.jpg"):
        stream_data("classify", f"imagefolder:{root}", 0, 16)
    (root / "bee" / "empty.jpg").write_text("not an image\n")
    with pytest.raises(UserError, match=r"cannot read image .*empty\.jpg"):
        stream_data("classify", f"imagefolder:{root}", 0, 16)


def test_odd_modes_load_and_truncated_files_are_skipped_with_one_warning(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", per_class=3)
    odd = broken_files(root / "odd")
    data = stream_data("classify", f"imagefolder:{root}", 0, 8)
    everything = data.train.view(files=np.concatenate([data.train.files, data.val.files, data.test.files]),
                                 y=np.zeros(len(data.train) + len(data.val) + len(data.test), np.int64))
    paths = [everything.path(i) for i in range(len(everything))]
    loader = make_loader(everything, 4, train=True, seed=0, workers=2)
    for epoch in range(2):
        loader.set_epoch(epoch)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            count = sum(len(b.x) for b in loader)
        messages = [str(w.message) for w in caught if issubclass(w.category, BadImageWarning)]
        assert count == len(everything)  # substitutes keep the epoch whole
        per_file = [m for m in messages if m.startswith("cannot read image")]
        assert len(per_file) == (2 if epoch == 0 else 0) and all("cut." in m for m in per_file)
        assert messages[-1].startswith("2 unreadable image(s) this epoch") and loader.bad_last_epoch == 2
    plain = data.train.view(files=everything.files, y=everything.y, mean=0.0, std=1.0)
    pixel = {name: plain[paths.index(str(f))].image[:, 0, 0].tolist() for name, f in odd.items() if "cut" not in name}
    assert pixel["deep.png"] == pytest.approx([1.0] * 3) and pixel["cmyk.jpg"][0] > 0.9 > 0.1 > pixel["cmyk.jpg"][1]
    assert pixel["pal.png"] == pytest.approx([0, 0, 1.0]) and pixel["la.png"] == pytest.approx([128 / 255] * 3)


# --------------------------------------------------------------------------------------------- the seam

def test_distributed_sampler_covers_every_index_once_per_epoch(tmp_path: Path) -> None:
    data = stream_data("classify", f"imagefolder:{write_folder(tmp_path / 'f', per_class=10)}", 0, 8)
    assert len(data.train) % 2 == 0  # DistributedSampler pads an odd count by repeating indices
    for epoch in (0, 1):
        seen: list[int] = []
        for rank in (0, 1):
            sampler = DistributedSampler(data.train, num_replicas=2, rank=rank, shuffle=True, seed=4)
            sampler.set_epoch(epoch)
            loader = make_loader(data.train, 5, train=True, seed=4, epoch=epoch, sampler=sampler, workers=0)
            seen += [int(i) for b in loader for i in b.idx]
        assert sorted(seen) == list(range(len(data.train)))


def test_detection_batches_carry_box_lists(tmp_path: Path) -> None:
    data = stream_data("detect", f"coco:{write_coco(tmp_path / 'c')}", 0, 32)
    batch = next(iter(make_loader(data.train, 3, train=True, seed=0, augment=DETECT, workers=0)))
    assert batch.x.shape == (3, 3, 32, 32) and batch.y is None
    assert len(batch.boxes) == len(batch.labels) == 3
    assert all(b.shape[1:] == (4,) and b.dtype == torch.float32 for b in batch.boxes)
    assert all(lab.dtype == torch.int64 for lab in batch.labels)
