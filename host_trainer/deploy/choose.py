"""Which generation of a run to deploy (docs/deploy.md, "Choosing the generation").

- by default, the last accepted generation (the end of the lineage, as `evolve` leaves it);
- `--generation N`: generation N's accepted member;
- `--pick fastest-within DROP`: from the run's Pareto front (pareto.json, loop/selection.py), the points that are
  a generation's accepted member; among those within DROP percentage points of the most accurate of them, the one
  with the highest measured fps (ties: the more accurate, then the earlier generation). Accuracy is the front's
  axis, the test-split score (top-1, or mAP@0.5).

Only accepted members can be deployed: an offspring that lost its generation's selection has no folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from host_trainer.errors import UserError
from host_trainer.record import GenerationRecord

PICKS = ("fastest-within",)


@dataclass(frozen=True)
class Choice:
    record: GenerationRecord
    how: str  # said in final/README.md and preprocess.json's source


def _members(records: list[GenerationRecord], exists: Callable[[int], bool]) -> dict[int, GenerationRecord]:
    """generation -> its accepted record, for generations whose folder exists (a later record of a generation wins:
    records are in the order they landed)."""
    return {r.generation: r for r in records if r.accepted and exists(r.generation)}


def choose(records: list[GenerationRecord], front: dict | None, exists: Callable[[int], bool],
           generation: int | None = None, within: float | None = None) -> Choice:
    """The generation to deploy; a one-line UserError when there is none such."""
    members = _members(records, exists)
    if not members:
        raise UserError("the run has no accepted generation with its folder yet: nothing to export")
    if generation is not None and within is not None:
        raise UserError("give --generation or --pick, not both")
    if generation is not None:
        if generation not in members:
            shown = ", ".join(str(g) for g in sorted(members))
            raise UserError(f"the run has no accepted generation {generation} (its accepted generations: {shown})")
        return Choice(members[generation], f"generation {generation}, as asked")
    if within is not None:
        return _fastest_within(members, front, within)
    last = max(members)
    return Choice(members[last], "the last accepted generation")


def _fastest_within(members: dict[int, GenerationRecord], front: dict | None, drop: float) -> Choice:
    if not drop >= 0:
        raise UserError(f"--pick fastest-within takes a drop in percentage points >= 0, got {drop}")
    points = front.get("front") if isinstance(front, dict) else None
    if not isinstance(points, list):
        raise UserError("the run has no pareto.json with a front: --pick needs one (or give --generation N)")
    usable = [p for p in points if isinstance(p, dict) and p.get("accepted") and p.get("generation") in members
              and p.get("model_sha256") == members[p["generation"]].model_sha256
              and isinstance(p.get("accuracy"), (int, float)) and isinstance(p.get("fps"), (int, float))]
    if not usable:
        raise UserError("no point of the run's Pareto front is an accepted generation: give --generation N")
    best = max(float(p["accuracy"]) for p in usable)
    near = [p for p in usable if float(p["accuracy"]) >= best - drop / 100.0 - 1e-12]  # float slack only
    pick = max(near, key=lambda p: (float(p["fps"]), float(p["accuracy"]), -int(p["generation"])))
    how = (f"the fastest point of the Pareto front within {drop:g} points of its best accuracy "
           f"({best * 100:.2f} %)")
    return Choice(members[int(pick["generation"])], how)
