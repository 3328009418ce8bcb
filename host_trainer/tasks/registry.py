"""The task of a run, by name (the names are `host_trainer.config.TASKS`); its data is read by
host_trainer/data/stream.py `load_data`."""

from __future__ import annotations

from typing import Any

from torch import nn

from host_trainer.errors import UserError
from host_trainer.tasks.base import Task
from host_trainer.tasks.classify import ClassificationTask
from host_trainer.tasks.detect import DetectionTask

KINDS = {"classify": ClassificationTask, "detect": DetectionTask}  # every name of config.TASKS


def make_task(name: str, data: Any, model: nn.Module, distill: float = 0.0, model_name: str = "the model") -> Task:
    """The task object of a run; a detector must declare its `output_stride` (docs/detection.md)."""
    stride = getattr(model, "output_stride", None)
    if name == "classify":
        if stride is not None:
            raise UserError(f"{model_name} is a detector: add --task detect")
        return ClassificationTask(data.num_classes, distill=distill)
    if name == "detect":
        if not isinstance(stride, int) or stride < 1:
            raise UserError("a detector must declare `output_stride` (an int): see docs/detection.md")
        return DetectionTask(data.num_classes, stride, data.input_shape)
    raise UserError(f"unknown task {name!r}: choose {' or '.join(KINDS)}")
