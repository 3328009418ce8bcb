"""Synapse masks: which weights of each prunable layer exist.

A mask is a bool tensor shaped like its layer's weight. Dropped synapses inside surviving clusters
stay in the tensor as zeros, and training holds them there by multiplying with the mask after every
optimiser step (docs/method.md, "Training").
"""

from __future__ import annotations

import torch
from torch import nn

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    """Every Conv2d and Linear layer by module name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE)}


def dense_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks under which every synapse of every prunable layer exists (a dense network)."""
    return {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model).items()}


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every synapse the masks say does not exist, in place."""
    for name, layer in prunable_layers(model).items():
        layer.weight.mul_(masks[name].to(layer.weight.device, layer.weight.dtype))  # masks may rest on the CPU
