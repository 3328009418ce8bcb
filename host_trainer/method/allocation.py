"""Device-aware allocation: how many clusters each coupling group keeps, given one overall α.

The rule (docs/method.md, "Device-aware allocation"), greedy like NetAdapt but on measured times:
1. Every group starts with all its live clusters; the overall budget keeps round(α · Σ N_g) clusters.
2. A group may only step to counts the board computes differently: multiples of the board's alignment a, never
   below a (the board's smallest efficient step; a group smaller than a may go down to one cluster, the model's
   own floor), and in one generation never below α² · N_g (so no group is wiped out by one draw) unless that
   forbids even its first step down.
3. Repeatedly take the step with the most predicted milliseconds saved per unit of importance lost, where a
   group's importance lost is the share of its synaptic strength in its weakest clusters being cut (the
   ones heredity most likely drops). Ties and zero-gain steps go to the least importance lost.
4. Stop at the budget; a step that would overshoot it by more than the remaining excess is not taken. When
   every group is at its floor, the offspring keeps more than α: the board cannot go faster by cutting more.
Offspring k > 0 perturb each group's gains by a seeded log-normal factor (`spread`), so K offspring spend the
same cut differently and the board's measurements choose among them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

MIN_KEEP_POWER = 2  # a group keeps at least α² of its clusters per generation (0.64 at α 0.8)


@dataclass(frozen=True)
class GroupCost:
    """One group as the allocation sees it."""

    root: str
    strength: np.ndarray            # per live cluster, Σ|w| (any positive scale)
    ms: Callable[[int], float]      # predicted time of the group's layers with n clusters kept


def allowed_counts(size: int, alignment: int) -> list[int]:
    """Counts a group may step to, largest first: its size and the multiples of the board's alignment a.

    Below a the board computes a full step anyway (a probe of ONNX Runtime on x86 takes as long for 1 as for
    16 channels, and longer for 15 than for 16), so a group of at least a clusters keeps at least a: that is
    the board's smallest efficient step. A group smaller than a may go down to one cluster.
    """
    a = max(1, int(alignment))
    if size < a:
        return list(range(size, 0, -1))
    return sorted({size} | set(range(a, size, a)), reverse=True)


def allocate(groups: list[GroupCost], alpha: float, alignment: int, rng: np.random.Generator | None = None,
             spread: float = 0.0) -> dict[str, int]:
    """Clusters to keep per group root (see the module docstring for the rule)."""
    state = _Greedy(groups, alpha, alignment, rng, spread)
    target = round(alpha * sum(state.sizes.values()))
    keep = dict(state.sizes)
    while sum(keep.values()) > target:
        excess = sum(keep.values()) - target
        moves = [m for m in (state.move(root, n) for root, n in keep.items())
                 if m is not None and (keep[m[1]] - m[2]) - excess <= excess]
        if not moves:
            break
        _, root, count = max(moves)
        keep[root] = count
    return keep


class _Greedy:
    """The per-group facts the greedy rule looks up at every step."""

    def __init__(self, groups: list[GroupCost], alpha: float, alignment: int, rng: np.random.Generator | None,
                 spread: float) -> None:
        self.groups = {g.root: g for g in groups}
        self.sizes = {g.root: int(g.strength.size) for g in groups}
        self.ladders = {r: allowed_counts(n, alignment) for r, n in self.sizes.items()}
        self.floors = {r: min(max(1, math.ceil(alpha ** MIN_KEEP_POWER * n)), (self.ladders[r][1:] or [n])[0])
                       for r, n in self.sizes.items()}
        self.noise = {r: float(np.exp(spread * rng.standard_normal())) if rng is not None and spread else 1.0
                      for r in self.groups}
        self.ordered = {g.root: np.sort(g.strength.astype(np.float64)) for g in groups}  # weakest first
        self.totals = {r: float(s.sum()) or 1.0 for r, s in self.ordered.items()}

    def move(self, root: str, n: int) -> tuple[tuple[float, float, str], str, int] | None:
        """(sort key, root, next count) for group `root` stepping down from n, or None at its floor."""
        nxt = next((c for c in self.ladders[root] if c < n), None)
        if nxt is None or nxt < self.floors[root]:
            return None
        size = self.sizes[root]
        lost = float(self.ordered[root][size - n: size - nxt].sum()) / self.totals[root]  # weakest still kept
        gain = max(0.0, self.groups[root].ms(n) - self.groups[root].ms(nxt)) * self.noise[root]
        return (gain / (lost + 1e-12), -lost, root), root, nxt
