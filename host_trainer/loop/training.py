"""Training at fp32 with synapse masks. Reads top to bottom like nanoGPT's train.py.

Three schedules share one optimiser step (`_Steps`):

- `train`: a fixed budget of `epochs`, linear warm-up then cosine decay to zero (generation 0 with a number
  of epochs);
- `train_until_plateau`: generation 0 with `--gen0-epochs auto`: warm up, hold the peak learning rate while
  validation accuracy improves, then decay to zero over a quarter of the epochs held ("warm-up, stable,
  decay"), keeping the best weights seen;
- an offspring's recovery is `train` with the `recovery` config: no warm-up and a peak scaled to the cut; the
  final fine-tune (`--final-epochs`) is `train` with the `fine_tune` config: no warm-up, a lower peak.

After training, BatchNorm's running statistics are estimated again on training images (`recalibrate_batchnorm`):
a cut changes every later layer's statistics, and a short recovery leaves the running averages behind.

A training depends only on (model, masks, data, config): the batch order comes from a generator seeded by
`config.seed` and no state carries over between generations, so a resumed run repeats exactly what an
uninterrupted one would have done. The task (host_trainer/tasks/) supplies the labels and the loss.

Under torchrun (host_trainer/distributed/, docs/distributed.md) every rank draws the same global batch of `batch_size`
images from the same seeded permutation and trains on its share of it (`distributed.shard`) under
DistributedDataParallel; steps, and so the learning-rate schedule, count global batches. On one process each
`distributed` call is a no-op.

Where: `TrainConfig.device` (`--train-device`, host_trainer/torch_device.py). Each training, BatchNorm
recalibration and scoring pass takes the model (and masks, teacher, batches) to that device for its duration and
leaves it where it was; streamed batches come from pinned memory there with non-blocking copies when it is CUDA.
The arithmetic is fp32 on every device (TF32 off on CUDA). On the CPU nothing moves, so a seeded run is
bit-identical from run to run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from host_trainer import distributed
from host_trainer.data.batching import sample_batches, training_batches
from host_trainer.data.splits import images_in, loader_workers
from host_trainer.method.masks import apply_masks
from host_trainer.tasks.base import Task
from host_trainer.torch_device import CPU, placed, to_device

# --gen0-epochs auto (docs/method.md, "Training"): evaluate once an epoch; decay after PATIENCE epochs without a
# better validation score, over DECAY_FRACTION of the epochs trained so far (at least one); never past CAP.
PATIENCE = 3
CAP_EPOCHS = 60
DECAY_FRACTION = 0.25
AUTO_WARMUP_EPOCHS = 0.25  # the linear warm-up of generation 0 with auto
# The offspring's recovery (docs/method.md, "Recovery") scales with what the cut lost, r = clip(lost / LOST_FULL,
# 0, 1), lost being the share of the parent's Taylor importance in the dropped clusters: peak learning rate
# lr · max(RECOVERY_FLOOR, r), and epochs · max(MIN_RECOVERY_FRACTION, r), never under MIN_RECOVERY_STEPS steps.
LOST_FULL = 0.2
RECOVERY_FLOOR = 0.1
MIN_RECOVERY_FRACTION = 0.5
MIN_RECOVERY_STEPS = 30
TAYLOR_BATCHES = 16  # seeded training batches the parent's Taylor importance is averaged over
TAYLOR_BATCH_SIZE = 32
FINAL_LR_SCALE = 0.3  # the final fine-tune (--final-epochs): no warm-up, peak lr · FINAL_LR_SCALE
BN_BATCHES = 20  # training batches that re-estimate BatchNorm's running statistics


@dataclass(frozen=True)
class TrainConfig:
    epochs: float  # may be fractional: the budget is round(epochs * batches per epoch) steps
    seed: int
    batch_size: int = 128
    lr: float = 0.05               # the peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05  # linear warm-up, then cosine decay to zero; 0: start at the peak
    augment_shift: int = 2         # random translation in pixels (0 = off); cheap and helps glyphs
    device: str = "cpu"            # where it trains (a torch device; every rank puts its own in)

    @property
    def on(self) -> torch.device:
        return torch.device(self.device)


# on_step(step, total_steps, loss, batch_score) is called after every optimiser step; batch_score is the
# task's quick quality figure of that batch (top-1 accuracy for a classifier), or None.
OnStep = Callable[[int, int, float, "float | None"], None]
# on_epoch(epoch, loss, score) is called once an epoch and once at the end of a last, partial epoch, so that a long
# training is never silent for longer than an epoch (loop/epochs.py logs it): `epoch` counts the epochs trained so
# far (fractional after a partial one), `loss` is that epoch's mean, `score` the validation score where the schedule
# computed one (train_until_plateau), else None.
OnEpoch = Callable[[float, float, "float | None"], None]


def recovery(cfg: TrainConfig, lost: float, images: int) -> TrainConfig:
    """An offspring's schedule: no warm-up, a peak learning rate and a length in proportion to what it lost
    (`lost`: the share of the parent's importance in the clusters it dropped); at least MIN_RECOVERY_STEPS steps."""
    r = min(1.0, max(0.0, lost / LOST_FULL))
    epochs = cfg.epochs * max(MIN_RECOVERY_FRACTION, r)
    per_epoch = math.ceil(images / cfg.batch_size)
    epochs = max(epochs, min(cfg.epochs, MIN_RECOVERY_STEPS / max(1, per_epoch)))
    return dataclasses.replace(cfg, lr=cfg.lr * max(RECOVERY_FLOOR, r), warmup_fraction=0.0, epochs=epochs)


def fine_tune(cfg: TrainConfig) -> TrainConfig:
    """The final fine-tune's schedule: no warm-up, a third of the peak learning rate (docs/method.md)."""
    return dataclasses.replace(cfg, lr=cfg.lr * FINAL_LR_SCALE, warmup_fraction=0.0)


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = int(total * cfg.warmup_fraction)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def total_steps(images: int, cfg: TrainConfig) -> int:
    return max(1, round(math.ceil(images / cfg.batch_size) * cfg.epochs))


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        (decay if p.dim() > 1 else no_decay).append(p)  # no weight decay on BatchNorm and biases
    return torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


class _Steps:
    """What every schedule shares: the seeded batch order and one masked optimiser step."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor], data: Any, cfg: TrainConfig, task: Task,
                 teacher: nn.Module | None = None):
        torch.manual_seed(cfg.seed)
        self.device = cfg.on  # the model and teacher are there already (`placed` by the caller)
        masks = {name: mask.to(self.device) for name, mask in masks.items()}
        self.model, self.masks, self.cfg, self.task, self.teacher = model, masks, cfg, task, teacher
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.data = data
        self.shift = cfg.augment_shift if task.augment else 0
        self.per_epoch = math.ceil(images_in(data) / cfg.batch_size)
        self.opt = _optimizer(model, cfg)
        self.net = distributed.wrap(model)  # DistributedDataParallel under torchrun
        if teacher is not None:
            teacher.eval()
        apply_masks(model, masks)

    def batches(self) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
        """Endless: a fresh permutation of the data for every pass; this rank's share of each global batch, on the
        training device (data/batching.py)."""
        world = distributed.world()
        for x, labels in training_batches(self.data, self.task, self.cfg.batch_size, self.gen,
                                          max_shift=self.shift, shard=distributed.shard, world_size=world.size,
                                          seed=self.cfg.seed, workers=loader_workers(world.local_size),
                                          pin=self.device.type == "cuda"):
            yield to_device(x, self.device), [to_device(t, self.device) for t in labels]

    def step(self, x: torch.Tensor, labels: list[torch.Tensor], lr: float) -> tuple[float, float | None]:
        """One optimiser step at `lr`; masked synapses back to zero. (loss over every rank, the batch's score)."""
        self.net.train()
        for group in self.opt.param_groups:
            group["lr"] = lr
        teacher_outputs = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_outputs = self.teacher(x)
        outputs = self.net(x)
        loss = self.task.loss(outputs, labels, teacher_outputs)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        apply_masks(self.model, self.masks)
        return distributed.mean(loss), self.task.batch_score(outputs, labels)


class _EpochLoss:
    """The mean training loss of the epoch so far, for on_epoch."""

    def __init__(self, on_epoch: OnEpoch | None) -> None:
        self.on_epoch, self.total, self.steps = on_epoch, 0.0, 0

    def add(self, loss: float) -> None:
        self.total, self.steps = self.total + loss, self.steps + 1

    def done(self, epoch: float, score: float | None = None) -> None:
        """An epoch ended (or the training, within one): report it, start the next."""
        if self.on_epoch is not None:
            self.on_epoch(round(epoch, 4), self.total / self.steps if self.steps else float("nan"), score)
        self.total, self.steps = 0.0, 0


def train(model: nn.Module, masks: dict[str, torch.Tensor], data: Any, cfg: TrainConfig, task: Task,
          teacher: nn.Module | None = None, on_step: OnStep | None = None, on_epoch: OnEpoch | None = None) -> float:
    """Train in place at fp32 for `cfg.epochs`; masked synapses are held at zero after every step. Returns the
    last loss (NaN: training stopped there, and the caller rejects the offspring).

    `teacher` (generation 0, for distillation) is run on every batch when given; the task weighs its outputs.
    Both train on `cfg.device` and are back where they were afterwards.
    """
    with placed(cfg.on, model, teacher):
        steps = _Steps(model, masks, data, cfg, task, teacher)
        total = total_steps(images_in(data), cfg)
        last, epoch = float("nan"), _EpochLoss(on_epoch)
        for step, (x, labels) in zip(range(1, total + 1), steps.batches()):
            last, score = steps.step(x, labels, lr_at(step - 1, total, cfg))
            epoch.add(last)
            if on_step is not None:
                on_step(step, total, last, score)
            if not math.isfinite(last):
                epoch.done(step / steps.per_epoch)
                return last
            if step % steps.per_epoch == 0 and step < total:  # the last one is reported after recalibration
                epoch.done(step / steps.per_epoch)
        recalibrate_batchnorm(model, data, cfg)
        epoch.done(total / steps.per_epoch)
        return last


@dataclass(frozen=True)
class Plateau:
    """What `train_until_plateau` did: the last loss, the epochs trained, the best epoch with its score, and
    the score after every epoch (the first: before training)."""

    loss: float
    epochs: int
    best_epoch: int
    best_score: float
    history: tuple[float, ...] = ()


def train_until_plateau(model: nn.Module, masks: dict[str, torch.Tensor], data: Any, cfg: TrainConfig, task: Task,
                        score: Callable[[nn.Module], float], on_step: OnStep | None = None,
                        patience: int = PATIENCE, cap: int = CAP_EPOCHS, on_epoch: OnEpoch | None = None) -> Plateau:
    """Warm up, hold the peak learning rate until `score(model)` (validation accuracy, once an epoch) has not
    improved for `patience` epochs, then decay to zero over DECAY_FRACTION of the epochs so far, all within
    `cap` epochs. The model ends with the best weights seen, the starting ones included (weights the user
    gave are never made worse). It trains (and `score` sees it) on `cfg.device`."""
    with placed(cfg.on, model):
        return _plateau(model, masks, data, cfg, task, score, on_step, patience, cap, _EpochLoss(on_epoch))


def _plateau(model: nn.Module, masks: dict[str, torch.Tensor], data: Any, cfg: TrainConfig, task: Task,
             score: Callable[[nn.Module], float], on_step: OnStep | None, patience: int, cap: int,
             epoch_loss: _EpochLoss) -> Plateau:
    steps = _Steps(model, masks, data, cfg, task)
    batches, per_epoch = steps.batches(), steps.per_epoch
    warm = max(1, round(per_epoch * AUTO_WARMUP_EPOCHS))
    history = [distributed.agree(score(model))]  # rank 0's score: every rank decides alike
    best_score, best_epoch, best_state = history[0], 0, copy.deepcopy(model.state_dict())
    stall, decay, last, step = 0, None, float("nan"), 0  # decay: (its first epoch, its length) once decaying
    for epoch in range(1, cap + 1):
        for _ in range(per_epoch):
            last, batch_score = steps.step(*next(batches), _plateau_lr(cfg.lr, step, per_epoch, warm, decay))
            step += 1
            epoch_loss.add(last)
            if on_step is not None:
                on_step(step, cap * per_epoch, last, batch_score)
            if not math.isfinite(last):
                epoch_loss.done(step / per_epoch)
                return Plateau(last, epoch, best_epoch, best_score, tuple(history))
        now = distributed.agree(score(model))
        epoch_loss.done(epoch, now)
        history.append(now)
        if now > best_score:
            best_score, best_epoch, best_state, stall = now, epoch, copy.deepcopy(model.state_dict()), 0
        else:
            stall += 1
        length = max(1, round(epoch * DECAY_FRACTION))
        if decay is None and (stall >= patience or epoch + length >= cap):
            decay = (epoch, length)
        elif decay is not None and epoch >= sum(decay):
            break
    model.load_state_dict(best_state)
    recalibrate_batchnorm(model, data, cfg)
    return Plateau(last, epoch, best_epoch, best_score, tuple(history))


def _plateau_lr(peak: float, step: int, per_epoch: int, warm: int, decay: tuple[int, int] | None) -> float:
    """Linear warm-up to the peak, the peak, then (once decaying) cosine to zero over the decay epochs."""
    if decay is None:
        return peak * min(1.0, (step + 1) / warm)
    frac = (step - decay[0] * per_epoch) / (decay[1] * per_epoch)
    return peak * 0.5 * (1.0 + math.cos(math.pi * frac))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: Any, cfg: TrainConfig, batches: int = BN_BATCHES) -> None:
    """Estimate every BatchNorm's running mean and variance again, as an equal average over up to `batches`
    training batches (in a seeded order, unshifted), with the weights as they are. No BatchNorm: nothing to do.
    Under torchrun every rank does the same over the same batches, then takes rank 0's statistics bit for bit.
    Runs on `cfg.device`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    with placed(cfg.on, model):
        _recalibrate(model, norms, data, cfg, batches)


def _recalibrate(model: nn.Module, norms: list[nn.modules.batchnorm._BatchNorm], data: Any, cfg: TrainConfig,
                 batches: int) -> None:
    was_training = model.training
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches below
        m.train()
    for x in _bn_batches(data, cfg, batches):
        model(to_device(x, cfg.on))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    distributed.sync_buffers(model)


def _bn_batches(data: Any, cfg: TrainConfig, batches: int) -> Iterator[torch.Tensor]:
    """Up to `batches` training batches in an order seeded by cfg.seed + 1, un-augmented: the same on every rank."""
    for x, _ in sample_batches(data, None, cfg.seed + 1, batches, cfg.batch_size,
                               workers=loader_workers(distributed.world().local_size), pin=cfg.on.type == "cuda"):
        yield x


def scoring_batches(data: Any, task: Task, seed: int, count: int = TAYLOR_BATCHES,
                    batch_size: int = TAYLOR_BATCH_SIZE,
                    device: torch.device = CPU) -> Iterator[tuple[torch.Tensor, list[torch.Tensor]]]:
    """`count` training batches in an order seeded by `seed`, un-augmented, with their labels, on `device`: what
    the parent's Taylor importance is measured on (host_trainer/method/importance.py)."""
    for x, labels in sample_batches(data, task, seed, count, batch_size, workers=loader_workers(),
                                    pin=device.type == "cuda"):
        yield to_device(x, device), [to_device(t, device) for t in labels]
