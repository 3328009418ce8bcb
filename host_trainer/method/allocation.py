"""Device-aware allocation: spend one generation's cut in milliseconds of the board's time.

The rule (docs/method.md, "Device-aware allocation"):
1. The generation removes ΔT = (1 − α) · T_parent of *predicted board time*; α comes from the controller
   (headroom, speed gap, halving on a retry), T_parent is the parent's time in the board's latency model.
2. Each coupling group g may keep one count from its ladder (the counts the board computes differently:
   host_trainer/latency/). Keeping n of N_g clusters loses the importance of the N_g − n clusters heredity
   drops first (the weakest by synaptic strength), each scored by first-order Taylor (method/importance.py),
   one scale for the whole network.
3. Choose one count per group minimising the importance lost, subject to the predicted saving ≥ ΔT: a grouped
   knapsack, solved exactly by dynamic programming over the saving in ΔT/RESOLUTION units. No group loses more
   than a bounded share of its own importance per generation (`share_cap`, halved on each retry).
4. Groups are priced as if each alone changed; the network's joint time (a layer whose inputs and outputs both
   shrink saves less than the two savings added) is checked after the solve, and the solve is repeated with the
   shortfall added until the joint prediction meets ΔT.
5. The synthesis stays stochastic (the seed's method): every cluster's importance is perturbed by seeded Gumbel
   noise at a temperature tied to the cut (`temperature`), so offspring, attempts and generations draw different
   cuts; a retry also pays `RETRY_PENALTY` times the importance for cutting a group as deep as a rejected cut did.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

RESOLUTION = 400       # the knapsack's saving axis: ΔT in this many units
SHARE_CAP = 0.5        # most of a group's own importance one generation may take (first attempt)
RETRY_PENALTY = 4.0    # importance multiplier for cutting a group at least as deep as a rejected cut did
NOISE_GAIN = 2.0       # Gumbel temperature = NOISE_GAIN · (1 − α): a deeper cut explores more
JOINT_ROUNDS = 6       # re-solves that add the joint prediction's shortfall to ΔT


@dataclass(frozen=True)
class GroupCost:
    """One coupling group as the solver sees it (host_trainer/latency/groups.py builds these)."""

    root: str
    size: int                       # live clusters now
    ladder: tuple[int, ...]         # counts the group may keep, largest (= size) first
    ms: Callable[[int], float]      # predicted ms of the group's layers with n kept (other groups at the parent's)
    step: int = 1                   # counts must be multiples of this (a grouped convolution's groups)


@dataclass(frozen=True)
class Cut:
    """The solver's answer: clusters to keep per group root, and what it predicts."""

    counts: dict[str, int]
    target_ms: float           # ΔT asked for
    predicted_saving_ms: float  # by the joint prediction when given, else the sum over groups
    importance_lost: float      # noisy importance, as optimised
    met: bool                   # whether the prediction reaches ΔT
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Option:
    """One ladder step of one group: keep `count`, saving `saving` ms, losing `cost` importance."""

    count: int
    saving: float
    cost: float


def temperature(alpha: float) -> float:
    return NOISE_GAIN * max(0.0, 1.0 - alpha)


def perturb(importance: np.ndarray, temp: float, rng: np.random.Generator | None) -> np.ndarray:
    """importance · exp(T·(G − γ)), G ~ Gumbel(0, 1): a multiplicative, mean-centred Gumbel perturbation."""
    values = np.asarray(importance, dtype=np.float64)
    if rng is None or temp <= 0 or values.size == 0:
        return values.copy()
    gumbel = rng.gumbel(0.0, 1.0, values.shape) - np.euler_gamma
    return values * np.exp(temp * gumbel)


def group_options(group: GroupCost, lost_first: np.ndarray, share_cap: float,
                  rejected: Sequence[int] = ()) -> list[Option]:
    """The group's ladder as knapsack options. `lost_first`: its clusters' importance in the order heredity
    drops them (weakest first). Steps past `share_cap` of the group's importance are not offered; a step at
    least as deep as a rejected cut costs RETRY_PENALTY times more."""
    total = float(lost_first.sum())
    prefix = np.concatenate([[0.0], np.cumsum(lost_first)])
    base = group.ms(group.size)
    options = []
    for count in dict.fromkeys(c if c >= group.size else _on_step(c, group.step) for c in group.ladder):
        if count > group.size or count < 1:
            continue
        lost = float(prefix[group.size - count])
        if count < group.size and total > 0 and lost > share_cap * total + 1e-12:
            continue
        penalty = RETRY_PENALTY if any(count <= r < group.size for r in rejected) else 1.0
        options.append(Option(count, max(0.0, base - group.ms(count)), lost * penalty))
    return options or [Option(group.size, 0.0, 0.0)]


def _on_step(count: int, step: int) -> int:
    """A ladder count rounded down to a multiple of the step (at least one step): what synthesis can keep."""
    return count if step <= 1 else max(step, count - count % step)


def solve(options: Mapping[str, list[Option]], target: float,
          resolution: int = RESOLUTION) -> tuple[dict[str, int], bool]:
    """Grouped knapsack: one option per group, Σ saving ≥ target, least Σ cost. Exact on the saving grid
    (savings floored to target/resolution units, so a chosen set always meets the target in real ms).
    When no choice reaches the target: the choice with the largest saving (least cost among those), and False."""
    roots = list(options)
    if target <= 0:
        return {r: max(o.count for o in options[r]) for r in roots}, True
    unit = target / resolution
    states = np.arange(resolution + 1)
    best = np.full(resolution + 1, math.inf)  # best[s]: least cost with a saving of s units (s = resolution: ≥)
    best[0] = 0.0
    trail: list[tuple[np.ndarray, np.ndarray]] = []  # per group: option index and previous state, per state
    for root in roots:
        nxt = np.full(resolution + 1, math.inf)
        pick = np.full(resolution + 1, -1, dtype=np.int64)
        prev = np.zeros(resolution + 1, dtype=np.int64)
        for i, opt in enumerate(options[root]):
            units = min(resolution, int(math.floor(opt.saving / unit + 1e-9)))
            dest = np.minimum(states + units, resolution)
            cost = best + opt.cost
            for s_from in np.argsort(cost, kind="stable")[::-1]:  # cheapest last: it wins shared destinations
                d = dest[s_from]
                if cost[s_from] < nxt[d]:
                    nxt[d], pick[d], prev[d] = cost[s_from], i, s_from
        best = nxt
        trail.append((pick, prev))
    met = bool(math.isfinite(best[resolution]))
    s = resolution if met else int(np.flatnonzero(np.isfinite(best)).max())
    counts: dict[str, int] = {}
    for root, (pick, prev) in zip(reversed(roots), reversed(trail)):
        counts[root] = options[root][int(pick[s])].count
        s = int(prev[s])
    return {r: counts[r] for r in roots}, met
