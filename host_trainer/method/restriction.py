"""Synaptic precision restriction: after training, every parameter and buffer is rounded to the
number format of the run (round to nearest even, torch's cast) and only the rounded values are kept.

The values stay in fp32 tensors so training and the next synthesis use ordinary kernels, but each
one is exactly representable in the restricted format. The format names are the run's choices
(`host_trainer.config.PRECISION_FORMATS`); "fp32" means no restriction.
"""

from __future__ import annotations

import torch
from torch import nn

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": None}


def restrict_tensor(t: torch.Tensor, number_format: str) -> torch.Tensor:
    dtype = DTYPES[number_format]
    if dtype is None or not t.is_floating_point():
        return t
    return t.to(dtype).to(t.dtype)


@torch.no_grad()
def restrict(model: nn.Module, number_format: str) -> nn.Module:
    """Round every floating parameter and buffer of `model` in place; returns the model."""
    if number_format not in DTYPES:
        raise ValueError(f"unknown number format {number_format!r}; choose {', '.join(DTYPES)}")
    for tensor in list(model.parameters()) + list(model.buffers()):
        tensor.copy_(restrict_tensor(tensor, number_format))
    return model

