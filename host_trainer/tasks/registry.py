"""The task of a run, by name (the names are `host_trainer.config.TASKS`), and the data sets it reads."""

from __future__ import annotations

from typing import Any

from torch import nn

from host_trainer.data.classify import load_dataset
from host_trainer.data.detect import load_det_dataset
from host_trainer.data.stream import stream_data
from host_trainer.errors import UserError
from host_trainer.progress import NULL, Progress
from host_trainer.tasks.base import Task
from host_trainer.tasks.classify import ClassificationTask
from host_trainer.tasks.detect import DetectionTask

_LOADERS = {"classify": load_dataset, "detect": load_det_dataset}


def load_data(task: str, ref: str, seed: int, image_size: int, progress: Progress = NULL) -> Any:
    """The task's data set `ref`: the user's files (imagefolder:, coco:, yolo:) streamed (data/stream.py,
    docs/data.md), the built-in sets in memory (a Dataset or a DetDataset); a set of the other task is a
    one-line error."""
    if task not in _LOADERS:
        raise UserError(f"unknown task {task!r}: choose {' or '.join(_LOADERS)}")
    return stream_data(task, ref, seed=seed, image_size=image_size, progress=progress)


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
    raise UserError(f"unknown task {name!r}: choose classify or detect")
