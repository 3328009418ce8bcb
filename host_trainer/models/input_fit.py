"""Does a `--weights` file fit the data's input? Checked before the weights are loaded (loop/evolve.py
`dense_model`), so that a mismatch is one line saying what to change rather than a list of misshapen keys, and so
that a model that takes any input size is not silently fed images shrunk to the default `--image-size`.

- The weights' first layer (the model's first Conv2d or Linear in module order) must take as many channels as the
  images have (1 grey, 3 RGB): else one line, "--weights W does not fit the images: its first layer conv1 takes 1
  channel (grey), the images have 3 (RGB): use weights trained on RGB images, or a data set of grey images".
- Where the weights' shapes depend on the input side (a Linear after a flatten), the model is rebuilt at common
  sizes, on torch's meta device (no memory, no random numbers drawn), and one that fits is named: "--weights W
  fits vgg-small at --image-size 224, not 32 (the default): set --image-size 224".
- Where they do not (convolutions and a global pooling take any size), `--image-size` left at its default while
  the images are at least twice as large is a warning: "images are 224 px, --image-size is 32 (the default): set
  --image-size 224 to keep them".

`--weights` is a state_dict: it records no input size (an ONNX file's input shape would), so the size is read from
the shapes alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
import torch
from torch import nn

from host_trainer.errors import UserError

log = structlog.get_logger("host_trainer")

SIZES = (8, 16, 24, 28, 32, 48, 56, 64, 96, 112, 128, 160, 192, 224, 256, 288, 299, 320, 384, 416, 448, 512, 640)
MUCH_LARGER = 2  # images at least this many times --image-size: the default shrinks them, say so


@dataclass(frozen=True)
class InputCheck:
    """What the check needs to know about the run."""

    weights: str                                  # the file, for messages
    model_ref: str                                # --model, for messages
    shape: tuple[int, int, int]                   # the data's input (C, S, S)
    default_size: bool                            # --image-size was left at the task's default
    image_px: int                                 # the files' median side; 0: unknown (a built-in set)
    multiple: int                                 # input sides the task takes are multiples of this
    rebuild: Callable[[tuple[int, int, int]], nn.Module]  # the model at another input shape

    @classmethod
    def for_run(cls, cfg: Any, data: Any) -> InputCheck:
        from host_trainer.config import default_of
        from host_trainer.models.registry import build_model

        return cls(cfg.weights, cfg.model, tuple(data.input_shape),
                   cfg.image_size in (0, default_of("image_size", cfg.task)), int(getattr(data, "image_px", 0)),
                   16 if cfg.task == "detect" else 1, lambda shape: build_model(cfg.model, data.num_classes, shape))


def check_input_fit(model: nn.Module, state: Mapping[str, torch.Tensor], check: InputCheck) -> None:
    """One UserError line when the weights want other channels or another --image-size; a warning when the images
    are much larger than a default --image-size the weights do not fix. Other mismatches are left to
    models/weights.py `load_weights`, which names the keys."""
    first = first_layer(model)
    if first is None or fits(model, state) is None:  # no layer, or no key in common: nothing to say here
        return
    name, layer = first
    channels, size = check.shape[0], check.shape[1]
    weight = state.get(f"{name}.weight")
    if isinstance(layer, nn.Conv2d) and weight is not None and weight.dim() == 4:
        takes = int(weight.shape[1]) * layer.groups
        if takes != channels:
            raise UserError(_channel_message(check, name, takes))
    if not fits(model, state):
        _name_what_fits(state, check, name)
        return
    px = round(check.image_px / check.multiple) * check.multiple
    if check.default_size and px >= MUCH_LARGER * size and fits_at(state, check, (channels, 2 * size, 2 * size)):
        log.warning(f"images are {px} px, --image-size is {size} (the default): set --image-size {px} to keep them")


def first_layer(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The first Conv2d or Linear in module order: the layer that sees the input in every usual model."""
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)


def fits(model: nn.Module, state: Mapping[str, torch.Tensor]) -> bool | None:
    """Every tensor both have is of the same shape (None: they have none in common)."""
    own = model.state_dict()
    common = [k for k in state if k in own]
    return None if not common else all(tuple(state[k].shape) == tuple(own[k].shape) for k in common)


def fits_at(state: Mapping[str, torch.Tensor], check: InputCheck, shape: tuple[int, int, int]) -> bool:
    """Do the weights fit the model built for `shape`? Built on the meta device, the run's random state kept."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            return bool(fits(check.rebuild(shape), state))
        except Exception:  # a size the model cannot take (or the user's factory refuses): no fit
            return False


def _name_what_fits(state: Mapping[str, torch.Tensor], check: InputCheck, name: str) -> None:
    """Raise the one line that names the --image-size (or the channels) the weights fit, if any does."""
    channels, size = check.shape[0], check.shape[1]
    sizes = sorted({s for s in (*SIZES, check.image_px) if s and s % check.multiple == 0} - {size})
    for takes in (channels, 3 if channels == 1 else 1):
        for side in ([size] if takes != channels else []) + sizes:
            if not fits_at(state, check, (takes, side, side)):
                continue
            if takes != channels:
                raise UserError(_channel_message(check, name, takes))
            default = " (the default)" if check.default_size else ""
            raise UserError(f"--weights {check.weights} fits {check.model_ref} at --image-size {side}, not "
                            f"{size}{default}: set --image-size {side}")


def channel_kind(channels: int) -> str:
    """How a message names a channel count (data/options.py says it the same way; models may not import data)."""
    return {1: "grey", 3: "RGB"}.get(channels, f"{channels}-channel")


def _channel_message(check: InputCheck, name: str, takes: int) -> str:
    channels = check.shape[0]
    return (f"--weights {check.weights} does not fit the images: its first layer {name} takes {takes} channel"
            f"{'s' if takes != 1 else ''} ({channel_kind(takes)}), the images have {channels} "
            f"({channel_kind(channels)}): use weights trained on {channel_kind(channels)} images, or a data set "
            f"of {channel_kind(takes)} images")
