"""How the user asked for the data to be cut and normalised: `--split`, `--mean` and `--std` (docs/data.md).

The CLI turns the options' text into numbers here (`parse_data_options`), before the config is built, so that a
bad value is one `error:` line before anything is read. The readers resolve them against the data:
`resolve_norm` (how many channels the images have decides how many values fit), data/presplit.py (`--split`).

A run records what it resolved in config.json (`split`, and `mean`/`std` as one value per channel): `--resume`
and the export read the same numbers back rather than computing them again. A config.json without `mean`/`std`
is a run from before per-channel normalisation: it resumes with `per_channel=False`, the one mean/std over every
channel it was trained with (loop/session.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from host_trainer.errors import UserError

DEFAULT_SPLIT = (70, 15, 15)  # train / val / test percentages of a set without its own split
USER_SETS = ("imagefolder", "coco", "yolo")  # the references --split applies to; the built-in sets have fixed splits
Norm = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std), one value per channel


@dataclass(frozen=True)
class DataOptions:
    """What a data load is asked for; the defaults are a new run's."""

    split: tuple[int, int, int] | None = None  # --split: re-split into these percentages; None: the set's own split
    mean: tuple[float, ...] = ()  # --mean: one per channel, or one for every channel; (): from the training split
    std: tuple[float, ...] = ()
    per_channel: bool = True  # False: one mean/std over every channel (a resumed run from before per-channel)

    @property
    def fractions(self) -> tuple[float, float, float]:
        """The split as fractions; v / 100 is the very float 0.15 and 0.7 are, so old splits cut the same."""
        return tuple(v / 100 for v in self.split or DEFAULT_SPLIT)  # type: ignore[return-value]


def parse_split(text: str) -> tuple[int, int, int]:
    """`70/15/15` -> (70, 15, 15): three non-negative integers summing to 100, the first > 0; else one line."""
    parts = str(text).replace(",", "/").split("/")
    try:
        values = tuple(int(p.strip()) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0 or sum(values) != 100:
        raise UserError(f"--split takes train/val/test percentages, three integers >= 0 that sum to 100 "
                        f"(e.g. 70/15/15), got {text!r}")
    if values[0] == 0:
        raise UserError(f"--split {text}: the training share must be > 0")
    return values  # type: ignore[return-value]


def parse_values(text: str, option: str) -> list[float]:
    """`0.485,0.456,0.406` (one per channel) or `0.5` (every channel) -> floats for pixels in [0, 1]."""
    try:
        values = [float(p) for p in str(text).split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise UserError(f"{option} takes numbers separated by commas (one per channel, or one for every channel), "
                        f"got {text!r}")
    if option == "--std" and min(values) <= 0:
        raise UserError(f"--std values must be > 0, got {text!r}")
    # Pixels are scaled to [0, 1] before normalisation: 123.7 is ImageNet's mean on the 0-255 scale.
    out_of_range = not all(0 <= v <= 1 for v in values) if option == "--mean" else max(values) > 1
    if out_of_range:
        raise UserError(f"{option} is for pixels scaled to [0, 1] (e.g. 0.485, not 123.675: divide by 255), "
                        f"got {text!r}")
    return values


def parse_data_options(given: dict[str, Any]) -> dict[str, Any]:
    """The CLI's --mean/--std text as lists of floats and --split checked (`given` changed in place, returned);
    anything wrong is a one-line UserError."""
    if (given.get("mean") is None) != (given.get("std") is None):
        raise UserError("--mean and --std go together (e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)")
    for option in ("mean", "std"):
        if given.get(option) is not None:
            given[option] = parse_values(given[option], f"--{option}")
    if given.get("mean") is not None and len(given["mean"]) != len(given["std"]) and 1 not in (
            len(given["mean"]), len(given["std"])):
        raise UserError(f"--mean has {len(given['mean'])} values and --std {len(given['std'])}: give one per channel")
    if given.get("split") == "":  # config.json's "": the set's own split, the same as not given
        given["split"] = None
    if given.get("split") is not None:
        kind = str(given.get("dataset") or "").partition(":")[0]
        if kind not in USER_SETS:
            raise UserError("--split re-splits imagefolder:, coco: and yolo: sets; the built-in sets have fixed "
                            "splits")
        given["split"] = "/".join(str(v) for v in parse_split(given["split"]))
    return given


def data_options(cfg: Any, per_channel: bool = True) -> DataOptions:
    """A run's DataOptions from its config (EvolveConfig: `split`, `mean`, `std`)."""
    split = parse_split(cfg.split) if cfg.split else None
    return DataOptions(split, tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std), per_channel)


def resolve_norm(options: DataOptions, channels: int, compute: Callable[[bool], Norm]) -> Norm:
    """(mean, std), one value per channel: as given (one value fills every channel), else `compute(per_channel)`
    on the training split, which gives one value per channel (a scalar repeated when not per channel)."""
    if not options.mean and not options.std:
        return compute(options.per_channel and channels > 1)
    if not (options.mean and options.std):
        raise UserError("--mean and --std go together")
    out = []
    for option, values in (("--mean", options.mean), ("--std", options.std)):
        if len(values) not in (1, channels):
            raise UserError(f"{option} has {len(values)} values, the images have {channels} channel"
                            f"{'s' if channels > 1 else ''} ({channel_kind(channels)}): give {channels} values, "
                            f"or 1 for every channel")
        out.append(tuple(float(v) for v in values) * (channels if len(values) == 1 else 1))
    return out[0], out[1]  # type: ignore[return-value]


def channel_kind(channels: int) -> str:
    return {1: "grey", 3: "RGB"}.get(channels, f"{channels}-channel")


def normalised(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(x - mean) / std per channel of a float32 (N, C, H, W) array, in float32 arithmetic (as a scalar mean/std
    always was: a 1-channel set comes out bit for bit as before)."""
    shape = (1, len(mean), 1, 1)
    m, s = np.asarray(mean, np.float32).reshape(shape), np.asarray(std, np.float32).reshape(shape)
    return ((x - m) / s).astype(np.float32)


def array_stats(x: np.ndarray, per_channel: bool) -> Norm:
    """(mean, std) per channel of float32 NCHW images; not `per_channel`: one value over every channel, repeated.
    A 1-channel set takes the one-value path, the computation every set had before per-channel statistics."""
    channels = x.shape[1]
    if not per_channel:
        # a constant image set would otherwise divide by zero
        return (float(x.mean()),) * channels, (float(x.std()) or 1.0,) * channels
    return (tuple(float(x[:, c].mean()) for c in range(channels)),
            tuple(float(x[:, c].std()) or 1.0 for c in range(channels)))
