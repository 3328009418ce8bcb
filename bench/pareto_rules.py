"""The pure rules of bench/pareto.py: solving a pruning ratio for a measured speed-up, the median of timing rounds,
matching ours by latency, the fine-tuning budget, averaging over seeds, the goals and the verdict. Nothing here
imports torch, so tests/test_bench_pareto.py checks every rule in milliseconds.

Definitions (accuracy in points: top-1 % for classification, mAP@0.5 % for detection; p50 in µs):
- a model's latency is the median, over >= 5 interleaved rounds, of its per-round p50 (ONNX Runtime CPU, 1 intra-op
  thread, batch 1); its speed-up is dense generation 0's latency over its own, from the same rounds;
- a budget point is a measured speed-up over dense (3×, 6×, 10×) that every Torch-Pruning variant is solved for;
- equal accuracy: within TOLERANCE (0.3) points;
- the best Torch-Pruning model at equal or better accuracy than an ours row: the fastest Torch-Pruning row (any
  variant, any point) whose accuracy is at least ours' - TOLERANCE; the speed ratio is its p50 / ours' p50. When no
  Torch-Pruning row reaches ours' accuracy, the most accurate one stands in and the ratio is a lower bound (">=");
- ours holds a point when no Torch-Pruning model is faster at equal or better accuracy (that speed ratio >= 1, or
  no Torch-Pruning row reaches ours' accuracy);
- the ablation loses at a point when device-aware is at least as fast and at equal or better accuracy, and better in
  one of them (faster, or more than TOLERANCE more accurate).
Means over seeds everywhere (`aggregate`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence

POINTS = (3.0, 6.0, 10.0)  # measured speed-ups over dense
TOLERANCE = 0.3            # points of accuracy that count as equal
GOAL_RATIO = 1.25          # at its best point, ours this much faster than Torch-Pruning at equal accuracy
GOAL_SPEEDUP, GOAL_GAP = 10.0, 1.0  # ours vs dense generation 0: >= 10x faster within 1 point

DENSE, CONTROL = "dense (gen 0)", "dense control"
OURS, ABLATION = "ours (device-aware)", "ours (magnitude)"
TP_PREFIX = "Torch-Pruning"
# (importance, round_to): L1 = MagnitudeImportance(p=1) with one ratio for every layer; taylor = GroupTaylorImportance
# with global pruning. ("taylor", 8) is added by pareto.py --taylor8.
VARIANTS: tuple[tuple[str, int | None], ...] = (("l1", None), ("l1", 8), ("taylor", None))
TAYLOR8 = ("taylor", 8)
_KINDS = {"l1": "L1 uniform", "taylor": "Taylor global"}


def tp_name(variant: tuple[str, int | None]) -> str:
    kind, round_to = variant
    name = f"{TP_PREFIX} {_KINDS[kind]}"
    return name if round_to is None else f"{name}, round_to={round_to}"


def ratio_grid(lo: float = 0.1, hi: float = 0.9, step: float = 0.1) -> list[float]:
    return [round(lo + i * step, 4) for i in range(int(round((hi - lo) / step)) + 1)]


def solve_speedup(speedup_at: Callable[[float], float], target: float, grid: Sequence[float],
                  seen: dict[float, float], refine: int = 4) -> tuple[float, float]:
    """The pruning ratio whose measured speed-up is closest to `target` (in log), and that speed-up.

    Not a plain bisection: past some ratio Torch-Pruning leaves layers alone that rounding would empty, and odd
    channel counts can be slow, so the speed-up is not monotone. The grid is scanned upwards to the first ratio that
    reaches the target; the interval below it is then bisected `refine` times. `seen` ({ratio: speed-up}) carries
    the probes from one target to the next (ratio 0 is 1×). The answer is the closest probe (timings are noisy);
    a target never reached gets the closest ratio seen."""
    seen.setdefault(0.0, 1.0)

    def probe(ratio: float) -> float:
        if ratio not in seen:
            seen[ratio] = speedup_at(ratio)
        return seen[ratio]

    lo = 0.0
    for ratio in grid:
        if probe(ratio) >= target:
            hi = ratio
            for _ in range(refine):
                mid = round((lo + hi) / 2, 6)
                lo, hi = (lo, mid) if probe(mid) >= target else (mid, hi)
            break
        lo = ratio
    best = min(seen, key=lambda r: (abs(math.log(seen[r] / target)), r))
    return best, seen[best]


def median_of_rounds(rounds: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """Each model's latency: the median over rounds of its per-round p50 (not any single round's)."""
    return {name: statistics.median(values) for name, values in rounds.items()}


def pick_generation(latency: Mapping[int, float], target: float) -> int:
    """The generation whose latency is closest to `target` from at or below (the slowest of those at or below);
    the fastest one when none is. Ties go to the earlier generation: same speed for a smaller budget."""
    if not latency:
        raise ValueError("no generation to pick from")
    under = [g for g, t in latency.items() if t <= target]
    if under:
        return max(under, key=lambda g: (latency[g], -g))
    return min(latency, key=lambda g: (latency[g], g))


def budget_epochs(records: Iterable[tuple[int, bool, float | None]], epochs: float, upto: int) -> float:
    """Epochs ours really trained to reach generation `upto`: (generation, carried over, epochs_trained) of EVERY
    record of the run, accepted or rejected, every offspring k, the final fine-tune; each one with 0 < generation
    <= upto counts its `epochs_trained`, or the run's `epochs` where the record lacks it. Carried-over records
    train nothing (the parent lives on) and are left out."""
    return sum(epochs if own is None else own
               for generation, carried, own in records if 0 < generation <= upto and not carried)


def aggregate(results: list[dict]) -> list[dict]:
    """One row per (point, method), in the table's order: means over seeds, accuracy per seed too.

    `results` rows hold method, point (None for the dense rows), seed, accuracy (fraction), macs, params,
    p50_us, dense_p50_us (its seed's dense generation 0) and budget_epochs."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["point"], r["method"]), []).append(r)
    rows = []
    for (point, method), mine in groups.items():
        accs = [r["accuracy"] * 100 for r in mine]
        rows.append({"point": point, "method": method, "acc": statistics.mean(accs),
                     "accs": " / ".join(f"{a:.2f}" for a in accs), "acc_per_seed": accs,
                     "macs": statistics.mean(r["macs"] for r in mine),
                     "params": statistics.mean(r["params"] for r in mine),
                     "p50_us": statistics.mean(r["p50_us"] for r in mine),
                     "speedup": statistics.mean(r["dense_p50_us"] / r["p50_us"] for r in mine),
                     "budget": statistics.mean(r["budget_epochs"] for r in mine), "seeds": len(mine),
                     "gens": " / ".join(str(r["generation"]) for r in mine if r.get("generation") is not None)})
    return sorted(rows, key=lambda r: (r["point"] or 0.0, _rank(r["method"])))


def _rank(method: str) -> int:
    """The table's order within a point: dense rows, Torch-Pruning variants, ours, the ablation."""
    order = [DENSE, CONTROL, *(tp_name(v) for v in (*VARIANTS, TAYLOR8)), OURS, ABLATION]
    return order.index(method) if method in order else len(order)


def is_tp(row: Mapping) -> bool:
    return row["method"].startswith(TP_PREFIX)


def against_tp(ours: Mapping, tp_rows: Sequence[Mapping], tolerance: float = TOLERANCE) -> dict:
    """Ours (acc, p50_us) against the fastest Torch-Pruning row at equal or better accuracy (see the definitions)."""
    if not tp_rows:
        raise ValueError("no Torch-Pruning row")
    equal = [r for r in tp_rows if r["acc"] >= ours["acc"] - tolerance]
    reached = bool(equal)
    best = min(equal, key=lambda r: r["p50_us"]) if reached else max(tp_rows, key=lambda r: (r["acc"], -r["p50_us"]))
    ratio = best["p50_us"] / ours["p50_us"]
    return {"tp_method": best["method"], "tp_point": best["point"], "tp_acc": best["acc"], "tp_p50_us": best["p50_us"],
            "accuracy_gap": ours["acc"] - best["acc"], "speed_ratio": ratio, "reached": reached,
            "holds": ratio >= 1.0 or not reached}


def point_verdicts(rows: list[dict], ours: str = OURS) -> dict[float, dict]:
    """Per budget point: ours there against Torch-Pruning at equal or better accuracy (`against_tp`), and against
    the variant it was matched to (the fastest Torch-Pruning variant at the point): the accuracy gap there."""
    tps = [r for r in rows if is_tp(r)]
    out = {}
    for point in sorted({r["point"] for r in rows if r["point"] is not None}):
        mine = [r for r in rows if r["point"] == point and r["method"] == ours]
        here = [r for r in tps if r["point"] == point]
        if tps and mine and here:
            matched = min(here, key=lambda r: r["p50_us"])
            out[point] = {**against_tp(mine[0], tps), "ours_acc": mine[0]["acc"], "ours_p50_us": mine[0]["p50_us"],
                          "matched_method": matched["method"], "matched_gap": mine[0]["acc"] - matched["acc"],
                          "matched_ratio": matched["p50_us"] / mine[0]["p50_us"]}
    return out


def summary(points: Mapping[float, dict]) -> dict:
    """Points held, and the best point's speed ratio (a lower bound where Torch-Pruning never reached ours)."""
    best = max(points.values(), key=lambda p: p["speed_ratio"], default=None)
    return {"held": sum(p["holds"] for p in points.values()), "points": len(points),
            "best_ratio": None if best is None else best["speed_ratio"],
            "best_reached": None if best is None else best["reached"]}


def dense_goal(dense_acc: float, dense_p50: float, lineage: Mapping[int, tuple[float, float]],
               max_gap: float = GOAL_GAP) -> dict | None:
    """The fastest generation {g: (acc points, p50)} within `max_gap` points of dense generation 0, its speed-up."""
    within = {g: v for g, v in lineage.items() if v[0] >= dense_acc - max_gap}
    if not within:
        return None
    g = min(within, key=lambda k: (within[k][1], k))
    acc, p50 = within[g]
    return {"generation": g, "speedup": dense_p50 / p50, "gap": acc - dense_acc}


def ablation(rows: list[dict], tolerance: float = TOLERANCE) -> dict[float, dict]:
    """Per point, device-aware against the magnitude ablation: accuracy difference, p50 ratio, whether it loses."""
    out = {}
    for point in sorted({r["point"] for r in rows if r["point"] is not None}):
        by = {r["method"]: r for r in rows if r["point"] == point}
        if OURS in by and ABLATION in by:
            dev, mag = by[OURS], by[ABLATION]
            gain, ratio = dev["acc"] - mag["acc"], mag["p50_us"] / dev["p50_us"]
            loses = gain >= -tolerance and ratio >= 1.0 and (gain > tolerance or ratio > 1.0)
            out[point] = {"accuracy_gain": gain, "p50_ratio": ratio, "ablation_loses": loses}
    return out


def _ratio_text(ratio: float | None, reached: bool | None = True) -> str:
    return "none" if ratio is None else f"{'' if reached else '>='}{ratio:.2f}x"


def _points_text(points: Mapping[float, dict]) -> str:
    return ", ".join(f"{p:g}x {_ratio_text(v['speed_ratio'], v['reached'])} (ours {v['ours_acc']:.2f} vs "
                     f"{v['tp_method']} at {v['tp_point']:g}x {v['tp_acc']:.2f})" for p, v in sorted(points.items()))


def goal_every_point(tasks: Mapping[str, dict]) -> dict:
    met = all(t["points"] and all(v["holds"] for v in t["points"].values()) for t in tasks.values())
    figures = "; ".join(f"{name}: {_points_text(t['points']) or 'no points'}" for name, t in tasks.items())
    return {"goal": "at every point ours at least as fast as the best Torch-Pruning model at equal or better "
                    f"accuracy (within {TOLERANCE:g} points)", "met": met, "figures": figures}


def goal_best_point(tasks: Mapping[str, dict]) -> dict:
    sums = {name: summary(t["points"]) for name, t in tasks.items()}
    met = all(s["best_ratio"] is not None and s["best_ratio"] >= GOAL_RATIO for s in sums.values())
    figures = "; ".join(f"{name}: {_ratio_text(s['best_ratio'], s['best_reached'])}" for name, s in sums.items())
    return {"goal": f"at its best point ours >= {GOAL_RATIO:g}x faster than the best Torch-Pruning model at equal "
                    "accuracy", "met": met, "figures": figures}


def goal_dense(name: str, label: str, seeds: Sequence[dict | None]) -> dict:
    """Ours against dense generation 0, mean over seeds: the fastest generation within GOAL_GAP points."""
    goal = f"{label}: >= {GOAL_SPEEDUP:g}x measured speed-up over dense within {GOAL_GAP:g} point"
    if not seeds or not all(seeds):
        return {"goal": goal, "met": False, "figures": f"{name}: a seed has no generation within {GOAL_GAP:g} point"}
    mean = statistics.mean(g["speedup"] for g in seeds)
    per_seed = ", ".join(f"{g['speedup']:.2f}x at {g['gap']:+.2f} (gen {g['generation']})" for g in seeds)
    return {"goal": goal, "met": mean >= GOAL_SPEEDUP, "figures": f"{name}: mean {mean:.2f}x (per seed: {per_seed})"}


def goal_ablation(tasks: Mapping[str, dict]) -> dict:
    met = all(t["ablation"] and all(v["ablation_loses"] for v in t["ablation"].values()) for t in tasks.values())
    def text(p: float, v: Mapping) -> str:
        verdict = "loses" if v["ablation_loses"] else "does not lose"
        return f"{p:g}x {v['accuracy_gain']:+.2f} points, {v['p50_ratio']:.2f}x {verdict}"

    figures = "; ".join(f"{name}: " + (", ".join(text(p, v) for p, v in sorted(t["ablation"].items()))
                                       or "no ablation rows") for name, t in tasks.items())
    return {"goal": "the ablation (--allocation magnitude) loses to device-aware at every point (device-aware "
                    "accuracy gain, magnitude p50 / device-aware p50)", "met": met, "figures": figures}


def goals(tasks: Mapping[str, dict]) -> list[dict]:
    """The five goals over the tasks run; tasks[name] = {points, ablation, dense_goal: per-seed dense_goal}."""
    out = [goal_every_point(tasks), goal_best_point(tasks)]
    for name, label in (("classify", "glyphs"), ("detect", "detection (mAP@0.5)")):
        if name in tasks:
            out.append(goal_dense(name, label, tasks[name]["dense_goal"]))
    return out + [goal_ablation(tasks)]


def goal_line(goal: Mapping) -> str:
    return f"- goal: {goal['goal']}: {'met' if goal['met'] else 'not met'} ({goal['figures']})"


def verdict_line(label: str, goals_: Sequence[Mapping], summaries: Mapping[str, dict]) -> str:
    """The last line of the output: goals met, points held, the best speed ratio; each task's share in brackets."""
    met = sum(g["met"] for g in goals_)
    held = sum(s["held"] for s in summaries.values())
    points = sum(s["points"] for s in summaries.values())
    best = max((s for s in summaries.values() if s["best_ratio"] is not None), key=lambda s: s["best_ratio"],
               default={"best_ratio": None, "best_reached": None})
    line = (f"{label}: {met} of {len(goals_)} goals met; ours holds {held} of {points} budget points against "
            f"Torch-Pruning at equal or better accuracy; best speed ratio at equal accuracy "
            f"{_ratio_text(best['best_ratio'], best['best_reached'])}")
    if len(summaries) > 1:
        line += " (" + ", ".join(f"{task} {s['held']} of {s['points']}, "
                                 f"{_ratio_text(s['best_ratio'], s['best_reached'])}"
                                 for task, s in summaries.items()) + ")"
    return line
