"""Size and quality metrics of one network: synapses, clusters, parameters, MACs, accuracy,
macro precision and macro recall (METHOD.md's definitions)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from host_trainer.compaction import prunable_layers


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


@dataclass(frozen=True)
class Quality:
    accuracy: float
    precision: float  # macro averages over the classes that were predicted or present,
    recall: float     # as scikit-learn's average="macro", zero_division=0
    loss: float

    def to_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "precision": self.precision, "recall": self.recall, "loss": self.loss}


def classification_quality(pred: np.ndarray, labels: np.ndarray, num_classes: int, loss: float) -> Quality:
    """Accuracy and macro precision/recall from a confusion matrix.

    A class never predicted has precision 0 and a class never present has recall 0 (as
    scikit-learn's zero_division=0); classes absent from both are left out of the averages.
    """
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, pred), 1)
    tp_ = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    seen = (predicted + actual) > 0
    precision = np.divide(tp_, predicted, out=np.zeros_like(tp_), where=predicted > 0)
    recall = np.divide(tp_, actual, out=np.zeros_like(tp_), where=actual > 0)
    return Quality(
        accuracy=float(tp_.sum() / max(1, labels.size)),
        precision=float(precision[seen].mean()) if seen.any() else 0.0,
        recall=float(recall[seen].mean()) if seen.any() else 0.0,
        loss=float(loss),
    )
