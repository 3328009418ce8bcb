"""The pure rules of bench/pareto.py: Torch-Pruning's ratio for a MAC target, matching ours by latency, the
fine-tuning budget, averaging over seeds, and the verdict. Nothing here imports torch, so
tests/test_bench_pareto.py checks every rule in milliseconds.

Definitions (accuracy in points: top-1 % for classification, mAP@0.5 % for detection; p50 in µs):
- a budget point is a MAC reduction factor that Torch-Pruning is pruned to (3×, 6×, 10× fewer MACs);
- the best Torch-Pruning variant at a point is the fastest of its round_to variants (lowest mean p50): at
  about equal MACs, rounding is a latency trick, so the fastest one is the hardest latency to match;
- equal accuracy: within TOLERANCE (0.5) points, the size of seed-to-seed noise of a short fine-tuning;
- ours dominates at a point: ours' p50 <= the best variant's p50 AND ours' accuracy >= its accuracy - TOLERANCE;
- speed ratio at a point: the best variant's p50 / ours' p50; the best speed ratio at equal accuracy is the
  largest of them over the points where ours is at equal accuracy or better (none when there is no such point).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence

POINTS = (3.0, 6.0, 10.0)
TOLERANCE = 0.5           # points of accuracy that count as equal
GOAL_SPEEDUP, GOAL_GAP = 10.0, 1.0  # ours vs dense generation 0: >= 10x faster within 1 point

DENSE, CONTROL = "dense (gen 0)", "dense control"
OURS, ABLATION = "ours (device-aware)", "ours (magnitude)"
TP_PREFIX = "Torch-Pruning L1"
ROUND_TOS = (None, 8, 16)


def tp_name(round_to: int | None) -> str:
    return TP_PREFIX if round_to is None else f"{TP_PREFIX}, round_to={round_to}"


def ratio_grid(lo: float = 0.05, hi: float = 0.9, step: float = 0.05) -> list[float]:
    return [round(lo + i * step, 4) for i in range(int(round((hi - lo) / step)) + 1)]


def solve_ratio(factor_at: Callable[[float], float], target: float, grid: Sequence[float],
                refine: int = 5) -> tuple[float, float]:
    """The pruning ratio whose MAC reduction factor is closest to `target` (in log), and that factor.

    Not a plain bisection: past some ratio Torch-Pruning leaves layers alone that it would empty, and rounding
    makes steps, so the factor is not monotone. The grid is scanned upwards to the first ratio that reaches the
    target; the interval below it is then bisected. A target never reached gets the closest ratio seen."""
    seen: dict[float, float] = {}

    def factor(ratio: float) -> float:
        if ratio not in seen:
            seen[ratio] = factor_at(ratio)
        return seen[ratio]

    lo = None
    for ratio in grid:
        if factor(ratio) >= target:
            hi = ratio
            for _ in range(refine if lo is not None else 0):
                mid = round((lo + hi) / 2, 6)
                lo, hi = (lo, mid) if factor(mid) >= target else (mid, hi)
            break
        lo = ratio
    best = min(seen, key=lambda r: (abs(math.log(seen[r] / target)), r))
    return best, seen[best]


def pick_generation(latency: Mapping[int, float], target: float) -> int:
    """The generation whose latency is closest to `target` from at or below (the slowest of those at or below);
    the fastest one when none is. Ties go to the earlier generation: same speed for a smaller budget."""
    if not latency:
        raise ValueError("no generation to pick from")
    under = [g for g, t in latency.items() if t <= target]
    if under:
        return max(under, key=lambda g: (latency[g], -g))
    return min(latency, key=lambda g: (latency[g], g))


def budget_epochs(lineage: Iterable[tuple[int, bool, float | None]], epochs: float, upto: int) -> float:
    """Offspring epochs that reached generation `upto`: each generation 1..upto's own epochs (a record's
    `epochs_trained`, e.g. a final fine-tune's) or else the run's `epochs`; carried-over ones left out (as
    bench/peers.py: rejected attempts were compute too, but none of their training reached the model)."""
    return sum(epochs if own is None else own
               for generation, carried, own in lineage if 0 < generation <= upto and not carried)


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
    """The table's order within a point: dense rows, Torch-Pruning by round_to, ours, the ablation."""
    order = [DENSE, CONTROL, *(tp_name(rt) for rt in ROUND_TOS), OURS, ABLATION]
    return order.index(method) if method in order else len(order)


def compare_point(ours: Mapping, tp: Mapping, tolerance: float = TOLERANCE) -> dict:
    """Ours against one Torch-Pruning row (each with acc in points and p50_us)."""
    gap = ours["acc"] - tp["acc"]
    equal = gap >= -tolerance
    return {"tp_method": tp["method"], "accuracy_gap": gap, "speed_ratio": tp["p50_us"] / ours["p50_us"],
            "equal_accuracy": equal, "dominates": ours["p50_us"] <= tp["p50_us"] and equal}


def point_verdicts(rows: list[dict], ours: str = OURS) -> dict[float, dict]:
    """Per budget point, ours against the fastest Torch-Pruning variant there."""
    out = {}
    for point in sorted({r["point"] for r in rows if r["point"] is not None}):
        here = [r for r in rows if r["point"] == point]
        tps = [r for r in here if r["method"].startswith(TP_PREFIX)]
        mine = [r for r in here if r["method"] == ours]
        if tps and mine:
            out[point] = compare_point(mine[0], min(tps, key=lambda r: r["p50_us"]))
    return out


def summary(points: Mapping[float, dict]) -> dict:
    ratios = [p["speed_ratio"] for p in points.values() if p["equal_accuracy"]]
    return {"dominated": sum(p["dominates"] for p in points.values()), "points": len(points),
            "best_ratio": max(ratios) if ratios else None}


def _ratio_text(ratio: float | None) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "none"


def verdict_line(label: str, summaries: Mapping[str, dict]) -> str:
    """One line over every task; each task's share in brackets when there are several."""
    dominated = sum(s["dominated"] for s in summaries.values())
    points = sum(s["points"] for s in summaries.values())
    ratios = [s["best_ratio"] for s in summaries.values() if s["best_ratio"] is not None]
    line = (f"{label}: ours dominates Torch-Pruning at {dominated} of {points} budget points; "
            f"best speed ratio at equal accuracy {_ratio_text(max(ratios) if ratios else None)}")
    if len(summaries) > 1:
        line += " (" + ", ".join(f"{task} {s['dominated']} of {s['points']}, {_ratio_text(s['best_ratio'])}"
                                 for task, s in summaries.items()) + ")"
    return line


def dense_goal(dense_acc: float, dense_p50: float, lineage: Mapping[int, tuple[float, float]],
               max_gap: float = GOAL_GAP) -> dict | None:
    """The fastest generation {g: (acc points, p50)} within `max_gap` points of dense generation 0, its speed-up."""
    within = {g: v for g, v in lineage.items() if v[0] >= dense_acc - max_gap}
    if not within:
        return None
    g = min(within, key=lambda k: (within[k][1], k))
    acc, p50 = within[g]
    return {"generation": g, "speedup": dense_p50 / p50, "gap": acc - dense_acc}


def ablation(rows: list[dict]) -> dict[float, dict]:
    """Per point, what the magnitude allocation loses against the device-aware one (accuracy points, p50 ratio)."""
    out = {}
    for point in sorted({r["point"] for r in rows if r["point"] is not None}):
        by = {r["method"]: r for r in rows if r["point"] == point}
        if OURS in by and ABLATION in by:
            out[point] = {"accuracy_loss": by[OURS]["acc"] - by[ABLATION]["acc"],
                          "p50_ratio": by[ABLATION]["p50_us"] / by[OURS]["p50_us"]}
    return out
