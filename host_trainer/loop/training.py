"""Training at fp32 with synapse masks. Reads top to bottom like nanoGPT's train.py.

A generation's training depends only on (model, masks, data, config): the batch order comes
from a generator seeded by `config.seed` and no state carries over between generations, so a
resumed run repeats exactly what an uninterrupted one would have done. The task (host_trainer/tasks/)
supplies the labels and the loss; the loop is the same for every task.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from host_trainer.method.masks import apply_masks
from host_trainer.tasks.base import Task


@dataclass(frozen=True)
class TrainConfig:
    epochs: float  # may be fractional: the budget is round(epochs * batches per epoch) steps
    seed: int
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to zero
    augment_shift: int = 2         # random translation in pixels (0 = off); cheap and helps glyphs


# on_step(step, total_steps, loss, batch_score) is called after every optimiser step; batch_score is the
# task's quick quality figure of that batch (top-1 accuracy for a classifier), or None.
OnStep = Callable[[int, int, float, "float | None"], None]


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(total * cfg.warmup_fraction))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def total_steps(images: int, cfg: TrainConfig) -> int:
    return max(1, round(math.ceil(images / cfg.batch_size) * cfg.epochs))


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to `max_shift` pixels with zero fill (one shift per batch)."""
    if max_shift <= 0 or x.dim() != 4:
        return x
    dx, dy = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    padded = F.pad(x, (max_shift,) * 4)
    h, w = x.shape[2], x.shape[3]
    return padded[:, :, max_shift + dy: max_shift + dy + h, max_shift + dx: max_shift + dx + w]


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)  # no weight decay on BatchNorm and biases
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def train(model: nn.Module, masks: dict[str, torch.Tensor], data: Any, cfg: TrainConfig, task: Task,
          teacher: nn.Module | None = None, on_step: OnStep | None = None) -> float:
    """Train in place at fp32; masked synapses are held at zero after every step. Returns the last loss.

    `teacher` (the parent, for distillation) is run on every batch when given; the task weighs its outputs.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_all, labels = torch.from_numpy(data.x), task.labels(data)
    shift = cfg.augment_shift if task.augment else 0
    total = total_steps(len(x_all), cfg)
    opt = _optimizer(model, cfg)
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
            x, batch_labels = _shift(x_all[idx], shift, gen), [t[idx] for t in labels]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, cfg)
            teacher_outputs = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_outputs = teacher(x)
            outputs = model(x)
            loss = task.loss(outputs, batch_labels, teacher_outputs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            apply_masks(model, masks)
            step, last = step + 1, loss.item()
            if on_step is not None:
                on_step(step, total, last, task.batch_score(outputs, batch_labels))
            if not math.isfinite(last):
                return last  # a NaN loss: the caller rejects this offspring
    return last
