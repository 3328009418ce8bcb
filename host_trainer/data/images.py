"""Reading the user's image files: listing them, telling grey from colour, decoding and resizing.

Any file PIL cannot decode becomes a one-line UserError that names it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from host_trainer.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def is_grey(img: Image.Image) -> bool:
    if img.mode in _GREY_MODES:
        return True
    if img.mode == "P":  # a palette image is grey when every palette entry is
        rgb = np.asarray(img.convert("RGB"))
        return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return False


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I") or img.mode == "F":
        # 16/32-bit greys: PIL's convert("L") would clip, so scale by the type's range instead.
        a = np.asarray(img, dtype=np.float32)
        a = a / (65535.0 if a.max() > 255 else 255.0)
        img = Image.fromarray(np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8))
    return img.convert("RGB")


def read_image(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """(float32 HxWx3 in [0, 1], is it grey?) for one file; any decoding problem names the file."""
    try:
        with Image.open(path) as img:
            img.load()
            grey = is_grey(img)
            rgb = to_rgb(img).resize((size, size), Image.Resampling.BILINEAR)
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, struct.error ...) on bad files
        raise UserError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None
    return np.asarray(rgb, dtype=np.float32) / 255.0, grey


def image_size_of(file: Path) -> tuple[int, int]:
    """(width, height) from the header alone, so that boxes are checked before any image is decoded."""
    try:
        with Image.open(file) as img:
            return img.size
    except Exception as exc:  # PIL raises many types on bad files
        raise UserError(f"cannot read image {file}: {type(exc).__name__}: {exc}") from None


def read_pixels(files: list[Path], size: int) -> np.ndarray:
    """float32 (N, C, S, S) in [0, 1]; C = 1 when every image is grey (a grey image read as RGB has 3 equal
    channels), else 3."""
    out = np.empty((len(files), 3, size, size), np.float32)
    greys = []
    for i, file in enumerate(files):
        arr, grey = read_image(file, size)
        out[i] = arr.transpose(2, 0, 1)
        greys.append(grey)
    return np.ascontiguousarray(out[:, :1]) if all(greys) else out


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, hidden files and folders ignored, sorted by relative path."""
    found = [f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
             and not any(part.startswith(".") for part in f.relative_to(folder).parts)]
    return sorted(found, key=lambda f: f.relative_to(folder).as_posix())
