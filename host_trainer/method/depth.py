"""Depth: residual blocks that can go whole, as one more item of a generation's knapsack.

A block qualifies when it computes x ↦ g(f(x) + x) (an addition of its own input, directly or through an
nn.Identity shortcut), its output has its input's shape, and it holds at least one Conv/Linear but no fixed
layer (the task's outputs). Removing it leaves x: exact where g is a ReLU and x is already non-negative (the
usual post-activation ResNet block), and in any case what the importance below measures. Only the outermost
such module counts (a block inside a removable block is not offered separately). A block whose channels are
cut in more than one coupling group of its own is not offered either (docs/method.md, "Depth").

A removed block becomes `Removed` (an nn.Identity), so a checkpoint's architecture names it and rebuilding the
model removes it again before the widths are applied (loop/checkpoint.py).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from host_trainer.method.masks import prunable_layers

_ADDS = {operator.add, operator.iadd, torch.add}


class Removed(nn.Identity):
    """A residual block the evolution removed: it passes its input through."""


@dataclass(frozen=True)
class Block:
    name: str                 # module path
    layers: tuple[str, ...]   # the model's Conv/Linear layers inside it (full names)


def removable_blocks(model: nn.Module, example: torch.Tensor, fixed: Iterable[nn.Module]) -> list[Block]:
    """Every outermost residual block of `model` that may be removed whole (see the module docstring)."""
    fixed_ids = {id(m) for m in fixed}
    shapes = _io_shapes(model, example)
    layers = prunable_layers(model)
    blocks: list[Block] = []
    for name, module in model.named_modules():
        if not name or isinstance(module, Removed) or any(name.startswith(b.name + ".") for b in blocks):
            continue
        inside = tuple(n for n in layers if n.startswith(name + "."))
        if not inside or any(id(m) in fixed_ids for m in module.modules()):
            continue
        io = shapes.get(name)
        if io is None or io[0] != io[1] or not _adds_its_input(module):
            continue
        blocks.append(Block(name, inside))
    return blocks


def _io_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[tuple, tuple]]:
    """(input shape, output shape) of every module called with one tensor and returning one, from one pass."""
    seen: dict[str, tuple[tuple, tuple]] = {}

    def record(name: str):
        def hook(_m: nn.Module, args: tuple, out: object) -> None:
            if len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                seen.setdefault(name, (tuple(args[0].shape), tuple(out.shape)))
        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


def _adds_its_input(module: nn.Module) -> bool:
    """Does the module's traced graph add its own input (or an nn.Identity of it) to something?"""
    try:
        graph = _OwnForward().trace(module)
    except Exception:  # dynamic control flow and the like: not provably residual, so not offered
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    passthrough = {inputs[0]}
    submodules = dict(module.named_children())
    for node in graph.nodes:
        if node.op == "call_module" and isinstance(submodules.get(str(node.target)), nn.Identity) \
                and node.args and node.args[0] in passthrough:
            passthrough.add(node)
        is_add = (node.op == "call_function" and node.target in _ADDS) or \
                 (node.op == "call_method" and node.target in ("add", "add_", "__add__"))
        if is_add and any(a in passthrough for a in node.args):
            return True
    return False


class _OwnForward(fx.Tracer):
    """Traces one module's own forward: its children stay calls, so a stage of blocks is not mistaken for a
    block because a block inside it adds its input."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def remove_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """Replace each named block by `Removed`, in place; returns the model."""
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Removed())
    return model


def removed_blocks(model: nn.Module) -> list[str]:
    """The names of the blocks removed from `model` (what a checkpoint's architecture records)."""
    return [n for n, m in model.named_modules() if isinstance(m, Removed)]


@torch.no_grad()
def removal_loss(model: nn.Module, blocks: list[Block],
                 batches: list[tuple[torch.Tensor, list[torch.Tensor]]], loss_fn) -> dict[str, float]:
    """Per block, the measured loss increase when it is skipped (mean over the batches, never below 0): the
    block's importance, on the scale of the first-order Taylor scores (both are changes in the loss)."""
    was_training = model.training
    model.eval()
    try:
        base = [float(loss_fn(model(x), labels)) for x, labels in batches]
        out = {}
        for block in blocks:
            hook = model.get_submodule(block.name).register_forward_hook(lambda _m, args, _o: args[0])
            try:
                skipped = [float(loss_fn(model(x), labels)) for x, labels in batches]
            finally:
                hook.remove()
            out[block.name] = max(0.0, sum(skipped) / len(skipped) - sum(base) / len(base)) if batches else 0.0
        return out
    finally:
        model.train(was_training)
