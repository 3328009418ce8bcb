"""What the COCO and YOLO readers share: reading annotation text, listing and decoding the images, and
packing the result as a `RawDetection`.

Every image is resized as a whole to S×S (a plain resize, no letterbox: the network sees exactly that
image), so a box scales by S/W horizontally and S/H vertically. Boxes come out as xyxy pixels of the S×S
image. The set is grey (1 channel) when every image is grey, else RGB (3), as for image folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from host_trainer.data.images import read_pixels
from host_trainer.data.types import RawDetection
from host_trainer.errors import UserError


def check_size(image_size: int) -> None:
    if image_size < 1:
        raise UserError(f"image size must be positive, got {image_size}")


def read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")  # -sig: label tools on Windows write a BOM
    except UnicodeDecodeError:
        raise UserError(f"{file} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None


def raw_detection(files: list[Path], size: int, boxes: list[Any], labels: list[Any], names: tuple[str, ...],
                  sources: tuple[str, ...]) -> RawDetection:
    """The loaded set; pixels are decoded last, once every annotation has passed its checks."""
    return RawDetection(read_pixels(files, size), tuple(np.asarray(b, np.float32).reshape(-1, 4) for b in boxes),
                        tuple(np.asarray(lab, np.int64).reshape(-1) for lab in labels), names, sources)
