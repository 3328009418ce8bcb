"""Issue #21, part 5: public architectures nobody here wrote (tests/fixtures/public_archs.py), compacted.

Every family must compact to what its masked parent computes (compacted == masked, on random inputs) or be left
dense with one warning naming the layer: grouped convolutions (RegNet), channel split and shuffle (ShuffleNet-v2),
depthwise (MobileNet-v2), DenseNet and Inception concatenations, squeeze-excitation, channel slicing. The masked
reference here is built from Torch-Pruning's own pruning groups, not from the coupling plan compaction uses.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import structlog
import torch
import torch_pruning as tp
from torch import nn

from host_trainer.config import EvolveConfig
from host_trainer.loop import breeding
from host_trainer.loop import checkpoint as ckpt
from host_trainer.loop.allocator import Allocation
from host_trainer.loop.breeding import Breeder, Scores
from host_trainer.loop.controller import Alpha
from host_trainer.method import compaction, coupling
from host_trainer.method.allocation import GroupCost, group_options
from host_trainer.method.compaction import CompactionMismatch, build_graph, cluster_groups, compact
from host_trainer.method.importance import group_slices
from host_trainer.method.masks import apply_masks, dense_masks, prunable_layers
from host_trainer.method.synthesis import SynthesisConfig, balance, plan_offspring
from host_trainer.models.registry import BUILTIN_MODELS, build_model, fixed_layers
from host_trainer.record import GenerationRecord
from tests.fixtures import public_archs as archs

FIXTURES = Path(__file__).parent / "fixtures"
SHAPE = (3, 32, 32)
FAMILIES = [f"{FIXTURES / 'public_archs.py'}:{name}" for name in archs.FACTORIES] + \
           [f"{FIXTURES / 'mobilenet_v2.py'}:build", *BUILTIN_MODELS]


@pytest.fixture
def fresh(monkeypatch):
    """No plan cached and no warning given yet in this process: what a new run starts with."""
    monkeypatch.setattr(coupling, "_WARNED", set())
    monkeypatch.setattr(compaction, "_PLANS", compaction._Cache())
    monkeypatch.setattr(compaction, "_CHECKED", compaction._Cache())


def _shape(ref: str) -> tuple[int, int, int]:
    return SHAPE if "public_archs" in ref else (1, 32, 32)


def _trained_like(ref: str) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ref, 10, _shape(ref))
    with torch.no_grad():  # BatchNorm with non-trivial statistics and affine terms
        model.train()
        model(torch.randn(16, *_shape(ref)))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _masked_reference(model: nn.Module, groups, keep, example) -> nn.Module:
    """The parent with every dropped cluster's filters, biases and BatchNorm entries zeroed, at the indices
    Torch-Pruning's own pruning group gives for each target (a concatenation's BatchNorm is offset)."""
    masked = copy.deepcopy(model)
    graph = build_graph(masked, example)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for g in groups:
            drop = sorted(set(range(g.size)) - {int(i) for i in keep[g.root]})
            if not drop:
                continue
            root = modules[g.root]
            fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
            for item in graph.get_pruning_group(root, fn, idxs=drop):
                m, idxs = item.dep.target.module, list(item.idxs)
                if getattr(item.dep.handler, "__name__", "") == "prune_out_channels" and \
                        isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                    m.weight[idxs] = 0
                    if m.bias is not None:
                        m.bias[idxs] = 0
    return masked


def _offspring(model: nn.Module, shape=SHAPE, alpha: float = 0.6, seed: int = 3):
    example = torch.zeros(1, *shape)
    groups = cluster_groups(model, example, fixed_layers(model))
    plan = plan_offspring(model, groups, dense_masks(model), SynthesisConfig(alpha, 1.0, 0.1),
                          np.random.default_rng(seed))
    child, masks = compact(model, plan.masks, groups, plan.keep, example)
    return groups, plan, child, masks, example


def _assert_same(a: nn.Module, b: nn.Module, shape) -> None:
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ref", FAMILIES, ids=lambda r: r.rpartition(":")[2] or r)
def test_compacted_equals_masked(ref):
    model = _trained_like(ref)
    groups, plan, child, masks, example = _offspring(model, _shape(ref))
    assert plan.clusters_after < plan.clusters_before  # every family loses clusters somewhere
    apply_masks(child, masks)
    _assert_same(child, _masked_reference(model, groups, plan.keep, example), _shape(ref))
    assert sum(p.numel() for p in child.parameters()) < sum(p.numel() for p in model.parameters())


def test_grouped_convolutions_are_cut_alike_in_every_group():
    model = _trained_like(f"{FIXTURES / 'public_archs.py'}:regnet")
    groups, plan, child, _masks, _example = _offspring(model, alpha=0.5)
    assert {g.segments for g in groups} >= {2, 4}  # a 1x1's outputs feed a grouped 3x3 with 2 and 4 groups
    for g in groups:
        per = np.bincount(plan.keep[g.root] // (g.size // g.segments), minlength=g.segments)
        assert len(set(per.tolist())) == 1 and per[0] >= 1
    convs = {n: m for n, m in prunable_layers(child).items() if isinstance(m, nn.Conv2d)}
    for name, conv in convs.items():
        parent = model.get_submodule(name)
        assert conv.groups == parent.groups
        assert conv.in_channels % conv.groups == 0 and conv.out_channels % conv.groups == 0
    assert any(conv.out_channels < model.get_submodule(n).out_channels
               for n, conv in convs.items() if conv.groups > 1)


def test_grouped_convolution_reads_its_own_input_group():
    """Output channel o of the compacted grouped convolution holds the parent's weights of o's own group at the
    input columns that survived, so every output still reads its own input group."""
    model = _trained_like(f"{FIXTURES / 'public_archs.py'}:regnet")
    groups, plan, child, _m, _e = _offspring(model, alpha=0.5)
    name = "body.1.b.0"
    inputs = next(g for g in groups if name in g.consumers)
    outputs = next(g for g in groups if name in g.members)
    parent, conv = model.get_submodule(name), child.get_submodule(name)
    in_per, out_per = parent.in_channels // parent.groups, parent.out_channels // parent.groups
    kept_in, kept_out = plan.keep[inputs.root], plan.keep[outputs.root]
    for row, o in enumerate(kept_out):
        group = o // out_per
        columns = [i - group * in_per for i in kept_in if i // in_per == group]
        torch.testing.assert_close(conv.weight[row], parent.weight[o, columns], rtol=0, atol=0)


def test_an_uneven_cut_of_a_grouped_convolution_is_refused():
    """Before: Torch-Pruning cut the outputs anywhere and the network silently computed something else."""
    model = _trained_like(f"{FIXTURES / 'public_archs.py'}:regnet")
    example = torch.zeros(1, *SHAPE)
    groups = cluster_groups(model, example, fixed_layers(model))
    group = next(g for g in groups if g.segments == 4)
    keep = {g.root: np.arange(g.size) for g in groups}
    keep[group.root] = np.arange(4, group.size)  # four channels off the first group only
    with pytest.raises(CompactionMismatch) as caught:
        compact(model, dense_masks(model), groups, keep, example)
    assert caught.value.roots == (group.root,) and "same number of channels from every group" in str(caught.value)


def test_torch_pruning_alone_cuts_grouped_inputs_as_if_dense():
    """The cause of the crash in the report: Torch-Pruning 1.6 keeps the first in/groups of the whole input's
    surviving indices as every filter's columns; past the first group they lie outside the weight."""
    with pytest.raises((RuntimeError, IndexError), match="out of DATA bounds"):
        tp.prune_conv_in_channels(nn.Conv2d(16, 16, 3, padding=1, groups=2), [0, 1])
    conv = tp.prune_conv_in_channels(nn.Conv2d(16, 16, 3, padding=1, groups=2), [0, 9])
    assert conv.weight.shape[1] == 7  # it ran, but group 1 lost its column 0 where 9 (its column 1) was asked


def test_shuffle_and_slices_are_left_dense_with_one_warning_each(fresh):
    model = _trained_like(f"{FIXTURES / 'public_archs.py'}:shufflenet")
    with structlog.testing.capture_logs() as logs:
        groups, _plan, child, _m, _e = _offspring(model)
        cluster_groups(child, torch.zeros(1, *SHAPE), fixed_layers(child))  # the next generation's parent
    dense = [entry for entry in logs if entry["event"] == "layers left dense"]
    assert dense and all(entry["layers"] for entry in dense)
    named = [tuple(entry["layers"]) for entry in dense]
    assert len(named) == len(set(named))  # one warning per layer set, not one per generation
    assert any("channel shuffle" in entry["reason"] for entry in dense)
    assert any("slices the channels" in entry["reason"] for entry in dense)
    warned = {layer for entry in dense for layer in entry["layers"]}
    assert "body.1.branch2.2.0" in warned  # a unit's output goes through the concatenation and the shuffle
    cut = {m for g in groups for m in g.members}
    assert "body.1.branch2.0.0" in cut and not cut & warned  # the branch's inner width is cut


def test_slicing_with_written_sizes_is_left_dense(fresh):
    model = _trained_like(f"{FIXTURES / 'public_archs.py'}:slicing")
    with structlog.testing.capture_logs() as logs:
        groups = cluster_groups(model, torch.zeros(1, *SHAPE), fixed_layers(model))
    reasons = " ".join(e["reason"] for e in logs if e["event"] == "layers left dense")
    assert "SplitWithSizes" in reasons and "Slice" in reasons
    assert {m for g in groups for m in g.members}.isdisjoint({"body.0.a.0", "body.0.c.0"})


class GroupNormNet(nn.Module):
    """GroupNorm's statistics span the channels of a group: a cut changes the others' normalisation, which no
    barrier names; the check of the test cut leaves it dense."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.norm = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)
        self.b, self.fc = nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(torch.relu(self.norm(self.a(x))))
        return self.fc(x.mean((2, 3)))


def test_a_cut_that_changes_the_function_is_found_and_left_dense(fresh):
    torch.manual_seed(0)
    model = GroupNormNet().eval()
    with structlog.testing.capture_logs() as logs:
        groups = cluster_groups(model, torch.zeros(1, *SHAPE), fixed_layers(model))
    assert [g.root for g in groups] == ["b"]
    assert any(e["layers"] == ["a", "b"] and "changes what the network computes" in e["reason"] for e in logs)


def test_the_plan_is_traced_once_per_architecture(fresh, monkeypatch):
    calls = []
    real = coupling.trace
    monkeypatch.setattr(coupling, "trace", lambda m, e: calls.append(1) or real(m, e))
    model = _trained_like(f"{FIXTURES / 'public_archs.py'}:regnet")
    groups, plan, child, _m, example = _offspring(model)
    group_slices(model, groups, example)
    _offspring(copy.deepcopy(model), seed=4)  # another offspring of the same parent, even from a copy
    assert len(calls) == 1
    cluster_groups(child, example, fixed_layers(child))  # the offspring is a new architecture
    assert len(calls) == 2


def test_shufflenet_groups_in_linear_time(fresh):
    """Before: 100 s for 2 units per stage and 575 s for 3 on this machine (the walk doubled per shuffle); the
    time is measured by bench/graph_time.py, not asserted here."""
    model = archs.shufflenet(10, 3, repeats=3).eval()
    groups = cluster_groups(model, torch.zeros(1, *SHAPE), fixed_layers(model))
    assert groups


def test_regnet_checkpoint_rebuilds_the_grouped_widths(tmp_path):
    ref = f"{FIXTURES / 'public_archs.py'}:regnet"
    model = _trained_like(ref)
    _groups, _plan, child, masks, _e = _offspring(model, alpha=0.5)
    child2 = _offspring(child.eval(), alpha=0.7, seed=5)[2]  # a second generation, from the compacted child
    for net in (child, child2):
        meta = {"architecture": ckpt.architecture(net, ref, 10, SHAPE), "generation": 1}
        folder = tmp_path / str(id(net))
        folder.mkdir()
        ckpt.write_checkpoint(folder, net, dense_masks(net), meta)
        _assert_same(ckpt.read_checkpoint(folder).model, net, SHAPE)


def test_balance_and_ladders_keep_whole_groups():
    kept = np.array([1, 1, 1, 0, 0, 0, 1, 0], dtype=bool)
    strength = np.arange(8, dtype=float)
    assert balance(kept, strength, 2).reshape(2, 4).sum(axis=1).tolist() == [2, 2]
    assert balance(kept, strength, 1) is kept
    cost = GroupCost("g", 32, (32, 24, 16, 8), lambda n: float(n), step=6)
    assert [o.count for o in group_options(cost, np.ones(32), 1.0)] == [32, 24, 12, 6]


class _Magnitude:
    """The allocator's magnitude fallback, without a board: every group keeps about α_c."""

    device_aware = False

    def cut(self, fitness, model, groups, request):
        return Allocation(counts=None, how="magnitude")


def test_the_breeder_refuses_a_wrong_cut_and_draws_again_without_it(monkeypatch):
    """The synthesis path's guard: a cut whose compacted offspring differs from its masked parent is refused with
    its reason, its groups stay dense for this parent, and the offspring is drawn again from the rest."""
    model = _trained_like(f"{FIXTURES / 'public_archs.py'}:regnet")
    example = torch.zeros(1, *SHAPE)
    groups = cluster_groups(model, example, fixed_layers(model))
    breeder = Breeder(EvolveConfig(channel_multiple=1), None, None, example, _Magnitude())
    fitness = GenerationRecord(generation=0, model_sha256="parent")
    breeder._scores = {"parent": Scores(list(groups), {g.root: np.ones(g.size) for g in groups}, [], {})}
    wrong = groups[1].root
    real = breeding.compact

    def compact_wrongly_once(parent, masks, cut_groups, keep, ex):  # as if one group's cut changed the network
        if any(g.root == wrong for g in cut_groups):
            raise CompactionMismatch("max |compacted − masked| = 0.5 on outputs up to 1", [wrong])
        return real(parent, masks, cut_groups, keep, ex)

    monkeypatch.setattr(breeding, "compact", compact_wrongly_once)
    with structlog.testing.capture_logs() as logs:
        bred = breeder.breed(model, dense_masks(model), fitness, 5, Alpha(0.6, 1.0), 0, 0, [])
    refused = [e for e in logs if e["event"].startswith("cut refused")]
    assert len(refused) == 1 and refused[0]["groups"] == [wrong] and "0.5" in refused[0]["reason"]
    assert wrong not in {g.root for g in breeder._scores["parent"].groups}
    assert sum(p.numel() for p in bred.model.parameters()) < sum(p.numel() for p in model.parameters())
