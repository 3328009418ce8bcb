"""What a task (classification, detection) decides in a run; everything else is shared.

The generation loop (evolve.py), the training loop (training.py) and the measurers ask the task for:
- `targets(split)`: per-image training targets, tensors indexed like `split.x`;
- `loss(outputs, targets, teacher_outputs, cfg)`: the training loss of one batch;
- `evaluate(model, split)`: quality on held-out data; its `to_dict()` always has `accuracy` (the score
  the controller brakes on: top-1 accuracy, or mAP@0.5 for detection), `precision`, `recall`, `loss`;
- `parity(onnx_bytes, model, x)`: does the exported ONNX compute what torch computes?
- `job_check()`: what the device must check its engine's outputs with (sent in the job header);
- `disagreement(agreement)`: the device's answer to that check, as a reason to reject, or None.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from host_trainer.data import Split
from host_trainer.errors import UserError
from host_trainer.export import OUTPUT_NAME, Parity, check_parity
from host_trainer.training import TrainConfig, classification_loss, evaluate

TASKS = ("classify", "detect")
MIN_TOP1_AGREEMENT = 0.85  # device check: 7 of 8 sample images must get the same class


class Task(Protocol):
    name: str
    output_name: str
    augment: bool  # may the training loop shift images? (a shift would move a detector's boxes)

    def targets(self, split: Any) -> list[torch.Tensor]: ...
    def loss(self, outputs: torch.Tensor, targets: list[torch.Tensor], teacher: torch.Tensor | None,
             cfg: TrainConfig) -> torch.Tensor: ...
    def evaluate(self, model: nn.Module, split: Any) -> Any: ...
    def parity(self, onnx_bytes: bytes, model: nn.Module, x: np.ndarray) -> Parity: ...
    def job_check(self) -> dict | None: ...
    def disagreement(self, agreement: dict | None) -> str | None: ...


class ClassificationTask:
    name, output_name, augment = "classify", OUTPUT_NAME, True

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def targets(self, split: Split) -> list[torch.Tensor]:
        return [torch.from_numpy(split.y)]

    def loss(self, outputs, targets, teacher, cfg):  # noqa: ANN001 (the Protocol above types it)
        return classification_loss(outputs, targets, teacher, cfg)

    def evaluate(self, model: nn.Module, split: Split):
        return evaluate(model, split, self.num_classes)

    def parity(self, onnx_bytes: bytes, model: nn.Module, x: np.ndarray) -> Parity:
        return check_parity(onnx_bytes, model, x)

    def job_check(self) -> dict | None:
        return None  # the device computes top-1 agreement on any [N, C] output by itself

    def disagreement(self, agreement: dict | None) -> str | None:
        """Any NaN/inf output, or more than one of the 8 sample images classified differently."""
        return agreement_problem(agreement, "top1_agreement", "top-1 agreement", MIN_TOP1_AGREEMENT)


def agreement_problem(agreement: dict | None, key: str, name: str, floor: float) -> str | None:
    """Why a device's answer to the output check rejects the offspring: any NaN/inf output, or the task's
    agreement figure `key` below `floor` (a missing figure, e.g. no confident boxes, rejects nothing)."""
    agreement = agreement or {}
    if agreement.get("nonfinite"):
        return f"{agreement['nonfinite']} non-finite output values"
    value = agreement.get(key)
    if value is not None and value < floor:
        return f"{name} {value:.3f} on the samples, below {floor}"
    return None


def make_task(task: str, data: Any, model: nn.Module) -> Task:
    """The task object of a run; a detector must declare its `output_stride` (docs/detection.md)."""
    if task == "classify":
        return ClassificationTask(data.num_classes)
    if task == "detect":
        from host_trainer.det_task import DetectionTask

        stride = getattr(model, "output_stride", None)
        if not isinstance(stride, int) or stride < 1:
            raise UserError("a detector must declare `output_stride` (an int): see docs/detection.md")
        return DetectionTask(data.num_classes, stride, data.input_shape)
    raise UserError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
