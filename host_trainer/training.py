"""Training at fp32 with synapse masks, and evaluation. Reads top to bottom like nanoGPT's train.py.

A generation's training depends only on (model, masks, data, config): the batch order comes
from a generator seeded by `config.seed` and no state carries over between generations, so a
resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from host_trainer.compaction import prunable_layers
from host_trainer.data import Split
from host_trainer.metrics import Quality, classification_quality

if TYPE_CHECKING:
    from host_trainer.det_data import DetSplit
    from host_trainer.tasks import Task


@dataclass(frozen=True)
class TrainConfig:
    epochs: float  # may be fractional: the budget is round(epochs * batches per epoch) steps
    seed: int
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to zero
    distill: float = 0.0           # weight of the parent's soft targets (0 = off)
    temperature: float = 4.0
    augment_shift: int = 2         # random translation in pixels (0 = off); cheap and helps glyphs


# progress(step, total_steps, loss) is called after every optimiser step.
Progress = Callable[[int, int, float], None]


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(total * cfg.warmup_fraction))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for name, layer in prunable_layers(model).items():
        layer.weight.mul_(masks[name].to(layer.weight.dtype))


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to `max_shift` pixels with zero fill (one shift per batch)."""
    if max_shift <= 0 or x.dim() != 4:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    padded = F.pad(x, (max_shift,) * 4)
    h, w = x.shape[2], x.shape[3]
    return padded[:, :, max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]


def _loss(logits: torch.Tensor, y: torch.Tensor, teacher_logits: torch.Tensor | None, cfg: TrainConfig):
    loss = F.cross_entropy(logits, y)
    if teacher_logits is None or cfg.distill <= 0:
        return loss
    t = cfg.temperature
    soft = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(teacher_logits / t, 1), reduction="batchmean")
    return (1 - cfg.distill) * loss + cfg.distill * (t * t) * soft


def classification_loss(logits: torch.Tensor, targets: list[torch.Tensor], teacher_logits: torch.Tensor | None,
                        cfg: TrainConfig) -> torch.Tensor:
    """The classification task's loss (host_trainer.tasks): the targets are one tensor of class ids."""
    return _loss(logits, targets[0], teacher_logits, cfg)


def train(model: nn.Module, masks: dict[str, torch.Tensor], data: Split | DetSplit, cfg: TrainConfig,
          teacher: nn.Module | None = None, progress: Progress | None = None, task: Task | None = None) -> float:
    """Train in place at fp32; masked synapses are held at zero after every step. Returns last loss.

    `task` supplies the per-image targets and the loss (classification when None); the loop is the same.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all = torch.from_numpy(data.x)
    if task is None and not isinstance(data, Split):
        raise TypeError("detection data needs its task: train(..., task=DetectionTask(...))")
    targets = task.targets(data) if task is not None else [torch.from_numpy(data.y)]  # type: ignore[union-attr]
    loss_fn = task.loss if task is not None else classification_loss
    shift = cfg.augment_shift if task is None or task.augment else 0
    steps_per_epoch = math.ceil(len(x_all) / cfg.batch_size)
    total = max(1, round(steps_per_epoch * cfg.epochs))
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)  # no weight decay on BatchNorm and biases
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    if teacher is not None:
        teacher.eval()
    apply_masks(model, masks)
    model.train()
    step, last = 0, float("nan")
    while step < total:
        order = torch.randperm(len(x_all), generator=gen)  # a fresh pass over the data
        for start in range(0, len(order), cfg.batch_size):
            if step >= total:
                break
            idx = order[start: start + cfg.batch_size]
            x = _shift(x_all[idx], shift, gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            teacher_logits = None
            if teacher is not None and cfg.distill > 0:
                with torch.no_grad():
                    teacher_logits = teacher(x)
            loss = loss_fn(model(x), [t[idx] for t in targets], teacher_logits, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            apply_masks(model, masks)
            step, last = step + 1, loss.item()
            if progress is not None:
                progress(step, total, last)
            if not math.isfinite(last):
                return last  # a NaN loss: the caller rejects this offspring
    return last


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits for every row of x, in eval mode."""
    model.eval()
    outs = [model(torch.from_numpy(x[i: i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def evaluate(model: nn.Module, data: Split, num_classes: int) -> Quality:
    logits = predict(model, data.x)
    loss = float(F.cross_entropy(torch.from_numpy(logits), torch.from_numpy(data.y)))
    return classification_quality(logits.argmax(1), data.y, num_classes, loss)
