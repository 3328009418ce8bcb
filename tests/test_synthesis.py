"""Probability models and sampling (docs/method.md, "Synthesis")."""

import numpy as np
import pytest
import torch

from host_trainer.method.compaction import cluster_groups
from host_trainer.method.masks import prunable_layers
from host_trainer.method.synthesis import (
    SynthesisConfig,
    calibrate,
    heredity,
    keep_probability,
    plan_offspring,
    round_kept,
    sample_clusters,
    sample_synapses,
)
from host_trainer.models.registry import build_model, fixed_layers


@pytest.mark.parametrize("alpha", [0.3, 0.5, 0.85, 0.95])
@pytest.mark.parametrize("tau", [0.05, 0.1, 1.0])
def test_calibrated_mean_is_exactly_alpha(alpha, tau):
    strength = np.random.default_rng(1).gamma(2.0, size=500)
    p = keep_probability(strength, alpha, tau, "calibrated")
    assert p.max() <= 1.0 and p.min() >= 0.0
    assert abs(p.mean() - alpha) < 1e-6


def test_darwin_is_literal_alpha_times_q():
    strength = np.array([1.0, 2.0, 4.0])
    p = keep_probability(strength, 0.9, 1.0, "darwin")
    np.testing.assert_allclose(p, 0.9 * np.exp(strength / 4.0 - 1.0))


def test_heredity_range_and_sharpness():
    s = np.array([0.0, 1.0, 2.0])
    assert heredity(s, 1.0).min() == pytest.approx(np.exp(-1))  # the papers' [1/e, 1]
    assert heredity(s, 0.1).min() < 1e-4                       # sharper τ prefers strong clusters
    assert np.all(heredity(np.zeros(3), 0.1) == 0)


def test_calibrate_edge_cases():
    assert np.all(calibrate(np.array([0.5, 0.2]), 1.0) == 1.0)
    assert calibrate(np.array([]), 0.5).size == 0


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_expected_kept_fraction_near_alpha(alpha):
    rng = np.random.default_rng(0)
    strength = rng.gamma(2.0, size=64)
    cfg = SynthesisConfig(alpha, alpha, tau=0.1)
    kept = [sample_clusters(strength, cfg, rng).mean() for _ in range(400)]
    assert abs(np.mean(kept) - alpha) < 0.01


def test_synapse_fraction_near_alpha_and_zero_masks_stay_zero():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(32, 16, 3, 3))
    mask = rng.random(w.shape) < 0.7
    rows = np.ones(32, dtype=bool)
    rows[:8] = False
    cfg = SynthesisConfig(1.0, 0.6, tau=0.1)
    new = sample_synapses(w, mask, rows, cfg, rng)
    assert not new[~mask].any()          # what the parent lacks, the offspring lacks
    assert not new[:8].any()             # dropped clusters have no synapses
    exists = mask[8:].sum()
    assert abs(new.sum() / exists - 0.6) < 0.03


def test_floor_of_one_cluster_per_layer():
    rng = np.random.default_rng(0)
    cfg = SynthesisConfig(0.01, 1.0, tau=0.1)
    for _ in range(50):
        assert sample_clusters(np.array([1.0, 5.0, 2.0]), cfg, rng).sum() >= 1
    kept = sample_clusters(np.zeros(4), cfg, rng)
    assert kept.sum() == 1


def test_dead_clusters_are_dropped():
    rng = np.random.default_rng(0)
    strength = np.array([0.0, 0.0, 3.0, 4.0])
    for _ in range(20):
        kept = sample_clusters(strength, SynthesisConfig(1.0, 1.0), rng)
        assert not kept[:2].any() and kept[2:].all()


def test_channel_multiple_rounding_is_unbiased_and_aligned():
    rng = np.random.default_rng(0)
    strength = rng.gamma(2.0, size=64)
    alive = np.ones(64, dtype=bool)
    counts = []
    for _ in range(2000):
        kept = np.zeros(64, dtype=bool)
        kept[rng.choice(64, 37, replace=False)] = True
        rounded = round_kept(kept, strength, alive, 16, rng)
        assert rounded.sum() in (32, 48)
        counts.append(rounded.sum())
    assert abs(np.mean(counts) - 37) < 0.6  # expectation unchanged (never always-up)


def test_rounding_adds_strongest_and_drops_weakest():
    alive = np.ones(8, dtype=bool)
    strength = np.array([0, 1, 2, 3, 4, 9, 8, 1.5])
    kept = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)  # 6 kept, multiple 4: 4 or 8
    outcomes = {tuple(bool(v) for v in round_kept(kept, strength, alive, 4, np.random.default_rng(s)))
                for s in range(40)}
    assert outcomes == {(True,) * 8,                                              # up: all that is left
                        (False, False, True, True, True, True, False, False)}    # down: two weakest go


def _plan(seed):
    torch.manual_seed(0)
    model = build_model("resnet-small", 10, (1, 32, 32))
    masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model).items()}
    groups = cluster_groups(model, torch.zeros(1, 1, 32, 32), fixed_layers(model))
    return plan_offspring(model, groups, masks, SynthesisConfig(0.7, 0.8, 0.1, channel_multiple=8),
                          np.random.default_rng(seed))


def test_plan_is_reproducible_by_seed():
    a, b, c = _plan(5), _plan(5), _plan(6)
    assert all(np.array_equal(a.keep[k], b.keep[k]) for k in a.keep)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert any(not np.array_equal(a.keep[k], c.keep[k]) for k in a.keep)
    assert all(len(v) % 8 == 0 for v in a.keep.values())
