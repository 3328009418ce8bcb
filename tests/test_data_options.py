"""Issue #21, the data: per-channel normalisation (computed on the training split, or --mean/--std), recorded in
config.json for --resume and the export; a data set's own train/val/test split kept (--split re-splits); a
--weights model whose first layer does not fit the images' channels or --image-size is one line. Every data set
here is a few tiny solid-colour PNGs in tmp_path, so that the expected statistics are exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from structlog.testing import capture_logs
from typer.testing import CliRunner

from host_trainer.cli import app
from host_trainer.config import EvolveConfig
from host_trainer.data.classify import stratified_split
from host_trainer.data.coco import coco_annotations
from host_trainer.data.detect import random_split
from host_trainer.data.options import DataOptions, array_stats, parse_split
from host_trainer.data.stream import pixel_stats, stream_data
from host_trainer.data.yolo import yolo_annotations
from host_trainer.errors import UserError
from host_trainer.models.input_fit import InputCheck, check_input_fit
from host_trainer.models.registry import build_model
from host_trainer.progress import NullProgress

# Two classes of solid colours: a = (255, 0, 51), b = (0, 255, 102). With as many training images of each, the
# training split's per-channel mean is (0.5, 0.5, 0.3) and its std (0.5, 0.5, 0.1), exactly.
COLOURS = {"a": (255, 0, 51), "b": (0, 255, 102)}
MEAN, STD = (0.5, 0.5, 0.3), (0.5, 0.5, 0.1)


class Notes(NullProgress):
    """A Progress that keeps the lines the user would see."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)


def png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def split_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (12, 10)) -> Path:
    """root/<split>/<class>/<n>.png for each split and its count per class."""
    for split, n in counts.items():
        for name, colour in COLOURS.items():
            for i in range(n):
                png(root / split / name / f"{i}.png", colour, size)
    return root


def flat_folder(root: Path, per_class: int = 10, size: tuple[int, int] = (12, 10)) -> Path:
    for name, colour in COLOURS.items():
        for i in range(per_class):
            png(root / name / f"{i}.png", colour, size)
    return root


def names_of(split) -> list[str]:  # noqa: ANN001
    return [str(Path(split.path(k)).relative_to(Path(split.path(k)).parents[2])) for k in range(len(split))]


# ---------------------------------------------------------------------------------------- normalisation

def test_per_channel_mean_and_std_come_from_the_training_split(tmp_path: Path) -> None:
    # val and test are all class a: were they counted, the mean would move towards (1, 0, 0.2)
    root = split_folder(tmp_path / "f", {"train": 3})
    for split in ("val", "test"):
        for i in range(2):
            png(root / split / "a" / f"{i}.png", COLOURS["a"])
        png(root / split / "b" / "0.png", COLOURS["b"])
    data = stream_data("classify", f"imagefolder:{root}", 0, 8, workers=0)
    assert data.mean == pytest.approx(MEAN, abs=1e-12) and data.std == pytest.approx(STD, abs=1e-12)
    a = next(data.train[k].image for k in range(len(data.train)) if int(data.train.y[k]) == 0)
    assert torch.allclose(a, torch.tensor([1.0, -1.0, -1.0])[:, None, None], atol=1e-5)  # (x - mean) / std per channel
    assert data.image_px == 10  # the shorter side of 12x10


def test_one_mean_for_all_channels_is_the_old_computation_exactly(tmp_path: Path) -> None:
    """A resumed run from before per-channel statistics gets its one mean/std over every value, summed as before."""
    root = flat_folder(tmp_path / "f")
    data = stream_data("classify", f"imagefolder:{root}", 0, 8, workers=0)
    old = np.zeros(3)  # the old pixel_stats: per image (sum, sum of squares, count) of its [0, 1] pixels
    for k in range(len(data.train)):
        with Image.open(data.train.path(k)) as img:
            a = np.asarray(img.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR), np.float64) / 255.0
        old += np.sum([(float(a.sum()), float((a * a).sum()), a.size)], axis=0)
    mean = old[0] / old[2]
    std = float(np.sqrt(max(old[1] / old[2] - mean * mean, 0.0)))
    assert pixel_stats(data.train, 0, workers=0, per_channel=False) == ((mean,) * 3, (std,) * 3)
    x = np.random.default_rng(0).random((6, 1, 5, 5), dtype=np.float32)
    assert array_stats(x, False) == ((float(x.mean()),), (float(x.std()),))  # in memory, grey: as it was


def test_given_mean_and_std_are_used_and_checked_against_the_channels(tmp_path: Path) -> None:
    ref = f"imagefolder:{flat_folder(tmp_path / 'f')}"
    imagenet = DataOptions(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    data = stream_data("classify", ref, 0, 8, workers=0, options=imagenet)
    assert (data.mean, data.std) == (imagenet.mean, imagenet.std) and data.train.mean == imagenet.mean
    one = stream_data("classify", ref, 0, 8, workers=0, options=DataOptions(mean=(0.5,), std=(0.25,)))
    assert (one.mean, one.std) == ((0.5,) * 3, (0.25,) * 3)
    with pytest.raises(UserError) as info:
        stream_data("classify", ref, 0, 8, workers=0, options=DataOptions(mean=(0.5, 0.5), std=(0.2,)))
    assert "--mean has 2 values, the images have 3 channels (RGB)" in str(info.value)
    assert "\n" not in str(info.value)
    grey = stream_data("classify", "digits", 0, 8, options=DataOptions(mean=(0.5,), std=(0.5,)))
    assert grey.mean == (0.5,) and float(grey.train.x.min()) == pytest.approx(-1.0)  # pixel 0 -> (0 - .5) / .5


def test_in_memory_detection_is_normalised_per_channel() -> None:
    from host_trainer.data.detect import _from_splits
    from host_trainer.data.types import RawDetection

    images = np.zeros((4, 3, 16, 16), np.float32)
    images[:2] = np.array([1.0, 0.0, 0.2], np.float32)[:, None, None]  # two images of colour a, two of b
    images[2:] = np.array([0.0, 1.0, 0.4], np.float32)[:, None, None]
    raw = RawDetection(images, (np.zeros((0, 4)),) * 4, (np.zeros(0),) * 4, ("x",), ("s",) * 4)
    data = _from_splits("t", [raw, raw, raw])
    assert data.mean == pytest.approx(MEAN, abs=1e-6) and data.std == pytest.approx(STD, abs=1e-6)
    assert np.allclose(data.val.x[0, :, 0, 0], [1.0, -1.0, -1.0], atol=1e-5)


BAD = {
    "mean without std": (["--mean", "0.5"], "--mean and --std go together"),
    "not numbers": (["--mean", "a,b", "--std", "0.2"], "--mean takes numbers separated by commas"),
    "std not positive": (["--mean", "0.5", "--std", "0.2,0"], "--std values must be > 0"),
    "0-255 scale": (["--mean", "123.675", "--std", "0.2"], "for pixels scaled to [0, 1]"),
    "counts differ": (["--mean", "0.1,0.2", "--std", "0.2,0.2,0.2"], "--mean has 2 values and --std 3"),
    "count vs channels": (["--mean", "0.1,0.2", "--std", "0.2,0.2"], "the images have 1 channel (grey)"),
    "split sum": (["--dataset", "imagefolder:X", "--split", "70/20/20"], "sum to 100"),
    "split words": (["--dataset", "imagefolder:X", "--split", "most/some/rest"], "--split takes train/val/test"),
    "split no train": (["--dataset", "imagefolder:X", "--split", "0/50/50"], "training share must be > 0"),
    "split built-in": (["--split", "70/15/15"], "the built-in sets have fixed splits"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_options_are_one_line_exit_2_and_write_nothing(case: str, tmp_path: Path) -> None:
    args, expected = BAD[case]
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["evolve", "--run-dir", str(runs), "--model", "mlp", "--dataset", "digits",
                                      "--image-size", "8", *args])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert not runs.exists()


def test_the_help_shows_the_new_options_with_their_defaults() -> None:
    shown = " ".join(CliRunner().invoke(app, ["evolve", "--help"], env={"COLUMNS": "400", "TERM": "dumb"}).output
                     .split())
    for option in ("--split", "--mean", "--std"):
        assert option in shown
    assert shown.count("[default: none]") >= 3 and "0.485,0.456,0.406" in shown


# ------------------------------------------------------------------------------- config.json and --resume

QUICK = ["--model", "mlp", "--image-size", "8", "--no-mqtt", "--generations", "0", "--gen0-epochs", "1",
         "--final-epochs", "0", "--bench-min-seconds", "0.05", "--bench-min-iterations", "10"]


def _events(run: Path, name: str) -> list[dict]:
    return [e for e in map(json.loads, (run / "events.jsonl").read_text().splitlines()) if e["event"] == name]


def test_config_json_records_the_values_and_resume_reads_them_back(tmp_path: Path) -> None:
    ref = f"imagefolder:{flat_folder(tmp_path / 'f')}"
    runs = tmp_path / "runs"
    result = CliRunner().invoke(app, ["evolve", "--run-dir", str(runs), "--dataset", ref, *QUICK])
    assert result.exit_code == 0, result.output
    (run,) = runs.iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["mean"] == pytest.approx(list(MEAN), abs=1e-12) and config["std"] == pytest.approx(list(STD))
    assert config["split"] == "" and EvolveConfig.from_dict(config).mean == config["mean"]
    # resumed, the run reads config.json's values, whatever the files would give now
    config["mean"], config["std"] = [0.25, 0.5, 0.75], [0.2, 0.3, 0.4]
    (run / "config.json").write_text(json.dumps(config))
    assert CliRunner().invoke(app, ["evolve", "--resume", str(run)]).exit_code == 0
    last = _events(run, "normalisation")[-1]
    assert (last["mean"], last["std"], last["source"]) == ([0.25, 0.5, 0.75], [0.2, 0.3, 0.4], "given")


def test_an_old_run_without_mean_and_std_resumes_with_its_one_mean_std(tmp_path: Path) -> None:
    """A run from before per-channel statistics trained on one mean/std: resumed, it gets the same numbers (not
    per-channel ones its networks never saw), says so, and config.json records them for the export."""
    ref = f"imagefolder:{flat_folder(tmp_path / 'f')}"
    runs = tmp_path / "runs"
    assert CliRunner().invoke(app, ["evolve", "--run-dir", str(runs), "--dataset", ref, *QUICK]).exit_code == 0
    (run,) = runs.iterdir()
    config = json.loads((run / "config.json").read_text())
    for key in ("mean", "std", "split"):
        del config[key]
    (run / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(app, ["evolve", "--resume", str(run)])
    assert result.exit_code == 0 and "has no mean/std" in result.output, result.output
    data = stream_data("classify", ref, 0, 8, workers=0)
    mean, std = pixel_stats(data.train, 0, workers=0, per_channel=False)
    written = json.loads((run / "config.json").read_text())
    assert written["mean"] == list(mean) and written["std"] == list(std) and len(set(written["mean"])) == 1
    assert written["split"] == "70/15/15"  # a run from before --split: its set was cut 70/15/15
    assert _events(run, "normalisation")[-1]["source"] == "training split, one for all"


# ------------------------------------------------------------------------------------ the set's own split

def test_an_image_folder_keeps_its_own_split(tmp_path: Path) -> None:
    root = split_folder(tmp_path / "f", {"train": 3, "val": 2, "test": 1})
    notes = Notes()
    data = stream_data("classify", f"imagefolder:{root}", 0, 8, workers=0, progress=notes)
    assert data.class_names == ("a", "b")  # the classes, not the split folders
    for name, n in (("train", 3), ("val", 2), ("test", 1)):
        got = names_of(getattr(data, name))
        assert sorted(got) == sorted(f"{name}/{c}/{i}.png" for c in "ab" for i in range(n))
    assert notes.lines == [f"imagefolder:{root}: its own split kept (6 train, 4 val, 2 test images)"]


def test_train_and_val_without_test_halve_val_and_say_so_once(tmp_path: Path) -> None:
    root = split_folder(tmp_path / "f", {"train": 4, "valid": 4})
    notes = Notes()
    data = stream_data("classify", f"imagefolder:{root}", 0, 8, workers=0, progress=notes)
    assert sorted(names_of(data.train)) == sorted(f"train/{c}/{i}.png" for c in "ab" for i in range(4))
    held = names_of(data.val) + names_of(data.test)
    assert sorted(held) == sorted(f"valid/{c}/{i}.png" for c in "ab" for i in range(4))  # disjoint, complete
    assert np.bincount(data.val.y).tolist() == [2, 2] == np.bincount(data.test.y).tolist()  # halved per class
    again = stream_data("classify", f"imagefolder:{root}", 0, 8, workers=0)
    assert names_of(again.val) == names_of(data.val)  # seeded
    assert len(notes.lines) == 1 and "has train and val but no test" in notes.lines[0]
    assert "halved (seed 0) into val and test" in notes.lines[0]


def test_split_option_re_splits_an_image_folder(tmp_path: Path) -> None:
    root = split_folder(tmp_path / "f", {"train": 6, "val": 2, "test": 2})
    data = stream_data("classify", f"imagefolder:{root}", 1, 8, workers=0, options=DataOptions(split=(50, 25, 25)))
    y = np.repeat([0, 1], 10)  # class by class: train, val, test files within each
    parts = stratified_split(y, 1, (0.5, 0.25, 0.25))
    assert [len(getattr(data, s)) for s in ("train", "val", "test")] == [len(p) for p in parts] == [12, 4, 4]
    assert data.train.y.tolist() == y[parts[0]].tolist()


def write_yolo(root: Path, layout: str, counts: dict[str, int]) -> Path:
    """Grey-on-colour images with one box each: images/<split>/ + labels/<split>/ (ultralytics), or
    <split>/images/ + <split>/labels/ (roboflow)."""
    for split, n in counts.items():
        for i in range(n):
            rel = f"images/{split}/{i}" if layout == "ultralytics" else f"{split}/images/{i}"
            png(root / f"{rel}.png", COLOURS["ab"[i % 2]], (32, 16))
            label = root / (rel.replace("images", "labels", 1) + ".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(f"{i % 2} 0.5 0.5 0.25 0.5\n")
    return root


@pytest.mark.parametrize("layout,val", [("ultralytics", "val"), ("roboflow", "valid")])
def test_yolo_keeps_its_own_split(tmp_path: Path, layout: str, val: str) -> None:
    root = write_yolo(tmp_path / "y", layout, {"train": 5, val: 2, "test": 2})
    ann = yolo_annotations(root)
    assert ann.splits == ("test",) * 2 + ("train",) * 5 + ("val",) * 2  # by relative path
    assert all(len(b) == 1 for b in ann.boxes)  # the labels were found in either layout
    data = stream_data("detect", f"yolo:{root}", 0, 16, workers=0)
    for split, n, folder in (("train", 5, "train"), ("val", 2, val), ("test", 2, "test")):
        got = [Path(getattr(data, split).path(k)) for k in range(n)]
        assert len(getattr(data, split)) == n and all(folder in p.parts for p in got)
    merged = stream_data("detect", f"yolo:{root}", 0, 16, workers=0, options=DataOptions(split=(70, 15, 15)))
    parts = random_split(9, 0)  # exactly what every yolo: set got before: its folders merged, a seeded 70/15/15
    files = [str(f) for f in ann.files]
    assert [merged.train.path(k) for k in range(len(merged.train))] == [files[i] for i in parts[0]]


def write_coco_split(root: Path, split: str, names: tuple[str, ...] = ("a", "b"), n: int = 3) -> None:
    """annotations/instances_<split>2017.json with its images in <split>2017/ (COCO's own download layout)."""
    images, anns = [], []
    for i in range(n):
        png(root / f"{split}2017" / f"{split}{i}.png", COLOURS["ab"[i % 2]], (20, 20))
        images.append({"id": i, "file_name": f"{split}{i}.png", "width": 20, "height": 20})
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [2, 2, 8, 8]})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": k + 1, "name": name} for k, name in enumerate(names)]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
    (root / "annotations" / f"captions_{split}2017.json").write_text("{}")  # beside it in COCO's download


def test_coco_keeps_its_own_split_files(tmp_path: Path) -> None:
    root = tmp_path / "c"
    write_coco_split(root, "train", n=4)
    write_coco_split(root, "val", n=2)
    ann = coco_annotations(root)
    assert ann.splits == ("train",) * 4 + ("val",) * 2 and ann.names == ("a", "b")
    data = stream_data("detect", f"coco:{root}", 0, 16, workers=0)
    assert len(data.train) == 4 and len(data.val) == 1 and len(data.test) == 1  # val halved into val and test
    assert {Path(data.val.path(0)).name, Path(data.test.path(0)).name} == {"val0.png", "val1.png"}
    write_coco_split(root, "test", names=("a", "c"))
    with pytest.raises(UserError, match="names other classes than .*instances_train2017.json"):
        coco_annotations(root)


def test_split_is_three_percentages() -> None:
    assert parse_split("70/15/15") == (70, 15, 15) and parse_split(" 80 / 20 / 0 ") == (80, 20, 0)
    for bad in ("70/30", "70/15/15/0", "-10/60/50", "70.5/14.5/15", "", "50/50/1"):
        with pytest.raises(UserError, match="--split takes"):
            parse_split(bad)
    assert DataOptions(split=(70, 15, 15)).fractions == (0.70, 0.15, 0.15)  # the floats every old split used


# ------------------------------------------------------------------------------------- --weights and input

def _weights(tmp_path: Path, model: str, shape: tuple[int, int, int]) -> Path:
    torch.manual_seed(0)
    path = tmp_path / f"{model}-{shape[0]}x{shape[1]}.pt"
    torch.save(build_model(model, 2, shape).state_dict(), path)
    return path


@pytest.mark.parametrize("model,trained,expected", [
    ("vgg-small", (1, 8, 8), "its first layer features.0 takes 1 channel (grey), the images have 3 (RGB)"),
    ("mlp", (1, 8, 8), "its first layer fc1 takes 1 channel (grey), the images have 3 (RGB)"),
    ("vgg-small", (3, 16, 16), "fits vgg-small at --image-size 16, not 8: set --image-size 16"),
])
def test_weights_that_do_not_fit_the_input_are_one_line_exit_2(tmp_path: Path, model: str,
                                                               trained: tuple[int, int, int], expected: str) -> None:
    weights, runs = _weights(tmp_path, model, trained), tmp_path / "runs"
    ref = f"imagefolder:{flat_folder(tmp_path / 'f')}"
    result = CliRunner().invoke(app, ["evolve", "--run-dir", str(runs), "--model", model, "--dataset", ref,
                                      "--image-size", "8", "--no-mqtt", "--weights", str(weights)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0], result.output
    assert not runs.exists()


def _check(tmp_path: Path, model: str, trained: tuple[int, int, int], size: int, image_px: int,
           default_size: bool = True) -> list[dict]:
    """check_input_fit on the model at the data's (3, size, size); the events it logged."""
    state = torch.load(_weights(tmp_path, model, trained), weights_only=True)
    check = InputCheck("w.pt", model, (3, size, size), default_size, image_px, 1,
                       lambda shape: build_model(model, 2, shape))
    with capture_logs() as logs:
        check_input_fit(build_model(model, 2, (3, size, size)), state, check)
    return logs


def test_a_size_free_model_warns_when_the_default_size_shrinks_large_images(tmp_path: Path) -> None:
    logs = _check(tmp_path, "resnet-small", (3, 32, 32), 32, image_px=224)
    assert [e["event"] for e in logs] == ["images are 224 px, --image-size is 32 (the default): set --image-size "
                                          "224 to keep them"]
    assert e_level(logs) == ["warning"]
    assert _check(tmp_path, "resnet-small", (3, 32, 32), 32, image_px=48) == []  # not much larger
    assert _check(tmp_path, "resnet-small", (3, 32, 32), 32, image_px=224, default_size=False) == []  # chosen
    assert _check(tmp_path, "vgg-small", (3, 32, 32), 32, image_px=224) == []  # its weights fix the size: 32


def e_level(logs: list[dict]) -> list[str]:
    return [e["log_level"] for e in logs]
