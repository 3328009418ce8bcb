"""Choosing among K offspring, and the Pareto front of accuracy × fps × energy.

Selection (documented in docs/method.md): among the offspring within the accuracy tolerance,
- when targets are given and some offspring meet them, the most accurate of those wins (the
  speed is already enough; accuracy is what is left to keep);
- otherwise the fastest wins (highest measured fps on the first device), ties broken by accuracy.
The Pareto front keeps every measured offspring that no other beats on all of accuracy (higher),
fps (higher) and energy per inference (lower; left out while any point has no power meter).
"""

from __future__ import annotations

from typing import Any

from host_trainer.controller import Targets

FRONT_KEYS = ("generation", "attempt", "offspring", "accuracy", "val_accuracy", "fps", "energy_mj_per_inference",
              "params", "synapses", "model_sha256", "device_id", "accepted")


def select(rows: list[dict], targets: Targets) -> int:
    """Index of the winning row among survivors (all within tolerance)."""
    meeting = [i for i, r in enumerate(rows) if targets.any() and targets.met(r)]
    if meeting:
        return max(meeting, key=lambda i: (rows[i]["val_accuracy"], rows[i].get("fps") or 0.0))
    return max(range(len(rows)), key=lambda i: (rows[i].get("fps") or 0.0, rows[i]["val_accuracy"]))


def _dominates(a: dict, b: dict, use_energy: bool) -> bool:
    better_or_equal = a["accuracy"] >= b["accuracy"] and a["fps"] >= b["fps"]
    strictly = a["accuracy"] > b["accuracy"] or a["fps"] > b["fps"]
    if use_energy:
        better_or_equal = better_or_equal and a["energy_mj_per_inference"] <= b["energy_mj_per_inference"]
        strictly = strictly or a["energy_mj_per_inference"] < b["energy_mj_per_inference"]
    return better_or_equal and strictly


def pareto_front(rows: list[dict]) -> dict[str, Any]:
    """The non-dominated measured offspring, with the axes used."""
    points: list[dict[str, Any]] = [{k: r.get(k) for k in FRONT_KEYS} for r in rows
              if r.get("fps") is not None and r.get("accuracy") is not None and not r.get("carried_over")]
    use_energy = bool(points) and all(p["energy_mj_per_inference"] is not None for p in points)
    front = [p for p in points if not any(_dominates(q, p, use_energy) for q in points if q is not p)]
    front.sort(key=lambda p: (-float(p["fps"]), -float(p["accuracy"])))
    axes = ["accuracy (max)", "fps (max)"] + (["energy_mj_per_inference (min)"] if use_energy else [])
    note = None if use_energy else "energy left out: no power meter on some measurement"
    return {"axes": axes, "note": note, "points_considered": len(points), "front": front}
