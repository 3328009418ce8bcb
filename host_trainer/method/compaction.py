"""Compaction: remove dropped clusters physically, following the coupling plan of the parent's architecture.

The plan (coupling.py, read once per architecture from Torch-Pruning's dependency graph, tracing.py) keeps
BatchNorm, residual additions, concatenations, squeeze-excitation, grouped convolutions and flatten→linear
consistent, so a removed filter also disappears from every consumer. We never track that by hand.

A *cluster group* is a set of Conv/Linear layers whose output channels are coupled (for example the two branches
of a residual addition): channel c is one cluster across all of them.

Compacted == masked: a compacted network must compute what its parent computes with the dropped clusters'
parameters set to zero (surgery.zero), on a seeded random probe batch, within float tolerance. It is checked
- once per architecture, on a test cut of every group (`cluster_groups`): a group whose cut changes what the
  network computes, or fails, is left dense, with one warning naming its layers;
- on every offspring (`compact`): a cut that changes it is refused (CompactionMismatch, naming the groups),
  never returned. Export parity cannot see such an error: it compares torch with the ONNX of the same network.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn

from host_trainer.method import surgery
from host_trainer.method.coupling import ClusterGroup, Plan, fingerprint, read_plan, warn_dense
from host_trainer.method.masks import prunable_layers
from host_trainer.method.tracing import BarrierGraph, trace
from host_trainer.torch_device import device_of

__all__ = ["ClusterGroup", "CompactionMismatch", "build_graph", "cluster_groups", "compact", "coupling_plan",
           "prune_groups", "shrink_to_widths", "widths"]

PROBE_SEED = 20211  # the probe batch: fixed, so a check repeats
PROBE_BATCH = 2
TOLERANCE = 1e-4    # relative to 1 + the largest output: float32 reordering stays near 1e-7
CACHED = 8          # architectures kept: the parent's, its offspring's, a rebuilt checkpoint's


class CompactionMismatch(ValueError):
    """A cut whose compacted network does not compute what the masked parent computes: refused."""

    def __init__(self, reason: str, roots: Iterable[str]) -> None:
        self.reason, self.roots = reason, tuple(roots)
        super().__init__(f"compaction refused: the compacted network differs from its masked parent ({reason}); "
                         f"groups {', '.join(self.roots)}")


class _Cache(OrderedDict):
    def remember(self, key, value):
        self[key] = value
        self.move_to_end(key)
        while len(self) > CACHED:
            self.popitem(last=False)
        return value


_PLANS: _Cache = _Cache()     # fingerprint → Plan
_CHECKED: _Cache = _Cache()   # (fingerprint, fixed layer names) → the groups that passed the check


def build_graph(model: nn.Module, example: torch.Tensor) -> BarrierGraph:
    return trace(model, example)


def coupling_plan(model: nn.Module, example: torch.Tensor) -> Plan:
    """The model's coupling plan, traced once per architecture."""
    key = fingerprint(model, example)
    if key in _PLANS:
        _PLANS.move_to_end(key)
        return _PLANS[key]
    return _PLANS.remember(key, read_plan(model, example))


def cluster_groups(model: nn.Module, example: torch.Tensor, fixed: list[nn.Module]) -> list[ClusterGroup]:
    """Every coupling group of prunable layers that compacts correctly, in module order; groups holding a fixed
    layer's outputs are left out, and so (with one warning each) are those coupling.py or the check leave dense."""
    plan = coupling_plan(model, example)
    names = {id(m): n for n, m in model.named_modules()}
    fixed_names = frozenset(names[id(m)] for m in fixed if id(m) in names)
    key = (fingerprint(model, example), fixed_names)
    if key not in _CHECKED:
        for reason, layers, members in plan.dense:
            if not fixed_names & set(members):  # a fixed layer's group is never cut anyway
                warn_dense(reason, layers)
        candidates = [g for g in plan.groups if not fixed_names & set(g.members)]
        _CHECKED.remember(key, tuple(_checked(model, plan, candidates, example)))
    return list(_CHECKED[key])


def _checked(model: nn.Module, plan: Plan, groups: list[ClusterGroup], example: torch.Tensor) -> list[ClusterGroup]:
    """The groups whose test cut compacts to what the masked network computes: all at once, else one by one."""
    cuts = _test_cuts(groups)
    if _mismatch(model, plan, cuts, example) is None:
        return groups
    good = []
    for group in groups:
        reason = _mismatch(model, plan, {group.root: cuts[group.root]}, example) if group.root in cuts else None
        if reason is None:
            good.append(group)
        else:
            warn_dense(f"compacting it changes what the network computes: {reason}", group.members + group.consumers)
    rest = {g.root: cuts[g.root] for g in good if g.root in cuts}
    reason = _mismatch(model, plan, rest, example)
    if reason is not None:  # groups that are right alone but wrong together: none is trusted
        warn_dense(f"compacting these groups together changes what the network computes: {reason}",
                   [m for g in good for m in g.members])
        return []
    return good


def _test_cuts(groups: list[ClusterGroup]) -> dict[str, list[int]]:
    """A seeded cut of about a quarter of every segment of every group that can lose a channel."""
    rng = np.random.default_rng(PROBE_SEED)
    cuts = {}
    for group in groups:
        width = group.size // group.segments
        if width < 2:
            continue
        take = max(1, width // 4)
        cuts[group.root] = sorted(int(s * width + i) for s in range(group.segments)
                                  for i in rng.choice(width, take, replace=False))
    return cuts


def _mismatch(model: nn.Module, plan: Plan, remove: Mapping[str, list[int]], example: torch.Tensor) -> str | None:
    """Why cutting `remove` from a copy of the model would not give the masked network, or None if it does."""
    try:
        child, masked = copy.deepcopy(model), copy.deepcopy(model)
        surgery.cut(child, plan.items, remove)
        surgery.zero(masked, plan.items, remove)
        return differs(child, masked, example)
    except Exception as exc:  # a user's forward() that no longer runs once cut, say: that cut is wrong too
        return f"{type(exc).__name__}: {exc}"


@torch.no_grad()
def differs(child: nn.Module, masked: nn.Module, example: torch.Tensor) -> str | None:
    """How the two networks' outputs differ on the probe batch (eval mode), or None within float tolerance."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    probe = torch.randn((PROBE_BATCH, *example.shape[1:]), generator=gen, dtype=example.dtype)
    outputs = []
    for net in (child, masked):
        was_training = net.training
        net.eval()
        try:
            outputs.append(_flat(net(probe.to(device_of(net)))))
        finally:
            net.train(was_training)
    got, want = outputs
    if got.shape != want.shape:
        return f"outputs of {got.numel()} values, not {want.numel()}"
    err, scale = float((got - want).abs().max()), float(want.abs().max())
    if not err <= TOLERANCE * (1.0 + scale):  # a NaN fails too
        return f"max |compacted − masked| = {err:.3g} on outputs up to {scale:.3g}"
    return None


def _flat(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.detach().double().cpu().reshape(-1)
    values = out.values() if isinstance(out, Mapping) else out if isinstance(out, (tuple, list)) else []
    parts = [_flat(v) for v in values]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def prune_groups(model: nn.Module, example: torch.Tensor, remove: dict[str, list[int]]) -> None:
    """Remove the given channel indices from each group (by root name), in place."""
    surgery.cut(model, coupling_plan(model, example).items, remove)


def compact(model: nn.Module, masks: dict[str, torch.Tensor], groups: list[ClusterGroup],
            keep: dict[str, np.ndarray], example: torch.Tensor) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A physically smaller copy keeping `keep[root]` channels per group, and its sliced masks; checked against
    the masked parent (module docstring), else CompactionMismatch.

    The masks are sliced by cutting a twin model whose weights *are* the masks, so the same plan decides which
    input slices go, for weights and masks alike.
    """
    plan = coupling_plan(model, example)
    remove = {g.root: sorted(set(range(g.size)) - {int(i) for i in keep[g.root]}) for g in groups}
    child, twin, masked = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in prunable_layers(twin).items():
            layer.weight.copy_(masks[name].to(layer.weight.dtype))
    try:
        for net in (child, twin):
            surgery.cut(net, plan.items, remove)
        surgery.zero(masked, plan.items, remove)
        reason = differs(child, masked, example)
    except Exception as exc:  # e.g. an uneven cut of a grouped convolution: never a half-cut network
        reason = f"{type(exc).__name__}: {exc}"
    if reason is not None:
        raise CompactionMismatch(reason, _culprits(model, plan, remove, example))
    new_masks = {n: (layer.weight.detach() != 0) for n, layer in prunable_layers(twin).items()}
    return child, new_masks


def _culprits(model: nn.Module, plan: Plan, remove: Mapping[str, list[int]], example: torch.Tensor) -> list[str]:
    """The groups whose cut alone already changes the network (all cut groups if none does alone)."""
    cut = [root for root, idxs in remove.items() if idxs]
    alone = [root for root in cut if _mismatch(model, plan, {root: remove[root]}, example) is not None]
    return alone or cut


def widths(model: nn.Module) -> dict[str, int]:
    """The architecture in one dict: output width of every Conv/Linear layer."""
    return {n: int(m.weight.shape[0]) for n, m in prunable_layers(model).items()}


def shrink_to_widths(model: nn.Module, target: dict[str, int], example: torch.Tensor,
                     fixed: list[nn.Module]) -> nn.Module:
    """Rebuild a compacted architecture from a dense model: cut each group to its stored width.

    The kept channels are arbitrary (the last ones of every segment go); the caller loads the stored weights next.
    """
    remove = {}
    for group in cluster_groups(model, example, fixed):
        want = target.get(group.members[0], group.size)
        if want > group.size or want % group.segments:
            raise ValueError(f"layer {group.members[0]} is stored {want} wide; the model builds {group.size} "
                             f"in {group.segments} equal groups")
        width, keep = group.size // group.segments, want // group.segments
        remove[group.root] = [s * width + i for s in range(group.segments) for i in range(keep, width)]
    prune_groups(model, example, remove)
    return model
