"""From a measured parent to the allocation's input: each coupling group's predicted time at n clusters.

A group's clusters are the output channels of its members and the input channels of its consumers, so
its time at n clusters is Σ members' time at (inputs, n) + Σ consumers' time at (inputs with n, outputs),
each predicted from the parent's measured time by the board's latency model. Widths of other groups are
held at the parent's: every group is priced as if it alone changed (docs/method.md says why that is enough).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
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

    A Linear after flatten reads every channel at each spatial position (inputs = size × positions); a
    Conv reads the group directly, or concatenated with other branches (inputs = others + size).
    """
    if shape.linear and shape.inputs % group_size == 0:
        return n * (shape.inputs // group_size)
    return max(1, shape.inputs - group_size + n)


def group_costs(latency: LatencyModel, parent: Observation, groups: list[ClusterGroup],
                strengths: dict[str, np.ndarray]) -> list[GroupCost]:
    """One GroupCost per group with live clusters, pricing n clusters by the latency model."""
    costs = []
    for group in groups:
        live = strengths[group.root][strengths[group.root] > 0]
        if live.size == 0:
            continue
        costs.append(GroupCost(root=group.root, strength=live, ms=_pricer(latency, parent, group)))
    return costs


def _pricer(latency: LatencyModel, parent: Observation, group: ClusterGroup):
    members = [parent.layers[m] for m in group.members if m in parent.layers]
    consumers = [parent.layers[c] for c in group.consumers if c in parent.layers]

    def ms(n: int) -> float:
        total = sum(latency.predict(s, n if s.depthwise else s.inputs, n) for s in members)
        return total + sum(latency.predict(s, consumer_inputs(s, group.size, n), s.outputs) for s in consumers)
    return ms
