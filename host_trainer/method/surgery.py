"""Cutting channels out of a network, and zeroing them in its masked twin, from a coupling plan (coupling.py).

All groups are cut in one pass: every target's indices are gathered from every group first, in the network's
original numbering, and each target is then pruned once. (Pruning group after group would renumber a
concatenation's consumer between two groups.)

Torch-Pruning 1.6 cuts a grouped convolution's inputs as if the layer were dense: it keeps the first
in_channels/groups columns of the *whole* input (an index out of the weight's bounds: "INDICES element is out of
DATA bounds"), and it cuts outputs anywhere, so an uneven cut shifts output channels into another group, where
they read the wrong inputs and the network silently computes something else. A grouped convolution here is cut
by `prune_grouped_in` and `prune_grouped_out`: the same number of channels from every group (the plan's
`segments` make synthesis draw such cuts), each output channel keeping the columns of its own group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn


def handler(module: object, tp_handler: Callable, side: str) -> Callable:
    """The pruning function for one target: Torch-Pruning's, except where it is wrong (module docstring)."""
    if isinstance(module, nn.Parameter):
        return prune_parameter
    if isinstance(module, nn.Conv2d) and module.groups > 1 and not module.groups == module.in_channels \
            == module.out_channels:
        return prune_grouped_in if side == "in" else prune_grouped_out
    return tp_handler


def _per_group(indices: Iterable[int], total: int, groups: int) -> list[list[int]]:
    """The kept offsets within each group, checking that every group keeps as many as the others."""
    width, drop = total // groups, set(indices)
    kept = [[i for i in range(width) if g * width + i not in drop] for g in range(groups)]
    if len({len(k) for k in kept}) != 1 or not kept[0]:
        raise ValueError(f"a grouped convolution ({groups} groups of {width}) must lose the same number of "
                         f"channels from every group, and keep one in each; asked to drop {sorted(drop)}")
    return kept


def prune_grouped_out(conv: nn.Conv2d, idxs: Sequence[int]) -> nn.Conv2d:
    kept = _per_group(idxs, conv.out_channels, conv.groups)
    width = conv.out_channels // conv.groups
    keep = torch.tensor([g * width + i for g, offsets in enumerate(kept) for i in offsets])
    conv.weight = nn.Parameter(conv.weight.detach().index_select(0, keep.to(conv.weight.device)))
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach().index_select(0, keep.to(conv.bias.device)))
    conv.out_channels = len(keep)
    return conv


def prune_grouped_in(conv: nn.Conv2d, idxs: Sequence[int]) -> nn.Conv2d:
    """Each output channel keeps the weight columns of its own input group that survive."""
    kept = _per_group(idxs, conv.in_channels, conv.groups)
    per_out = conv.out_channels // conv.groups
    rows = torch.tensor([kept[o // per_out] for o in range(conv.out_channels)], device=conv.weight.device)
    index = rows.view(*rows.shape, *([1] * (conv.weight.dim() - 2))).expand(-1, -1, *conv.weight.shape[2:])
    conv.weight = nn.Parameter(torch.gather(conv.weight.detach(), 1, index))
    conv.in_channels = len(kept[0]) * conv.groups
    return conv


def prune_parameter(param: nn.Parameter, idxs: Sequence[int], dim: int) -> nn.Parameter:
    drop = set(idxs)
    keep = [i for i in range(param.shape[dim]) if i not in drop]
    return nn.Parameter(param.detach().index_select(dim, torch.tensor(keep, device=param.device)))


def gather(items: Mapping[str, Sequence], remove: Mapping[str, Iterable[int]]) -> dict[tuple[str, str], tuple]:
    """(target, side) → (an item of it, the indices to remove there), from every group's removals at once."""
    out: dict[tuple[str, str], tuple] = {}
    for root, dropped in remove.items():
        drop = {int(i) for i in dropped}
        if not drop:
            continue
        for item in items[root]:
            idxs = {i for i, r in zip(item.idxs, item.roots) if r in drop}
            if idxs:
                key = (item.target, item.side)
                out[key] = (item, out.get(key, (item, set()))[1] | idxs)
    return out


def cut(model: nn.Module, items: Mapping[str, Sequence], remove: Mapping[str, Iterable[int]]) -> None:
    """Remove the given root channels of each group (by root name) from the model, in place."""
    modules = dict(model.named_modules())
    for (target, _side), (item, idxs) in gather(items, remove).items():
        if item.dim is None:
            item.handler(modules[target], sorted(idxs))
            continue
        owner, _, attr = target.rpartition(".")
        holder = modules[owner] if owner else model
        setattr(holder, attr, prune_parameter(getattr(holder, attr), sorted(idxs), item.dim))


@torch.no_grad()
def zero(model: nn.Module, items: Mapping[str, Sequence], remove: Mapping[str, Iterable[int]]) -> None:
    """The masked twin of `cut`: every parameter that produces a removed channel (filters and biases, a norm's
    scale and shift, an unwrapped parameter's slice) set to zero, in place; inputs read zeros then."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    for (target, side), (item, idxs) in gather(items, remove).items():
        index = sorted(idxs)
        if item.dim is not None:
            params[target].index_fill_(item.dim, torch.tensor(index, device=params[target].device), 0.0)
            continue
        if side != "out":
            continue
        module = modules[target]
        for name in ("weight", "bias"):
            tensor = getattr(module, name, None)
            dim = 1 if name == "weight" and getattr(module, "transposed", False) else 0  # ConvTranspose: (in, out)
            if isinstance(tensor, torch.Tensor) and tensor.dim() > dim and tensor.shape[dim] > max(index):
                tensor.index_fill_(dim, torch.tensor(index, device=tensor.device), 0.0)
