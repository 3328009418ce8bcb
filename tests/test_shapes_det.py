"""The built-in `shapes-det` detection set: shapes, determinism, exact boxes, occlusion and the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from host_trainer.data.procedural import shapes_det
from host_trainer.data.procedural.shapes_det import (
    LOADED,
    SPLITS,
    ShapesDetConfig,
    generate,
    load_shapes_det,
    render_sample,
    to_raw,
)

SMALL = ShapesDetConfig(n_train=40, n_val=10, n_test=12)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the disk cache out of the home folder, and start every test from cold memory."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("EDGE_EVOLVER_CACHE", str(root))
    LOADED.clear()
    return root


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return generate(SMALL, workers=1)


def per_image(arrays: dict[str, np.ndarray], split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    cuts = np.cumsum(arrays[f"counts_{split}"])[:-1]
    return list(zip(np.split(arrays[f"boxes_{split}"], cuts), np.split(arrays[f"labels_{split}"], cuts)))


def test_shapes_and_dtypes(small: dict[str, np.ndarray]) -> None:
    assert sorted(small) == sorted(f"{k}_{s}" for k in ("x", "boxes", "labels", "counts") for s in SPLITS)
    for split in SPLITS:
        n, m = SMALL.split_size(split), int(small[f"counts_{split}"].sum())
        assert small[f"x_{split}"].shape == (n, 3, 128, 128) and small[f"x_{split}"].dtype == np.uint8
        assert small[f"boxes_{split}"].shape == (m, 4) and small[f"boxes_{split}"].dtype == np.float32
        assert small[f"labels_{split}"].shape == (m,) and small[f"labels_{split}"].dtype == np.int64
        assert small[f"counts_{split}"].shape == (n,) and small[f"counts_{split}"].dtype == np.int64


def test_boxes_labels_and_counts_are_valid(small: dict[str, np.ndarray]) -> None:
    for split in SPLITS:
        counts = small[f"counts_{split}"]
        assert counts.min() >= 1 and counts.max() <= SMALL.max_objects
        x1, y1, x2, y2 = small[f"boxes_{split}"].T
        assert (x1 >= 0).all() and (y1 >= 0).all() and (x2 <= 128).all() and (y2 <= 128).all()
        assert (x2 > x1).all() and (y2 > y1).all()
        assert np.array_equal(small[f"boxes_{split}"], np.round(small[f"boxes_{split}"]))  # whole pixels
        labels = small[f"labels_{split}"]
        assert labels.min() >= 0 and labels.max() < len(SMALL.classes)
    sizes = np.maximum(x2 - x1, y2 - y1)
    assert sizes.min() < 16 and sizes.max() > 30  # varied scales


def test_generation_is_deterministic(small: dict[str, np.ndarray]) -> None:
    again = generate(SMALL, workers=2)  # and independent of the worker count
    assert all(np.array_equal(small[k], again[k]) for k in small)
    other = generate(ShapesDetConfig(n_train=40, n_val=10, n_test=12, seed=1), workers=1)
    assert not np.array_equal(small["x_train"], other["x_train"])
    assert not np.array_equal(small["x_val"], small["x_test"][:10])  # splits draw their own streams


def tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_boxes_are_tight_bounds_of_the_masks(small: dict[str, np.ndarray]) -> None:
    for split in ("train", "test"):
        for i, (boxes, labels) in enumerate(per_image(small, split)[:8]):
            s = render_sample(SMALL, split, i)
            assert np.array_equal(s.image, small[f"x_{split}"][i])
            assert np.array_equal(s.boxes, boxes) and np.array_equal(s.labels, labels)
            assert s.masks.shape == (len(boxes), 128, 128) and s.masks.dtype == bool
            for box, mask in zip(s.boxes, s.masks):
                assert box.tolist() == tight_box(mask)


def erode(m: np.ndarray) -> np.ndarray:
    out = m.copy()
    out[1:] &= m[:-1]
    out[:-1] &= m[1:]
    out[:, 1:] &= m[:, :-1]
    out[:, :-1] &= m[:, 1:]
    return out


def test_masks_line_up_with_the_drawn_pixels() -> None:
    """On clean single-object images the mask's interior is the object's flat colour, and the frame just
    outside its box holds no pixel of that colour: the boxes describe what is drawn, not merely the masks."""
    cfg = ShapesDetConfig(n_train=30, max_objects=1, clutter=0.0, noise=0.0)
    for i in range(30):
        s = render_sample(cfg, "train", i)
        img = s.image.transpose(1, 2, 0).astype(np.int64)
        inner = erode(s.masks[0])
        colour = np.median(img[inner], axis=0)
        assert np.abs(img[inner] - colour).max() <= 1
        x1, y1, x2, y2 = (int(v) for v in s.boxes[0])
        frame = np.zeros((128, 128), dtype=bool)
        frame[max(0, y1 - 1):y2 + 1, max(0, x1 - 1):x2 + 1] = True
        frame[y1:y2, x1:x2] = False
        assert np.abs(img[frame] - colour).max(axis=1).min() > 8


def test_occlusion_keeps_enough_of_every_object_visible() -> None:
    for cfg in (ShapesDetConfig(max_objects=8), ShapesDetConfig(max_objects=8, max_occlusion=0.2, max_size=64)):
        hidden = []
        for i in range(25):
            masks = render_sample(cfg, "val", i).masks
            for k in range(len(masks)):
                covered = masks[k + 1:].any(axis=0) if k + 1 < len(masks) else np.zeros_like(masks[k])
                hidden.append(np.count_nonzero(masks[k] & covered) / np.count_nonzero(masks[k]))
        assert max(hidden) <= cfg.max_occlusion
        assert max(hidden) > cfg.max_occlusion / 3  # objects do overlap: the check is not vacuous


def test_classes_are_roughly_balanced() -> None:
    arrays = generate(ShapesDetConfig(n_train=150, n_val=0, n_test=0), workers=1)
    counts = np.bincount(arrays["labels_train"], minlength=len(shapes_det.SHAPES))
    assert counts.sum() > 400
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()


def test_to_raw(small: dict[str, np.ndarray]) -> None:
    raw = to_raw(small, "val", SMALL)
    assert raw.images.shape == (10, 3, 128, 128) and raw.images.dtype == np.float32
    assert raw.images.min() >= 0.0 and raw.images.max() <= 1.0
    assert np.array_equal(raw.images[3], small["x_val"][3] / np.float32(255))
    assert len(raw.boxes) == len(raw.labels) == len(raw.source) == 10
    for (boxes, labels), b, lab in zip(per_image(small, "val"), raw.boxes, raw.labels):
        assert np.array_equal(boxes, b) and b.dtype == np.float32 and b.shape[1:] == (4,)
        assert np.array_equal(labels, lab) and lab.dtype == np.int64
    assert raw.class_names == shapes_det.SHAPES and raw.source[7] == "shapes-det/val/7"


def test_empty_split_and_small_images() -> None:
    cfg = ShapesDetConfig(n_train=3, n_val=0, n_test=1, image_size=32, classes=("ring", "cross"))
    arrays = generate(cfg, workers=1)
    assert arrays["x_val"].shape == (0, 3, 32, 32) and arrays["boxes_val"].shape == (0, 4)
    raw = to_raw(arrays, "val", cfg)
    assert raw.images.shape == (0, 3, 32, 32) and raw.boxes == () and raw.source == ()
    assert to_raw(arrays, "train", cfg).class_names == ("ring", "cross")
    assert arrays["boxes_train"].max() <= 32 and arrays["labels_train"].max() <= 1  # sizes capped at 32


def test_disk_cache_round_trip_and_corrupt_file(_private_cache: Path, small: dict[str, np.ndarray]) -> None:
    path = shapes_det.cache_path(SMALL)
    assert path is not None and path.parent == _private_cache and not path.exists()
    arrays = load_shapes_det(SMALL)
    assert path.is_file() and all(np.array_equal(arrays[k], small[k]) for k in small)
    assert not arrays["x_train"].flags.writeable and load_shapes_det(SMALL) is arrays  # memory cache
    LOADED.clear()
    assert all(np.array_equal(load_shapes_det(SMALL)[k], small[k]) for k in small)  # from disk
    path.write_bytes(b"not a zip file")
    LOADED.clear()
    assert np.array_equal(load_shapes_det(SMALL)["boxes_test"], small["boxes_test"])  # regenerated
    with np.load(path) as npz:  # and rewritten, whole
        assert all(np.array_equal(npz[k], small[k]) for k in small)
    np.savez(path, **{k: v[:1] for k, v in small.items()})  # a valid file of the wrong shapes: not trusted
    LOADED.clear()
    assert np.array_equal(load_shapes_det(SMALL)["x_train"], small["x_train"])


def test_cache_key_and_off_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert shapes_det.cache_path(SMALL) != shapes_det.cache_path(ShapesDetConfig(n_train=40, n_val=10, n_test=12,
                                                                                 clutter=0.5))
    monkeypatch.setenv("EDGE_EVOLVER_CACHE", "off")
    assert shapes_det.cache_path(SMALL) is None
    assert load_shapes_det(ShapesDetConfig(n_train=2, n_val=1, n_test=1))["x_test"].shape == (1, 3, 128, 128)


@pytest.mark.parametrize("bad", [dict(classes=("circle", "hexagon")), dict(classes=("ring", "ring")),
                                 dict(classes=()), dict(min_size=20, max_size=10), dict(max_objects=0),
                                 dict(max_occlusion=1.0), dict(n_val=-1), dict(noise=-0.1)])
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        ShapesDetConfig(**bad)
