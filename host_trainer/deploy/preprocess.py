"""preprocess.json: how to turn an image into the model's input, stated as data (docs/deploy.md, docs/api.md).

What the data pipeline does to a held-out image (host_trainer/data/stream_files.py), and so what a deployment
must do for the model to see what it was trained and scored on:

- decode to 8 bits, RGB, or L (grey, ITU-R 601 luma) when every image of the set was grey; a JPEG larger than
  needed is decoded at 1/2, 1/4 or 1/8 scale (PIL's draft mode, never below the size it is resized to);
- classification: stretch to S×S (no aspect kept, no crop), bilinear; detection: letterbox, the long side to S
  (aspect kept, sizes rounded half to even), centred, padded with the mean pixel, bilinear;
- divide by 255, then (x - mean) / std per channel; layout NCHW, float32.

`dataset_facts` is what the run records about its data set when it starts (<run>/dataset.json): the class names,
the channels and the normalisation exist only while the data set is loaded. `prepare` applies a spec to one image
with the pipeline's own decoding and placement, for `Deployed.prepare` (deploy/loading.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image

from host_trainer.data.images import to_rgb
from host_trainer.data.stream_augment import letterbox
from host_trainer.data.stream_files import open_image
from host_trainer.errors import UserError
from host_trainer.method.export import INPUT_NAME

FORMAT, VERSION = "edge-evolver-preprocess", 1
PIXEL_SCALE = 255.0
ImageLike = Union[Image.Image, str, Path]


def _plain(value: Any) -> float | list[float]:
    """A normalisation value as JSON: one number, or one per channel (a data set may compute either)."""
    array = np.asarray(value, dtype=np.float64)
    return float(array) if array.ndim == 0 else [float(v) for v in array.reshape(-1)]


def dataset_facts(data: Any, task: str) -> dict:
    """What a loaded data set (types.py's Dataset/DetDataset, stream.py's StreamDataset) tells about feeding
    the model: written to <run>/dataset.json when the run starts."""
    shape = [int(v) for v in data.input_shape]
    return {"dataset": str(data.name), "task": task, "input_shape": shape, "channels": "L" if shape[0] == 1 else "RGB",
            "class_names": [str(n) for n in data.class_names], "mean": _plain(data.mean), "std": _plain(data.std)}


def per_channel(value: Any, channels: int, what: str) -> list[float]:
    """One value per channel: a scalar repeated, or a list of exactly `channels` numbers."""
    values = value if isinstance(value, list) else [value] * channels
    if len(values) != channels or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise UserError(f"{what} must be a number or {channels} numbers (one per channel), got {value!r}")
    return [float(v) for v in values]


def normalisation(config: dict, facts: dict) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std), in units of pixel / 255: config.json's `mean`/`std` lists where the run has them
    (per-channel normalisation), else the data set's, as dataset.json recorded them (a scalar is repeated)."""
    channels = int(facts["input_shape"][0])
    source = config if isinstance(config.get("mean"), list) and isinstance(config.get("std"), list) else facts
    mean = per_channel(source.get("mean"), channels, "the normalisation mean")
    std = per_channel(source.get("std"), channels, "the normalisation std")
    if not all(s > 0 for s in std):
        raise UserError(f"the normalisation std must be > 0, got {std}")
    return mean, std


def image_spec(task: str, size: tuple[int, int], mean: list[float]) -> dict:
    """How an image becomes S×S pixels (`size` is (width, height))."""
    spec: dict[str, Any] = {"resize": "letterbox" if task == "detect" else "stretch", "size": list(size),
                            "interpolation": "bilinear", "jpeg_draft": True, "scale": PIXEL_SCALE}
    if task == "detect":
        spec["letterbox"] = {"scale": "S / max(width, height)",
                             "resized": "max(1, round(width * scale)) x max(1, round(height * scale))",
                             "offset": "((S - resized_width) // 2, (S - resized_height) // 2)",
                             "rounding": "half to even (Python's round)"}
        spec["pad"] = [round(m * PIXEL_SCALE) for m in mean]  # the mean pixel: 0 once normalised
    return spec


def preprocess_spec(facts: dict, config: dict, output: dict, source: dict) -> dict:
    """The whole of preprocess.json (schema: docs/api.md)."""
    channels, height, width = (int(v) for v in facts["input_shape"])
    mean, std = normalisation(config, facts)
    task = str(facts.get("task") or config.get("task") or "classify")
    return {
        "format": FORMAT, "version": VERSION, "task": task,
        "input": {"name": INPUT_NAME, "shape": [1, channels, height, width], "batch": "dynamic", "dtype": "float32",
                  "layout": "NCHW", "channels": "L" if channels == 1 else "RGB"},
        "image": image_spec(task, (width, height), mean),
        "normalize": {"mean": mean, "std": std, "formula": "(pixel / scale - mean) / std"},
        "classes": list(facts["class_names"]),
        "output": output,
        "source": source,
    }


def check_spec(spec: Any, source: str) -> dict:
    """`spec` when it is a preprocess.json this version reads; else a one-line UserError."""
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise UserError(f"{source}: not a preprocess.json (no \"format\": \"{FORMAT}\")")
    if not isinstance(spec.get("version"), int) or spec["version"] > VERSION:
        raise UserError(f"{source}: preprocess.json version {spec.get('version')!r}; this host-trainer reads up to "
                        f"{VERSION}: update it")
    return spec


def prepare(spec: dict, image: ImageLike) -> np.ndarray:
    """One image as the model's input, float32 (C, H, W): the pipeline's decoding and placement, as `spec` states
    them. A path is decoded as a training file is (JPEG draft included); a PIL image is converted as given."""
    width, height = (int(v) for v in spec["image"]["size"])
    img, original = _decoded(spec, image)
    if spec["image"]["resize"] == "letterbox":
        img = _letterboxed(img, original, spec)
    else:
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    x = np.asarray(img, dtype=np.float32) / np.float32(spec["image"]["scale"])
    x = x[None] if x.ndim == 2 else x.transpose(2, 0, 1)
    mean = np.asarray(spec["normalize"]["mean"], np.float32)[:, None, None]
    std = np.asarray(spec["normalize"]["std"], np.float32)[:, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def _decoded(spec: dict, image: ImageLike) -> tuple[Image.Image, tuple[int, int]]:
    """(8-bit RGB or L pixels, the image's own (width, height)): a drafted JPEG comes out smaller than that."""
    channels = 1 if spec["input"]["channels"] == "L" else 3
    if isinstance(image, Image.Image):
        img = to_rgb(image)
        return (img.convert("L") if channels == 1 else img), image.size
    with Image.open(image) as probe:
        original = probe.size
    need = tuple(int(v) for v in spec["image"]["size"])
    if spec["image"]["resize"] == "letterbox":
        where = letterbox(*original, need[0], None, None)
        need = (where.w, where.h)
    return open_image(str(image), channels, need), original  # type: ignore[arg-type]


def _letterboxed(img: Image.Image, original: tuple[int, int], spec: dict) -> Image.Image:
    """The image on the S×S canvas, aspect kept, centred, padded with the spec's pad pixel."""
    size = int(spec["image"]["size"][0])  # detection inputs are square (data/stream.py)
    where = letterbox(*original, size, None, None)
    pad = [int(v) for v in spec["image"]["pad"]]
    canvas = Image.new(img.mode, (size, size), pad[0] if img.mode == "L" else tuple(pad))
    canvas.paste(img.resize((where.w, where.h), Image.Resampling.BILINEAR), (where.dx, where.dy))
    return canvas
