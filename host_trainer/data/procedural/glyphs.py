"""`glyphs`: a procedural character set, harder than `digits`, rendered with the fonts matplotlib ships.

Each sample is one character (47 classes, the EMNIST-balanced alphabet: 0-9, A-Z and the lower-case
letters whose shape differs from their capital) drawn with a random font, size and stroke width,
warped by a random affine map, laid over clutter (strokes, arcs, a clipped neighbouring character and a
shading gradient), optionally blurred, then box-downsampled from a 2x canvas and given Gaussian noise.
Confusable pairs (O/0, I/1, S/5, Z/2, B/8, q/9 ...) are kept: they are much of what stops a CNN
from saturating.

Every sample is drawn from its own `numpy.random.default_rng((seed, split, index))`, so the set does
not depend on the number of worker processes or the order of generation, and two runs are identical.

Default size: 12,000 train / 2,000 val / 3,000 test images of 32x32x1, 47 balanced classes. Generation
takes about 5 s with two worker processes on an idle 2-core machine (8-9 s serially or under load);
the arrays are then cached in memory and in $EDGE_EVOLVER_CACHE (default ~/.cache/edge-evolver, 17 MB;
"off" disables it).

Calibration (difficulty target: well below saturation): dense `VGGSmall` (676k parameters at 47 classes),
SGD momentum 0.9, lr 0.05 with per-step cosine decay to 0, batch 128, weight decay 5e-4, no
augmentation, train-set mean/std normalisation, torch seed 0, 2 CPU threads (about 20 s an epoch):
    6 epochs: 88.8% test accuracy (val 88.6%)
    8 epochs: 90.3% test accuracy (val 90.9%)
The main residual confusions are O/0, M/N/H, a/d, B/8, g/q/9 and 1/I.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from host_trainer.data.procedural import cache
from host_trainer.data.procedural.pool import default_workers, render_jobs
from host_trainer.progress import NULL, Progress

# The EMNIST "balanced" alphabet. Lower-case letters shaped like their capital (c, o, s, ...) are left
# out: at a random size they are the capital, and a label that is ambiguous by definition teaches nothing.
CLASSES = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabdefghnqrt"
# The *Display* DejaVu files are subsets without most letters, so they are not listed.
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
)
# Bump when the rendering changes, so that stale disk caches are not reused.
GENERATOR_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class GlyphsConfig:
    """Everything that determines the generated arrays (and so the disk-cache key)."""

    n_train: int = 12000
    n_val: int = 2000
    n_test: int = 3000
    image_size: int = 32
    seed: int = 0
    classes: str = CLASSES
    distortion: float = 1.0  # scales the affine ranges (rotation, shear, scale, translation)
    clutter: float = 1.0  # scales the number of clutter strokes and the chance of a neighbouring glyph
    noise: float = 1.0  # scales the largest Gaussian noise sigma

    def __post_init__(self) -> None:
        if min(self.n_train, self.n_val, self.n_test) < 0 or self.image_size < 4:
            raise ValueError(f"split sizes must be >= 0 and image_size >= 4: {self}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be distinct characters, got {self.classes!r}")

    def split_size(self, split: str) -> int:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}[split]


@functools.lru_cache(maxsize=1)
def font_paths() -> tuple[str, ...]:
    import matplotlib  # imported late: only the glyph generator needs it

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found = tuple(str(root / f) for f in FONT_FILES if (root / f).is_file())
    if not found:
        raise RuntimeError(f"no DejaVu/STIX fonts found under {root}; is matplotlib installed completely?")
    return found


@functools.lru_cache(maxsize=None)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size)


def _draw_char(draw: ImageDraw.ImageDraw, rng: np.random.Generator, ch: str, centre: tuple[float, float],
               big: int, fill: int) -> None:
    """Draw `ch` with a random font, size and stroke so that its ink box is centred on `centre`."""
    fonts = font_paths()
    font = _font(fonts[int(rng.integers(len(fonts)))], int(big * rng.uniform(0.55, 0.8)))
    stroke = int(rng.integers(0, max(1, big // 20) + 1))
    left, top, right, bottom = font.getbbox(ch, stroke_width=stroke)
    xy = (centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2)
    draw.text(xy, ch, fill=fill, font=font, stroke_width=stroke, stroke_fill=fill)


def _affine(img: Image.Image, rng: np.random.Generator, strength: float) -> Image.Image:
    """Rotate, shear, scale (anisotropically) and translate about the centre."""
    big = img.size[0]
    angle = math.radians(rng.uniform(-15, 15) * strength)
    shear = rng.uniform(-0.25, 0.25) * strength
    scale = 1 + rng.uniform(-0.2, 0.1) * strength
    aspect = 1 + rng.uniform(-0.15, 0.15) * strength
    shift = rng.uniform(-0.1, 0.1, size=2) * big * strength
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    fwd = rot @ np.array([[1, shear], [0, 1]]) @ np.diag([scale * aspect, scale / aspect])
    # PIL maps output pixels back to input pixels, so it wants the inverse map (2x2: by hand, no LAPACK).
    det = fwd[0, 0] * fwd[1, 1] - fwd[0, 1] * fwd[1, 0]
    inv = np.array([[fwd[1, 1], -fwd[0, 1]], [-fwd[1, 0], fwd[0, 0]]]) / det
    c = np.array([big / 2, big / 2])
    off = c - inv @ (c + shift)
    data = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    return img.transform(img.size, Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR)


def _clutter(rng: np.random.Generator, big: int, cfg: GlyphsConfig) -> Image.Image:
    """Strokes, arcs and a clipped neighbouring character: distractors a classifier must ignore."""
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.poisson(2.0 * cfg.clutter))):
        fill = int(rng.integers(90, 256))
        width = int(rng.integers(1, max(2, big // 16) + 1))
        pts = rng.uniform(-0.1, 1.1, size=4) * big
        if rng.random() < 0.5:
            draw.line(tuple(pts), fill=fill, width=width)
        else:
            x0, y0 = pts[:2] - big * 0.3
            box = (x0, y0, x0 + big * rng.uniform(0.3, 0.9), y0 + big * rng.uniform(0.3, 0.9))
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(40, 160)), fill=fill, width=width)
    if rng.random() < 0.5 * cfg.clutter:
        # A neighbour on a line of text: its centre lies beyond the image edge, so only part shows.
        theta = rng.uniform(0, 2 * math.pi)
        r = big * rng.uniform(0.7, 0.85)
        centre = (big / 2 + r * math.cos(theta), big / 2 + r * math.sin(theta))
        _draw_char(draw, rng, cfg.classes[int(rng.integers(len(cfg.classes)))], centre, big,
                   int(rng.integers(120, 256)))
    return img


def render_sample(cfg: GlyphsConfig, split: str, index: int) -> tuple[np.ndarray, int]:
    """One (image uint8 HxW, label) pair; a pure function of (cfg, split, index)."""
    rng = np.random.default_rng((cfg.seed, SPLITS.index(split), index, GENERATOR_VERSION))
    label = index % len(cfg.classes)  # cyclic labels keep every split (and every prefix) balanced
    big = 2 * cfg.image_size  # supersample, then box-filter down: smooth edges for little cost
    glyph = Image.new("L", (big, big), 0)
    _draw_char(ImageDraw.Draw(glyph), rng, cfg.classes[label], (big / 2, big / 2), big, 255)
    glyph = _affine(glyph, rng, cfg.distortion)
    img = Image.fromarray(np.maximum(np.asarray(glyph), np.asarray(_clutter(rng, big, cfg))))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    ink = np.asarray(img.reduce(2), dtype=np.float32) / 255.0
    return _shade(rng, ink, cfg), label


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> np.ndarray:
    return np.mgrid[0:size, 0:size].astype(np.float32) / size


def _shade(rng: np.random.Generator, ink: np.ndarray, cfg: GlyphsConfig) -> np.ndarray:
    """Map ink coverage to grey levels over a linear gradient background, then add noise."""
    yy, xx = _grid(ink.shape[0])
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    background = rng.uniform(0.0, 0.35) + gx * (xx - 0.5) + gy * (yy - 0.5)
    foreground = rng.uniform(0.6, 1.0)
    img = background + (foreground - background) * ink
    img = img + rng.normal(0.0, rng.uniform(0.02, 0.10) * cfg.noise, size=img.shape)
    return (np.clip(img, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


_Job = tuple[GlyphsConfig, str, int, int]  # config, split, first index, end index


def _render_range(args: _Job) -> tuple[np.ndarray, np.ndarray]:
    cfg, split, start, stop = args
    x = np.empty((stop - start, cfg.image_size, cfg.image_size), dtype=np.uint8)
    y = np.empty(stop - start, dtype=np.int64)
    for i in range(start, stop):
        x[i - start], y[i - start] = render_sample(cfg, split, i)
    return x, y


def generate(cfg: GlyphsConfig, workers: int | None = None, progress: Progress = NULL) -> dict[str, np.ndarray]:
    """Render every split: {"x_train": uint8 (N, H, W), "y_train": int64 (N,), ... for val and test}."""
    chunk = 1000
    jobs = [(cfg, split, start, min(start + chunk, cfg.split_size(split)))
            for split in SPLITS for start in range(0, max(cfg.split_size(split), 1), chunk)]
    workers = default_workers(sum(cfg.split_size(s) for s in SPLITS), 4000) if workers is None else workers
    done_images = np.cumsum([stop - start for _cfg, _split, start, stop in jobs])  # parts come in job order
    with progress.step("glyphs: generating images (once; then cached)", total=int(done_images[-1])) as bar:
        parts = render_jobs(_render_range, jobs, workers, lambda done, _total: bar.update(int(done_images[done - 1])))
    out: dict[str, np.ndarray] = {}
    for split in SPLITS:
        mine = [p for job, p in zip(jobs, parts) if job[1] == split]  # never empty: see `jobs`
        out[f"x_{split}"] = np.concatenate([p[0] for p in mine])
        out[f"y_{split}"] = np.concatenate([p[1] for p in mine])
    return out


def cache_path(cfg: GlyphsConfig) -> Path | None:
    """Where the disk cache for `cfg` lives; None when EDGE_EVOLVER_CACHE is "off"."""
    return cache.cache_path("glyphs", asdict(cfg), GENERATOR_VERSION)


def _valid(arrays: dict[str, np.ndarray], cfg: GlyphsConfig) -> bool:
    for split in SPLITS:
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        n = cfg.split_size(split)
        if x is None or y is None or x.shape != (n, cfg.image_size, cfg.image_size) or y.shape != (n,):
            return False
        if x.dtype != np.uint8 or y.dtype != np.int64:
            return False
    return True


LOADED = cache.Remembered(maxsize=4)


def load_glyphs(cfg: GlyphsConfig = GlyphsConfig(), progress: Progress = NULL) -> dict[str, np.ndarray]:
    """The arrays of `generate(cfg)`, from memory, the disk cache, or freshly rendered. Read-only."""
    return LOADED.get(cfg, lambda: cache.load_cached(
        cache_path(cfg), lambda arrays: _valid(arrays, cfg), lambda: generate(cfg, progress=progress)))
