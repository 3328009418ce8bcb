"""The loop's side of device-aware allocation: learn from every measurement, spend every cut in milliseconds.

`observe` files each measured offspring's per-layer profile into the board's latency model
(host_trainer/latency/); `cut` turns the parent's profile, its Taylor importance and α into per-group cluster
counts for one offspring (host_trainer/method/allocation.py): remove ΔT = (1 − α) · T_parent of predicted board
time at the least importance lost. Before the first device-aware offspring, a board whose model has no probe
curve yet gets probe jobs once, unless probing is off. Without a profile of the parent (an older board, or
profiling off), the offspring falls back to magnitude allocation and says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn

from host_trainer.config import EvolveConfig
from host_trainer.fleet.measurers import DeviceError, Measurer
from host_trainer.latency.groups import group_costs, network_ms, parent_ms
from host_trainer.latency.model import LatencyModel, Observation
from host_trainer.latency.probes import probe_layer, run_probes
from host_trainer.latency.store import LatencyBook
from host_trainer.method import allocation as rule
from host_trainer.method.compaction import ClusterGroup
from host_trainer.method.depth import Block
from host_trainer.method.synthesis import cluster_strength
from host_trainer.progress import NULL, RunView
from host_trainer.record import GenerationRecord

LOCAL = "local"  # the device id of in-process measurements
log = structlog.get_logger("host_trainer")


@dataclass(frozen=True)
class Allocation:
    """How one offspring's cut is spread: counts per group root (None: magnitude), and what was predicted."""

    counts: dict[str, int] | None
    how: str  # "device" or "magnitude"
    alignment: int | None = None
    note: str = ""
    target_ms: float | None = None      # ΔT asked for, in the latency model's ms
    predicted_ms: float | None = None   # the offspring's predicted time (joint prediction)
    parent_ms: float | None = None      # the parent's time in the same model
    removed: tuple[str, ...] = ()       # residual blocks removed whole (method/depth.py)
    chosen: dict[str, int] | None = None  # the solver's answer as recorded: 0 for a removed block's group
    extra: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return {"allocation": self.how, "alignment": self.alignment, "cut_target_ms": self.target_ms,
                "predicted_ms": self.predicted_ms, "predicted_parent_ms": self.parent_ms,
                "cut": dict(self.chosen or self.counts or {}) or None,
                "removed_blocks": list(self.removed) if self.how == "device" else None, **self.extra}


@dataclass(frozen=True)
class CutRequest:
    """What one offspring's device-aware cut depends on besides the parent."""

    alpha: float
    seed: int
    k: int
    attempt: int
    importance: Mapping[str, np.ndarray]
    rejected: Sequence[Mapping[str, int]] = ()  # counts of this parent's rejected offspring
    blocks: Sequence[Block] = ()                 # residual blocks that may go whole
    block_importance: Mapping[str, float] = field(default_factory=dict)  # their measured loss increase


class DeviceAllocator:
    def __init__(self, cfg: EvolveConfig, run_path: Path, measurer: Measurer, example: torch.Tensor,
                 view: RunView = NULL) -> None:
        self.device_aware = cfg.allocation == "device"
        self.probes = cfg.probes
        self.book = LatencyBook(run_path, cfg.latency_model)
        self.measurer, self.example, self.view = measurer, example, view
        self.probed: set[str] = set()

    def observe(self, record: GenerationRecord, model: nn.Module, profile: list[dict]) -> dict[str, Any]:
        """File a measured network's profile; the record's summary of it (nothing when the board sent none)."""
        if not profile or not record.model_sha256:
            return {}
        observed = self.book.observe(device_of(record), model, profile, record.model_sha256, record.generation)
        total = sum(s.ms for s in observed.layers.values()) + observed.other_ms
        if total <= 0:
            return {}
        name, shape = max(observed.layers.items(), key=lambda item: item[1].ms)
        return {"slowest_layer": name, "slowest_layer_share": shape.ms / total}

    def cut(self, parent: GenerationRecord, model: nn.Module, groups: list[ClusterGroup],
            request: CutRequest) -> Allocation:
        if not self.device_aware:
            return Allocation(None, "magnitude")
        latency = self.book.for_device(device_of(parent))
        observed = latency.observation(parent.model_sha256)
        if observed is None or not any(s.ms > 0 for s in observed.layers.values()):
            return Allocation(None, "magnitude", note="no per-layer profile of the parent from the board")
        self._probe_once(latency, model, {n: s.ms for n, s in observed.layers.items()})
        return spend(latency, observed, model, groups, request)

    def _probe_once(self, latency: LatencyModel, model: nn.Module, layer_ms: dict[str, float]) -> None:
        if not self.probes or latency.probes or latency.device in self.probed:
            return
        self.probed.add(latency.device)  # one try per run: a board that cannot probe is not asked again
        layer = probe_layer(model, self.example, layer_ms)
        if layer is None:
            return
        self.view.note(f"probing {layer.name} on {latency.device} at several channel counts (once per board)")
        try:
            probes = run_probes(layer, self.measurer.probe, prefix=f"probe.{latency.device}")
        except DeviceError as exc:
            log.warning("probe_failed", device=latency.device, error=str(exc))
            return
        latency.add_probes(probes)
        self.book.save(latency.device)
        log.info("probed", device=latency.device, layer=layer.name, alignment=latency.alignment)


def spend(latency: LatencyModel, observed: Observation, model: nn.Module, groups: list[ClusterGroup],
          request: CutRequest) -> Allocation:
    """Solve the generation's knapsack (method/allocation.py) on this parent, with joint-time correction."""
    costs = group_costs(latency, observed, groups)
    before = parent_ms(observed)
    target = (1.0 - request.alpha) * before
    rng = np.random.default_rng([request.seed, request.k, 1])
    share = rule.SHARE_CAP * 0.5 ** request.attempt
    options = {}
    for cost, group in zip(costs, _matching(costs, groups)):
        order = np.argsort(cluster_strength(model, group), kind="stable")  # heredity drops the weakest first
        noisy = rule.perturb(request.importance[group.root], rule.temperature(request.alpha), rng)
        rejected = [r[group.root] for r in request.rejected if group.root in r]
        options[cost.root] = rule.group_options(cost, noisy[order], share, rejected)
    depth = Depth(request, groups, observed, {c.root: c.size for c in costs})
    depth.offer(options)
    asked, chosen, counts = target, dict[str, int](), dict[str, int]()
    removed: tuple[str, ...] = ()
    for _ in range(rule.JOINT_ROUNDS):
        chosen, met = rule.solve(options, asked)
        counts, removed = depth.split(chosen)
        saving = before - network_ms(latency, observed, groups, counts, depth.layers(removed))
        if saving >= target * (1 - 1e-6) or not met:
            break
        # Pairs of shrinking layers save less together than apart: ask for the rest, and a little more, so the
        # next solve does not land just short again on the saving grid.
        asked += (target - saving) + 0.01 * target
    predicted = network_ms(latency, observed, groups, counts, depth.layers(removed))
    note = "" if before - predicted >= target * (1 - 1e-6) else "the budget could not be met within the caps"
    return Allocation(counts, "device", latency.alignment, note, target, predicted, before, removed, chosen)


class Depth:
    """Whole residual blocks as knapsack options (docs/method.md, "Depth"): a block whose own channels form one
    coupling group is an extra option of that group (count REMOVE); a block with none is a group of its own
    (`block:<name>`, keep or remove); a block with several is not offered. Priced at its full measured time,
    at its measured loss increase (times the retry penalty when a rejected cut removed it)."""

    REMOVE = 0
    PREFIX = "block:"

    def __init__(self, request: CutRequest, groups: list[ClusterGroup], observed: Observation,
                 sizes: Mapping[str, int]) -> None:
        self.request, self.sizes, self.keys = request, dict(sizes), {}
        self.blocks = {b.name: b for b in request.blocks}
        for block in request.blocks:
            inner = [g.root for g in groups if set(g.members) <= set(block.layers)]
            if len(inner) <= 1 and block.name in request.block_importance:
                self.keys[block.name] = inner[0] if inner else self.PREFIX + block.name
        self.saving = {b: sum(observed.layers[n].ms for n in self.blocks[b].layers if n in observed.layers)
                       for b in self.keys}

    def offer(self, options: dict[str, list[rule.Option]]) -> None:
        for block, key in self.keys.items():
            if key.startswith(self.PREFIX):
                options[key] = [rule.Option(1, 0.0, 0.0)]
            if key not in options:
                continue
            penalty = rule.RETRY_PENALTY if any(r.get(key) == self.REMOVE for r in self.request.rejected) else 1.0
            cost = self.request.block_importance[block] * penalty
            options[key].append(rule.Option(self.REMOVE, self.saving[block], cost))

    def split(self, chosen: Mapping[str, int]) -> tuple[dict[str, int], tuple[str, ...]]:
        """(counts per group root, removed blocks): a removed block's own group keeps its clusters (they go with
        the block)."""
        removed = tuple(b for b, key in self.keys.items() if chosen.get(key) == self.REMOVE)
        counts = {root: (self.sizes.get(root, 1) if n == self.REMOVE else n) for root, n in chosen.items()
                  if not root.startswith(self.PREFIX)}
        return counts, removed

    def layers(self, removed: Sequence[str]) -> set[str]:
        return {n for b in removed for n in self.blocks[b].layers}


def _matching(costs: list[rule.GroupCost], groups: list[ClusterGroup]) -> list[ClusterGroup]:
    by_root = {g.root: g for g in groups}
    return [by_root[c.root] for c in costs]


def importance_lost(importance: Mapping[str, np.ndarray], keep: Mapping[str, np.ndarray]) -> float:
    """The share of the network's total Taylor importance in the clusters an offspring dropped."""
    total = sum(float(v.sum()) for v in importance.values())
    dropped = sum(float(importance[root].sum() - importance[root][np.asarray(idx, dtype=int)].sum())
                  for root, idx in keep.items() if root in importance)
    return max(0.0, dropped) / total if total > 0 else 0.0


def device_of(record: GenerationRecord) -> str:
    return str(record.device_id or LOCAL)
