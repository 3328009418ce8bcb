"""What a training tells the user while it runs: the progress bar's text after every step, and one `epoch` event
after every epoch of every training (loop/training.py's on_step and on_epoch).

The event goes where every host event goes (host_trainer/events.py): always to `<run>/events.jsonl`, and off a
TTY also to stderr as the same JSON line, so that a run under nohup or CI is never silent for longer than an epoch
(generation 0 alone can train for many minutes). On a TTY the bars show the same progress and the event stays in
the file. Its fields (docs/generations.md, "Progress events"):

- `training`: `gen0`, `offspring`, `rest` or `final_tune`; with `generation`, and for an offspring `attempt` and
  `offspring` (its index k);
- `epoch`: epochs trained so far (fractional at the end of a partial one, e.g. 0.75), of `epochs` (`auto` for
  generation 0's plateau schedule);
- `loss`: the epoch's mean training loss; `val_accuracy`: the validation score after it (accuracy; mAP@0.5 for
  detect), null when training stopped on a non-finite loss;
- `seconds`: since the previous event of this training (or its start), the validation included.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import structlog
from torch import nn

from host_trainer.progress import Step
from host_trainer.tasks.base import Task

log = structlog.get_logger("host_trainer")
GEN0, OFFSPRING = "gen0", "offspring"  # the other trainings are named by their record flag: rest, final_tune


class EpochEvents:
    """A training's on_epoch: logs one `epoch` event per epoch. `score` gives the validation score where the
    schedule does not (a fixed budget); the plateau schedule hands its own."""

    def __init__(self, training: str, generation: int, epochs: float | str,
                 score: Callable[[], float] | None = None, **ids: int) -> None:
        self.training, self.generation, self.epochs, self.score, self.ids = training, generation, epochs, score, ids
        self.last = time.perf_counter()

    def __call__(self, epoch: float, loss: float, val: float | None) -> None:
        if val is None and self.score is not None and math.isfinite(loss):
            val = self.score()
        now = time.perf_counter()
        log.info("epoch", training=self.training, generation=self.generation, **self.ids, epoch=epoch,
                 epochs=self.epochs, loss=_rounded(loss), val_accuracy=_rounded(val), seconds=round(now - self.last, 3))
        self.last = now


def validation_score(task: Task, model: nn.Module, split: Any) -> Callable[[], float]:
    """The model's validation score now, leaving it in the mode it was in (the evaluation switches to eval)."""
    def score() -> float:
        was_training = model.training
        try:
            return float(task.evaluate(model, split).accuracy)
        finally:
            model.train(was_training)
    return score


def bar_reporter(bar: Step, epochs: float):  # noqa: ANN201
    """The training loop's on_step, shown as `epoch 0.42/0.75  loss 0.412  acc 87.5%` on the bar."""
    def on_step(step: int, total: int, loss: float, score: float | None) -> None:
        info = f"epoch {step * epochs / max(1, total):.2f}/{epochs:g}  loss {loss:.3f}"
        bar.update(step, total, info + (f"  acc {score:.1%}" if score is not None else ""))
    return on_step


def _rounded(value: float | None) -> float | None:
    return value if value is None or not math.isfinite(value) else round(value, 5)
