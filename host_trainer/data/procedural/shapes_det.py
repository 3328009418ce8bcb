"""`shapes-det`: a procedural object-detection set of filled shapes on cluttered colour backgrounds.

Each image (default 128x128 RGB) holds 1..`max_objects` objects of six classes (circle, square, triangle,
cross, star, ring) of random colour (colour says nothing about the class), size (log-uniform over
`min_size`..`max_size` px: the diameter of the circle the shape fits in), rotation and proportions, drawn
in sequence so that they may overlap. Backgrounds are smooth random colour fields carrying strokes,
lines, arcs, small blobs, thin polygon outlines and filled decoys (thin ellipses, bars, rhombi) in
object-like colours, none a class, so that a detector must learn shape; then low-frequency texture
and Gaussian pixel noise cover everything. Everything is drawn on a 2x canvas and box-downsampled.

Boxes are exact for the final pixel grid: an object's pixels are those at least half covered by its
own ink (2 of their 4 subpixels), and its box is their tight box in xyxy pixels with exclusive x2/y2
(a shape covering columns 10..19 has x1=10, x2=20). Objects lie wholly inside the image. Boxes are
*amodal*: an occluded object's box covers its hidden part too (like its mask, `render_sample`). A
placement is re-drawn when it would leave an earlier object with less than 1 - `max_occlusion` of its
pixels in view, so the default guarantees half of every object visible; an object that finds no place
in `PLACEMENT_TRIES` draws is dropped (the first always fits). At the defaults an image holds 3.5
objects on average, 15% of objects are partly hidden and 5% more than a fifth hidden.

Every sample is drawn from its own `numpy.random.default_rng((seed, split, index, version))`, so the
set does not depend on the number of worker processes or the order of generation (as in glyphs.py).

Default size: 4,000 train / 500 val / 500 test images, about 17,400 objects (box sides 8..49 px, median
21), classes balanced by chance. Generation takes about 5 s with two worker processes on an idle 2-core
machine (9 s serially); the arrays are then cached in memory and in $EDGE_EVOLVER_CACHE (default
~/.cache/edge-evolver, 246 MB, read back in 0.5 s; "off" disables it). Difficulty knobs: `clutter`,
`noise`, `min_size`/`max_size`, `max_objects`, `max_occlusion` and `min_contrast` (the least RGB
distance of an object's colour from the mean colour under it). Not yet calibrated against a detector.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from host_trainer.data.procedural import cache
from host_trainer.data.procedural.pool import default_workers, render_jobs
from host_trainer.data.types import RawDetection
from host_trainer.progress import NULL, Progress

SHAPES = ("circle", "square", "triangle", "cross", "star", "ring")
# Bump when the rendering changes, so that stale disk caches are not reused.
GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")
PLACEMENT_TRIES = 20  # draws of position/size/pose before an object that will not fit is dropped
COLOUR_TRIES = 8  # draws of an object's colour before the most contrasting one is taken
_NORMAL_QUANTILES = np.array([NormalDist().inv_cdf((k + 0.5) / 256) for k in range(256)], dtype=np.float32)


@dataclass(frozen=True)
class ShapesDetConfig:
    """Everything that determines the generated arrays (and so the disk-cache key)."""

    n_train: int = 4000
    n_val: int = 500
    n_test: int = 500
    image_size: int = 128
    seed: int = 0
    classes: tuple[str, ...] = SHAPES  # a selection from SHAPES; label i is classes[i]
    min_size: int = 10  # object diameter range in px, capped at image_size
    max_size: int = 48
    max_objects: int = 6  # each image draws 1..max_objects objects
    clutter: float = 1.0  # scales the number of background distractors and the texture amplitude
    noise: float = 1.0  # scales the largest Gaussian noise sigma
    max_occlusion: float = 0.5  # the largest hidden fraction of any object's pixels
    min_contrast: float = 0.25  # least RGB distance (in [0, 1] units) of an object's colour to its underlay

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_val, self.n_test) < 0 or self.image_size < 16:
            raise ValueError(f"split sizes must be >= 0 and image_size >= 16: {self}")
        if not self.classes or len(set(self.classes)) != len(self.classes) or set(self.classes) - set(SHAPES):
            raise ValueError(f"classes must be distinct names from {SHAPES}, got {self.classes!r}")
        if not 4 <= self.min_size <= self.max_size or self.max_objects < 1:
            raise ValueError(f"need 4 <= min_size <= max_size and max_objects >= 1: {self}")
        if not 0.0 <= self.max_occlusion < 1.0 or min(self.clutter, self.noise, self.min_contrast) < 0:
            raise ValueError(f"need 0 <= max_occlusion < 1 and clutter, noise, min_contrast >= 0: {self}")

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


class Sample(NamedTuple):
    image: np.ndarray  # uint8 (3, S, S)
    boxes: np.ndarray  # float32 (n, 4), xyxy pixels, x2/y2 exclusive
    labels: np.ndarray  # int64 (n,)
    masks: np.ndarray  # bool (n, S, S): each object's whole (amodal) pixels, in drawing order


Polygons = list[tuple[np.ndarray, int]]  # (k, 2) vertices with their fill: 255 ink, 0 a hole


def _unit_shape(name: str, rng: np.random.Generator) -> Polygons:
    """The class's polygons inside the unit circle (before rotation), with random proportions."""
    if name in ("circle", "ring"):
        t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
        outer = np.stack([np.cos(t), rng.uniform(0.8, 1.0) * np.sin(t)], 1)
        # The hole is at most 0.62 of the radius: a ring stays thicker than the thin outline distractors.
        return [(outer, 255)] if name == "circle" else [(outer, 255), (outer * rng.uniform(0.4, 0.62), 0)]
    if name == "square":
        a = rng.uniform(0.8, 1.0)
        pts = np.array([[1, a], [-1, a], [-1, -a], [1, -a]]) / math.hypot(1, a)
    elif name == "triangle":
        t = np.radians(90 + np.array([0, 120, 240]) + rng.uniform(-12, 12, 3))
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif name == "cross":
        w = rng.uniform(0.2, 0.32)
        arm = np.array([[1, -w], [1, w], [w, w]])
        quarter = np.array([[0, 1], [-1, 0]])  # (x, y) -> (-y, x): a quarter turn
        pts = np.concatenate([arm @ np.linalg.matrix_power(quarter, k) for k in range(4)]) / math.hypot(1, w)
    else:  # star
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        pts = np.stack([radius * np.cos(t), radius * np.sin(t)], 1)
    return [(pts, 255)]


def _size_range(cfg: ShapesDetConfig) -> tuple[float, float]:
    return float(min(cfg.min_size, cfg.image_size)), float(min(cfg.max_size, cfg.image_size))


def _place(rng: np.random.Generator, name: str, cfg: ShapesDetConfig) -> tuple[Polygons, float, float, float]:
    """One random pose of a `name` object: polygons in final pixels, centre and radius."""
    lo, hi = _size_range(cfg)
    r = math.exp(rng.uniform(math.log(lo), math.log(hi))) / 2  # log-uniform: each octave as common
    cx, cy = rng.uniform(r, cfg.image_size - r, size=2)
    theta = rng.uniform(0, 2 * np.pi)
    rot = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]])
    return [(pts @ rot * r + (cx, cy), fill) for pts, fill in _unit_shape(name, rng)], cx, cy, r


def _ink(polys: Polygons, cx: float, cy: float, r: float, size: int) -> tuple[Image.Image, tuple[int, ...]]:
    """The object's 2x ink (mode L, 0/255) over a patch around it, and the patch's final-pixel box."""
    # Every vertex lies within r of the centre, so a patch one pixel wider holds all the ink.
    x0, y0 = max(0, math.floor(cx - r) - 1), max(0, math.floor(cy - r) - 1)
    x1, y1 = min(size, math.ceil(cx + r) + 1), min(size, math.ceil(cy + r) + 1)
    ink = Image.new("L", (2 * (x1 - x0), 2 * (y1 - y0)), 0)
    draw = ImageDraw.Draw(ink)
    for pts, fill in polys:
        draw.polygon((2 * (pts - (x0, y0))).ravel().tolist(), fill=fill)
    return ink, (x0, y0, x1, y1)


def _pixels(ink: Image.Image) -> np.ndarray:
    """Final pixels at least half covered, 2 of their 4 subpixels: bool (h, w). reduce(2) averages the
    0/255 subpixels to about 64 k for k inked ones, so 96 splits k <= 1 from k >= 2 whatever it rounds."""
    return np.asarray(ink.reduce(2)) >= 96


def _fits(m: np.ndarray, sl: tuple[slice, slice], visible: list[np.ndarray], areas: list[int],
          keep: float) -> bool:
    """Whether every earlier object keeps at least `keep` of its pixels in view under a new mask `m`."""
    return all(np.count_nonzero(v) - np.count_nonzero(v[sl] & m) >= keep * a for v, a in zip(visible, areas))


def _colour(rng: np.random.Generator, underlay: np.ndarray, min_contrast: float) -> tuple[int, ...]:
    """A random RGB colour at least `min_contrast` from `underlay` (both in [0, 1]), or the farthest of a
    few tries: an object the colour of what lies under it would have no edges to find."""
    best, best_d = underlay, -1.0
    for _ in range(COLOUR_TRIES):
        c = rng.uniform(0.0, 1.0, size=3)
        d = float(np.linalg.norm(c - underlay))
        if d > best_d:
            best, best_d = c, d
        if d >= min_contrast:
            break
    return tuple(int(v) for v in np.round(best * 255))


def _add_object(rng: np.random.Generator, cfg: ShapesDetConfig, name: str, canvas: Image.Image,
                visible: list[np.ndarray], areas: list[int]) -> np.ndarray | None:
    """Place one object where it hides no earlier one too much and paint it on the 2x `canvas`.
    Returns its final-pixel mask (bool (S, S)), or None when no draw fitted."""
    size = cfg.image_size
    for _ in range(PLACEMENT_TRIES):
        polys, cx, cy, r = _place(rng, name, cfg)
        ink, (x0, y0, x1, y1) = _ink(polys, cx, cy, r, size)
        m, sl = _pixels(ink), (slice(y0, y1), slice(x0, x1))
        if m.any() and _fits(m, sl, visible, areas, 1.0 - cfg.max_occlusion):
            break
    else:
        return None
    big_box = (2 * x0, 2 * y0, 2 * x1, 2 * y1)
    hist = np.array(canvas.crop(big_box).histogram(ink), dtype=np.float64).reshape(3, 256)
    underlay = hist @ np.arange(256) / (255.0 * hist[0].sum())  # mean colour under the ink
    canvas.paste(_colour(rng, underlay, cfg.min_contrast), big_box, ink)
    for v in visible:
        v[sl] &= ~m
    full = np.zeros((size, size), dtype=bool)
    full[sl] = m
    return full


def _decoy(rng: np.random.Generator, x: float, y: float, d: float) -> np.ndarray:
    """A filled non-class shape of diameter d (in final px) at 2x point (x, y): a thin ellipse, a bar
    or a thin rhombus, all far narrower (aspect <= 0.45) than any class shape's 0.8."""
    a, kind = rng.uniform(0.15, 0.45), int(rng.integers(3))
    if kind == 0:
        u = np.linspace(0.0, 2 * np.pi, 24, endpoint=False)
        pts = np.stack([np.cos(u), a * np.sin(u)], 1)
    else:
        pts = np.array([[1, a], [-1, a], [-1, -a], [1, -a]] if kind == 1 else [[1, 0], [0, a], [-1, 0], [0, -a]])
    t = rng.uniform(0, 2 * np.pi)
    rot = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    return pts @ rot * d + (x, y)  # d: the radius at 2x is the diameter in final pixels


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cfg: ShapesDetConfig) -> None:
    """Distractors on the 2x background in object-like colours: strokes, lines, arcs, blobs, thin outlines
    and filled decoys, none a class."""
    big = 2 * cfg.image_size
    lo, hi = _size_range(cfg)
    for _ in range(int(rng.poisson(10.0 * cfg.clutter))):
        fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
        kind = int(rng.integers(6))
        x, y = rng.uniform(0, big, size=2)
        if kind == 0:  # a short thick stroke (one bar, never a cross)
            length, t = rng.uniform(0.05, 0.25) * big, rng.uniform(0, 2 * np.pi)
            draw.line((x, y, x + length * math.cos(t), y + length * math.sin(t)), fill=fill,
                      width=2 * int(rng.integers(1, 4)))
        elif kind == 1:  # a long thin line
            draw.line(tuple(rng.uniform(-0.1, 1.1, size=4) * big), fill=fill, width=2 * int(rng.integers(1, 3)))
        elif kind == 2:  # an arc, thinner than any ring
            d = rng.uniform(lo, hi * 1.5) * 2
            start = float(rng.uniform(0, 360))
            draw.arc((x, y, x + d, y + d * rng.uniform(0.6, 1.4)), start, start + float(rng.uniform(40, 200)),
                     fill=fill, width=2)
        elif kind == 3:  # a small blob, smaller than the smallest object
            d = rng.uniform(2.0, max(2.5, lo / 2)) * 2
            draw.ellipse((x, y, x + d, y + d * rng.uniform(0.5, 1.5)), fill=fill)
        elif kind == 4:  # a thin outline of a 4-6 sided polygon
            n, d = int(rng.integers(4, 7)), rng.uniform(lo, hi) * 2
            u = rng.uniform(0, 2 * np.pi) + np.arange(n) * 2 * np.pi / n + rng.uniform(-0.2, 0.2, size=n)
            pts = np.stack([x + d / 2 * np.cos(u), y + d / 2 * np.sin(u)], 1).ravel().tolist()
            draw.polygon(pts, outline=fill, width=2)
        else:  # a filled shape that is no class, so that "a filled blob" is not enough to call an object
            draw.polygon(_decoy(rng, x, y, rng.uniform(lo, hi)).ravel().tolist(), fill=fill)


def _background(rng: np.random.Generator, cfg: ShapesDetConfig) -> Image.Image:
    """The 2x canvas: a smooth random colour field with clutter drawn on it."""
    size = cfg.image_size
    ramp = np.linspace(0.0, 1.0, 4)
    t = rng.uniform(0, 2 * np.pi)
    proj = math.cos(t) * ramp[None, :] + math.sin(t) * ramp[:, None]
    proj = (proj - proj.min()) / (np.ptp(proj) + 1e-6)
    c0, c1 = rng.uniform(0.0, 1.0, size=(2, 3))
    field = c0 + (c1 - c0) * proj[..., None] + rng.normal(0.0, 0.08, size=(4, 4, 3))
    img = Image.fromarray((np.clip(field, 0, 1) * 255 + 0.5).astype(np.uint8))
    # Smooth at the final size, then doubled by nearest neighbour (cheaper than resizing to 2x smoothly):
    # the 2x canvas only serves to anti-alias what is drawn on it, and reduce(2) gives the field back.
    img = img.resize((size, size), Image.Resampling.BILINEAR).resize((2 * size, 2 * size), Image.Resampling.NEAREST)
    _draw_clutter(ImageDraw.Draw(img), rng, cfg)
    return img


def _finish(rng: np.random.Generator, canvas: Image.Image, cfg: ShapesDetConfig) -> np.ndarray:
    """Downsample (anti-aliasing every edge), add low-frequency texture and pixel noise: uint8 (3, S, S)."""
    size = cfg.image_size
    coarse = rng.normal(0.0, 0.05 * 255 * cfg.clutter, size=(max(2, size // 8),) * 2).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)) + 0.5
    img = _gaussian(rng, (3, size, size))  # a fresh array: the sums below work in place
    img *= rng.uniform(0.01, 0.06) * 255 * cfg.noise
    img += texture
    img += np.asarray(canvas.reduce(2), dtype=np.float32).transpose(2, 0, 1)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _gaussian(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise by inverse CDF of random bytes: 4x faster than `rng.standard_normal` (which
    took a fifth of the time), and its 256 levels are invisible after 8-bit rounding."""
    return np.take(_NORMAL_QUANTILES, rng.integers(0, 256, size=shape, dtype=np.uint8))


def _box(mask: np.ndarray) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def render_sample(cfg: ShapesDetConfig, split: str, index: int) -> Sample:
    """One image with its boxes, labels and object masks; a pure function of (cfg, split, index)."""
    rng = np.random.default_rng((cfg.seed, SPLITS.index(split), index, GENERATOR_VERSION))
    canvas = _background(rng, cfg)
    wanted = rng.integers(len(cfg.classes), size=int(rng.integers(1, cfg.max_objects + 1)))
    masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []  # each object's pixels that no later object covers
    areas: list[int] = []
    labels: list[int] = []
    for label in wanted:
        mask = _add_object(rng, cfg, cfg.classes[label], canvas, visible, areas)
        if mask is not None:  # None: no admissible place (never the first, which nothing can block)
            masks.append(mask)
            visible.append(mask.copy())
            areas.append(int(np.count_nonzero(mask)))
            labels.append(int(label))
    image = _finish(rng, canvas, cfg)
    boxes = np.array([_box(m) for m in masks], dtype=np.float32).reshape(-1, 4)
    size = cfg.image_size
    return Sample(image, boxes, np.array(labels, dtype=np.int64), np.array(masks, dtype=bool).reshape(-1, size, size))


_Job = tuple[ShapesDetConfig, str, int, int]  # config, split, first index, end index
_Part = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x, boxes, labels, counts


def _render_range(args: _Job) -> _Part:
    cfg, split, start, stop = args
    x = np.empty((stop - start, 3, cfg.image_size, cfg.image_size), dtype=np.uint8)
    boxes, labels = [np.zeros((0, 4), np.float32)], [np.zeros(0, np.int64)]
    for i in range(start, stop):
        s = render_sample(cfg, split, i)
        x[i - start] = s.image
        boxes.append(s.boxes)
        labels.append(s.labels)
    counts = np.array([len(lab) for lab in labels[1:]], dtype=np.int64)
    return x, np.concatenate(boxes), np.concatenate(labels), counts


def generate(cfg: ShapesDetConfig, workers: int | None = None, progress: Progress = NULL) -> dict[str, np.ndarray]:
    """Render every split: {"x_train": uint8 (N, 3, S, S), "boxes_train": float32 (M, 4), "labels_train":
    int64 (M,), "counts_train": int64 (N,) objects per image (cut boxes with its cumsum), ... val, test}."""
    chunk = 250
    jobs = [(cfg, split, start, min(start + chunk, cfg.split_size(split)))
            for split in SPLITS for start in range(0, max(cfg.split_size(split), 1), chunk)]
    workers = default_workers(sum(cfg.split_size(s) for s in SPLITS), 1000) if workers is None else workers
    done_images = np.cumsum([stop - start for _cfg, _split, start, stop in jobs])  # parts come in job order
    with progress.step("shapes-det: generating images (once; then cached)", total=int(done_images[-1])) as bar:
        parts = render_jobs(_render_range, jobs, workers, lambda done, _total: bar.update(int(done_images[done - 1])))
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        mine = [p for job, p in zip(jobs, parts) if job[1] == split]  # never empty: see `jobs`
        for k, name in enumerate(("x", "boxes", "labels", "counts")):
            out[f"{name}_{split}"] = np.concatenate([p[k] for p in mine])
    return out


def cache_path(cfg: ShapesDetConfig) -> Path | None:
    """Where the disk cache for `cfg` lives; None when EDGE_EVOLVER_CACHE is "off"."""
    return cache.cache_path("shapes-det", asdict(cfg), GENERATOR_VERSION)


def _valid(arrays: dict[str, np.ndarray], cfg: ShapesDetConfig) -> bool:
    """Whether cached arrays have the shapes, dtypes and box counts that `cfg` implies."""
    for split in SPLITS:
        # A missing array reads as an empty one, whose shape never passes.
        x, boxes, labels, counts = (arrays.get(f"{k}_{split}", np.empty(0)) for k in ("x", "boxes", "labels", "counts"))
        n, m, size = cfg.split_size(split), len(boxes), cfg.image_size
        if (x.shape, boxes.shape, labels.shape, counts.shape) != ((n, 3, size, size), (m, 4), (m,), (n,)):
            return False
        if (x.dtype, boxes.dtype, labels.dtype, counts.dtype) != (np.uint8, np.float32, np.int64, np.int64):
            return False
        if int(counts.sum()) != m:
            return False
    return True


LOADED = cache.Remembered(maxsize=2)


def load_shapes_det(cfg: ShapesDetConfig = ShapesDetConfig(), progress: Progress = NULL) -> dict[str, np.ndarray]:
    """The arrays of `generate(cfg)`, from memory, the disk cache, or freshly rendered. Read-only."""
    return LOADED.get(cfg, lambda: cache.load_cached(
        cache_path(cfg), lambda arrays: _valid(arrays, cfg), lambda: generate(cfg, progress=progress)))


def to_raw(arrays: dict[str, np.ndarray], split: str, cfg: ShapesDetConfig) -> RawDetection:
    """One split of `generate`'s arrays as a `RawDetection` (images float32 in [0, 1])."""
    x, counts = arrays[f"x_{split}"], arrays[f"counts_{split}"]
    cuts, n = np.cumsum(counts)[:-1], len(x)
    # [:n]: with no images np.split still returns one (empty) piece.
    boxes = tuple(np.split(np.asarray(arrays[f"boxes_{split}"], np.float32), cuts))[:n]
    labels = tuple(np.split(np.asarray(arrays[f"labels_{split}"], np.int64), cuts))[:n]
    images = x.astype(np.float32)
    images /= 255.0  # in place: the default training split is 786 MB as float32
    return RawDetection(images, boxes, labels, tuple(cfg.classes), tuple(f"shapes-det/{split}/{i}" for i in range(n)))
