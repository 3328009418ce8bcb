"""Synthesis: sample an offspring from its parent's synaptic strengths and the environment α.

This is step 1 of docs/method.md:
- heredity q = exp((s / max s - 1) / τ) over what exists in the layer;
- `calibrated`: P = min(1, k·q) with k solved so that mean(P) = α exactly;
  `darwin`: P = α·q, the papers' literal form;
- clusters first (per coupling group), then synapses inside surviving clusters;
- optional stochastic rounding of each layer's cluster count to a multiple m;
- or, with device-aware allocation (host_trainer/method/allocation.py), an exact count per group: heredity
  still decides *which* clusters survive, the board's latency model decides *how many*;
- a group with segments (a grouped convolution's groups) keeps the same number in each (`balance`).

The numpy functions here know nothing about torch; `plan_offspring` reads a model, on the CPU whatever device
it lives on (`.detach().cpu()`), so the draw is the same whether the parent trained on the CPU or on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from host_trainer.method.compaction import ClusterGroup


@dataclass(frozen=True)
class SynthesisConfig:
    alpha_c: float
    alpha_s: float
    tau: float = 0.1
    probability_model: str = "calibrated"
    channel_multiple: int = 1


@dataclass
class OffspringPlan:
    """What survives: kept channel indices per group root, and the new synapse masks (parent shapes)."""

    keep: dict[str, np.ndarray]
    masks: dict[str, torch.Tensor]
    clusters_before: int
    clusters_after: int


def heredity(strength: np.ndarray, tau: float) -> np.ndarray:
    """q = exp((s/z - 1)/τ), z = max s. Strength 0 everywhere gives q = 0 (nothing to inherit)."""
    z = float(strength.max()) if strength.size else 0.0
    if z <= 0.0:
        return np.zeros_like(strength, dtype=np.float64)
    return np.exp((strength.astype(np.float64) / z - 1.0) / tau)


def calibrate(q: np.ndarray, alpha: float, iters: int = 60) -> np.ndarray:
    """P = min(1, k q) with mean(P) = α, k found by bisection (the mean is monotone in k)."""
    if q.size == 0:
        return q.astype(np.float64)
    if alpha >= 1.0:
        return np.where(q > 0, 1.0, 0.0)
    positive = q[q > 0]
    if positive.size == 0:
        return np.zeros_like(q, dtype=np.float64)
    # Only items with q > 0 can be kept; if α exceeds their share, keep them all.
    if alpha * q.size >= positive.size:
        return np.where(q > 0, 1.0, 0.0)
    lo, hi = 0.0, 1.0 / float(positive.min())
    for _ in range(iters):
        k = 0.5 * (lo + hi)
        if np.minimum(1.0, k * q).mean() < alpha:
            lo = k
        else:
            hi = k
    return np.minimum(1.0, hi * q)


def keep_probability(strength: np.ndarray, alpha: float, tau: float, model: str) -> np.ndarray:
    q = heredity(strength, tau)
    if model == "calibrated":
        return calibrate(q, alpha)
    if model == "darwin":
        return np.clip(alpha * q, 0.0, 1.0)
    raise ValueError(f"unknown probability model {model!r}; choose calibrated or darwin")


def round_kept(kept: np.ndarray, strength: np.ndarray, alive: np.ndarray, m: int,
               rng: np.random.Generator) -> np.ndarray:
    """Round the kept count to a multiple of m, up or down at random in proportion (unbiased).

    Rounding up adds the strongest dropped clusters; rounding down drops the weakest kept ones.
    Always rounding up would undo every cut in narrow layers (docs/findings.md), so it is never done.
    """
    n, n_alive = int(kept.sum()), int(alive.sum())
    if m > 1 and n % m:
        lower = (n // m) * m
        n = lower + m if rng.random() < (n - lower) / m else lower
    return _to_count(kept, strength, alive, int(np.clip(n, min(max(m, 1), n_alive), n_alive)))


def sample_clusters(strength: np.ndarray, cfg: SynthesisConfig, rng: np.random.Generator) -> np.ndarray:
    """Boolean keep-vector for one group. Dead clusters (all-zero weights) are dropped outright."""
    alive = strength > 0
    p = np.zeros(strength.shape, dtype=np.float64)
    if alive.any():
        p[alive] = keep_probability(strength[alive], cfg.alpha_c, cfg.tau, cfg.probability_model)
    kept = (rng.random(strength.shape) < p) & alive
    if not kept.any():  # every layer keeps at least one cluster: the strongest
        kept[int(np.argmax(strength))] = True
        alive = alive.copy()
        alive[int(np.argmax(strength))] = True
    return round_kept(kept, strength, alive, cfg.channel_multiple, rng)


def sample_exact(strength: np.ndarray, count: int, cfg: SynthesisConfig, rng: np.random.Generator) -> np.ndarray:
    """Keep exactly `count` live clusters: drawn with P calibrated to count/N, then rounded to the count.

    The draw decides which clusters survive (stronger ones more likely); `round_kept` then adds the
    strongest dropped or drops the weakest kept ones until the count is exact.
    """
    alive = strength > 0
    n_alive = int(alive.sum())
    count = int(np.clip(count, 1, max(1, n_alive)))
    if n_alive == 0:
        kept = np.zeros(strength.shape, dtype=bool)
        kept[int(np.argmax(strength))] = True
        return kept
    p = np.zeros(strength.shape, dtype=np.float64)
    p[alive] = keep_probability(strength[alive], count / n_alive, cfg.tau, cfg.probability_model)
    kept = (rng.random(strength.shape) < p) & alive
    return _to_count(kept, strength, alive, count)


def _to_count(kept: np.ndarray, strength: np.ndarray, alive: np.ndarray, count: int) -> np.ndarray:
    kept = kept.copy()
    if count > kept.sum():
        dropped = np.flatnonzero(alive & ~kept)
        kept[dropped[np.argsort(-strength[dropped], kind="stable")][: count - int(kept.sum())]] = True
    elif count < kept.sum():
        kept_idx = np.flatnonzero(kept)
        kept[kept_idx[np.argsort(strength[kept_idx], kind="stable")][: int(kept.sum()) - count]] = False
    return kept


def balance(kept: np.ndarray, strength: np.ndarray, segments: int) -> np.ndarray:
    """The same number kept in each of `segments` equal runs of clusters (a grouped convolution's groups, which
    must stay equal): the count rounded to the nearest multiple of the segments (at least one each); inside each
    run the drawn clusters first, then the strongest. With one segment the draw is returned as it is."""
    if segments <= 1:
        return kept
    width = kept.size // segments
    per = int(np.clip(np.floor(kept.sum() / segments + 0.5), 1, width))
    out = np.zeros_like(kept)
    for s in range(segments):
        run = slice(s * width, (s + 1) * width)
        order = np.lexsort((-strength[run], ~kept[run]))  # drawn first (False sorts first), then strongest
        out[s * width + order[:per]] = True
    return out


def sample_synapses(weight: np.ndarray, mask: np.ndarray, rows: np.ndarray, cfg: SynthesisConfig,
                    rng: np.random.Generator) -> np.ndarray:
    """New mask for one layer: existing synapses of the surviving rows, each kept with its own P."""
    exists = mask.astype(bool) & rows.reshape((-1,) + (1,) * (mask.ndim - 1))
    new = np.zeros(mask.shape, dtype=bool)
    strength = np.abs(weight[exists])
    if strength.size == 0:
        return new
    p = keep_probability(strength, cfg.alpha_s, cfg.tau, cfg.probability_model)
    new[exists] = rng.random(strength.shape) < p
    return new


def cluster_strength(model: torch.nn.Module, group: ClusterGroup) -> np.ndarray:
    """S_c = Σ|w| over every coupled filter of channel c (all out-channel members of the group)."""
    modules = dict(model.named_modules())
    total = np.zeros(group.size, dtype=np.float64)
    for name in group.members:
        w = modules[name].weight.detach().cpu().double().abs().reshape(group.size, -1)
        total += w.sum(dim=1).numpy()
    return total


def plan_offspring(model: torch.nn.Module, groups: list[ClusterGroup], masks: dict[str, torch.Tensor],
                   cfg: SynthesisConfig, rng: np.random.Generator,
                   counts: dict[str, int] | None = None) -> OffspringPlan:
    """Draw clusters group by group, then synapses layer by layer, in a fixed order (reproducible).

    `counts` (group root → clusters to keep) comes from the device-aware allocation; without it each group
    keeps about α_c of its clusters, rounded to `cfg.channel_multiple`.
    """
    keep: dict[str, np.ndarray] = {}
    rows_kept: dict[str, np.ndarray] = {}
    for group in groups:
        strength = cluster_strength(model, group)
        if counts is not None and group.root in counts:
            kept = sample_exact(strength, counts[group.root], cfg, rng)
        else:
            kept = sample_clusters(strength, cfg, rng)
        kept = balance(kept, strength, group.segments)
        keep[group.root] = np.flatnonzero(kept)
        for name in group.members:
            rows_kept[name] = kept
    modules = dict(model.named_modules())
    new_masks: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        weight = modules[name].weight.detach().cpu().numpy()
        rows = rows_kept.get(name, np.ones(weight.shape[0], dtype=bool))
        new_masks[name] = torch.from_numpy(sample_synapses(weight, mask.detach().cpu().numpy(), rows, cfg, rng))
    before = sum(g.size for g in groups)
    after = sum(int(k.size) for k in keep.values())
    return OffspringPlan(keep=keep, masks=new_masks, clusters_before=before, clusters_after=after)
