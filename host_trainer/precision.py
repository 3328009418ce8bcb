"""Synaptic precision restriction: after training, every parameter and buffer is rounded to the
target format (round to nearest even, torch's cast) and only the rounded values are kept.

The values stay in fp32 tensors so training and the next synthesis use ordinary kernels, but each
one is exactly representable in the restricted format.
"""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def restrict_tensor(t: torch.Tensor, precision: str) -> torch.Tensor:
    dtype = PRECISIONS[precision]
    if dtype is None or not t.is_floating_point():
        return t
    return t.to(dtype).to(t.dtype)


@torch.no_grad()
def restrict(model: nn.Module, precision: str) -> nn.Module:
    """Round every floating parameter and buffer of `model` in place; returns the model."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    for tensor in list(model.parameters()) + list(model.buffers()):
        tensor.copy_(restrict_tensor(tensor, precision))
    return model


def is_representable(t: torch.Tensor, precision: str) -> bool:
    return bool(torch.equal(restrict_tensor(t, precision), t))
