"""bench/pareto.py's pure rules: the ratio for a MAC target, matching ours by latency, the fine-tuning budget,
averaging over seeds and the verdict. No training, no timing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import pareto_rules as rules  # noqa: E402


def test_solve_ratio_bisects_to_the_target_on_a_smooth_curve() -> None:
    ratio, factor = rules.solve_ratio(lambda r: 1 / (1 - r) ** 2, 10.0, rules.ratio_grid(), refine=12)
    assert factor == pytest.approx(10.0, rel=0.01) and ratio == pytest.approx(1 - 10 ** -0.5, abs=0.005)


def test_solve_ratio_scans_past_a_curve_that_falls_back_and_keeps_the_closest() -> None:
    # Rounding: steps, then Torch-Pruning leaves layers alone and the factor falls back to 1.
    def steps(r: float) -> float:
        return 1.0 if r > 0.6 else {True: 4.0, False: 2.0}[r >= 0.4]

    ratio, factor = rules.solve_ratio(steps, 10.0, rules.ratio_grid())
    assert factor == 4.0 and 0.4 <= ratio <= 0.6
    assert rules.solve_ratio(steps, 3.0, rules.ratio_grid()) == (0.4, 4.0)  # log-closest: 4 (x1.33) beats 2 (x1.5)


def test_pick_generation_takes_the_closest_at_or_below_else_the_fastest() -> None:
    lat = {1: 500.0, 2: 400.0, 3: 300.0, 4: 300.0, 5: 200.0}
    assert rules.pick_generation(lat, 350.0) == 3      # at or below, closest; the earlier of a tie
    assert rules.pick_generation(lat, 300.0) == 3      # exactly at
    assert rules.pick_generation(lat, 150.0) == 5      # none at or below: the fastest
    assert rules.pick_generation(lat, 1000.0) == 1
    with pytest.raises(ValueError):
        rules.pick_generation({}, 1.0)


def test_budget_counts_offspring_epochs_up_to_the_generation_without_carried_over_ones() -> None:
    steps = [(0, False, 40.0), (1, False, None), (2, True, None), (3, False, None), (4, False, 6.0)]
    assert rules.budget_epochs(steps, 1.5, 3) == 3.0
    assert rules.budget_epochs(steps, 1.5, 4) == 9.0  # generation 4 says it trained 6 (a final fine-tune)
    assert rules.budget_epochs(steps, 1.5, 0) == 0


def _row(method: str, point: float | None, seed: int, acc: float, p50: float, dense: float = 1000.0) -> dict:
    return {"method": method, "point": point, "seed": seed, "accuracy": acc, "macs": 1e6, "params": 1e3,
            "p50_us": p50, "dense_p50_us": dense, "budget_epochs": 3.0}


def test_aggregate_means_over_seeds_in_the_tables_order() -> None:
    results = [{**_row(rules.OURS, 3.0, s, a, p), "generation": 4} for s, a, p in [(0, 0.9, 100.0), (1, 0.92, 300.0)]]
    results += [_row(rules.tp_name(16), 3.0, 0, 0.5, 1.0), _row(rules.DENSE, None, 0, 0.95, 1000.0)]
    rows = rules.aggregate(results)
    assert [r["method"] for r in rows] == [rules.DENSE, rules.tp_name(16), rules.OURS]
    ours = rows[2]
    assert ours["acc"] == pytest.approx(91.0) and ours["p50_us"] == 200.0 and ours["accs"] == "90.00 / 92.00"
    assert ours["speedup"] == pytest.approx((10 + 1000 / 300) / 2) and ours["seeds"] == 2
    assert rows[0]["gens"] == "" and ours["gens"] == "4 / 4"


def _agg(method: str, point: float, acc: float, p50: float) -> dict:
    return {"method": method, "point": point, "acc": acc, "p50_us": p50}


def test_verdict_compares_with_the_fastest_variant_and_allows_half_a_point() -> None:
    rows = [_agg(rules.tp_name(None), 3.0, 90.0, 300.0), _agg(rules.tp_name(16), 3.0, 88.0, 250.0),
            _agg(rules.OURS, 3.0, 87.6, 240.0),                       # 0.4 below the fastest: equal, dominates
            _agg(rules.tp_name(None), 10.0, 80.0, 100.0), _agg(rules.OURS, 10.0, 81.0, 120.0),  # slower: no
            _agg(rules.tp_name(8), 6.0, 85.0, 200.0), _agg(rules.OURS, 6.0, 84.0, 100.0)]       # 1 below: no
    points = rules.point_verdicts(rows)
    assert points[3.0]["tp_method"] == rules.tp_name(16) and points[3.0]["dominates"]
    assert not points[10.0]["dominates"] and points[10.0]["equal_accuracy"]
    assert not points[6.0]["dominates"] and not points[6.0]["equal_accuracy"]
    s = rules.summary(points)
    assert s == {"dominated": 1, "points": 3, "best_ratio": pytest.approx(250 / 240)}
    assert rules.verdict_line("pareto", {"classify": s}) == (
        "pareto: ours dominates Torch-Pruning at 1 of 3 budget points; best speed ratio at equal accuracy 1.04x")


def test_verdict_line_over_two_tasks_and_without_a_point_at_equal_accuracy() -> None:
    line = rules.verdict_line("pareto", {"classify": {"dominated": 2, "points": 3, "best_ratio": 1.31},
                                         "detect": {"dominated": 0, "points": 3, "best_ratio": None}})
    assert line == ("pareto: ours dominates Torch-Pruning at 2 of 6 budget points; best speed ratio at equal "
                    "accuracy 1.31x (classify 2 of 3, 1.31x, detect 0 of 3, none)")


def test_dense_goal_takes_the_fastest_generation_within_a_point() -> None:
    curve = {1: (92.5, 500.0), 2: (92.1, 200.0), 3: (90.0, 50.0)}
    assert rules.dense_goal(93.0, 1000.0, curve) == {"generation": 2, "speedup": 5.0, "gap": pytest.approx(-0.9)}
    assert rules.dense_goal(99.0, 1000.0, curve) is None


def test_ablation_is_device_aware_minus_magnitude() -> None:
    rows = [_agg(rules.OURS, 3.0, 90.0, 100.0), _agg(rules.ABLATION, 3.0, 89.0, 110.0), _agg(rules.OURS, 6.0, 1, 1)]
    assert rules.ablation(rows) == {3.0: {"accuracy_loss": 1.0, "p50_ratio": pytest.approx(1.1)}}
