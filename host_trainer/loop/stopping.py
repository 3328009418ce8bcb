"""When a run stops before its last generation: the goals are met (--hold), or the lineage stalled (--patience).

Both read the records alone, so a resumed run stops where an uninterrupted one does.
"""

from __future__ import annotations

from collections.abc import Sequence

from host_trainer.loop.controller import Goals
from host_trainer.record import GenerationRecord

MIN_CUT = 0.01  # a generation cut when it has at least 1% fewer synapses (fp16 underflow zeroes a few on its own)


def _lineage(records: Sequence[GenerationRecord]) -> list[GenerationRecord]:
    """The accepted generation of each number, in order (a final fine-tune is not part of the search)."""
    return [r for r in records if r.accepted and not r.final_tune]


def goals_held(records: Sequence[GenerationRecord], goals: Goals, hold: int) -> bool:
    """The speed goals were met by the last `hold` accepted offspring (generation 0 does not count)."""
    recent = [r for r in _lineage(records) if r.generation > 0][-hold:]
    return goals.any() and len(recent) == hold and all(goals.met(r) for r in recent)


def stalled(records: Sequence[GenerationRecord], patience: int) -> bool:
    """The last `patience` generations cut nothing: none has MIN_CUT fewer synapses than its parent. A lineage at the
    accuracy brake's wall spends each further generation on a rejected cut and a rest or a carried-over parent,
    so the run moves on to its final fine-tune instead. `patience` 0: never."""
    lineage = _lineage(records)
    if patience <= 0 or len(lineage) <= patience:
        return False
    last = lineage[-(patience + 1):]
    return not any(int(child.synapses or 0) < (1.0 - MIN_CUT) * int(parent.synapses or 0)
                   for parent, child in zip(last, last[1:]))
