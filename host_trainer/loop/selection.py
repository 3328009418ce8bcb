"""Choosing among K offspring, and the Pareto front of accuracy × fps × energy.

Selection (documented in docs/method.md, "Selection"): among the offspring within the accuracy brake,
- those whose measured p50 latency is at or under the generation's time target (α_c × the parent's measured
  p50: the cut the generation asked for, achieved) compete on accuracy: the most accurate on validation wins,
  ties to the faster;
- when none meets it, the fastest wins, ties to the more accurate.
Without a measured latency (the parent had none), the fastest by fps wins.
The Pareto front keeps every measured offspring that no other beats on all of accuracy (higher),
fps (higher) and energy per inference (lower; left out while any point has no power meter).
"""

from __future__ import annotations

from typing import Any

from host_trainer.record import GenerationRecord

FRONT_KEYS = ("generation", "attempt", "offspring", "accuracy", "val_accuracy", "fps", "energy_mj_per_inference",
              "params", "synapses", "model_sha256", "device_id", "accepted")


def select(records: list[GenerationRecord], time_target_ms: float | None) -> int:
    """Index of the winning record among survivors (all within the brake)."""
    def latency(i: int) -> float:
        value = records[i].latency_ms_p50
        return float(value) if value is not None else float("inf")

    meeting = [i for i in range(len(records)) if time_target_ms is not None and latency(i) <= time_target_ms]
    if meeting:
        return max(meeting, key=lambda i: (records[i].val_accuracy or 0.0, -latency(i)))
    return max(range(len(records)), key=lambda i: (records[i].fps or 0.0, records[i].val_accuracy or 0.0))


def _dominates(a: dict, b: dict, use_energy: bool) -> bool:
    better_or_equal = a["accuracy"] >= b["accuracy"] and a["fps"] >= b["fps"]
    strictly = a["accuracy"] > b["accuracy"] or a["fps"] > b["fps"]
    if use_energy:
        better_or_equal = better_or_equal and a["energy_mj_per_inference"] <= b["energy_mj_per_inference"]
        strictly = strictly or a["energy_mj_per_inference"] < b["energy_mj_per_inference"]
    return better_or_equal and strictly


def pareto_front(records: list[GenerationRecord]) -> dict[str, Any]:
    """The non-dominated measured offspring, with the axes used."""
    points: list[dict[str, Any]] = [{k: getattr(r, k) for k in FRONT_KEYS} for r in records
                                    if r.fps is not None and r.accuracy is not None and not r.carried_over]
    use_energy = bool(points) and all(p["energy_mj_per_inference"] is not None for p in points)
    front = [p for p in points if not any(_dominates(q, p, use_energy) for q in points if q is not p)]
    front.sort(key=lambda p: (-float(p["fps"]), -float(p["accuracy"])))
    axes = ["accuracy (max)", "fps (max)"] + (["energy_mj_per_inference (min)"] if use_energy else [])
    note = None if use_energy else "energy left out: no power meter on some measurement"
    return {"axes": axes, "note": note, "points_considered": len(points), "front": front}
