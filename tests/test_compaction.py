"""Compaction through the dependency graph: every built-in model and a user factory with a residual
block. The compacted network must equal the parent with the dropped clusters and synapses zeroed."""

import copy
import textwrap

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from host_trainer.loop import checkpoint as ckpt
from host_trainer.method.compaction import build_graph, cluster_groups, compact
from host_trainer.method.masks import apply_masks, prunable_layers
from host_trainer.method.restriction import restrict, restrict_tensor
from host_trainer.method.synthesis import SynthesisConfig, plan_offspring
from host_trainer.models.registry import BUILTIN_MODELS, build_model, fixed_layers

SHAPE = (1, 32, 32)

RESIDUAL_FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.stem = nn.Conv2d(1, 24, 3, padding=1)
            self.bn = nn.BatchNorm2d(24)
            self.a = nn.Conv2d(24, 24, 3, padding=1)
            self.b = nn.Conv2d(24, 24, 3, padding=1)
            self.cat = nn.Conv2d(24, 12, 1)
            self.mix = nn.Conv2d(36, 16, 1)
            self.head = nn.Linear(16 * 16, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn(self.stem(x)))
            y = x + self.b(torch.relu(self.a(x)))          # residual addition
            z = torch.cat([y, self.cat(y)], dim=1)          # concatenation
            z = nn.functional.adaptive_avg_pool2d(torch.relu(self.mix(z)), 4)
            return self.head(torch.flatten(z, 1))           # flatten -> linear

    def make(num_classes=10):
        return Net(num_classes)
''')


@pytest.fixture(scope="module")
def user_factory(tmp_path_factory):
    path = tmp_path_factory.mktemp("factory") / "resnet_user.py"
    path.write_text(RESIDUAL_FACTORY)
    return f"{path}:make"


def _trained_like(ref):
    torch.manual_seed(0)
    model = build_model(ref, 10, SHAPE)
    with torch.no_grad():  # give BatchNorm non-trivial statistics and affine terms
        model.train()
        model(torch.randn(32, *SHAPE))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _zero_dropped(model, groups, keep, example):
    """The masked equivalent: zero each dropped channel's filters, biases and BatchNorm affine terms."""
    graph = build_graph(model, example)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for g in groups:
            drop = sorted(set(range(g.size)) - set(int(i) for i in keep[g.root]))
            root = modules[g.root]
            fn = tp.prune_conv_out_channels if isinstance(root, nn.Conv2d) else tp.prune_linear_out_channels
            for item in graph.get_pruning_group(root, fn, idxs=drop or [0]):
                m = item.dep.target.module
                if getattr(item.dep.handler, "__name__", "") != "prune_out_channels" or not drop:
                    continue
                if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
                    m.weight[drop] = 0
                    if m.bias is not None:
                        m.bias[drop] = 0


@pytest.mark.parametrize("ref", list(BUILTIN_MODELS) + ["user"])
def test_compacted_equals_masked(ref, user_factory):
    ref = user_factory if ref == "user" else ref
    model = _trained_like(ref)
    example = torch.zeros(1, *SHAPE)
    masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model).items()}
    groups = cluster_groups(model, example, fixed_layers(model))
    plan = plan_offspring(model, groups, masks, SynthesisConfig(0.6, 0.7, 0.1, channel_multiple=4),
                          np.random.default_rng(3))
    assert plan.clusters_after < plan.clusters_before
    child, child_masks = compact(model, plan.masks, groups, plan.keep, example)
    apply_masks(child, child_masks)

    masked = copy.deepcopy(model)
    apply_masks(masked, plan.masks)
    _zero_dropped(masked, groups, plan.keep, example)

    x = torch.randn(8, *SHAPE)
    child.eval()
    masked.eval()
    with torch.no_grad():
        out_child, out_masked = child(x), masked(x)
    # classifiers give 10 logits; det-small its (K + 4) maps at stride 4: 10 + 4 channels of 8x8
    assert out_child.shape == ((8, 14, 8, 8) if ref == "det-small" else (8, 10))
    torch.testing.assert_close(out_child, out_masked, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in child.parameters()) < sum(p.numel() for p in model.parameters())
    # the masks follow the compaction: kept synapse count is unchanged by slicing
    kept_rows = sum(int(plan.masks[n].sum()) for n in plan.masks)
    assert sum(int(m.sum()) for m in child_masks.values()) <= kept_rows


def test_residual_groups_couple_the_addition():
    model = build_model("resnet-small", 10, SHAPE)
    groups = cluster_groups(model, torch.zeros(1, *SHAPE), fixed_layers(model))
    coupled = [g for g in groups if len(g.members) > 1]
    assert any({"stem.0", "layer1.0.conv2", "layer1.1.conv2"} <= set(g.members) for g in coupled)
    assert all("fc" not in g.members for g in groups)  # the classifier never loses clusters


def test_checkpoint_roundtrip_rebuilds_compacted_architecture(tmp_path, user_factory):
    for ref in ["vgg-small", user_factory]:
        model = _trained_like(ref)
        example = torch.zeros(1, *SHAPE)
        masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in prunable_layers(model).items()}
        groups = cluster_groups(model, example, fixed_layers(model))
        plan = plan_offspring(model, groups, masks, SynthesisConfig(0.5, 0.5), np.random.default_rng(0))
        child, child_masks = compact(model, plan.masks, groups, plan.keep, example)
        folder = tmp_path / ref.replace("/", "_").replace(":", "_")
        folder.mkdir()
        meta = {"architecture": ckpt.architecture(child, ref, 10, SHAPE), "generation": 1}
        ckpt.write_checkpoint(folder, child, child_masks, meta)
        loaded = ckpt.read_checkpoint(folder)
        x = torch.randn(4, *SHAPE)
        child.eval()
        loaded.model.eval()
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), child(x), rtol=0, atol=0)
        assert all(torch.equal(loaded.masks[k], child_masks[k]) for k in child_masks)


def _representable(t, number_format: str) -> bool:
    """Restricting `t` again changes nothing: it holds only values of the format."""
    return bool(torch.equal(restrict_tensor(t, number_format), t))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_restriction_makes_every_value_representable(precision):
    model = _trained_like("vgg-small")
    restrict(model, precision)
    tensors = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    assert all(_representable(t, precision) for t in tensors)
    assert all(torch.equal(t.to(torch.float16).float(), t) for t in tensors) or precision == "bf16"


def test_restriction_rounds_to_nearest_even():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        # 1 + 2^-11 lies exactly between fp16 neighbours 1 and 1 + 2^-10: ties go to even (1.0)
        model.weight.copy_(torch.tensor([[1 + 2 ** -11, 1 + 3 * 2 ** -11]]))
    restrict(model, "fp16")
    assert model.weight.tolist() == [[1.0, 1 + 2 ** -9]]
