"""One offspring's cut end to end on a small convolutional model: the latency budget is met by the joint
prediction, the cut is stochastic by seed, and a rejected cut is not drawn again (loop/allocator.py,
loop/breeding.py)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from host_trainer.latency.groups import network_ms, parent_ms
from host_trainer.latency.model import LatencyModel, Observation, Shape
from host_trainer.loop.allocator import CutRequest, importance_lost, spend
from host_trainer.loop.breeding import failed_cuts
from host_trainer.method.compaction import cluster_groups
from host_trainer.record import GenerationRecord


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(64, 10))


def _setup():
    model = _net()
    example = torch.zeros(1, 1, 16, 16)
    groups = cluster_groups(model, example, [model[12]])
    layers = {"0": Shape(1, 32, 0.2), "3": Shape(32, 32, 1.0), "7": Shape(32, 64, 0.6), "12": Shape(64, 10, 0.05,
                                                                                                   linear=True)}
    observed = Observation("parent", 0, layers, other_ms=0.3)
    latency = LatencyModel("board")
    latency.observe(observed)
    rng = np.random.default_rng(0)
    importance = {g.root: rng.uniform(0.01, 1.0, g.size) for g in groups}
    return model, groups, latency, observed, importance


def test_the_cut_meets_the_budget_jointly_and_is_reproducible_by_seed():
    model, groups, latency, observed, importance = _setup()
    for alpha in (0.9, 0.8, 0.6):
        request = CutRequest(alpha=alpha, seed=3, k=0, attempt=0, importance=importance)
        cut = spend(latency, observed, model, groups, request)
        assert cut.parent_ms == parent_ms(observed) and cut.target_ms == (1 - alpha) * cut.parent_ms
        assert cut.predicted_ms == network_ms(latency, observed, groups, cut.counts)
        assert cut.parent_ms - cut.predicted_ms >= cut.target_ms * (1 - 1e-6)
        assert spend(latency, observed, model, groups, request).counts == cut.counts
        assert all(1 <= n <= g.size for g, n in zip(groups, cut.counts.values()))


def test_seeds_draw_different_cuts():
    model, groups, latency, observed, importance = _setup()
    cuts = {tuple(spend(latency, observed, model, groups,
                        CutRequest(0.7, seed, 0, 0, importance)).counts.values()) for seed in range(8)}
    assert len(cuts) > 1


def test_a_carry_over_then_a_new_generation_draws_a_different_cut():
    model, groups, latency, observed, importance = _setup()
    first = spend(latency, observed, model, groups, CutRequest(0.8, 11, 0, 0, importance)).counts
    rejected = GenerationRecord(generation=1, accepted=False, reject_reason="validation accuracy 0.1 is more ...",
                                cut=first, parent_sha256="parent")
    other = GenerationRecord(generation=1, accepted=False, reject_reason="not the fittest of 2 offspring",
                             cut={"x": 1}, parent_sha256="parent")
    assert failed_cuts([rejected, other], "parent") == [first] and failed_cuts([rejected], "other") == []
    # The next generation from the same (carried-over) parent: same α, even the same seed, and still another cut.
    retry = spend(latency, observed, model, groups, CutRequest(0.8, 11, 0, 0, importance, [first])).counts
    assert retry != first


def test_importance_lost_counts_the_dropped_clusters():
    importance = {"a": np.array([1.0, 2.0, 3.0, 4.0]), "b": np.array([5.0, 5.0])}
    assert importance_lost(importance, {"a": np.array([1, 3]), "b": np.array([0, 1])}) == 4.0 / 20.0
    assert importance_lost(importance, {"a": np.arange(4), "b": np.arange(2)}) == 0.0
