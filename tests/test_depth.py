"""Depth (host_trainer/method/depth.py): residual blocks that can go whole, as knapsack options, removed,
compacted, exported with parity, stored and rebuilt, with the saved time predicted as a board then measures it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from host_trainer.latency.groups import network_ms
from host_trainer.latency.model import LatencyModel, Observation, Shape
from host_trainer.loop import checkpoint as ckpt
from host_trainer.loop.allocator import CutRequest, spend
from host_trainer.method.compaction import cluster_groups, compact
from host_trainer.method.depth import Removed, removable_blocks, removal_loss, remove_blocks, removed_blocks
from host_trainer.method.export import to_onnx_bytes
from host_trainer.method.masks import dense_masks, prunable_layers
from host_trainer.models.registry import build_model, fixed_layers

SHAPE = (1, 16, 16)


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet-small", 10, SHAPE)
    return model.eval()


def _board(model: nn.Module, example: torch.Tensor) -> Observation:
    """A synthetic board: a layer takes 1e-6 ms per multiply-accumulate, plus 0.05 ms outside the layers."""
    layers, macs = prunable_layers(model), {}

    def hook(name):
        def record(module, _args, out):
            per_out = module.weight[0].numel()
            macs[name] = per_out * out.numel()
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    with torch.no_grad():
        model(example)
    for h in handles:
        h.remove()
    shapes = {}
    for name, m in layers.items():
        linear = isinstance(m, nn.Linear)
        shapes[name] = Shape(m.in_features if linear else m.in_channels, m.out_features if linear else m.out_channels,
                             macs[name] * 1e-6, linear=linear)
    return Observation(model_sha256="x", generation=0, layers=shapes, other_ms=0.05)


def test_only_identity_residual_blocks_are_offered():
    model, example = _resnet(), torch.zeros(1, *SHAPE)
    names = [b.name for b in removable_blocks(model, example, fixed_layers(model))]
    assert names == ["layer1.0", "layer1.1", "layer2.1", "layer3.1"]  # not the strided blocks with a 1x1 shortcut
    block = next(b for b in removable_blocks(model, example, []) if b.name == "layer1.0")
    assert block.layers == ("layer1.0.conv1", "layer1.0.conv2")
    vgg = build_model("vgg-small", 10, (1, 32, 32))
    assert removable_blocks(vgg, torch.zeros(1, 1, 32, 32), fixed_layers(vgg)) == []  # no residual additions


def test_a_removed_block_is_compacted_exported_with_parity_and_rebuilt(tmp_path):
    model, example = _resnet(), torch.zeros(1, *SHAPE)
    groups = cluster_groups(model, example, fixed_layers(model))
    keep = {g.root: np.arange(g.size - (g.size // 4 if g.root == "layer2.1.conv1" else 0)) for g in groups}
    child, masks = compact(model, dense_masks(model), groups, keep, example)
    remove_blocks(child, ["layer1.1", "layer3.1"])
    assert isinstance(child.layer1[1], Removed) and removed_blocks(child) == ["layer1.1", "layer3.1"]
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        h = model.layer1[0](model.stem(x))  # layer1.1 skipped: its input goes straight on
        assert torch.equal(child.layer1(child.stem(x)), h)
    session = ort.InferenceSession(to_onnx_bytes(child, SHAPE, "fp32", "logits"), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = child(x).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], expected, atol=1e-4)
    arch = ckpt.architecture(child, "resnet-small", 10, SHAPE)
    assert arch["removed"] == ["layer1.1", "layer3.1"]
    ckpt.write_checkpoint(tmp_path, child, {n: masks[n] for n in prunable_layers(child)}, {"architecture": arch})
    again = ckpt.read_checkpoint(tmp_path).model.eval()
    with torch.no_grad():
        assert torch.equal(again(x), child(x))
    assert "removed" not in ckpt.architecture(model, "resnet-small", 10, SHAPE)  # unchanged for dense models


def test_the_knapsack_removes_a_cheap_block_and_predicts_what_the_board_then_measures():
    model, example = _resnet(), torch.zeros(1, *SHAPE)
    fixed = fixed_layers(model)
    groups = cluster_groups(model, example, fixed)
    observed = _board(model, example)
    latency = LatencyModel("synthetic")
    latency.observe(observed)
    blocks = removable_blocks(model, example, fixed)
    importance = {g.root: np.full(g.size, 1.0) for g in groups}  # every cluster matters ...
    block_loss = {b.name: (1e-3 if b.name == "layer3.1" else 10.0) for b in blocks}  # ... layer3.1 hardly
    request = CutRequest(0.9, seed=0, k=0, attempt=0, importance=importance, blocks=blocks,
                         block_importance=block_loss)
    cut = spend(latency, observed, model, groups, request)
    assert cut.removed == ("layer3.1",) and cut.chosen["layer3.1.conv1"] == 0
    assert cut.counts["layer3.1.conv1"] == dict((g.root, g.size) for g in groups)["layer3.1.conv1"]
    removed_layers = {"layer3.1.conv1", "layer3.1.conv2"}
    assert cut.predicted_ms == network_ms(latency, observed, groups, cut.counts, removed_layers)
    # Build the offspring the cut describes and let the synthetic board measure it.
    keep = {g.root: np.arange(cut.counts[g.root]) for g in groups}
    child, _ = compact(model, dense_masks(model), groups, keep, example)
    remove_blocks(child, cut.removed)
    measured = _board(child, example)
    total = sum(s.ms for s in measured.layers.values()) + measured.other_ms
    assert abs(total - cut.predicted_ms) <= 1e-9 * total
    assert cut.parent_ms - total >= cut.target_ms * (1 - 1e-6)


def test_removal_loss_is_the_measured_loss_increase():
    model, example = _resnet(), torch.zeros(1, *SHAPE)
    blocks = removable_blocks(model, example, fixed_layers(model))
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, *SHAPE, generator=gen), [torch.randint(0, 10, (8,), generator=gen)])]
    loss = removal_loss(model, blocks, batches, lambda out, labels: nn.functional.cross_entropy(out, labels[0]))
    x, labels = batches[0]
    with torch.no_grad():
        base = float(nn.functional.cross_entropy(model(x), labels[0]))
        skipped = remove_blocks(_resnet(), ["layer2.1"])
        after = float(nn.functional.cross_entropy(skipped(x), labels[0]))
    assert loss["layer2.1"] == max(0.0, after - base)
    assert set(loss) == {b.name for b in blocks}


def test_mobilenet_v2_inverted_residuals_with_a_shortcut_are_offered_with_one_inner_group():
    from tests.fixtures.mobilenet_v2 import MobileNetV2Small

    model, example = MobileNetV2Small(10, 3).eval(), torch.zeros(1, 3, 32, 32)
    blocks = removable_blocks(model, example, fixed_layers(model))
    assert [b.name for b in blocks] == ["features.3", "features.5", "features.7"]
    groups = cluster_groups(model, example, fixed_layers(model))
    for block in blocks:  # expand + depthwise are one group inside the block; the projection is the stream's
        assert len([g for g in groups if set(g.members) <= set(block.layers)]) == 1
