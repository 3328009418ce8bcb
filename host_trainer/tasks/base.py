"""The interface of a task (classification, detection). The loops ask it; they never branch on its name.

- `labels(split)`: per-image training labels, tensors indexed like `split.x` (class ids, or a detector's
  dense heat-map labels); `batch_labels(batch)`: the same for one batch of a streamed split
  (host_trainer/data/stream_loader.py), whose images are decoded and augmented per batch;
- `loss(outputs, labels, teacher_outputs)`: the training loss of one batch;
- `batch_score(outputs, labels)`: a quick quality figure of one training batch for the progress bar, or None;
- `evaluate(model, split)`: quality on held-out data (`Scores`): `accuracy` is the score the controller
  brakes on (top-1 accuracy, or mAP@0.5 for detection);
- `parity(onnx_bytes, model, x)`: does the exported ONNX compute what torch computes?
- `job_check()`: what the device must check its engine's outputs with (sent in the job header);
- `disagreement(agreement)`: the device's answer to that check, as a reason to reject, or None.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from host_trainer.method.export import Parity
from host_trainer.torch_device import device_of


class Scores(Protocol):
    """Quality on held-out data; `to_dict()` has the generation record's quality fields."""

    @property
    def accuracy(self) -> float: ...
    def to_dict(self) -> dict[str, float]: ...


class Task(Protocol):
    name: str
    output_name: str
    augment: bool  # may the training loop shift images? (a shift would move a detector's boxes)

    def labels(self, split: Any) -> list[torch.Tensor]: ...
    def batch_labels(self, batch: Any) -> list[torch.Tensor]: ...  # a streamed batch's (data/stream_loader.py)
    def loss(self, outputs: torch.Tensor, labels: list[torch.Tensor], teacher: torch.Tensor | None) -> torch.Tensor: ...
    def batch_score(self, outputs: torch.Tensor, labels: list[torch.Tensor]) -> float | None: ...
    def evaluate(self, model: nn.Module, split: Any) -> Scores: ...
    def parity(self, onnx_bytes: bytes, model: nn.Module, x: np.ndarray) -> Parity: ...
    def job_check(self) -> dict | None: ...
    def disagreement(self, agreement: dict | None) -> str | None: ...
    def expected_output(self) -> tuple[int, ...]: ...  # the one output's shape without the batch
    def output_contract(self) -> str: ...  # that shape in words, and where the contract is written


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The model's outputs for every row of x, in eval mode, computed where the model lives."""
    model.eval()
    device = device_of(model)
    outs = [model(torch.from_numpy(x[i: i + batch_size]).to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def predict_split(model: nn.Module, split: Any, batch_size: int = 512) -> np.ndarray:
    """The model's outputs for every image of a split, in memory or streamed (data/splits.py), in order."""
    from host_trainer.data.splits import images, streamed

    if not streamed(split):
        return predict(model, split.x, batch_size)
    model.eval()
    device = device_of(model)
    outs = [model(torch.from_numpy(x).to(device)).cpu() for x in images(split, batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def agreement_problem(agreement: dict | None, key: str, name: str, floor: float) -> str | None:
    """Why a device's answer to the output check rejects the offspring: any NaN/inf output, or the task's
    agreement figure `key` below `floor` (a missing figure, e.g. no confident boxes, rejects nothing)."""
    agreement = agreement if isinstance(agreement, dict) else {}
    if agreement.get("nonfinite"):
        return f"{agreement['nonfinite']} non-finite output values"
    value = agreement.get(key)
    if value is not None and value < floor:
        return f"{name} {value:.3f} on the samples, below {floor}"
    return None
