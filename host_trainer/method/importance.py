"""First-order Taylor importance of every cluster, on one scale for the whole network.

A cluster (one channel of a coupling group, host_trainer/method/compaction.py) takes with it every parameter that
dies when it is removed: its filters and biases in the group's members, the BatchNorm γ and β of those channels,
and the consumers' input slices (a Linear after flatten: every spatial position of the channel). Removing it sets
all of them to zero, so to first order the loss changes by −Σ g·w over exactly those parameters; the score is

    I_c = mean over batches b of |Σ_{p ∈ cluster c} g_b(p) · w(p)|

with g_b the loss gradient on batch b (a fixed, seeded set of training batches, the parent in eval mode). The
scale is the loss itself, so scores of different groups are comparable (as in HALP and Molchanov et al.), unlike
a per-group share of |w|. The coupling plan (compaction.py: Torch-Pruning's dependency graph, read once per
architecture) says which slice of which parameter belongs to which cluster, so concatenations, residual additions
and flatten→linear are handled as compaction handles them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from host_trainer.method.compaction import ClusterGroup, coupling_plan

# (outputs, labels) -> the scalar loss of one batch
LossFn = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Slice:
    """One parameter's share of a group: along `dim`, index idxs[j] belongs to cluster roots[j]."""

    param: nn.Parameter
    dim: int
    idxs: torch.Tensor
    roots: torch.Tensor


def group_slices(model: nn.Module, groups: list[ClusterGroup], example: torch.Tensor) -> dict[str, list[Slice]]:
    """Every parameter slice that dies with each cluster, per group root (from the coupling plan)."""
    items = coupling_plan(model, example).items
    modules = dict(model.named_modules())
    out: dict[str, list[Slice]] = {}
    for group in groups:
        slices: list[Slice] = []
        for item in items[group.root]:
            if item.dim is None:  # an unwrapped nn.Parameter is no layer's weight: left out, as before
                slices += _item_slices(modules[item.target], f"prune_{item.side}_channels", list(item.idxs),
                                       list(item.roots))
        out[group.root] = slices
    return out


def _item_slices(module: nn.Module, handler: str, idxs: list[int], roots: list[int]) -> list[Slice]:
    """The weight/bias slices one dependency of a group touches (nothing for parameter-free operations)."""
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if not isinstance(weight, nn.Parameter) or not idxs:
        return []
    index, owner = torch.tensor(idxs), torch.tensor(roots)
    if handler == "prune_out_channels":
        slices = [Slice(weight, 0, index, owner)] if weight.shape[0] > max(idxs) else []
        if isinstance(bias, nn.Parameter) and bias.shape[0] > max(idxs):
            slices.append(Slice(bias, 0, index, owner))
        return slices
    if handler == "prune_in_channels" and weight.dim() >= 2:
        # A grouped convolution's weight holds in_channels/groups inputs per filter: which filters read which
        # input is not a plain column, so its input side is left out of the score (its outputs still count).
        if isinstance(module, nn.Conv2d) and module.groups > 1:
            return []
        if weight.shape[1] > max(idxs):
            return [Slice(weight, 1, index, owner)]
    return []


def cluster_scores(slices: list[Slice], size: int) -> torch.Tensor:
    """Σ g·w per cluster over the slices (signed), from the gradients currently in `.grad`; a CPU tensor."""
    total = torch.zeros(size, dtype=torch.float64)
    for s in slices:
        if s.param.grad is None:
            continue
        gw = (s.param.grad.detach() * s.param.detach()).double().index_select(s.dim, s.idxs.to(s.param.device))
        per_index = gw.transpose(0, s.dim).reshape(len(s.idxs), -1).sum(dim=1)
        total.index_add_(0, s.roots, per_index.cpu())  # the sums on the CPU, wherever the model is
    return total


def taylor_importance(model: nn.Module, groups: list[ClusterGroup], example: torch.Tensor,
                      batches: Iterable[tuple[torch.Tensor, list[torch.Tensor]]], loss_fn: LossFn) -> dict[str,
                                                                                                         np.ndarray]:
    """I_c per group root (see the module docstring). The model is left as it was (mode, weights, no grads).
    It is scored where it lives, on batches already there; the sums are kept on the CPU."""
    slices = group_slices(model, groups, example)
    sizes = {g.root: g.size for g in groups}
    sums = {root: torch.zeros(size, dtype=torch.float64) for root, size in sizes.items()}
    was_training, count = model.training, 0
    model.eval()  # BatchNorm as the deployed network runs it
    try:
        for x, labels in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), labels).backward()
            for root, size in sizes.items():
                sums[root] += cluster_scores(slices[root], size).abs()
            count += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {root: (s / max(1, count)).numpy() for root, s in sums.items()}
