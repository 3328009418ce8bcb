"""The device-aware allocation rule (host_trainer/method/allocation.py) on synthetic latency models."""

from __future__ import annotations

import numpy as np
import pytest

from host_trainer.latency.model import step
from host_trainer.method.allocation import GroupCost, allocate, allowed_counts
from host_trainer.method.synthesis import SynthesisConfig, sample_exact


def _linear(ms_per_cluster: float):
    return lambda n: ms_per_cluster * n


def _groups(rng: np.random.Generator, slow: float = 10.0, fast: float = 1.0, size: int = 64) -> list[GroupCost]:
    strength = rng.uniform(0.5, 1.5, size)
    return [GroupCost("slow", strength.copy(), _linear(slow)), GroupCost("fast", strength.copy(), _linear(fast))]


def test_allowed_counts_follow_the_alignment_down_to_one_cluster():
    assert allowed_counts(40, 16) == [40, 32, 16]  # never below the board's smallest efficient step
    assert allowed_counts(5, 1) == [5, 4, 3, 2, 1]
    assert allowed_counts(3, 8) == [3, 2, 1]  # a layer smaller than the step: down to one cluster


def test_a_group_that_costs_more_time_per_importance_loses_more_clusters():
    keep = allocate(_groups(np.random.default_rng(0)), alpha=0.8, alignment=1)
    assert keep["slow"] < keep["fast"]


def test_equal_importance_and_time_share_the_cut_evenly():
    keep = allocate(_groups(np.random.default_rng(0), slow=1.0, fast=1.0), alpha=0.75, alignment=1)
    assert abs(keep["slow"] - keep["fast"]) <= 1


def test_importance_matters_too():
    rng = np.random.default_rng(1)
    weak, strong = rng.uniform(0.0, 0.1, 64), rng.uniform(1.0, 2.0, 64)
    keep = allocate([GroupCost("weak", weak, _linear(1.0)), GroupCost("strong", strong, _linear(1.0))], 0.8, 1)
    assert keep["weak"] < keep["strong"]


@pytest.mark.parametrize("alpha", [0.9, 0.8, 0.7])
@pytest.mark.parametrize("alignment", [1, 8, 16])
def test_the_kept_fraction_matches_alpha_overall(alpha, alignment):
    rng = np.random.default_rng(2)
    groups = [GroupCost(f"g{i}", rng.uniform(0.1, 1.0, size), _linear(rng.uniform(0.5, 5)))
              for i, size in enumerate((32, 64, 64, 128, 256))]
    keep = allocate(groups, alpha, alignment)
    total = sum(g.strength.size for g in groups)
    # steps of the alignment may stop the greedy rule short by less than one step of the largest group
    assert abs(sum(keep.values()) - alpha * total) <= max(alignment, 1) * 2
    assert all(1 <= keep[g.root] <= g.strength.size for g in groups)


def test_counts_snap_to_the_boards_steps():
    rng = np.random.default_rng(3)
    stepped = [GroupCost(f"g{i}", rng.uniform(0.5, 1.5, 64), lambda n: float(step(n, 16))) for i in range(4)]
    keep = allocate(stepped, 0.75, alignment=16)
    assert all(n % 16 == 0 for n in keep.values())


def test_groups_at_the_boards_floor_stop_the_cut_short_of_alpha():
    rng = np.random.default_rng(5)
    groups = [GroupCost(f"g{i}", rng.uniform(0.5, 1.5, 16), lambda n: float(step(n, 16))) for i in range(3)]
    assert allocate(groups, 0.5, alignment=16) == {"g0": 16, "g1": 16, "g2": 16}


def test_no_group_is_wiped_out_in_one_generation():
    keep = allocate(_groups(np.random.default_rng(0), slow=1000.0), alpha=0.8, alignment=1)
    assert keep["slow"] >= np.ceil(0.64 * 64)


def test_spread_makes_offspring_differ_and_is_reproducible_by_seed():
    rng = np.random.default_rng(4)
    groups = [GroupCost(f"g{i}", rng.uniform(0.5, 1.5, 64), _linear(1.0)) for i in range(6)]
    draws = [allocate(groups, 0.8, 1, np.random.default_rng(s), spread=0.5) for s in (1, 1, 2)]
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]
    assert allocate(groups, 0.8, 1) == allocate(groups, 0.8, 1)


def test_sample_exact_keeps_the_count_and_prefers_strong_clusters():
    strength = np.linspace(0.01, 1.0, 64)
    cfg = SynthesisConfig(alpha_c=0.8, alpha_s=1.0)
    kept = [sample_exact(strength, 40, cfg, np.random.default_rng(s)) for s in range(20)]
    assert all(k.sum() == 40 for k in kept)
    frequency = np.mean(kept, axis=0)
    assert frequency[-16:].mean() > frequency[:16].mean()
    assert (sample_exact(strength, 40, cfg, np.random.default_rng(5)) ==
            sample_exact(strength, 40, cfg, np.random.default_rng(5))).all()


def test_sample_exact_never_keeps_dead_clusters_and_keeps_one_at_least():
    strength = np.array([0.0, 0.0, 1.0, 2.0])
    kept = sample_exact(strength, 3, SynthesisConfig(0.8, 1.0), np.random.default_rng(0))
    assert kept.tolist() == [False, False, True, True]
    assert sample_exact(strength, 0, SynthesisConfig(0.8, 1.0), np.random.default_rng(0)).sum() == 1
