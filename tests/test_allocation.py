"""The latency-budgeted allocation rule (host_trainer/method/allocation.py) on synthetic latency models."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from host_trainer.method import allocation as rule
from host_trainer.method.allocation import GroupCost, Option, group_options, perturb, solve
from host_trainer.method.synthesis import SynthesisConfig, sample_exact


def _group(root: str, size: int, ms_per: float, fixed: float = 0.0, step: int = 1) -> GroupCost:
    ladder = tuple(sorted({size} | set(range(step, size, step)), reverse=True))
    return GroupCost(root, size, ladder, lambda n: fixed + ms_per * n)


def _options(rng: np.random.Generator, groups: list[GroupCost], share: float = 1.0) -> dict[str, list[Option]]:
    return {g.root: group_options(g, np.sort(rng.uniform(0.0, 1.0, g.size)), share) for g in groups}


def _brute(options: dict[str, list[Option]], target: float) -> float:
    best = float("inf")
    for combo in itertools.product(*options.values()):
        if sum(o.saving for o in combo) >= target:
            best = min(best, sum(o.cost for o in combo))
    return best


def _chosen(options: dict[str, list[Option]], counts: dict[str, int]) -> list[Option]:
    return [next(o for o in options[r] if o.count == n) for r, n in counts.items()]


@pytest.mark.parametrize("seed", range(12))
def test_the_saving_meets_the_budget_and_no_cheaper_choice_exists(seed):
    rng = np.random.default_rng(seed)
    groups = [_group(f"g{i}", int(rng.integers(3, 9)), float(rng.uniform(0.1, 2.0))) for i in range(4)]
    options = _options(rng, groups)
    total = sum(max(o.saving for o in opts) for opts in options.values())
    target = float(rng.uniform(0.1, 0.9)) * total
    counts, met = solve(options, target, resolution=2000)
    chosen = _chosen(options, counts)
    assert met and sum(o.saving for o in chosen) >= target
    # exact on the saving grid: within one grid unit of the continuous optimum per group
    cheapest = _brute(options, target)
    assert sum(o.cost for o in chosen) <= _brute(options, target + len(groups) * target / 2000) + 1e-9
    assert sum(o.cost for o in chosen) >= cheapest - 1e-9


def test_an_unreachable_budget_takes_every_allowed_saving_and_says_so():
    groups = [_group("a", 4, 1.0), _group("b", 4, 1.0)]
    options = {g.root: group_options(g, np.ones(4), share_cap=0.5) for g in groups}
    counts, met = solve(options, target=100.0)
    assert not met and counts == {"a": 2, "b": 2}  # the share cap: at most half of each group's importance


def test_time_is_spent_where_it_is_cheap_in_importance():
    slow, fast = _group("slow", 8, 10.0), _group("fast", 8, 1.0)
    imp = np.ones(8)
    options = {g.root: group_options(g, imp, 1.0) for g in (slow, fast)}
    counts, _ = solve(options, target=20.0)
    assert counts == {"slow": 6, "fast": 8}  # two slow clusters save 20 ms for 2 units; fast ones would need 20


def test_a_fixed_cost_is_never_counted_as_a_saving():
    g = _group("g", 8, 1.0, fixed=5.0)
    assert max(o.saving for o in group_options(g, np.ones(8), 1.0)) == pytest.approx(7.0)


def test_retries_shrink_each_groups_share():
    g = _group("g", 16, 1.0)
    imp = np.ones(16)
    deepest = [min(o.count for o in group_options(g, imp, rule.SHARE_CAP * 0.5 ** a)) for a in range(3)]
    assert deepest == [8, 12, 14]


def test_a_rejected_cut_is_penalised_so_the_retry_differs():
    groups = [_group("a", 8, 1.0), _group("b", 8, 1.0)]
    imp = {"a": np.linspace(0.1, 0.2, 8), "b": np.linspace(0.1, 0.25, 8)}
    first, _ = solve({g.root: group_options(g, imp[g.root], 1.0) for g in groups}, 4.0)
    retry, _ = solve({g.root: group_options(g, imp[g.root], 1.0, [first[g.root]]) for g in groups}, 4.0)
    assert retry != first


def test_seeded_noise_changes_the_cut_and_the_same_seed_reproduces_it():
    groups = [_group(f"g{i}", 16, 1.0) for i in range(5)]
    imp = np.linspace(0.5, 1.5, 16)

    def cut(seed: int) -> dict[str, int]:
        rng = np.random.default_rng(seed)
        opts = {g.root: group_options(g, np.sort(perturb(imp, rule.temperature(0.8), rng)), 1.0) for g in groups}
        return solve(opts, 16.0)[0]

    assert cut(1) == cut(1)
    assert len({tuple(cut(s).values()) for s in range(6)}) > 1
    assert np.array_equal(perturb(imp, 0.0, np.random.default_rng(0)), imp)  # no temperature: no noise


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
