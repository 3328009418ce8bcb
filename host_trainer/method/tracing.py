"""Tracing a network's channel coupling: Torch-Pruning's DependencyGraph, with what it cannot map cut out.

Torch-Pruning 1.6 maps channel indices correctly through convolutions, BatchNorm, elementwise operations,
residual additions, concatenations along the channels and flatten→linear. Operations that move, split or mix
channels are beyond it: it takes a permute or a transpose for an elementwise operation (so a channel shuffle
looks like the identity), guesses the stride of a reshape from its neighbours (a shuffle after torch.chunk
divides by zero), and maps a channel slice or split through sizes that forward() writes down and compaction
cannot change. Walking such graphs is also exponential: every shuffle unit doubles the index sets the walk
meets again, so 6 ShuffleNet-v2 units took 100 s and 8 took 575 s to list the groups.

So every such operation is a *barrier*: its node keeps no dependencies of its own (a walk that reaches it stops
there, in linear time) and Torch-Pruning maps no indices through it. A coupling group that reaches a barrier is
left dense by compaction.py, with the reason given here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.overrides import TorchFunctionMode

from host_trainer.torch_device import device_of

OPTYPE = tp.ops.OPTYPE
CHANNEL = 1  # the channel dimension of NCHW feature maps and of (N, C) features alike

# Elementwise by Torch-Pruning's reckoning, but reading several channels into one, with no dimension to check.
MIXERS = ("Index", "Gather", "Scatter", "PixelShuffle", "PixelUnshuffle", "ChannelShuffle", "NativeChannelShuffle",
          "Bmm", "Mm", "Mv", "Matmul", "Convolution", "Take", "Put", "Masked")


class ShapeLog(TorchFunctionMode):
    """Records, for every tensor an operation returns, the shapes of its tensor arguments and of the result,
    keyed by the result's grad_fn (the key Torch-Pruning's nodes carry)."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[Any, tuple[list[tuple[int, ...]], tuple[int, ...]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor) and first.grad_fn is not None:
            ins = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            self.shapes.setdefault(first.grad_fn, (ins, tuple(first.shape)))
        return out


class BarrierGraph(tp.DependencyGraph):
    """A DependencyGraph whose barriers (see the module docstring) are cut before any index is mapped."""

    def __init__(self, shapes: dict[Any, tuple[list[tuple[int, ...]], tuple[int, ...]]]) -> None:
        super().__init__()
        self.shapes = shapes
        self.barriers: dict[Any, str] = {}  # node → why no channel index passes it

    def _build_dependency(self, module2node):
        super()._build_dependency(module2node)
        for node in module2node.values():
            reason = barrier_reason(node, self.shapes.get(node.grad_fn))
            if reason:
                self.barriers[node] = reason
                node.dependencies = []
                node.type = OPTYPE.ELEMENTWISE  # so Torch-Pruning computes no index mapping for it either
                node.enable_index_mapping = False


def trace(model: nn.Module, example: torch.Tensor) -> BarrierGraph:
    """The model's dependency graph with its barriers cut, traced in eval mode (BatchNorm statistics untouched)."""
    was_training = model.training
    model.eval()
    log = ShapeLog()
    try:
        with log, torch.enable_grad():  # the graph is read from autograd
            graph = BarrierGraph(log.shapes)
            graph.build_dependency(model, example_inputs=example.to(device_of(model)), verbose=False)
    finally:
        model.train(was_training)
    graph.shapes = {}  # the grad_fns hold the traced activations: let them go
    return graph


def barrier_reason(node, shapes) -> str | None:
    """Why no channel index can be mapped through this node, or None where Torch-Pruning maps it correctly."""
    grad_fn = node.grad_fn
    name = grad_fn.name() if hasattr(grad_fn, "name") else str(grad_fn)
    if node.type == OPTYPE.RESHAPE:
        return None if _keeps_channels(shapes) else f"{name} reshapes the channels (a channel shuffle?) {_io(shapes)}"
    if node.type in (OPTYPE.SPLIT, OPTYPE.UNBIND):
        return f"{name} splits the channels with sizes forward() fixes" if _on_channels(grad_fn, True) else None
    if node.type == OPTYPE.SLICE:
        return f"{name} slices the channels with bounds forward() fixes" if node.module.dim == CHANNEL else None
    if node.type in (OPTYPE.ELEMENTWISE, OPTYPE.EXPAND):
        return _mixing_reason(name, grad_fn, shapes)
    return None


def _mixing_reason(name: str, grad_fn, shapes) -> str | None:
    if name.startswith("Permute"):
        dims = tuple(getattr(grad_fn, "_saved_dims", ()))
        return None if dims[:2] == (0, CHANNEL) else f"{name}{dims} moves the channels"
    if name.startswith("Transpose"):
        pair = {getattr(grad_fn, "_saved_dim0", 0), getattr(grad_fn, "_saved_dim1", 0)}
        return None if len(pair) == 1 or not pair & {0, CHANNEL} else f"{name}{tuple(pair)} moves the channels"
    if _on_channels(grad_fn, False):
        return f"{name} works across the channels"
    if name.startswith(MIXERS):
        return f"{name} mixes the channels"
    if shapes is not None:
        ins, out = shapes
        if len(out) >= 2 and ins and not any(s[:2] == out[:2] for s in ins if len(s) >= 2):
            return f"{name} changes the channels {_io(shapes)}"
    return None


def _on_channels(grad_fn, unknown: bool) -> bool:
    """Does the operation act along the channel dimension (its saved `dim`/`dims`)? `unknown` when none saved."""
    for attr in ("_saved_dim", "_saved_dims"):
        dims = getattr(grad_fn, attr, None)
        if dims is None:
            continue
        dims = dims if isinstance(dims, (tuple, list)) else (dims,)
        return CHANNEL in {int(d) for d in dims}
    return unknown


def _keeps_channels(shapes) -> bool:
    """A reshape keeps channel c at c when batch and channels stay and only the rest is regrouped ((N, C) ↔
    (N, C, 1, 1)), or when it flattens (N, C, ...) to (N, C·...), which Torch-Pruning maps into a Linear."""
    if shapes is None or not shapes[0]:
        return False
    before, after = shapes[0][0], shapes[1]
    if len(before) < 2 or len(after) < 2 or before[0] != after[0]:
        return False
    if before[1] == after[1] and math.prod(before[2:]) == math.prod(after[2:]):
        return True
    return len(after) == 2 and after[1] == math.prod(before[1:])


def _io(shapes) -> str:
    return "" if shapes is None or not shapes[0] else f"{list(shapes[0][0])} → {list(shapes[1])}"
