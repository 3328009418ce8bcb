"""Pricing coupling groups and whole networks from a measured parent (host_trainer/latency/groups.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from host_trainer.latency.attribution import attribute, group_ms
from host_trainer.latency.groups import consumer_inputs, group_costs, network_ms, observe, parent_ms
from host_trainer.latency.model import LatencyModel, Probe, Shape, step
from host_trainer.latency.probes import PROBE_COUNTS
from host_trainer.method.compaction import cluster_groups
from host_trainer.models.registry import build_model, fixed_layers

EXAMPLE = torch.zeros(1, 3, 8, 8)


class Concat(nn.Module):
    """Two branches concatenated into a convolution, then flatten → linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 4, 1)
        self.c, self.fc = nn.Conv2d(12, 6, 3, padding=1), nn.Linear(6 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c(torch.cat([self.a(x), self.b(x)], 1))).flatten(1))


def _sequential() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
                         nn.Flatten(), nn.Linear(24 * 64, 10))


def _latency() -> LatencyModel:
    """A board with a fixed cost per layer (0.05 ms) and alignment 4 on both axes."""
    latency = LatencyModel("board")
    latency.add_probe(Probe("conv", 32, list(PROBE_COUNTS), [0.05 + 1e-3 * step(c, 4) for c in PROBE_COUNTS]))
    assert latency.fixed_ms == pytest.approx(0.05) and latency.alignment == 4
    return latency


def _measured(model: nn.Module, times: dict[str, float], other: float = 0.3):
    groups = cluster_groups(model, EXAMPLE, [model.get_submodule(list(times)[-1])])
    profile = [{"name": n, "ms": ms, "nodes": [f"/{n}/Conv" if n != "7" and n != "fc" else f"/{n}/Gemm"]}
               for n, ms in times.items()]
    profile.append({"name": "pool", "ms": other, "nodes": ["/pool/MaxPool"]})
    return groups, observe(model, profile, "sha", 0)


def test_the_network_is_predicted_layer_by_layer_with_inputs_and_outputs_both_changed():
    latency = _latency()
    groups, parent = _measured(_sequential(), {"0": 0.4, "3": 1.2, "7": 0.2})
    assert [(g.root, g.consumers) for g in groups] == [("0", ("3",)), ("3", ("7",))]
    layers = parent.layers
    expected = (parent.other_ms + latency.predict(layers["0"], 3, 8) + latency.predict(layers["3"], 8, 12)
                + latency.predict(layers["7"], 12 * 64, 10))
    assert network_ms(latency, parent, groups, {"0": 8, "3": 12}) == pytest.approx(expected)
    assert network_ms(latency, parent, groups, {}) == pytest.approx(parent_ms(parent)) == pytest.approx(2.1)


def test_a_group_costs_its_measured_time_at_its_size_and_alone_matches_the_network():
    latency = _latency()
    groups, parent = _measured(_sequential(), {"0": 0.4, "3": 1.2, "7": 0.2})
    costs = {c.root: c for c in group_costs(latency, parent, groups)}
    assert costs["0"].ms(16) == pytest.approx(0.4 + 1.2) and costs["3"].ms(24) == pytest.approx(1.2 + 0.2)
    assert costs["0"].size == 16 and costs["0"].ladder == latency.ladder(16) == (16, 12, 8, 4)
    whole = parent_ms(parent)
    for root, n in (("0", 8), ("3", 12), ("3", 4)):
        alone = network_ms(latency, parent, groups, {root: n}) - whole
        assert alone == pytest.approx(costs[root].ms(n) - costs[root].ms(costs[root].size))
    separate = sum(costs[r].ms(costs[r].size) - costs[r].ms(n) for r, n in (("0", 8), ("3", 12)))
    joint = whole - network_ms(latency, parent, groups, {"0": 8, "3": 12})
    assert 0 < joint < separate  # layer 3 shrinks on both sides: its two savings overlap


def test_a_group_is_sized_by_its_live_clusters():
    latency = _latency()
    groups, parent = _measured(_sequential(), {"0": 0.4, "3": 1.2, "7": 0.2})
    costs = {c.root: c for c in group_costs(latency, parent, groups, live={"0": 10, "3": 0})}
    assert list(costs) == ["0"] and costs["0"].size == 10 and costs["0"].ladder == (10, 8, 4)
    assert costs["0"].ms(8) == pytest.approx(latency.predict(parent.layers["0"], 3, 8)
                                             + latency.predict(parent.layers["3"], 8, 24))


def test_concatenations_and_flatten_are_priced_exactly():
    latency = _latency()
    model = Concat()
    groups, parent = _measured(model, {"a": 0.3, "b": 0.1, "c": 0.8, "fc": 0.2})
    assert {g.root: g.consumers for g in groups} == {"a": ("c",), "b": ("c",), "c": ("fc",)}
    layers = parent.layers
    expected = (parent.other_ms + latency.predict(layers["a"], 3, 4) + latency.predict(layers["b"], 3, 2)
                + latency.predict(layers["c"], 4 + 2, 3) + latency.predict(layers["fc"], 3 * 64, 10))
    assert network_ms(latency, parent, groups, {"a": 4, "b": 2, "c": 3}) == pytest.approx(expected)
    costs = {c.root: c for c in group_costs(latency, parent, groups)}
    assert costs["a"].ms(4) == pytest.approx(latency.predict(layers["a"], 3, 4)
                                             + latency.predict(layers["c"], 4 + 4, 6))


def test_a_depthwise_convolution_follows_its_group_on_both_sides():
    latency = _latency()
    shape = Shape(8, 8, 0.5, depthwise=True)
    assert latency.predict(shape, 4, 4) == pytest.approx(0.05 + 0.45 * 4 / 8)


def test_a_linear_after_flatten_reads_each_channel_at_every_position():
    assert consumer_inputs(Shape(128 * 4, 256, 1.0, linear=True), 128, 64) == 64 * 4
    assert consumer_inputs(Shape(96, 48, 1.0), 64, 32) == 64  # a concatenation of 64 and 32 channels


def test_vgg_groups_are_priced_by_their_members_and_consumers():
    shape = (1, 32, 32)
    model = build_model("vgg-small", 10, shape)
    groups = cluster_groups(model, torch.zeros(1, *shape), fixed_layers(model))
    profile = [{"name": n, "ms": 1.0, "nodes": [f"/features/features.{i}/Conv"]} for n, i in (("a", 0), ("b", 3))]
    obs = observe(model, profile, "sha", 0)
    assert group_ms(attribute(profile, obs.layers), groups)["features.0"] == 1.0
    costs = {c.root: c for c in group_costs(LatencyModel("board"), obs, groups)}
    first = costs["features.0"]  # features.0's clusters: its outputs (1 ms) and features.3's inputs (1 ms)
    assert first.ms(32) == pytest.approx(2.0) and first.ms(16) == pytest.approx(1.0)
    assert first.ladder == tuple(range(32, 0, -1))  # nothing measured yet: a = 1, every count
