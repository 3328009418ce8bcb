"""What rebuilds a compact network: the model reference, the data shape, the width of every Conv/Linear layer and
the residual blocks removed whole. Every checkpoint holds it (loop/checkpoint.py), and so does final/'s
architecture.json (deploy/final.py); `build_architecture` turns it back into the network, weights not loaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from host_trainer.errors import UserError
from host_trainer.method.compaction import shrink_to_widths, widths
from host_trainer.method.depth import remove_blocks, removed_blocks
from host_trainer.models.registry import build_model, fixed_layers


def architecture(model: nn.Module, model_ref: str, num_classes: int, input_shape: tuple[int, ...]) -> dict:
    arch = {"model": model_ref, "num_classes": num_classes, "input_shape": list(input_shape),
            "widths": widths(model)}
    removed = removed_blocks(model)
    return {**arch, "removed": removed} if removed else arch


def build_architecture(arch: dict) -> nn.Module:
    """A model with the stored architecture (weights not loaded yet)."""
    shape = tuple(arch["input_shape"])
    model = build_model(arch["model"], int(arch["num_classes"]), shape)  # type: ignore[arg-type]
    remove_blocks(model, arch.get("removed", []))  # before the widths: a removed block's layers have none
    example = torch.zeros((1, *shape))
    return shrink_to_widths(model, arch["widths"], example, fixed_layers(model))


def checked_architecture(arch: Any, source: str) -> dict:
    """`arch` when it has the fields and types `build_architecture` reads; else a one-line UserError naming
    `source` and the first field that is wrong (a hand-edited or damaged file must not fail deep in torch)."""
    def fail(what: str) -> UserError:
        return UserError(f"{source}: not an architecture ({what})")

    if not isinstance(arch, dict):
        raise fail("not a JSON object")
    if not isinstance(arch.get("model"), str) or not arch["model"]:
        raise fail("'model' must name a model")
    if not isinstance(arch.get("num_classes"), int) or arch["num_classes"] < 1:
        raise fail("'num_classes' must be a positive integer")
    shape = arch.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)):
        raise fail("'input_shape' must be [channels, height, width]")
    layer_widths = arch.get("widths")
    if not (isinstance(layer_widths, dict) and all(isinstance(v, int) and v > 0 for v in layer_widths.values())):
        raise fail("'widths' must map layer names to positive integers")
    if not isinstance(arch.get("removed", []), list):
        raise fail("'removed' must be a list of block names")
    return arch
