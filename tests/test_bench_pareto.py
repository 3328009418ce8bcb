"""bench/pareto.py's pure rules: the ratio for a measured speed-up, the median of timing rounds, matching ours by
latency, the fine-tuning budget (rejected offspring included), averaging over seeds, the goals and the verdict.
No training, no timing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import pareto_rules as rules  # noqa: E402

L1, L1_8, TAYLOR = (rules.tp_name(v) for v in rules.VARIANTS)


def test_solve_speedup_bisects_to_the_target_on_a_smooth_curve() -> None:
    ratio, speedup = rules.solve_speedup(lambda r: 1 / (1 - r) ** 2, 10.0, rules.ratio_grid(), {}, refine=12)
    assert speedup == pytest.approx(10.0, rel=0.01) and ratio == pytest.approx(1 - 10 ** -0.5, abs=0.005)


def test_solve_speedup_scans_past_a_curve_that_falls_back_and_keeps_the_closest() -> None:
    # round_to: steps, then Torch-Pruning leaves layers alone and the speed-up falls back to 1.
    def steps(r: float) -> float:
        return 1.0 if r > 0.6 else {True: 4.0, False: 2.0}[r >= 0.4]

    ratio, speedup = rules.solve_speedup(steps, 10.0, rules.ratio_grid(), {})
    assert speedup == 4.0 and 0.4 <= ratio <= 0.6
    assert rules.solve_speedup(steps, 3.0, rules.ratio_grid(), {}) == (0.4, 4.0)  # log-closest: 4 (x1.33) beats 2


def test_solve_speedup_reuses_the_probes_of_earlier_targets() -> None:
    calls: list[float] = []

    def curve(r: float) -> float:
        calls.append(r)
        return 1 / (1 - r) ** 2

    seen: dict[float, float] = {}
    for target in rules.POINTS:
        rules.solve_speedup(curve, target, rules.ratio_grid(), seen)
    assert len(calls) == len(set(calls)) and seen[0.0] == 1.0  # no ratio timed twice
    assert rules.solve_speedup(curve, 6.0, rules.ratio_grid(), seen) and len(calls) == len(set(calls))


def test_median_of_rounds_is_the_median_of_per_round_p50s_not_one_round() -> None:
    rounds = {"a": [100.0, 400.0, 101.0, 99.0, 102.0], "b": [110.0, 111.0, 109.0, 30.0, 112.0]}
    assert rules.median_of_rounds(rounds) == {"a": 101.0, "b": 110.0}
    # Picking ours from the medians: generation 2's one fast round does not make it the match for 105 µs.
    lat = rules.median_of_rounds({1: [120.0, 121.0, 119.0], 2: [110.0, 50.0, 111.0], 3: [104.0, 200.0, 103.0]})
    assert rules.pick_generation(lat, 105.0) == 3


def test_pick_generation_takes_the_closest_at_or_below_else_the_fastest() -> None:
    lat = {1: 500.0, 2: 400.0, 3: 300.0, 4: 300.0, 5: 200.0}
    assert rules.pick_generation(lat, 350.0) == 3      # at or below, closest; the earlier of a tie
    assert rules.pick_generation(lat, 300.0) == 3      # exactly at
    assert rules.pick_generation(lat, 150.0) == 5      # none at or below: the fastest
    assert rules.pick_generation(lat, 1000.0) == 1
    with pytest.raises(ValueError):
        rules.pick_generation({}, 1.0)


def test_budget_counts_every_record_rejected_offspring_included() -> None:
    records = [(0, False, 40.0),                      # generation 0: not a fine-tuning epoch
               (1, False, 0.6), (1, False, 0.3),       # generation 1: a rejected attempt and the accepted one
               (2, False, 0.6), (2, False, 0.6), (2, False, 0.45),  # K = 3 offspring, two not the fittest
               (3, True, 0.45),                        # carried over: trains nothing (copies its parent's record)
               (4, False, None),                       # no epochs_trained: the run's epochs
               (5, False, 3.0), (5, False, 3.0)]       # a final fine-tune, rejected then another
    assert rules.budget_epochs(records, 0.6, 1) == pytest.approx(0.9)
    assert rules.budget_epochs(records, 0.6, 3) == pytest.approx(2.55)
    assert rules.budget_epochs(records, 0.6, 4) == pytest.approx(3.15)
    assert rules.budget_epochs(records, 0.6, 5) == pytest.approx(9.15)
    assert rules.budget_epochs(records, 0.6, 0) == 0


def _row(method: str, point: float | None, seed: int, acc: float, p50: float, dense: float = 1000.0) -> dict:
    return {"method": method, "point": point, "seed": seed, "accuracy": acc, "macs": 1e6, "params": 1e3,
            "p50_us": p50, "dense_p50_us": dense, "budget_epochs": 3.0}


def test_aggregate_means_over_seeds_in_the_tables_order() -> None:
    results = [{**_row(rules.OURS, 3.0, s, a, p), "generation": 4} for s, a, p in [(0, 0.9, 100.0), (1, 0.92, 300.0)]]
    results += [_row(TAYLOR, 3.0, 0, 0.5, 1.0), _row(L1, 3.0, 0, 0.5, 1.0), _row(rules.DENSE, None, 0, 0.95, 1e3)]
    rows = rules.aggregate(results)
    assert [r["method"] for r in rows] == [rules.DENSE, L1, TAYLOR, rules.OURS]
    ours = rows[3]
    assert ours["acc"] == pytest.approx(91.0) and ours["p50_us"] == 200.0 and ours["accs"] == "90.00 / 92.00"
    assert ours["speedup"] == pytest.approx((10 + 1000 / 300) / 2) and ours["seeds"] == 2
    assert rows[0]["gens"] == "" and ours["gens"] == "4 / 4"


def _agg(method: str, point: float, acc: float, p50: float) -> dict:
    return {"method": method, "point": point, "acc": acc, "p50_us": p50}


def test_equal_accuracy_is_within_three_tenths_of_a_point() -> None:
    tps = [_agg(L1, 3.0, 89.75, 200.0), _agg(L1_8, 6.0, 89.65, 150.0)]  # 0.25 and 0.35 below ours' 90
    v = rules.against_tp(_agg(rules.OURS, 3.0, 90.0, 250.0), tps)
    assert v["reached"] and v["tp_method"] == L1 and v["speed_ratio"] == pytest.approx(0.8) and not v["holds"]
    above = rules.against_tp(_agg(rules.OURS, 3.0, 90.1, 250.0), tps)  # both more than 0.3 below: none equal
    assert not above["reached"] and above["tp_method"] == L1 and above["holds"]
    at_89_9 = rules.against_tp(_agg(rules.OURS, 3.0, 89.9, 150.0), tps)  # now 89.65 counts: as fast, holds
    assert at_89_9["tp_method"] == L1_8 and at_89_9["holds"]


def test_against_tp_takes_the_fastest_tp_model_at_equal_or_better_accuracy_from_any_point() -> None:
    tps = [_agg(L1, 3.0, 92.0, 300.0), _agg(TAYLOR, 3.0, 92.5, 310.0), _agg(L1, 6.0, 90.0, 150.0),
           _agg(TAYLOR, 6.0, 91.2, 160.0), _agg(L1_8, 10.0, 85.0, 90.0)]
    v = rules.against_tp(_agg(rules.OURS, 6.0, 91.4, 128.0), tps)
    assert v["tp_method"] == TAYLOR and v["tp_point"] == 6.0 and v["speed_ratio"] == pytest.approx(1.25)
    above = rules.against_tp(_agg(rules.OURS, 3.0, 94.0, 250.0), tps)   # nothing reaches 94: the most accurate
    assert not above["reached"] and above["tp_acc"] == 92.5 and above["holds"]


def test_point_verdicts_and_summary() -> None:
    rows = [_agg(L1, 3.0, 90.0, 300.0), _agg(L1_8, 3.0, 88.0, 250.0), _agg(rules.OURS, 3.0, 89.8, 240.0),
            _agg(L1, 10.0, 80.0, 100.0), _agg(rules.OURS, 10.0, 81.0, 120.0)]
    points = rules.point_verdicts(rows)
    three = points[3.0]
    assert three["tp_method"] == L1 and three["holds"] and three["speed_ratio"] == pytest.approx(1.25)
    assert three["matched_method"] == L1_8 and three["matched_gap"] == pytest.approx(1.8)
    ten = points[10.0]  # L1 at 10x (80) is more than 0.3 below ours' 81; L1_8 at 3x (88) is the fastest above
    assert ten["tp_method"] == L1_8 and ten["tp_point"] == 3.0 and ten["holds"]
    assert ten["speed_ratio"] == pytest.approx(250 / 120) and ten["matched_method"] == L1
    s = rules.summary(points)
    assert s["points"] == 2 and s["best_ratio"] == pytest.approx(250 / 120) and s["best_reached"]


def test_dense_goal_takes_the_fastest_generation_within_a_point() -> None:
    curve = {1: (92.5, 500.0), 2: (92.1, 200.0), 3: (90.0, 50.0)}
    assert rules.dense_goal(93.0, 1000.0, curve) == {"generation": 2, "speedup": 5.0, "gap": pytest.approx(-0.9)}
    assert rules.dense_goal(99.0, 1000.0, curve) is None


def test_ablation_loses_only_when_device_aware_dominates_it() -> None:
    rows = [_agg(rules.OURS, 3.0, 90.0, 100.0), _agg(rules.ABLATION, 3.0, 89.0, 110.0),   # better and faster
            _agg(rules.OURS, 6.0, 85.0, 100.0), _agg(rules.ABLATION, 6.0, 85.2, 100.0),   # a tie: does not lose
            _agg(rules.OURS, 10.0, 80.0, 90.0), _agg(rules.ABLATION, 10.0, 80.4, 95.0)]   # faster but 0.4 worse
    out = rules.ablation(rows)
    assert out[3.0] == {"accuracy_gain": 1.0, "p50_ratio": pytest.approx(1.1), "ablation_loses": True}
    assert not out[6.0]["ablation_loses"] and not out[10.0]["ablation_loses"]


def _task(holds: bool, ratio: float, dense: list, loses: bool) -> dict:
    point = {"holds": holds, "speed_ratio": ratio, "reached": True, "ours_acc": 90.0, "tp_method": L1,
             "tp_point": 6.0, "tp_acc": 90.1}
    return {"points": {3.0: point, 6.0: {**point, "holds": True, "speed_ratio": 1.0}},
            "ablation": {3.0: {"accuracy_gain": 0.5, "p50_ratio": 1.1, "ablation_loses": loses}}, "dense_goal": dense}


def test_goals_one_line_each_and_the_verdict() -> None:
    ten = {"generation": 14, "speedup": 10.5, "gap": -0.8}
    tasks = {"classify": _task(True, 1.3, [ten, {**ten, "speedup": 9.9}], True),
             "detect": _task(False, 1.1, [None], False)}
    goals = rules.goals(tasks)
    assert [g["met"] for g in goals] == [False, False, True, False, False]
    lines = [rules.goal_line(g) for g in goals]
    assert lines[0].startswith("- goal: at every point ours at least as fast as the best Torch-Pruning model at "
                               "equal or better accuracy (within 0.3 points): not met (classify: 3x 1.30x")
    assert "classify: 1.30x; detect: 1.10x" in lines[1] and ">= 1.25x faster" in lines[1]
    assert lines[2] == ("- goal: glyphs: >= 10x measured speed-up over dense within 1 point: met (classify: mean "
                        "10.20x (per seed: 10.50x at -0.80 (gen 14), 9.90x at -0.80 (gen 14)))")
    assert "not met (detect: a seed has no generation within 1 point)" in lines[3]
    assert "classify: 3x +0.50 points, 1.10x loses; detect: 3x +0.50 points, 1.10x does not lose" in lines[4]
    line = rules.verdict_line("pareto", goals, {t: rules.summary(v["points"]) for t, v in tasks.items()})
    assert line == ("pareto: 1 of 5 goals met; ours holds 3 of 4 budget points against Torch-Pruning at equal or "
                    "better accuracy; best speed ratio at equal accuracy 1.30x (classify 2 of 2, 1.30x, detect 1 of "
                    "2, 1.10x)")


def test_goals_of_one_task_and_a_lower_bound() -> None:
    task = _task(True, 1.4, [{"generation": 9, "speedup": 11.0, "gap": 0.1}], True)
    task["points"][3.0]["reached"] = False
    goals = rules.goals({"classify": task})
    assert len(goals) == 4 and all(g["met"] for g in goals)
    assert ">=1.40x" in rules.goal_line(goals[1])
    assert rules.verdict_line("pareto", goals, {"classify": rules.summary(task["points"])}).startswith(
        "pareto: 4 of 4 goals met; ours holds 2 of 2 budget points")


def test_ours_is_timed_once_per_architecture_by_its_last_generation(tmp_path):
    """A rest, the final fine-tune and the generation they trained on are one network on the board: only the last
    of them is timed and can be picked; a carried-over generation is never timed."""
    import json

    import pareto

    from host_trainer.record import GenerationRecord
    from host_trainer.rundir import RunDir

    widths = {0: 64, 1: 48, 2: 32, 3: 32, 4: 32, 5: 32}  # 3: rest of 2, 4: carried over, 5: the final fine-tune
    records = [GenerationRecord(generation=g, parent=g - 1 if g else None, accepted=True,
                                onnx_path=f"gen-{g:03d}/model.onnx", rest=g == 3, carried_over=g == 4,
                                final_tune=g == 5) for g in widths]
    for g, width in widths.items():
        folder = tmp_path / f"gen-{g:03d}"
        folder.mkdir()
        (folder / "model.onnx").write_bytes(f"onnx {g}".encode())
        (folder / "checkpoint.json").write_text(json.dumps({"architecture": {"model": "m", "widths": {"a": width}}}))
    RunDir(tmp_path).write_records(records)
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 1.0}))
    models = pareto.Ours.read(tmp_path).models("device")
    assert models == {"device 1": b"onnx 1", "device 5": b"onnx 5"}
