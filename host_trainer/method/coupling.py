"""Coupling plans: which parameter slices die with each cluster, read once per architecture.

A plan lists, per coupling group, every (layer, side, indices) the group's clusters own: Torch-Pruning's pruning
group with all indices, read from the traced graph (tracing.py). Compaction, the masked twin, the equivalence
check and the Taylor importance all read the plan, never the graph, so a parent is traced once however many
offspring and attempts it breeds; plans are cached by architecture (`fingerprint`), not by model object.

A group is left dense, with its reason, when:
- it reaches a barrier (a channel shuffle, a channel slice or split, a reshape or permute of the channels);
- one of its layers does not map the root's channel i to its own channel i (Torch-Pruning 1.6 builds such groups
  for a concatenation that goes straight into pooling and flatten→linear);
- a grouped convolution reads it other than whole (its input channels come from several groups), or a
  convolution with groups = outputs ≠ inputs touches it (Torch-Pruning would take it for a depthwise one);
- a grouped convolution has one channel per group there, so no cut keeps every group.
A grouped convolution (1 < groups, not depthwise) otherwise sets the group's `segments`: its channels fall into
that many equal, contiguous runs (the convolution's groups), and every cut must take the same number from each,
so the layer stays grouped and each output channel still reads its own input group (surgery.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
from torch import nn

from host_trainer.method import surgery
from host_trainer.method.masks import PRUNABLE
from host_trainer.method.tracing import trace

log = structlog.get_logger(__name__)
SETTINGS = (bool, int, float, str, tuple)


@dataclass(frozen=True)
class ClusterGroup:
    root: str                 # module whose out-channel pruning starts the group
    members: tuple[str, ...]  # every Conv/Linear whose output channels belong to the group
    size: int                 # number of channels (clusters)
    consumers: tuple[str, ...] = ()  # Conv/Linear layers whose *input* channels are these clusters
    segments: int = 1         # equal runs of channels a cut must thin alike (a grouped convolution's groups)


@dataclass(frozen=True)
class Item:
    """One target of a group: along its `side`, index idxs[j] belongs to the root's cluster roots[j]."""

    target: str                # module name, or parameter name when `dim` is set
    side: str                  # "out" (the target's outputs, or a norm's channels) or "in"
    handler: Callable          # prunes the target: handler(module_or_parameter, indices)
    idxs: tuple[int, ...]
    roots: tuple[int, ...]
    dim: int | None = None     # an unwrapped nn.Parameter's pruned dimension


@dataclass(frozen=True)
class Plan:
    """Every group of one architecture (fixed layers not excluded yet), and the groups left dense."""

    groups: tuple[ClusterGroup, ...]
    items: dict[str, tuple[Item, ...]]
    dense: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = field(default=())  # (reason, layers, members)


def read_plan(model: nn.Module, example: torch.Tensor) -> Plan:
    graph = trace(model, example)
    names: dict[object, str] = {m: n for n, m in model.named_modules()}
    names.update({p: n for n, p in model.named_parameters()})
    order = {n: i for i, (n, _m) in enumerate(model.named_modules())}
    groups, items, dense = [], {}, []
    for group in graph.get_all_groups(ignored_layers=[], root_module_types=list(PRUNABLE)):
        cluster, group_items, reason = _read_group(group, names, graph)
        if reason:
            dense.append((reason, tuple(sorted(set(cluster.members + cluster.consumers))), cluster.members))
            continue
        cluster = ClusterGroup(cluster.root, tuple(sorted(set(cluster.members), key=order.__getitem__)),
                               cluster.size, tuple(sorted(set(cluster.consumers) - set(cluster.members),
                                                          key=order.__getitem__)), cluster.segments)
        groups.append(cluster)
        items[cluster.root] = group_items
    groups.sort(key=lambda g: order[g.members[0]])
    return Plan(tuple(groups), items, tuple(dense))


def _read_group(group, names: dict[object, str], graph) -> tuple[ClusterGroup, tuple[Item, ...], str]:
    """The group as a ClusterGroup, its items, and why it must stay dense ("" when it need not)."""
    root = names[group[0].dep.target.module]
    size = int(group[0].dep.target.module.weight.shape[0])
    members: list[Any] = []
    consumers: list[Any] = []
    items, reasons, segments = [], [], [1]
    for entry in group:
        node, module = entry.dep.target, entry.dep.target.module
        side = "out" if getattr(entry.dep.handler, "__name__", "") == "prune_out_channels" else "in"
        if node in graph.barriers:
            reasons.append(graph.barriers[node])
        if module not in names:
            continue  # an operation (addition, concatenation, activation): nothing to cut
        idxs, roots = tuple(int(i) for i in entry.idxs), tuple(int(r) for r in entry.root_idxs)
        name = names[module]
        if isinstance(module, PRUNABLE):
            (members if side == "out" else consumers).append(name)
            if side == "out" and not _identity(idxs, roots, size):
                reasons.append(f"{name} does not map channel i to its own channel i")
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            reasons += _grouped(module, name, side, idxs, roots, size, segments)
        dim = node.pruning_dim if isinstance(module, nn.Parameter) else None
        items.append(Item(name, side, surgery.handler(module, entry.dep.handler, side), idxs, roots, dim))
    cluster = ClusterGroup(root, tuple(members), size, tuple(consumers), math.lcm(*segments))
    return cluster, tuple(items), "; ".join(dict.fromkeys(reasons))


def _identity(idxs: tuple[int, ...], roots: tuple[int, ...], size: int) -> bool:
    """Does the target map the root's channel i to its own channel i, for every i? (Torch-Pruning may list the
    pairs in any order, so they are compared as pairs.)"""
    return len(idxs) == size and set(zip(idxs, roots)) == {(i, i) for i in range(size)}


def _grouped(conv: nn.Conv2d, name: str, side: str, idxs, roots, size: int, segments: list[int]) -> list[str]:
    """A grouped convolution's demands on the group (module docstring); appends its groups to `segments`."""
    if conv.groups == conv.in_channels == conv.out_channels:
        return []  # depthwise: Torch-Pruning couples its inputs and outputs and cuts them together
    if conv.groups == conv.out_channels:
        return [f"{name} has groups = outputs ≠ inputs, which Torch-Pruning cuts as depthwise"]
    width = conv.in_channels if side == "in" else conv.out_channels
    if not _identity(idxs, roots, size) or width != size:
        return [f"grouped convolution {name} reads channels of more than one group"]
    if size == conv.groups:
        return [f"grouped convolution {name} has one channel per group"]
    segments.append(conv.groups)
    return []


def fingerprint(model: nn.Module, example: torch.Tensor) -> str:
    """The architecture as compaction sees it: every module's type, forward code, settings and parameter shapes,
    and the input shape. Two models with one fingerprint have one coupling plan."""
    h = hashlib.sha256(repr(tuple(example.shape[1:])).encode())
    for name, module in model.named_modules():
        cls = type(module)
        code = getattr(cls.forward, "__code__", None)
        settings = sorted((k, v) for k, v in vars(module).items()  # flags forward() reads, e.g. a block's stride
                          if not k.startswith("_") and k != "training" and isinstance(v, SETTINGS))
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{module.extra_repr()}|{settings}".encode())
        h.update(code.co_code if code is not None else b"")
    for name, param in model.named_parameters():
        h.update(f"{name}{tuple(param.shape)}".encode())
    return h.hexdigest()


_WARNED: set[tuple[str, ...]] = set()


def warn_dense(reason: str, layers: Iterable[str]) -> None:
    """One warning per set of layers in a process: every generation's parent has the same layer names, and a
    layer left dense stays so."""
    key = tuple(sorted(layers))
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning("layers left dense", reason=reason, layers=list(key))
