"""The classification task: cross-entropy (optionally distilled from the parent), accuracy with macro
precision and recall (docs/method.md, "Terms"), top-1 parity of the export, the device's top-1 check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from host_trainer.data.types import Split
from host_trainer.method.export import Parity, onnx_and_torch, within_tolerance
from host_trainer.tasks.base import agreement_problem, predict_split

OUTPUT_NAME = "logits"
MIN_PARITY_TOP1 = 0.99  # host: ONNX Runtime vs torch, same machine, 256 held-out images
MIN_DEVICE_TOP1 = 0.85  # device check: 7 of 8 sample images must get the same class


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


def check_parity(onnx_bytes: bytes, model: nn.Module, x: np.ndarray) -> Parity:
    """Every logit within the fp16 tolerance, and the same class for at least MIN_PARITY_TOP1 of `x`."""
    got, ref = onnx_and_torch(onnx_bytes, model, x)
    max_err, within = within_tolerance(got, ref)
    agree = float(np.mean(got.argmax(1) == ref.argmax(1)))
    return Parity(max_abs_err=max_err, agreement=agree, samples=len(x), ok=within and agree >= MIN_PARITY_TOP1)


class ClassificationTask:
    name, output_name, augment = "classify", OUTPUT_NAME, True

    def __init__(self, num_classes: int, distill: float = 0.0, temperature: float = 4.0):
        self.num_classes = num_classes
        self.distill, self.temperature = distill, temperature  # weight of the parent's soft labels (0 = off)

    def expected_output(self) -> tuple[int, ...]:
        return (self.num_classes,)

    def output_contract(self) -> str:
        return (f"a classifier has one output of shape (N, K): here (N, {self.num_classes}) for the data set's "
                f"{self.num_classes} classes (docs/your-model.md)")

    def labels(self, split: Split) -> list[torch.Tensor]:
        return [torch.from_numpy(split.y)]

    def loss(self, outputs: torch.Tensor, labels: list[torch.Tensor], teacher: torch.Tensor | None) -> torch.Tensor:
        loss = F.cross_entropy(outputs, labels[0])
        if teacher is None or self.distill <= 0:
            return loss
        t = self.temperature
        soft = F.kl_div(F.log_softmax(outputs / t, 1), F.softmax(teacher / t, 1), reduction="batchmean")
        return (1 - self.distill) * loss + self.distill * (t * t) * soft

    def batch_score(self, outputs: torch.Tensor, labels: list[torch.Tensor]) -> float | None:
        """Top-1 accuracy of one training batch (as trained: dropout on, images shifted)."""
        return float((outputs.detach().argmax(1) == labels[0]).float().mean())

    def batch_labels(self, batch: Any) -> list[torch.Tensor]:
        """A streamed training batch's labels (data/stream_loader.py Batch)."""
        return [batch.y]

    def evaluate(self, model: nn.Module, split: Split) -> Quality:
        logits = predict_split(model, split)
        loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(split.y)))
        return classification_quality(logits.argmax(1), split.y, self.num_classes, loss)

    def parity(self, onnx_bytes: bytes, model: nn.Module, x: np.ndarray) -> Parity:
        return check_parity(onnx_bytes, model, x)

    def job_check(self) -> dict | None:
        return None  # the device computes top-1 agreement on any [N, C] output by itself

    def disagreement(self, agreement: dict | None) -> str | None:
        """Any NaN/inf output, or more than one of the 8 sample images classified differently (loose on
        purpose: fp16 engines differ in the last bits)."""
        return agreement_problem(agreement, "top1_agreement", "top-1 agreement", MIN_DEVICE_TOP1)
