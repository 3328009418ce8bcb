"""A data set's own train/val/test split, kept unless `--split` asks for another (docs/data.md, "Splits").

Which split an image belongs to is read from the folders the set ships in (the readers tag each image):
- `imagefolder:PATH`: PATH/train/<class>/…, PATH/val/<class>/… (or valid/, validation/), PATH/test/<class>/…
  (data/images.py `folder_images`);
- `yolo:PATH`: images/train/… with labels/train/… (Ultralytics), or train/images/… with train/labels/…
  (Roboflow's export), and the same for val (valid) and test;
- `coco:PATH`: one instances JSON per split (data/coco.py).
A set has its own split when every image is tagged, some train and some val or test. When it has train and only
one held-out split (val, or test), that one is halved, seeded, into val and test: val decides which offspring are
kept, test is the reported figure, and neither may hold training images (a model given with --weights was trained
on the set's train split, so test images carved from it would flatter it). Any other set is cut 70/15/15 (or
`--split`) by the seed, as every set was before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import structlog

from host_trainer.data.classify import held_out, stratified_split
from host_trainer.data.detect import random_split
from host_trainer.data.options import DataOptions
from host_trainer.progress import Progress

log = structlog.get_logger("host_trainer")

Parts = tuple[np.ndarray, np.ndarray, np.ndarray]


def has_own_split(tags: Sequence[str | None] | None) -> bool:
    found = set(tags or ())
    return bool(tags) and None not in found and "train" in found and bool(found & {"val", "test"})


def choose_parts(name: str, n: int, tags: Sequence[str | None] | None, y: np.ndarray | None, seed: int,
                 options: DataOptions, progress: Progress) -> Parts:
    """(train, val, test) indices: the set's own split (`tags`), unless --split was given; else a seeded cut,
    stratified by class when `y` is given (classification), a random one otherwise (detection)."""
    own = has_own_split(tags)
    if own and options.split is None:
        return own_parts(name, np.array(tags, dtype=object), y, seed, progress)
    shares = "/".join(str(v) for v in options.split or (70, 15, 15))
    if own:
        _say(progress, f"{name}: its own train/val/test folders merged and cut {shares} by --split (seed {seed})",
             how="--split")
    elif tags and any(t is not None for t in tags):
        _say(progress, f"{name}: no val or test folder beside train: cut {shares} by the seed ({seed})", how="seeded")
    parts = stratified_split(y, seed, options.fractions) if y is not None else random_split(n, seed, options.fractions)
    return held_out(name, parts)


def own_parts(name: str, tags: np.ndarray, y: np.ndarray | None, seed: int, progress: Progress) -> Parts:
    """The tagged split; with one held-out split only, it is halved into val and test (said once)."""
    train, val, test = (np.flatnonzero(tags == s).astype(np.int64) for s in ("train", "val", "test"))
    if len(val) and len(test):
        _say(progress, f"{name}: its own split kept ({len(train)} train, {len(val)} val, {len(test)} test images)",
             how="own")
        return train, val, test
    which, held = ("val", val) if len(val) else ("test", test)
    first, second = halve(held, None if y is None else y[held], seed)
    _say(progress, f"{name} has train and {which} but no {'test' if which == 'val' else 'val'}: its {len(held)} "
                   f"{which} images are halved (seed {seed}) into val and test; the train images stay training "
                   "images", how=f"own, {which} halved")
    return held_out(name, (train, first, second))


def halve(idx: np.ndarray, y: np.ndarray | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`idx` in two seeded halves, within each class when `y` (the classes of `idx`) is given; an odd one out
    goes to the first half."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(len(idx))] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)] or [idx[:0]]
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    for group in groups:
        order = rng.permutation(group)
        cut = (len(order) + 1) // 2
        first.append(order[:cut])
        second.append(order[cut:])
    return tuple(np.sort(idx[np.concatenate(part)]).astype(np.int64) for part in (first, second))  # type: ignore


def _say(progress: Progress, text: str, how: str) -> None:
    """Once per data load: a line the user sees, and the event log's `data_split`."""
    log.info("data_split", how=how, note=text)
    progress.note(text)
