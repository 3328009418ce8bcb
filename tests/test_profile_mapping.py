"""Every Conv/Linear layer the board profiles maps back to its torch module and its coupling group."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edge_evolver.measure.benchmark import BenchSettings
from edge_evolver.measure.pipeline import measure_model
from host_trainer.latency.attribution import attribute
from host_trainer.method.compaction import cluster_groups
from host_trainer.method.export import to_onnx_bytes
from host_trainer.method.masks import prunable_layers
from host_trainer.models.registry import build_model, fixed_layers

MOBILENET = str(Path(__file__).parent / "fixtures" / "mobilenet_v2.py") + ":build"
MODELS = [("mlp", (1, 8, 8), "logits"), ("lenet5", (1, 32, 32), "logits"), ("vgg-small", (1, 32, 32), "logits"),
          ("resnet-small", (1, 32, 32), "logits"), ("det-small", (3, 128, 128), "heatmap"),
          (MOBILENET, (1, 32, 32), "logits")]


@pytest.mark.parametrize("ref,shape,output", MODELS, ids=lambda v: Path(str(v)).name if isinstance(v, str) else "")
def test_every_profiled_layer_maps_to_its_module_and_group(ref, shape, output):
    torch.manual_seed(0)
    model = build_model(ref, 10, shape)
    onnx_bytes = to_onnx_bytes(model, shape, "fp16", output)
    result = measure_model(onnx_bytes, backend="onnxruntime", options={"threads": 1},
                           settings=BenchSettings(min_iterations=5, min_seconds=0.01, warmup_s=0.0)).to_dict()
    assert result["status"] == "ok" and result["profile"], result.get("profile_error")
    layers = prunable_layers(model)
    timed = attribute(result["profile"], layers)
    assert set(timed.layer_ms) == set(layers) and not timed.unmapped
    grouped = {m for g in cluster_groups(model, torch.zeros(1, *shape), fixed_layers(model)) for m in g.members}
    fixed = {n for n, m in layers.items() if any(m is f for f in fixed_layers(model))}
    assert set(layers) - fixed <= grouped  # every layer that may lose clusters is priced through its group

