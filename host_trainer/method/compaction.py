"""Compaction: remove dropped clusters physically, through Torch-Pruning's DependencyGraph.

The graph keeps BatchNorm, residual additions, concatenations and flatten→linear consistent,
so a removed filter also disappears from every consumer. We never track that by hand.

A *cluster group* is a set of Conv/Linear layers whose output channels are coupled (for
example the two branches of a residual addition): channel c is one cluster across all of them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import structlog
import torch
import torch_pruning as tp
from torch import nn

from host_trainer.method.masks import PRUNABLE, prunable_layers
from host_trainer.torch_device import device_of

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ClusterGroup:
    root: str                 # module whose out-channel pruning starts the group
    members: tuple[str, ...]  # every Conv/Linear whose output channels belong to the group
    size: int                 # number of channels (clusters)
    consumers: tuple[str, ...] = ()  # Conv/Linear layers whose *input* channels are these clusters


def _out_handler(module: nn.Module):
    return tp.prune_conv_out_channels if isinstance(module, nn.Conv2d) else tp.prune_linear_out_channels


def build_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    was_training = model.training
    model.eval()  # tracing in eval mode keeps BatchNorm running statistics untouched
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example.to(device_of(model)))
    model.train(was_training)
    return graph


def cluster_groups(model: nn.Module, example: torch.Tensor, fixed: list[nn.Module]) -> list[ClusterGroup]:
    """Every coupling group of prunable layers, in module order; fixed layers' outputs excluded.

    A group whose members do not map channel i to channel i is left out, so its layers keep all
    their clusters. Torch-Pruning 1.6 builds such groups for a concatenation that goes straight into
    pooling and flatten→linear; a concatenation followed by a convolution is handled correctly.
    """
    graph = build_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    order = {n: i for i, n in enumerate(names.values())}
    groups = []
    for group in graph.get_all_groups(ignored_layers=list(fixed), root_module_types=list(PRUNABLE)):
        root = group[0].dep.target.module
        size = _out_channels(root)
        members, consumers, consistent = [], [], True
        for item in group:
            module, handler = item.dep.target.module, getattr(item.dep.handler, "__name__", "")
            if isinstance(module, PRUNABLE) and handler == "prune_out_channels":
                members.append(names[module])
                consistent &= _out_channels(module) == size and _identity(item, size)
            elif isinstance(module, PRUNABLE) and handler == "prune_in_channels":
                consumers.append(names[module])
        if not consistent:
            log.warning("layers left dense: inconsistent channel coupling", layers=sorted(set(members)))
            continue
        members = sorted(set(members), key=order.__getitem__)
        consumers = sorted(set(consumers) - set(members), key=order.__getitem__)
        groups.append(ClusterGroup(root=names[root], members=tuple(members), size=size, consumers=tuple(consumers)))
    return sorted(groups, key=lambda g: order[g.members[0]])


def _identity(item, size: int) -> bool:
    """Does this member map the root's channel i to its own channel i, for every i? (Torch-Pruning may list the
    pairs in any order, so they are compared as pairs, not as a sequence.)"""
    pairs = {(int(i), int(r)) for i, r in zip(item.idxs, getattr(item, "root_idxs", item.idxs))}
    return len(item.idxs) == size and pairs == {(i, i) for i in range(size)}


def _out_channels(module: nn.Module) -> int:
    return int(module.weight.shape[0])  # type: ignore[union-attr,index]  # Conv2d and Linear always have one


def prune_groups(model: nn.Module, example: torch.Tensor, remove: dict[str, list[int]]) -> None:
    """Remove the given channel indices from each group (by root name), in place."""
    remove = {k: v for k, v in remove.items() if len(v)}
    if not remove:
        return
    graph = build_graph(model, example)
    modules = dict(model.named_modules())
    for root, idxs in remove.items():
        module = modules[root]
        group = graph.get_pruning_group(module, _out_handler(module), idxs=sorted(int(i) for i in idxs))
        group.prune()


def compact(model: nn.Module, masks: dict[str, torch.Tensor], groups: list[ClusterGroup],
            keep: dict[str, np.ndarray], example: torch.Tensor) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A physically smaller copy keeping `keep[root]` channels per group, and its sliced masks.

    The masks are sliced by pruning a twin model whose weights *are* the masks, so the same
    dependency graph decides which input slices go, for weights and masks alike.
    """
    remove = {g.root: sorted(set(range(g.size)) - set(int(i) for i in keep[g.root])) for g in groups}
    child = copy.deepcopy(model)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in prunable_layers(twin).items():
            layer.weight.copy_(masks[name].to(layer.weight.dtype))
    prune_groups(child, example, remove)
    prune_groups(twin, example, remove)
    new_masks = {n: (layer.weight.detach() != 0) for n, layer in prunable_layers(twin).items()}
    return child, new_masks


def widths(model: nn.Module) -> dict[str, int]:
    """The architecture in one dict: output width of every Conv/Linear layer."""
    return {n: _out_channels(m) for n, m in prunable_layers(model).items()}


def shrink_to_widths(model: nn.Module, target: dict[str, int], example: torch.Tensor,
                     fixed: list[nn.Module]) -> nn.Module:
    """Rebuild a compacted architecture from a dense model: cut each group to its stored width.

    The kept channels are arbitrary (the last ones go); the caller loads the stored weights next.
    """
    remove = {}
    for group in cluster_groups(model, example, fixed):
        want = target.get(group.members[0], group.size)
        if want > group.size:
            raise ValueError(f"layer {group.members[0]} is stored wider ({want}) than the model builds ({group.size})")
        remove[group.root] = list(range(want, group.size))
    prune_groups(model, example, remove)
    return model
