"""How big one network is: synapses, clusters, parameters and MACs (docs/method.md, "Terms").

Synapses and clusters are the seed's measures; parameters and MACs are those of the physical,
compacted network, which is what a dense engine on the device computes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from host_trainer.method.masks import prunable_layers


@dataclass(frozen=True)
class SizeMetrics:
    synapses: int  # non-zero weights of Conv/Linear layers
    clusters: int  # filters plus neurons that exist
    params: int    # every stored parameter of the physical, compacted network
    macs: int      # multiply-accumulates of one batch-1 forward pass (dense engine)

    def to_dict(self) -> dict[str, int]:
        return {"synapses": self.synapses, "clusters": self.clusters, "params": self.params, "macs": self.macs}


def size_metrics(model: nn.Module, input_shape: tuple[int, ...]) -> SizeMetrics:
    layers = prunable_layers(model)
    synapses = sum(int(torch.count_nonzero(m.weight)) for m in layers.values())
    clusters = sum(m.weight.shape[0] for m in layers.values())
    params = sum(p.numel() for p in model.parameters())
    example = torch.zeros((1, *input_shape))
    was_training = model.training
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return SizeMetrics(synapses=synapses, clusters=clusters, params=params, macs=int(macs))
