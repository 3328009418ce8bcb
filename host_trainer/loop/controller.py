"""The environmental factor α for each offspring: measured speed gap × accuracy brake.

  headroom h = 1 - (acc_0 - acc_parent) / tolerance, clipped to [MIN_PRESSURE, 1]
  gap      g = max(target_fps / fps_parent, latency_parent / target_latency, power_parent / max_power)
  speed    s = 1 without targets; MIN_SPEED_PRESSURE when g <= 1 (met);
             else clip(log g / log FULL_GAP, MIN_SPEED_PRESSURE, 1)
  pressure   = (1 - α_user) · h · s · (1/2)^attempt
  α          = 1 - pressure
So pressure is the user's α while the parent is as accurate as generation 0, eases as the parent
uses up the tolerance, and halves on each retry after a rejection. Without the brake a fixed α
runs past the target and collapses (docs/findings.md: 84.3% at generation 11, 74.9% at 13).
The speed goals are the user's `--target-fps`, `--target-latency-ms` and `--max-power-w` (`Goals`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from host_trainer.record import GenerationRecord


class Alpha(NamedTuple):
    """One offspring's environmental factor: the fraction of clusters (`c`, what is cut) and of synapses within
    the kept clusters (`s`) it inherits."""

    c: float
    s: float


MIN_PRESSURE = 0.25
FULL_GAP = 4.0  # the parent 4x (or more) short of the target: the user's full pressure
MIN_SPEED_PRESSURE = 0.1  # target met: a little pressure remains, mostly recovery


@dataclass(frozen=True)
class Goals:
    """The speed and power the user asked for; 0 = no goal."""

    fps: float = 0.0
    latency_ms: float = 0.0
    max_power_w: float = 0.0

    def any(self) -> bool:
        return bool(self.fps or self.latency_ms or self.max_power_w)

    def gap(self, fitness: GenerationRecord) -> float | None:
        """How far the measured parent is from the goals (> 1: short by that factor); None if unmeasured."""
        gaps = []
        if self.fps:
            gaps.append(self.fps / fitness.fps if fitness.fps else None)
        if self.latency_ms:
            gaps.append(fitness.latency_ms_p50 / self.latency_ms if fitness.latency_ms_p50 else None)
        if self.max_power_w and fitness.power_w_mean is not None:  # no meter: no power goal to meet
            gaps.append(fitness.power_w_mean / self.max_power_w)
        known = [g for g in gaps if g is not None]
        if not known or len(known) < len(gaps):
            return None
        return max(known)

    def met(self, fitness: GenerationRecord) -> bool:
        gap = self.gap(fitness)
        return gap is not None and gap <= 1.0


def speed_pressure(goals: Goals, fitness: GenerationRecord | None) -> float:
    if not goals.any() or fitness is None:
        return 1.0
    gap = goals.gap(fitness)
    if gap is None:
        return 1.0
    if gap <= 1.0:
        return MIN_SPEED_PRESSURE
    return min(1.0, max(MIN_SPEED_PRESSURE, math.log(gap) / math.log(FULL_GAP)))


@dataclass(frozen=True)
class Controller:
    alpha_c: float
    alpha_s: float
    tolerance: float  # accuracy, as a fraction (2 points = 0.02)
    goals: Goals = Goals()

    def headroom(self, baseline: float, parent: float) -> float:
        if self.tolerance <= 0:
            return MIN_PRESSURE
        return min(1.0, max(MIN_PRESSURE, 1.0 - (baseline - parent) / self.tolerance))

    def alpha(self, baseline: float, parent: float, attempt: int,
              fitness: GenerationRecord | None = None) -> Alpha:
        scale = self.headroom(baseline, parent) * speed_pressure(self.goals, fitness) * 0.5 ** attempt
        return Alpha(1.0 - (1.0 - self.alpha_c) * scale, 1.0 - (1.0 - self.alpha_s) * scale)

    def verdict(self, baseline: float, accuracy: float, loss: float) -> str | None:
        """None when the offspring survives, else the reason it does not."""
        if not math.isfinite(loss):
            return "loss is not finite"
        if accuracy < baseline - self.tolerance - 1e-12:
            return (f"validation accuracy {accuracy:.4f} is more than {self.tolerance * 100:.1f} points "
                    f"below generation 0 ({baseline:.4f})")
        return None
