"""The task of a run, by name (the names are `host_trainer.config.TASKS`); its data is read by
host_trainer/data/stream.py `load_data`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from host_trainer.errors import UserError
from host_trainer.tasks.base import Task
from host_trainer.tasks.classify import ClassificationTask
from host_trainer.tasks.detect import DetectionTask

KINDS = {"classify": ClassificationTask, "detect": DetectionTask}  # every name of config.TASKS


def make_task(name: str, data: Any, model: nn.Module, distill: float = 0.0, model_name: str = "the model") -> Task:
    """The task object of a run, once the model's output is what it reads (`check_output`); a detector must
    declare its `output_stride` (docs/detection.md)."""
    task = _task(name, data, model, distill, model_name)
    check_output(task, model, tuple(data.input_shape), model_name)
    return task


def check_output(task: Task, model: nn.Module, input_shape: tuple[int, ...], model_name: str) -> None:
    """One forward pass at batch 1 in eval mode: a model whose output the task cannot read (a tuple of heads, the
    wrong class count, another layout) is one line here, not a crash inside training or export."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *input_shape)))
    except Exception as exc:  # the user's forward: any error is theirs to read, in one line
        shape = ", ".join(map(str, (1, *input_shape)))
        raise UserError(f"{model_name} fails on a ({shape}) input: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        model.train(was_training)
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == (1, *task.expected_output())):
        raise UserError(f"{model_name} outputs {describe(out)}, but {task.output_contract()}")


def describe(out: Any) -> str:
    """A model's output in a few words: its shape, or what kind of container it is."""
    if isinstance(out, torch.Tensor):
        return f"shape ({', '.join(map(str, out.shape))})"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)} outputs"
    if isinstance(out, dict):
        return f"a dict of {len(out)} outputs ({', '.join(map(str, list(out)[:4]))})"
    return f"a {type(out).__name__}"


def _task(name: str, data: Any, model: nn.Module, distill: float, model_name: str) -> Task:
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
