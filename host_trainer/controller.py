"""The environmental factor α for each offspring, with an accuracy brake.

Issue #2's controller knows only accuracy (device fitness steers α in the closed loop, later):
  headroom h = 1 - (acc_0 - acc_parent) / tolerance, clipped to [MIN_PRESSURE, 1]
  pressure   = (1 - α_user) · h · (1/2)^attempt
  α          = 1 - pressure
So pressure is the user's α while the parent is as accurate as generation 0, eases as the parent
uses up the tolerance, and halves on each retry after a rejection. Without the brake a fixed α
runs past the target and collapses (FACTS.md: 84.3% at generation 11, 74.9% at 13).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_PRESSURE = 0.25


@dataclass(frozen=True)
class Controller:
    alpha_c: float
    alpha_s: float
    tolerance: float  # accuracy, as a fraction (2 points = 0.02)

    def headroom(self, baseline: float, parent: float) -> float:
        if self.tolerance <= 0:
            return MIN_PRESSURE
        return min(1.0, max(MIN_PRESSURE, 1.0 - (baseline - parent) / self.tolerance))

    def alpha(self, baseline: float, parent: float, attempt: int) -> tuple[float, float]:
        scale = self.headroom(baseline, parent) * 0.5 ** attempt
        return (1.0 - (1.0 - self.alpha_c) * scale, 1.0 - (1.0 - self.alpha_s) * scale)

    def verdict(self, baseline: float, accuracy: float, loss: float) -> str | None:
        """None when the offspring survives, else the reason it does not."""
        if not math.isfinite(loss):
            return "loss is not finite"
        if accuracy < baseline - self.tolerance - 1e-12:
            return (f"validation accuracy {accuracy:.4f} is more than {self.tolerance * 100:.1f} points "
                    f"below generation 0 ({baseline:.4f})")
        return None
