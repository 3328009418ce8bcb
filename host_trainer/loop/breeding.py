"""One offspring from its parent: importance, the cut, synthesis and compaction (docs/method.md, "One generation").

The parent's Taylor importance (method/importance.py) is measured once per parent on a fixed, seeded set of
training batches and reused by every attempt and offspring drawn from it. The cut comes from the allocator
(device: a latency budget in board milliseconds; magnitude: α per group), heredity then draws which clusters
survive, and compaction removes the rest physically. Scoring runs on the training device (`--train-device`);
synthesis and compaction on the CPU, where the parent rests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import structlog
import torch
from torch import nn

from host_trainer.config import EvolveConfig
from host_trainer.loop.allocator import Allocation, CutRequest, DeviceAllocator, importance_lost
from host_trainer.loop.controller import Alpha
from host_trainer.loop.training import scoring_batches
from host_trainer.method.compaction import ClusterGroup, CompactionMismatch, cluster_groups, compact
from host_trainer.method.depth import Block, removable_blocks, removal_loss, remove_blocks
from host_trainer.method.importance import taylor_importance
from host_trainer.method.masks import prunable_layers
from host_trainer.method.synthesis import SynthesisConfig, plan_offspring
from host_trainer.models.registry import fixed_layers
from host_trainer.record import GenerationRecord
from host_trainer.tasks.base import Task
from host_trainer.torch_device import CPU, placed

log = structlog.get_logger("host_trainer")
IMPORTANCE_SEED = 7919  # the importance batches' order: fixed, so a resumed run scores the parent alike


@dataclass
class Bred:
    """A compacted, untrained offspring and how it was cut."""

    model: nn.Module
    masks: dict[str, torch.Tensor]
    allocation: Allocation
    lost: float  # share of the parent's importance in the dropped clusters


@dataclass
class Scores:
    """What is worked out once per parent: its coupling groups, Taylor importance per group root, and the
    removable residual blocks with their measured loss increase."""

    groups: list[ClusterGroup]
    importance: dict[str, np.ndarray]
    blocks: list[Block]
    block_importance: dict[str, float]


class Breeder:
    def __init__(self, cfg: EvolveConfig, train_split: Any, task: Task, example: torch.Tensor,
                 allocator: DeviceAllocator, device: torch.device = CPU) -> None:
        self.cfg, self.train_split, self.task, self.example = cfg, train_split, task, example
        self.allocator, self.device = allocator, device
        self._scores: dict[str, Scores] = {}  # the parent's model sha256 → its scores (the latest parent only)

    def scores(self, fitness: GenerationRecord, model: nn.Module) -> Scores:
        """The parent's scores, worked out on its first offspring and reused by every attempt and k after it.
        The graphs are traced on the CPU; the losses and gradients are computed on the training device."""
        key = str(fitness.model_sha256)
        if key not in self._scores:
            groups = cluster_groups(model, self.example, fixed_layers(model))
            blocks = removable_blocks(model, self.example, fixed_layers(model)) if self.allocator.device_aware \
                else []
            batches = list(scoring_batches(self.train_split, self.task, IMPORTANCE_SEED, device=self.device))
            with placed(self.device, model):
                importance = taylor_importance(model, groups, self.example, batches, self._loss)
                block_importance = removal_loss(model, blocks, batches, self._loss)
            self._scores = {key: Scores(groups, importance, blocks, block_importance)}
        return self._scores[key]

    def _loss(self, outputs: torch.Tensor, labels: list[torch.Tensor]) -> torch.Tensor:
        return self.task.loss(outputs, labels, None)

    def breed(self, parent_model: nn.Module, parent_masks: dict[str, torch.Tensor], fitness: GenerationRecord,
              seed: int, alpha: Alpha, k: int, attempt: int,
              rejected: Sequence[Mapping[str, int]]) -> Bred:
        """One offspring. A cut whose compacted network would not compute what the masked parent computes is
        refused (method/compaction.py): its groups stay dense for this parent, and the cut is drawn again."""
        scores = self.scores(fitness, parent_model)
        while True:
            try:
                return self._breed(parent_model, parent_masks, fitness, scores, seed, alpha, k, attempt, rejected)
            except CompactionMismatch as exc:
                if not exc.roots:
                    raise
                log.warning("cut refused, its groups left dense for this parent", reason=exc.reason,
                            groups=list(exc.roots))
                scores.groups = [g for g in scores.groups if g.root not in exc.roots]

    def _breed(self, parent_model: nn.Module, parent_masks: dict[str, torch.Tensor], fitness: GenerationRecord,
               scores: Scores, seed: int, alpha: Alpha, k: int, attempt: int,
               rejected: Sequence[Mapping[str, int]]) -> Bred:
        cfg = self.cfg
        groups = scores.groups
        request = CutRequest(alpha.c, seed, k, attempt, scores.importance, rejected, scores.blocks,
                             scores.block_importance)
        allocation = self.allocator.cut(fitness, parent_model, groups, request)
        scfg = SynthesisConfig(alpha.c, alpha.s, cfg.tau, cfg.probability_model, cfg.channel_multiple)
        plan = plan_offspring(parent_model, groups, parent_masks, scfg, np.random.default_rng(seed),
                              counts=allocation.counts)
        child, masks = compact(parent_model, plan.masks, groups, plan.keep, self.example)
        lost = importance_lost(scores.importance, plan.keep)
        if allocation.removed:
            remove_blocks(child, allocation.removed)
            masks = {name: masks[name] for name in prunable_layers(child)}
            total = sum(float(v.sum()) for v in scores.importance.values())
            lost += sum(scores.block_importance[b] for b in allocation.removed) / total if total > 0 else 0.0
        return Bred(child, masks, allocation, lost)


def failed_cuts(records: Sequence[GenerationRecord], parent_sha256: str | None) -> list[dict[str, int]]:
    """The cuts of this parent's offspring that the accuracy brake (or a diverged loss) rejected, from the
    records alone, so a resumed run penalises the same cuts an uninterrupted one does."""
    if not parent_sha256:
        return []
    return [dict(r.cut) for r in records
            if not r.accepted and r.cut and r.parent_sha256 == parent_sha256 and r.reject_reason
            and not r.reject_reason.startswith(("not the fittest", "device error"))]
