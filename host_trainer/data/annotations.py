"""What the COCO and YOLO readers (data/coco.py, data/yolo.py) share: reading an annotation file as text, and
what a reader returns.

A reader checks every annotation and reads no pixel (COCO reads image headers for their sizes): a malformed file
stops the run before any image is decoded. Boxes come out xyxy, normalised to their image ([0, 1]), so that the
loader places them wherever it puts the image (data/stream_augment.py: letterbox, jitter, flip).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from host_trainer.errors import UserError


class Annotations(NamedTuple):
    """A detection set's annotations, per image in the reader's order."""

    files: list[Path]         # the image files
    boxes: list[Any]          # per image (n_i, 4) xyxy normalised to the image; n_i may be 0 (a negative)
    labels: list[Any]         # per image (n_i,) class ids in [0, len(names))
    names: tuple[str, ...]    # class names
    sources: tuple[str, ...]  # per image: its name in the annotations (COCO `file_name`, YOLO relative path)
    splits: tuple[str | None, ...] = ()  # per image: the set's own split it sits in (train, val, test) or None


def read_text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")  # -sig: label tools on Windows write a BOM
    except UnicodeDecodeError:
        raise UserError(f"{file} is not UTF-8 text") from None
    except OSError as exc:
        raise UserError(f"cannot read {file}: {exc.strerror or exc}") from None
