"""Data sets: shapes, determinism, splits, the glyph cache, and image folders (streamed: data/stream.py) with
their error messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from host_trainer.data import classify as data
from host_trainer.data.classify import load_dataset, stratified_split
from host_trainer.data.procedural import glyphs
from host_trainer.data.procedural.glyphs import GlyphsConfig
from host_trainer.data.stream import StreamDataset, make_loader, stream_data
from host_trainer.data.types import Dataset
from host_trainer.errors import UserError

SMALL = GlyphsConfig(n_train=120, n_val=30, n_test=40)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the glyph disk cache out of the home folder, and start every test from cold memory."""
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("EDGE_EVOLVER_CACHE", str(root))
    glyphs.LOADED.clear()
    return root


def check_shapes(ds: Dataset, channels: int, size: int) -> None:
    assert ds.input_shape == (channels, size, size)
    assert ds.num_classes == len(ds.class_names)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64
        assert split.x.ndim == 4 and split.x.shape[1:] == ds.input_shape
        assert len(split.x) == len(split.y) > 0
        assert split.y.min() >= 0 and split.y.max() < ds.num_classes
        assert np.isfinite(split.x).all()
    # Normalised with the train statistics.
    assert abs(float(ds.train.x.mean())) < 1e-3 and abs(float(ds.train.x.std()) - 1) < 1e-3
    assert min(ds.std) > 0


def test_digits_shapes_and_sizes() -> None:
    ds = load_dataset("digits", seed=0, image_size=32)
    check_shapes(ds, 1, 32)
    assert ds.num_classes == 10 and ds.class_names[0] == "0"
    sizes = [len(s.y) for s in (ds.train, ds.val, ds.test)]
    assert sum(sizes) == 1797
    assert 0.65 < sizes[0] / 1797 < 0.75
    assert set(np.unique(ds.test.y)) == set(range(10))  # stratified: every class in every split


def test_digits_deterministic_and_seeded() -> None:
    a, b = load_dataset("digits", seed=0, image_size=32), load_dataset("digits", seed=0, image_size=32)
    c = load_dataset("digits", seed=1, image_size=32)
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.test.y, b.test.y)
    assert not np.array_equal(a.train.y, c.train.y)
    assert load_dataset("digits", image_size=16, seed=0).input_shape == (1, 16, 16)


def test_digits_split_disjoint_and_complete() -> None:
    from sklearn.datasets import load_digits

    y = load_digits().target
    train, val, test = stratified_split(y, seed=0)
    assert not set(train) & set(val) and not set(train) & set(test) and not set(val) & set(test)
    assert sorted(np.concatenate([train, val, test])) == list(range(len(y)))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 100])
def test_stratified_split_small_classes(n: int) -> None:
    y = np.repeat([0, 1], n)
    train, val, test = stratified_split(y, seed=3)
    assert len(train) + len(val) + len(test) == 2 * n
    assert set(y[train]) == {0, 1}  # every class keeps at least one training image


def test_glyphs_shapes_and_determinism() -> None:
    a = data.glyphs_dataset(SMALL)
    check_shapes(a, 1, 32)
    assert a.num_classes == len(glyphs.CLASSES) and a.class_names == tuple(glyphs.CLASSES)
    assert (len(a.train.y), len(a.val.y), len(a.test.y)) == (120, 30, 40)
    glyphs.LOADED.clear()
    b = data.glyphs_dataset(SMALL)  # now from the disk cache
    assert np.array_equal(a.train.x, b.train.x) and np.array_equal(a.test.y, b.test.y)
    fresh = glyphs.generate(SMALL, workers=1)  # and without any cache
    assert np.array_equal(fresh["x_val"], glyphs.load_glyphs(SMALL)["x_val"])


def test_glyphs_seed_changes_images() -> None:
    a = glyphs.load_glyphs(SMALL)
    b = glyphs.load_glyphs(GlyphsConfig(n_train=120, n_val=30, n_test=40, seed=1))
    assert np.array_equal(a["y_train"], b["y_train"])  # labels are balanced and cyclic by design
    assert not np.array_equal(a["x_train"], b["x_train"])
    assert not np.array_equal(a["x_train"][:30], a["x_val"])  # splits are separate draws


def test_glyphs_parallel_matches_serial() -> None:
    cfg = GlyphsConfig(n_train=60, n_val=10, n_test=10, image_size=24)
    serial, parallel = glyphs.generate(cfg, workers=1), glyphs.generate(cfg, workers=2)
    assert all(np.array_equal(serial[k], parallel[k]) for k in serial)
    assert serial["x_train"].shape == (60, 24, 24)


def test_glyphs_corrupt_cache_is_regenerated(_private_cache: Path) -> None:
    path = glyphs.cache_path(SMALL)
    assert path is not None and path.parent == _private_cache
    path.write_bytes(b"not an npz file")
    arrays = glyphs.load_glyphs(SMALL)
    assert arrays["x_train"].shape == (120, 32, 32)
    glyphs.LOADED.clear()
    assert np.array_equal(glyphs.load_glyphs(SMALL)["x_train"], arrays["x_train"])  # rewritten, valid
    assert not list(_private_cache.glob("*.tmp"))


def test_glyphs_cache_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_EVOLVER_CACHE", "off")
    assert glyphs.cache_path(SMALL) is None
    assert glyphs.load_glyphs(SMALL)["y_test"].shape == (40,)


def test_load_dataset_glyphs_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    small = dict(n_train=47, n_val=10, n_test=10)
    monkeypatch.setattr(data, "GlyphsConfig", lambda **kw: GlyphsConfig(**small, **kw))
    ds = load_dataset("glyphs", seed=2, image_size=16)
    check_shapes(ds, 1, 16)
    assert ds.name == "glyphs" and len(ds.train.y) == 47
    assert np.array_equal(ds.train.x, load_dataset("glyphs", seed=5, image_size=16).train.x)  # fixed set


def test_glyphs_config_validation() -> None:
    with pytest.raises(ValueError, match="distinct"):
        GlyphsConfig(classes="AA")
    with pytest.raises(ValueError, match="image_size"):
        GlyphsConfig(n_train=-1)


def _write_folder(root: Path, classes: dict[str, int], mode: str = "L") -> None:
    rng = np.random.default_rng(0)
    for k, (name, count) in enumerate(classes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            base = rng.integers(0, 60, size=(20, 24, 3), dtype=np.uint8) + 60 * k
            img = Image.fromarray(base.astype(np.uint8)).convert(mode)
            img.save(root / name / f"img{i}.{'png' if i % 2 else 'JPG'}")


def check_streamed(ds: StreamDataset, channels: int, size: int) -> None:
    """check_shapes for an image folder: every image decoded (un-augmented) through the loader."""
    assert ds.input_shape == (channels, size, size)
    assert ds.num_classes == len(ds.class_names)
    xs = []
    for split in (ds.train, ds.val, ds.test):
        batches = list(make_loader(split, 64, train=False, seed=0, workers=0))
        x, y = np.concatenate([b.x.numpy() for b in batches]), np.concatenate([b.y.numpy() for b in batches])
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.ndim == 4 and x.shape[1:] == ds.input_shape
        assert len(x) == len(y) == len(split) > 0
        assert y.min() >= 0 and y.max() < ds.num_classes
        assert np.isfinite(x).all()
        xs.append(x)
    # Normalised with the train statistics (every training image: far fewer than stream.STATS_IMAGES).
    assert abs(float(xs[0].mean())) < 1e-3 and abs(float(xs[0].std()) - 1) < 1e-3
    assert min(ds.std) > 0


def test_imagefolder_grey(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"cat": 7, "dog": 5, "eel": 4})
    # Other grey encodings: a 16-bit PNG and a palette GIF whose palette is grey.
    Image.fromarray(np.full((9, 9), 40000, dtype=np.uint16)).save(tmp_path / "eel" / "deep.png")
    Image.new("L", (9, 9), 128).convert("P").save(tmp_path / "dog" / "palette.GIF")
    ds = stream_data("classify", f"imagefolder:{tmp_path}", image_size=16, seed=0)
    check_streamed(ds, 1, 16)
    assert ds.class_names == ("cat", "dog", "eel")
    assert sum(len(s.y) for s in (ds.train, ds.val, ds.test)) == 18
    again = stream_data("classify", f"imagefolder:{tmp_path}", image_size=16, seed=0)
    assert np.array_equal(ds.train.files, again.train.files) and np.array_equal(ds.test.y, again.test.y)
    assert (ds.mean, ds.std) == (again.mean, again.std)


def test_imagefolder_rgb_and_tiny(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"a": 1, "b": 2}, mode="RGB")
    (tmp_path / ".hidden").mkdir()  # ignored, as are hidden files and other extensions
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="too few images"):
        ds = stream_data("classify", f"imagefolder:{tmp_path}", seed=0, image_size=32)
    check_streamed(ds, 3, 32)
    assert ds.num_classes == 2


def test_imagefolder_mixed_modes_is_rgb(tmp_path: Path) -> None:
    _write_folder(tmp_path, {"a": 4, "b": 4})
    Image.new("RGB", (10, 10), (255, 0, 0)).save(tmp_path / "b" / "red.bmp")
    assert stream_data("classify", f"imagefolder:{tmp_path}", seed=0, image_size=32).input_shape[0] == 3


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("missing", "does not exist"),
        ("file", "not a directory"),
        ("empty", "no class sub-folders"),
        ("no_images", "no images found"),
        ("one_class", "at least 2 classes"),
        ("empty_class", "without images"),
        ("corrupt", "cannot read image"),
    ],
)
def test_imagefolder_errors(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    if layout == "file":
        root.write_text("x")
    elif layout == "empty":
        root.mkdir()
    elif layout == "no_images":
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
        (root / "b" / "readme.txt").write_text("x")
    elif layout == "one_class":
        _write_folder(root, {"only": 3})
    elif layout == "empty_class":
        _write_folder(root, {"a": 3})
        (root / "b").mkdir()
    elif layout == "corrupt":
        _write_folder(root, {"a": 3, "b": 3})
        (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(UserError, match=message) as info:
        stream_data("classify", f"imagefolder:{root}", seed=0, image_size=32)
    assert "\n" not in str(info.value)
    if layout == "corrupt":
        assert "broken.png" in str(info.value)


@pytest.mark.parametrize("ref", ["mnist", "", "imagefolder", "Digits"])
def test_unknown_dataset(ref: str) -> None:
    with pytest.raises(UserError, match="unknown dataset .*digits, glyphs or imagefolder:PATH"):
        load_dataset(ref, seed=0, image_size=32)
