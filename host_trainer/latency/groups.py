"""From a measured parent to the allocation's input: each coupling group's predicted time at n clusters, and
the whole network's predicted time at a choice of counts for every group.

A group's clusters are the output channels of its members and the input channels of its consumers, so
its time at n clusters is Σ members' time at (inputs, n) + Σ consumers' time at (inputs with n, outputs),
each predicted from the parent's measured time by the board's latency model, with every other group held at
the parent's width (`group_costs`, what the allocation's knapsack prices). A layer whose inputs and outputs
both shrink saves less than the two savings added, so `network_ms` predicts the whole network jointly: every
layer at the counts of the group it belongs to and of the groups it reads, plus the time no layer owns
(pooling, reorders: `Observation.other_ms`), which no cut removes.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from torch import nn

from host_trainer.latency.attribution import attribute
from host_trainer.latency.model import LatencyModel, Observation, Shape
from host_trainer.method.allocation import GroupCost
from host_trainer.method.compaction import ClusterGroup
from host_trainer.method.masks import prunable_layers


def observe(model: nn.Module, profile: Iterable[Any], model_sha256: str, generation: int) -> Observation:
    """The parent's layers as the board ran them: channels from the model, times from the profile."""
    layers = prunable_layers(model)
    timed = attribute(profile, layers)
    shapes = {name: _shape(layer, timed.layer_ms.get(name, 0.0)) for name, layer in layers.items()}
    return Observation(model_sha256=model_sha256, generation=generation, layers=shapes, other_ms=timed.other_ms)


def _shape(layer: nn.Conv2d | nn.Linear, ms: float) -> Shape:
    if isinstance(layer, nn.Conv2d):
        depthwise = layer.groups > 1 and layer.groups == layer.in_channels
        return Shape(inputs=layer.in_channels, outputs=layer.out_channels, ms=ms, depthwise=depthwise)
    return Shape(inputs=layer.in_features, outputs=layer.out_features, ms=ms, linear=True)


def consumer_inputs(shape: Shape, group_size: int, n: int) -> int:
    """A consumer's input channels when its producing group keeps n of `group_size` clusters.

    A Linear after flatten reads every channel at each spatial position (inputs = n × positions); a
    Conv reads the group directly, or concatenated with other branches (inputs = others + n).
    """
    return _read(shape, group_size, group_size - n)


def _read(shape: Shape, fed: int, dropped: int) -> int:
    """Input channels of a layer that reads `fed` channels of prunable groups, `dropped` of them cut.

    A Linear whose inputs are a multiple of what the groups feed it reads each channel at
    inputs / fed positions (flatten); anything else reads each channel once.
    """
    positions = shape.inputs // fed if shape.linear and fed and shape.inputs % fed == 0 else 1
    return max(1, shape.inputs - positions * dropped)


def _feeds(groups: Iterable[ClusterGroup]) -> dict[str, list[ClusterGroup]]:
    """Layer → the groups whose clusters are its input channels (several for a concatenation)."""
    feeds: dict[str, list[ClusterGroup]] = {}
    for group in groups:
        for consumer in group.consumers:
            feeds.setdefault(consumer, []).append(group)
    return feeds


def _inputs(shape: Shape, feeds: list[ClusterGroup], counts: Mapping[str, int]) -> int:
    dropped = sum(g.size - counts.get(g.root, g.size) for g in feeds)
    return _read(shape, sum(g.size for g in feeds), dropped) if feeds else shape.inputs


def group_costs(latency: LatencyModel, parent: Observation, groups: list[ClusterGroup],
                live: dict[str, int] | None = None) -> list[GroupCost]:
    """One GroupCost per group with live clusters: `size` its live clusters (`live[root]`, default all),
    `ladder` the board's counts for that size, `ms(n)` the group's layers' predicted time at n clusters."""
    feeds = _feeds(groups)
    costs = []
    for group in groups:
        size = min(group.size, int((live or {}).get(group.root, group.size)))
        if size < 1:
            continue
        costs.append(GroupCost(root=group.root, size=size, ladder=latency.ladder(size),
                               ms=_pricer(latency, parent, group, feeds), step=group.segments))
    return costs


def _pricer(latency: LatencyModel, parent: Observation, group: ClusterGroup,
            feeds: dict[str, list[ClusterGroup]]) -> Callable[[int], float]:
    members = [parent.layers[m] for m in group.members if m in parent.layers]
    consumers = [(parent.layers[c], feeds[c]) for c in group.consumers if c in parent.layers]

    def ms(n: int) -> float:
        total = sum(latency.predict(s, n if s.depthwise else s.inputs, n) for s in members)
        return total + sum(latency.predict(s, _inputs(s, fed, {group.root: n}), s.outputs)
                           for s, fed in consumers)
    return ms


def network_ms(latency: LatencyModel, parent: Observation, groups: list[ClusterGroup],
               counts: dict[str, int], removed: Collection[str] = ()) -> float:
    """The whole network's predicted ms when each group keeps counts[root] (default: its size): every layer
    with its outputs at its own group's count and its inputs at the counts of the groups it reads (a
    depthwise convolution's inputs are its outputs), plus the parent's time outside any layer. Layers named in
    `removed` (inside a residual block removed whole, method/depth.py) cost nothing."""
    owner = {m: g for g in groups for m in g.members}
    feeds = _feeds(groups)
    total = parent.other_ms
    for name, shape in parent.layers.items():
        if name in removed:
            continue
        group = owner.get(name)
        outputs = counts.get(group.root, group.size) if group is not None else shape.outputs
        inputs = outputs if shape.depthwise and group is not None else _inputs(shape, feeds.get(name, []), counts)
        total += latency.predict(shape, inputs, outputs)
    return total


def parent_ms(parent: Observation) -> float:
    """The parent's measured time: its layers and the time outside them."""
    return sum(s.ms for s in parent.layers.values()) + parent.other_ms
